"""The remote update state machine, in its own worker thread.

``cmd/engine.update {request_id, url, sha256, version, signature}`` is first judged by its
signed envelope alone (:func:`~edge_agent.update.verify.precheck`): a refusal is the command's
error reply, and nothing is downloaded. An accepted update walks::

    DOWNLOADING -> VERIFYING -> BUILDING -> STAGED -> SWITCHING -> HEALTH_CHECK -> COMMITTED
                                                                               \\-> ROLLED_BACK
    (a refusal or failure before SWITCHING)                                   -> FAILED

Every transition is handed to ``publish`` (the service sends it retained on ``engine/update`` and
as a reply carrying the request ID). Until COMMITTED the old engine stays open and the store's
``current`` pointer is not touched, so a refusal, a failed health check or a crash leaves the
running engine as it was. The journal (``models/update.json``) records the state; after a restart
:meth:`Updater.recover` resumes a download from its byte (at most ``max_resumes`` times, then
abandons it), resumes a stored-but-unswitched version, and turns an update caught while
SWITCHING or HEALTH_CHECK into ROLLED_BACK (or COMMITTED when the pointer had already moved).
``cmd/engine.cancel`` ends an update before STAGED at once (a download in progress is aborted).

The pipeline side is the :class:`EngineHost` protocol; the updater never touches its internals.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Union

from edge_agent.update import versions
from edge_agent.update.download import Downloader, check_url
from edge_agent.update.errors import UpdateError
from edge_agent.update.health import HealthPolicy, HealthProbe
from edge_agent.update.store import ModelStore, VersionInfo, now_utc
from edge_agent.update.verify import Policy, Verified, describe, precheck, verify

log = logging.getLogger(__name__)

DOWNLOADING, VERIFYING, BUILDING, STAGED = "DOWNLOADING", "VERIFYING", "BUILDING", "STAGED"
SWITCHING, HEALTH_CHECK = "SWITCHING", "HEALTH_CHECK"
COMMITTED, ROLLED_BACK, FAILED, IDLE = "COMMITTED", "ROLLED_BACK", "FAILED", "IDLE"
STATES = (DOWNLOADING, VERIFYING, BUILDING, STAGED, SWITCHING, HEALTH_CHECK, COMMITTED,
          ROLLED_BACK, FAILED)
TERMINAL = (COMMITTED, ROLLED_BACK, FAILED)
SWITCH_TIMEOUT_S = 60.0  # waiting for the inference thread to reach a batch boundary
CANCELLABLE = ("ACCEPTED", DOWNLOADING, VERIFYING, BUILDING)
# failures after which the .part is kept (a later push of the same signed file resumes it)
RESUMABLE = ("connection", "truncated", "http_5xx")

# (transition document, the request's reply route or None)
Publish = Callable[[Dict[str, Any], Any], None]
# (model config of the version, manifest, onnx path, progress(percent)) -> None
Builder = Callable[[Any, Any, Path, Callable[[float], None]], None]


class EngineHost(Protocol):
    """What the updater needs from the pipeline."""

    def running_engine(self) -> Any:
        """The engine in use now (has ``manifest`` and ``close()``)."""

    def open_engine(self, model_cfg: Any) -> Any:
        """Open (and warm up) an engine for ``model_cfg``; raises ``ValueError`` if it cannot."""

    def between_batches(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the inference thread between two batches."""

    def swap_engine(self, engine: Any) -> Any:
        """Use ``engine`` from the next batch on; returns the old one. Only inside
        :meth:`between_batches`."""


@dataclass
class _Job:
    request: Dict[str, Any]
    resume: str = DOWNLOADING  # where to start (after a restart: VERIFYING or BUILDING)
    note: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)


def validate_request(request: Dict[str, Any]) -> Dict[str, Any]:
    """The fields of ``cmd/engine.update``, type-checked (content is checked in VERIFYING)."""
    out = {"request_id": request.get("request_id")}
    for key in ("url", "sha256", "version"):
        if not isinstance(request.get(key), str) or not request[key]:
            raise UpdateError("bad_request", f"field {key!r} (a non-empty string) is required")
    out["url"] = check_url(request["url"])
    out["sha256"] = request["sha256"].strip().lower()
    out["version"] = versions.check(request["version"])  # it reaches topics: only valid ones
    for key in ("signature", "manifest"):
        if request.get(key) is not None:
            out[key] = request[key]
    return out


