"""Live config reload (SIGHUP, ``cmd/config.reload``): what may change without a restart.

Reloaded in place, between two batches, with the streams kept open: the event rules
(``events:`` but its sinks, snapshots and ``plate.ocr``), each camera's zones, ``detect_every``
and ``fps_limit``, and the tracker parameters. Everything else (a camera added or removed, a
camera's source, the model, the broker, the state dir, the metrics address, the event sinks, ...)
needs a restart: such changes are listed in the report and none of them is applied, not even in
part. Every key that differs is either applied or listed (:func:`plan` checks this itself).

A reload runs the start-up checks on the new file (``preflight``: model, manifest, sources, key
files, sink paths, ...): any failure rejects it with its ``file:line`` errors and the running
config stays as it was. The file is read only when it is a regular file, with size and time
bounds (``yamlsafe.read_bounded``). Requests are coalesced: a burst of SIGHUPs is one reload,
and a request never waits for a reload in progress (:class:`Reloader`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from edge_agent import config as cfgmod
from edge_agent.daemon import preflight

log = logging.getLogger(__name__)

Report = Dict[str, Any]

# Top-level sections that are read once at start.
RESTART_SECTIONS = ("device_id", "state_dir", "log", "model", "mqtt", "metrics", "update")
# Camera fields that belong to the capture (an open stream); zones etc. are reloadable.
CAMERA_RESTART_FIELDS = ("source", "type", "loop", "realtime", "stall_timeout_s", "reconnect")
# Parts of ``events`` built once at start: the sink files and the snapshot store are opened by
# the delivery, and the OCR reader is loaded (or not) with the pipeline.
EVENTS_RESTART_KEYS: Tuple[Tuple[str, ...], ...] = (("sinks",), ("snapshots",), ("plate", "ocr"))
# How long a burst of requests is gathered into one reload, and the longest a request waits.
QUIET_S, MAX_DELAY_S = 0.5, 3.0
# How long cmd/config.reload waits for its report before answering "pending".
COMMAND_WAIT_S = 1.0


@dataclass
class ReloadPlan:
    """What a new config changes. ``config`` is what will run: the new reloadable parts on
    top of the running config's restart-only parts."""

    config: cfgmod.Config
    cameras: List[str] = field(default_factory=list)  # cameras whose rules/zones/pacing change
    tracker: bool = False
    events: bool = False
    needs_restart: List[str] = field(default_factory=list)

    @property
    def changed(self) -> List[str]:
        out = ["events"] if self.events else []
        out += ["tracker"] if self.tracker else []
        return out + [f"cameras.{c}" for c in self.cameras]


def plan(old: cfgmod.Config, new: cfgmod.Config) -> ReloadPlan:
    """Compare the running config with a new one (both validated)."""
    o, n = old.model_dump(mode="json"), new.model_dump(mode="json")
    restart = [k for k in RESTART_SECTIONS if o[k] != n[k]]
    if "mqtt" not in restart and _secret(old.mqtt.password) != _secret(new.mqtt.password):
        restart.append("mqtt")  # the dumps mask it: compared apart
    old_cams = {c["name"]: c for c in o["cameras"]}
    new_cams = {c["name"]: c for c in n["cameras"]}
    restart += [f"cameras.{c} added" for c in new_cams if c not in old_cams]
    restart += [f"cameras.{c} removed" for c in old_cams if c not in new_cams]
    merged_cams, changed_cams = [], []
    for name, oc in old_cams.items():
        nc = new_cams.get(name)
        if nc is None:
            merged_cams.append(oc)
            continue
        restart += [f"cameras.{name}.{f}" for f in CAMERA_RESTART_FIELDS if oc[f] != nc[f]]
        mc = dict(nc, **{f: oc[f] for f in CAMERA_RESTART_FIELDS})
        if mc != oc:
            changed_cams.append(name)
        merged_cams.append(mc)
    events = _deepcopy(n["events"])
    for keys in EVENTS_RESTART_KEYS:
        if _get(o["events"], keys) != _get(n["events"], keys):
            restart.append("events." + ".".join(keys))
            _set(events, keys, _get(o["events"], keys))
    merged = dict(n, **{k: o[k] for k in RESTART_SECTIONS}, cameras=merged_cams, events=events)
    restart += _unaccounted(o, n, merged, restart)
    merged["mqtt"] = dict(merged["mqtt"], password=None)  # the dump masks it; the old one stays
    cfg = cfgmod.Config.model_validate(merged).model_copy(update={"mqtt": old.mqtt})
    cfg._origin = old._origin
    cfg._secrets = sorted(set(old._secrets) | set(new._secrets))  # masked wherever it shows
    return ReloadPlan(cfg, changed_cams, o["tracker"] != n["tracker"], o["events"] != events,
                      restart)