class Updater:
    """Runs updates and rollbacks one at a time on its own thread."""

    def __init__(self, store: ModelStore, host: EngineHost,
                 policy: Union[Policy, Callable[[], Policy]],
                 downloader: Downloader, health: HealthPolicy, model_cfg: Any,
                 publish: Publish, builder: Optional[Builder] = None,
                 extend_timeout: Optional[Callable[[float], Any]] = None, max_resumes: int = 3):
        self.store, self.host, self._policy = store, host, policy
        self.max_resumes = max_resumes
        self.downloader, self.health, self.model_cfg = downloader, health, model_cfg
        self.publish, self.builder, self.extend_timeout = publish, builder, extend_timeout
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._active: Optional[Dict[str, Any]] = None  # the running job's status doc
        self._last: Optional[Dict[str, Any]] = None
        self._route: Any = None  # where the running request wants its replies (MQTT 5)
        self._job: Optional[_Job] = None  # the claimed update (for cancel)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def policy(self) -> Policy:
        """What is accepted now (a callable policy follows config reloads and the heads of the
        engine that runs)."""
        return self._policy() if callable(self._policy) else self._policy

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="updater", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; a download in progress is aborted at once and left (with
        its journal) to resume at the next start."""
        self._stop.set()
        self.downloader.abort()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- requests (from the command thread) ------------------------------------------------

    def submit(self, request: Dict[str, Any], route: Any = None) -> Dict[str, Any]:
        """Accept ``cmd/engine.update``; UpdateError ``busy`` while another one runs, or the
        refusal of its signed envelope (nothing is downloaded then).
        ``route``: where the transitions' replies go (handed to ``publish``)."""
        req = validate_request(request)
        self.store.download_path(req["sha256"])  # the sha256 names a file: check it now
        self._precheck(req)
        job = _Job(req)
        doc = self._claim(req["request_id"], "update", req["version"], route, job)
        try:
            self._write_journal(req, DOWNLOADING)
        except OSError as exc:  # e.g. a full disk: refuse instead of staying "busy" for good
            with self._lock:
                self._active, self._job = None, None
            raise UpdateError("store_error", f"cannot write the update journal: {exc}") from None
        self._queue.put(job)
        return doc

    def _precheck(self, req: Dict[str, Any]) -> Verified:
        return precheck(req, self.policy, self.store.floor_version(), self.downloader.max_bytes)

    def cancel(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Accept ``cmd/engine.cancel``: end the running update now if it has not reached STAGED
        (a download is aborted at once); it then ends FAILED with the code ``cancelled``."""
        with self._lock:
            active, job = self._active, self._job
            if active is None:
                raise UpdateError("idle", "no update is running")
            if job is None or active["state"] not in CANCELLABLE:
                raise UpdateError("not_cancellable", f"{active['kind']} "
                                  f"{active['request_id']!r} is in {active['state']}; it ends on "
                                  "its own (then cmd/engine.rollback if need be)")
            job.cancel.set()
            doc = {"cancelling": active["request_id"], "state": active["state"],
                   "version": active["version"]}
        self.downloader.abort()
        log.info("update %s: cancel requested (%s)", doc["cancelling"],
                 request.get("request_id"))
        return doc

    def request_rollback(self, request: Dict[str, Any], route: Any = None) -> Dict[str, Any]:
        """Accept ``cmd/engine.rollback``: back to the previous version, between batches."""
        prev = self.store.previous
        if prev is None or self.store.get(prev) is None:
            raise UpdateError("no_previous", "there is no previous version to roll back to")
        doc = self._claim(request.get("request_id"), "rollback", prev, route)
        self._queue.put(("rollback", request.get("request_id")))
        return doc

    def _claim(self, request_id: Any, kind: str, version: str, route: Any = None,
               job: Optional[_Job] = None) -> Dict[str, Any]:
        with self._lock:
            if self._active is not None:
                raise UpdateError("busy", f"{self._active['kind']} {self._active['request_id']!r}"
                                  f" is running ({self._active['state']}); one at a time")
            self._active = {"request_id": request_id, "kind": kind, "state": "ACCEPTED",
                            "version": version, "from_version": self._running_version(),
                            "history": [], "ts": now_utc()}
            self._route, self._job = route, job
            return dict(self._active)

    def status(self) -> Dict[str, Any]:
        """``cmd/engine.status``: the running update (or the last one) and the store's pointers."""
        with self._lock:
            active = dict(self._active) if self._active else None
            last = dict(self._last) if self._last else None
        return {"state": active["state"] if active else IDLE, "active": active, "last": last,
                "current": self.store.current, "previous": self.store.previous,
                "floor": self.store.floor_version(), "running": self._running_version(),
                "allow_unsigned": self.policy.allow_unsigned}

    def state_name(self) -> str:
        """The state in lower case (``idle``, ``downloading``, ...), e.g. for the exporter."""
        with self._lock:
            return (self._active["state"] if self._active else IDLE).lower()

    def state_getter(self) -> Dict[str, Any]:
        """A small summary for ``state`` and metrics: state, versions, unsigned warning."""
        st = self.status()
        out = {"state": st["state"], "current": st["current"], "previous": st["previous"]}
        if st["last"]:
            out["last"] = {k: st["last"].get(k) for k in ("request_id", "state", "version")}
        if self.policy.allow_unsigned:
            out["warning"] = "update.allow_unsigned is on: unsigned models are accepted " \
                             "(development only)"
        return out

    def list_versions(self) -> Dict[str, Any]:
        """``cmd/engine.list``."""
        return {"versions": [{"version": v.version, "name": v.name, "sha256": v.sha256,
                              "installed": v.installed, "source": v.source, "signer": v.signer}
                             for v in self.store.stored()],
                "current": self.store.current, "previous": self.store.previous,
                "floor": self.store.floor_version(), "running": self._running_version(),
                "failed": self.store.failed()}

    def _running_version(self) -> Optional[str]:
        try:
            return str(self.host.running_engine().manifest.version)
        except Exception:
            return self.store.current

    # --- the worker -----------------------------------------------------------------------

    def _worker(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            try:
                if isinstance(job, tuple):
                    self._run_rollback(job[1])
                else:
                    self._run_update(job)
            except Exception:  # a bug must not kill the worker; the engine is restored below
                log.exception("updater: unexpected failure")
                self._finish(FAILED, error=UpdateError("internal", "unexpected failure; see log"))

    def _transition(self, state: str, message: str = "", progress: Optional[float] = None,
                    error: Optional[UpdateError] = None, final: bool = False,
                    **extra: Any) -> None:
        with self._lock:
            doc = self._active
            if doc is None:
                return
            doc["state"] = state
            doc["ts"] = now_utc()
            if not doc["history"] or doc["history"][-1] != state:
                doc["history"].append(state)
            doc["progress"] = progress
            doc["message"] = message
            if error is not None:
                doc["error"] = {"code": error.code, "message": error.message}
            doc.update(extra)
            out = dict(doc, history=list(doc["history"]))
            route = self._route
            if final:  # before publishing: a state published with it must say IDLE
                self._last, self._active, self._job = self._active, None, None
        if out.get("kind") == "update" and state not in TERMINAL:
            self._write_journal(None, state)
        log.info("update %s: %s%s", out["request_id"], state, f" ({message})" if message else "")
        try:
            self.publish(out, route)
        except Exception:
            log.exception("updater: publishing the %s transition failed", state)

    def _finish(self, state: str, message: str = "", error: Optional[UpdateError] = None,
                **extra: Any) -> None:
        self.store.clear_journal()
        self._transition(state, message, error=error, final=True, **extra)

    def _write_journal(self, request: Optional[Dict[str, Any]], state: str) -> None:
        j = self.store.journal() or {}
        if request is not None:
            j = {"request": request, "started": now_utc()}
        j["state"] = state
        j["ts"] = now_utc()
        self.store.write_journal(j)

    # --- one update -----------------------------------------------------------------------

    def _run_update(self, job: _Job) -> None:
        req = job.request
        try:
            info = self._fetch_and_verify(job)
        except UpdateError as exc:
            if exc.code == "cancelled" and not job.cancel.is_set():
                return  # stopping: the journal stays, the next start resumes
            if exc.code not in RESUMABLE:  # a bad or cancelled file is never resumed
                self.store.download_path(req["sha256"]).unlink(missing_ok=True)
            if exc.code == "cancelled":
                exc = UpdateError("cancelled", "cancelled by cmd/engine.cancel")
            self._finish(FAILED, exc.message, error=exc)
            return
        self._switch_and_check(info)

    def _check_cancel(self, job: _Job) -> None:
        if job.cancel.is_set() or self._stop.is_set():
            raise UpdateError("cancelled", "the update was cancelled")

    def _fetch_and_verify(self, job: _Job) -> VersionInfo:
        req = job.request
        self._check_cancel(job)
        signed = self._precheck(req)  # again: keys, rules or the floor may have changed
        existing = self.store.get(req["version"]) if job.resume == BUILDING else None
        if existing is not None and existing.sha256 == req["sha256"]:
            info = existing
        else:
            part = self.store.download_path(signed.manifest.sha256)
            self.store.sweep_downloads(keep=part)  # one download at a time
            v = self._download_and_verify(req, part, job, signed.size)
            info = self.store.add(v.manifest.version, part, v.manifest_bytes, v.envelope,
                                  name=v.manifest.name, sha256=v.manifest.sha256,
                                  source="update", move=True)
        self._build(info)
        self._check_cancel(job)
        return info

    def _download_and_verify(self, req: Dict[str, Any], part: Path, job: _Job,
                             size: Optional[int]) -> Verified:
        """DOWNLOADING and VERIFYING. A resumed file that fails its hash is fetched once more
        from byte 0 (the kept bytes may not be the signed file's)."""
        for again in (False, True):
            resumed = self._download(req, part, job, size)
            self._check_cancel(job)
            self._transition(VERIFYING, "sha256, size, signature, version, heads, graph")
            try:
                v = verify(part, req, self.policy, self.store.floor_version())
            except UpdateError as exc:
                if again or not resumed or exc.code not in ("sha256_mismatch", "size_mismatch"):
                    raise
                log.warning("update %s: the resumed download is not the signed file; fetching "
                            "it again from byte 0", req["request_id"])
                part.unlink(missing_ok=True)
                job.note = "the resumed file was not the signed one; downloading it again"
                continue
            self._check_cancel(job)
            return v
        raise AssertionError("unreachable")

    def _download(self, req: Dict[str, Any], part: Path, job: _Job,
                  size: Optional[int]) -> int:
        """Returns the bytes that were on disk before (resumed from)."""
        try:
            return self._fetch(req, part, job, size)
        except OSError as exc:  # writing the .part (a full disk): not resumable
            raise UpdateError("store_error", f"cannot write the download: "
                              f"{exc.strerror or exc}") from None

    def _fetch(self, req: Dict[str, Any], part: Path, job: _Job, size: Optional[int]) -> int:
        note = job.note
        have = part.stat().st_size if part.exists() else 0
        msg = note or (f"resuming at byte {have}" if have else "")
        self._transition(DOWNLOADING, msg, progress=0.0, resumed_from=have)
        last = [0.0, -1.0]

        def progress(got: int, total: Optional[int]) -> None:
            pct = round(100.0 * got / total, 1) if total else None
            now = time.monotonic()
            if pct is not None and (pct - last[1] >= 5 or now - last[0] >= 1.0) and pct < 100:
                last[0], last[1] = now, pct
                self._transition(DOWNLOADING, msg, progress=pct, bytes=got, total=total)

        res = self.downloader.fetch(
            req["url"], part, progress, lambda: self._stop.is_set() or job.cancel.is_set(), size)
        self._transition(DOWNLOADING, msg, progress=100.0, bytes=res.size, total=res.size)
        return res.resumed_from

    def _version_cfg(self, info: VersionInfo) -> Any:
        return self.model_cfg.model_copy(update={
            "path": str(info.model), "manifest": str(info.manifest),
            "engine_dir": str(info.path)})

    def _build(self, info: VersionInfo) -> None:
        if self.builder is None:
            self._transition(BUILDING, "skipped: ONNX Runtime builds nothing ahead", progress=None)
            return
        self._transition(BUILDING, "building the engine for this device", progress=0.0)
        from edge_agent.inference import manifest as mf

        m = mf.load(info.manifest)

        last = [-1.0, 0.0]

        def progress(pct: float) -> None:  # a builder may report often: publish >= 1 % steps
            now = time.monotonic()
            if pct - last[0] >= 1.0 or now - last[1] >= 5.0:
                last[0], last[1] = pct, now
                self._transition(BUILDING, "building", progress=round(pct, 1))

        building = threading.Event()
        ticker = threading.Thread(target=self._extend_while, args=(building,), daemon=True)
        ticker.start()
        try:
            self.builder(self._version_cfg(info), m, info.model, progress)
        except (ValueError, RuntimeError, OSError) as exc:
            self.store.mark_failed(info.version, f"build failed: {exc}")
            raise UpdateError("build_failed", f"building the engine failed: {exc}") from None
        finally:
            building.set()

    def _extend_while(self, done: threading.Event, every_s: float = 30.0) -> None:
        """EXTEND_TIMEOUT_USEC to systemd while a build runs (TensorRT 8 reports no progress;
        a build of minutes must not be taken for a hang)."""
        while self.extend_timeout is not None and not done.is_set():
            self.extend_timeout(3 * every_s)
            done.wait(every_s)

    def _switch_and_check(self, info: VersionInfo) -> None:
        old = self.host.running_engine()
        try:
            new = self.host.open_engine(self._version_cfg(info))
        except Exception as exc:  # ModelError, BackendUnavailableError, ORT errors
            self.store.mark_failed(info.version, f"cannot open: {exc}")
            self._finish(FAILED, f"the new engine cannot be opened: {exc}",
                         error=UpdateError("open_failed", str(exc)[:300]))
            return
        self._transition(STAGED, f"{info.name} {info.version} opened and warmed up",
                         manifest=describe(new.manifest))
        probe = HealthProbe(new, old, self.health)
        self._transition(SWITCHING, "between batches; the old engine stays open")
        try:
            self._swap(probe)
        except UpdateError as exc:
            new.close()
            self.store.mark_failed(info.version, exc.message)
            self._finish(FAILED, exc.message, error=exc)
            return
        self._transition(HEALTH_CHECK, f"{self.health.batches} batches", progress=0.0)
        self._wait_health(probe)
        if self._stop.is_set() and not probe.done.is_set():
            return  # the agent stops: the journal says HEALTH_CHECK, the next start reports it
        why = probe.verdict()
        health = probe.report.summary()
        if why is None:
            self._swap(new)
            self.store.set_current(info.version)
            self.store.set_running(info.version, info.sha256)
            old.close()
            self._finish(COMMITTED, f"{info.name} {info.version} is running", health=health)
        else:
            self._swap(old)
            new.close()
            self.store.mark_failed(info.version, why)
            self._finish(ROLLED_BACK, why, error=UpdateError("health_check", why), health=health)

    def _wait_health(self, probe: HealthProbe) -> None:
        deadline = time.monotonic() + self.health.timeout_s
        last = -1
        while not probe.done.wait(0.25):
            n = probe.report.batches
            if n != last:
                last = n
                self._transition(HEALTH_CHECK, f"{n} of {self.health.batches} batches",
                                 progress=round(100.0 * n / self.health.batches, 1))
            if time.monotonic() > deadline or self._stop.is_set():
                return

    def _swap(self, engine: Any) -> Any:
        fut = self.host.between_batches(lambda: self.host.swap_engine(engine))
        try:
            return fut.result(SWITCH_TIMEOUT_S)
        except Exception as exc:
            raise UpdateError("switch_failed", f"the inference thread did not switch: "
                              f"{exc or type(exc).__name__}") from None

    # --- rollback on request --------------------------------------------------------------

    def _run_rollback(self, request_id: Any) -> None:
        prev = self.store.previous
        info = self.store.get(prev) if prev else None
        if info is None:
            self._finish(FAILED, "no previous version", error=UpdateError("no_previous",
                                                                          "nothing to roll back"))
            return
        self._transition(SWITCHING, f"back to {info.version}")
        try:
            eng = self.host.open_engine(self._version_cfg(info))
        except Exception as exc:
            self._finish(FAILED, f"the previous engine cannot be opened: {exc}",
                         error=UpdateError("open_failed", str(exc)[:300]))
            return
        try:
            old = self._swap(eng)
        except UpdateError as exc:
            eng.close()
            self._finish(FAILED, exc.message, error=exc)
            return
        self.store.rollback()
        self.store.set_running(info.version, info.sha256)
        old.close()
        self._finish(ROLLED_BACK, f"rolled back on request to {info.version}")

    # --- after a restart ------------------------------------------------------------------

    def recover(self) -> Optional[str]:
        """Resume or clean up an update the last run left (call once, after :meth:`start`).

        Returns what was done, in words (also published), or None when there was nothing.
        Every ``.part`` but the journaled download's is removed.
        """
        j = self.store.journal()
        req, state = (j or {}).get("request"), (j or {}).get("state")
        try:
            req = validate_request(req) if isinstance(req, dict) else None
        except UpdateError:
            req = None
        resuming = req is not None and state in (DOWNLOADING, VERIFYING)
        self.store.sweep_downloads(self.store.download_path(req["sha256"]) if resuming and req
                                   else None)
        if not j:
            return None
        if req is None or state not in STATES:
            self.store.clear_journal()
            return "discarded an unreadable update journal, or one with a bad request"
        job = _Job(req)
        self._claim(req["request_id"], "update", req["version"], job=job)
        if state in (DOWNLOADING, VERIFYING, BUILDING, STAGED):
            resumes = j.get("resumes", 0)
            resumes = resumes + 1 if isinstance(resumes, int) else self.max_resumes + 1
            if resumes > self.max_resumes:
                return self._abandon(req, state, resumes - 1)
            j["resumes"] = resumes
            self.store.write_journal(j)
        if state in (DOWNLOADING, VERIFYING):
            part = self.store.download_path(req["sha256"])
            have = part.stat().st_size if part.exists() else 0
            job.note = f"resumed after a restart at byte {have} (resume {resumes} of " \
                       f"{self.max_resumes})"
            self._queue.put(job)
            return job.note
        if state in (BUILDING, STAGED):
            job.resume, job.note = BUILDING, f"resumed after a restart in {state}"
            self._queue.put(job)
            return job.note
        version = req["version"]
        if state in (SWITCHING, HEALTH_CHECK) and self.store.current != version:
            why = (f"the agent restarted during {state}; the previous engine "
                   f"{self._running_version()} is running")
            try:
                self.store.mark_failed(version, why)
            except UpdateError:
                pass
            self._finish(ROLLED_BACK, why, error=UpdateError("restarted", why))
            return why
        note = f"the agent restarted after {state}; {self.store.current} is running"
        self._finish(COMMITTED if self.store.current == version else FAILED, note)
        return note

    def _abandon(self, req: Dict[str, Any], state: str, resumes: int) -> str:
        """An update resumed ``max_resumes`` times already: give it up (a server that never
        completes must not occupy the device at every start)."""
        self.store.download_path(req["sha256"]).unlink(missing_ok=True)
        why = (f"abandoned in {state} after {resumes} resume(s) after restarts "
               f"(update.download_max_resumes is {self.max_resumes})")
        self._finish(FAILED, why, error=UpdateError("abandoned", why))
        return why