def _secret(value: Any) -> Optional[str]:
    return None if value is None else value.get_secret_value()


def _unaccounted(o: Dict[str, Any], n: Dict[str, Any], merged: Dict[str, Any],
                 restart: List[str]) -> List[str]:
    """Keys changed in the file that are neither applied (merged takes the new value) nor
    already listed as needing a restart: listed too, so the report never claims more."""
    o, n, merged = _by_name(o), _by_name(n), _by_name(merged)
    listed = [r.rsplit(" ", 1)[0] for r in restart]  # "cameras.yard added" covers cameras.yard
    out = []
    for path, new_value in _leaves(n):
        if _get(o, path) == new_value or _get(merged, path) == new_value:
            continue
        dotted = ".".join(str(p) for p in path)
        if not any(dotted == r or dotted.startswith(r + ".") for r in listed):
            out.append(dotted)
    return out


def _by_name(doc: Dict[str, Any]) -> Dict[str, Any]:
    """``doc`` with its camera list as a mapping by name (compared camera by camera)."""
    return dict(doc, cameras={c["name"]: c for c in doc["cameras"]})


def _leaves(d: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Tuple[Any, ...], Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, path + (k,))
    else:  # lists (cameras, zones, polygons) compare whole
        yield path, d


def _get(d: Any, path: Tuple[Any, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _set(d: Dict[str, Any], path: Tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _deepcopy(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def check(new: cfgmod.Config, running: cfgmod.Config) -> List[str]:
    """The start-up checks on a new config, and its model as named when that changed (the
    model store may be running another one now, but the next start will need it)."""
    problems = preflight.check(new)
    if new.model != running.model:
        problems += [p for p in preflight.check_configured_model(new) if p not in problems]
    return problems


class Ticket:
    """One coalesced reload that one or more requests wait for."""

    def __init__(self, why: str):
        self.why = why
        self.report: Optional[Report] = None
        self._done = threading.Event()
        self._callbacks: List[Callable[[Report], None]] = []
        self._lock = threading.Lock()

    def wait(self, timeout: Optional[float] = None) -> Optional[Report]:
        """The report, or None when the reload has not ended within ``timeout``."""
        self._done.wait(timeout)
        return self.report

    def on_done(self, fn: Callable[[Report], None]) -> None:
        """Call ``fn(report)`` when the reload ends (at once when it has)."""
        with self._lock:
            if self.report is None:
                self._callbacks.append(fn)
                return
        fn(self.report)

    def resolve(self, report: Report) -> None:
        with self._lock:
            self.report = report
            callbacks, self._callbacks = self._callbacks, []
        self._done.set()
        for fn in callbacks:
            try:
                fn(report)
            except Exception:  # a late reply that cannot be sent must not stop reloads
                log.exception("config reload: reporting the result failed")


class Reloader:
    """Runs reloads one at a time on a worker thread: load and check the file, then apply on
    the inference loop.

    ``apply(plan)`` runs the plan on the inference thread and returns when done (it raises
    to reject, e.g. tracker parameters the Tracker refuses); ``current()`` is the running config.
    :meth:`request` never blocks: requests that arrive before the next reload starts share it
    (a burst of SIGHUPs within ``quiet_s`` of each other, up to ``max_delay_s``, is one reload).
    """

    def __init__(self, path: str, current: Callable[[], cfgmod.Config],
                 apply: Callable[[ReloadPlan], None], supervisor: Any = None,
                 quiet_s: float = QUIET_S, max_delay_s: float = MAX_DELAY_S):
        self.path = path
        self._current = current
        self._apply = apply
        self._supervisor = supervisor
        self._quiet_s, self._max_delay_s = quiet_s, max_delay_s
        self._lock = threading.Lock()  # one reload at a time
        # re-entrant: request() runs in signal handlers, which may interrupt one another
        self._cv = threading.Condition(threading.RLock())
        self._pending: Optional[Ticket] = None
        self._first = self._last = 0.0
        self._worker: Optional[threading.Thread] = None
        self.reloads = 0  # reloads run, coalesced requests counted once

    def request(self, why: str = "SIGHUP") -> Ticket:
        """Ask for a reload (signal-safe, never waits for one in progress)."""
        with self._cv:
            now = time.monotonic()
            if self._pending is None:
                self._pending, self._first = Ticket(why), now
            self._last = now
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="reload", daemon=True)
                self._worker.start()
            self._cv.notify_all()
            return self._pending

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._pending is None:
                    self._cv.wait()
                while True:  # gather the burst
                    left = min(self._last + self._quiet_s,
                               self._first + self._max_delay_s) - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                ticket, self._pending = self._pending, None
            ticket.resolve(self.reload(ticket.why))

    def reload(self, why: str = "request") -> Report:
        """Reload now, on this thread; a report ``{ok, applied, needs_restart, errors}``
        (never raises)."""
        with self._lock:
            self.reloads += 1
            sup = self._supervisor
            if sup is not None:
                sup.reloading(self.path)
            report = self._reload(why)
            if sup is not None:
                sup.reloaded("config reloaded" if report["ok"] else "config reload rejected")
            return report

    def _reload(self, why: str) -> Report:
        report: Report = {"ok": False, "file": self.path, "applied": [], "needs_restart": [],
                          "errors": []}
        running = self._current()
        try:
            new = cfgmod.load(self.path)
            problems = check(new, running)
        except cfgmod.ConfigError as exc:
            problems = exc.problems
        if problems:
            report["errors"] = problems
            log.error("config reload (%s) rejected, the running config stays: %s", why,
                      "; ".join(problems))
            return report
        p = plan(running, new)
        report["needs_restart"] = p.needs_restart
        try:
            if p.changed:
                self._apply(p)
        except Exception as exc:  # e.g. a tracker parameter out of range
            report["errors"] = [f"{self.path}: {exc}"]
            log.error("config reload (%s) rejected, the running config stays: %s", why, exc)
            return report
        report.update(ok=True, applied=p.changed)
        log.info("config reloaded (%s): applied %s%s", why, ", ".join(p.changed) or "nothing",
                 f"; needs a restart, not applied: {', '.join(p.needs_restart)}"
                 if p.needs_restart else "")
        return report


Later = Callable[[Dict[str, Any]], Callable[[Report], None]]


def command(reloader: Reloader, later: Optional[Later] = None,
            wait_s: float = COMMAND_WAIT_S) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """The ``cmd/config.reload`` handler: the reload report (an error when rejected).

    It waits at most ``wait_s`` (the command thread must stay free for ``ping`` and the rest):
    a reload still running then is answered ``{"pending": true}`` and, with ``later``, its
    report is sent as a further reply when it ends (``later(request)`` returns the sender)."""

    def handle(request: Dict[str, Any]) -> Dict[str, Any]:
        ticket = reloader.request("cmd/config.reload")
        report = ticket.wait(wait_s)
        if report is None:
            if later is not None:
                ticket.on_done(later(request))
            return {"pending": True, "file": reloader.path,
                    "message": "a reload is in progress; its report follows on the reply "
                               "topic and in the log"}
        if not report["ok"]:
            raise ValueError("config reload rejected: " + "; ".join(report["errors"]))
        return report

    return handle


def mqtt_later(mqtt: Any, name: str = "config.reload") -> Later:
    """``later`` for :func:`command` on the agent's MQTT client: the report as a further reply
    to the same request (its MQTT 5 response topic, else ``cmd/<name>/reply``)."""
    from edge_agent.events.event import iso_utc

    def later(request: Dict[str, Any]) -> Callable[[Report], None]:
        route = mqtt.reply_route()  # the request being handled now

        def send(report: Report) -> None:
            reply: Dict[str, Any] = {"request_id": request.get("request_id"), "command": name,
                                     "ok": bool(report["ok"]), "ts": iso_utc(time.time())}
            if report["ok"]:
                reply["result"] = report
            else:
                reply["error"] = {"code": "bad_request", "message": "config reload rejected: "
                                  + "; ".join(report["errors"])}
            mqtt.publish_reply(name, reply, route)

        return send

    return later
