"""The daemon: wires capture -> inference -> tracker -> event rules -> outbox and sinks.

Threads (design section 3): one capture reader per camera (newest frame only), one inference
loop (``Pipeline.run``; it owns the engine), an OCR worker for plate text, and the MQTT client's
own threads. This is the only module that imports more than one stage.

``edge-agent run --config FILE`` runs :class:`Pipeline` until SIGTERM/SIGINT, then stops capture,
processes the frames already read, sends ``end`` for everything open, flushes the sinks and the
outbox and exits 0. ``edge-agent track -i VIDEO`` runs the same pipeline once over a file and
writes an annotated video.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from edge_agent import __version__, logsetup, preflight
from edge_agent import config as cfgmod
from edge_agent.capture import CaptureError, CaptureGroup, Frame
from edge_agent.events import (
    CameraEvents,
    ConsoleSink,
    Emission,
    EngineInfo,
    EventFactory,
    FrameContext,
    HeadTracks,
    JsonlSink,
    SnapshotStore,
)
from edge_agent.events.ocr import load_reader
from edge_agent.tracking import Tracker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT = 0, 1, 2

# Score thresholds of the tracker for detectors whose scores are calibrated 0..1 probabilities
# (objectness x class, as YOLOX and our multi-head model give): ByteTrack's settings for YOLOX.
# The Tracker's own defaults are tuned on MOT15's public detections, whose scores sit higher
# (new_track_thresh 0.85 would start almost no track from YOLOX-nano). The config's `tracker:`
# section overrides any of these.
PIPELINE_TRACKER_DEFAULTS: Dict[str, float] = {
    "high_thresh": 0.5, "low_thresh": 0.1, "new_track_thresh": 0.6,
}


class SeqCounter:
    """In-memory ``seq`` for one-shot runs (``track``) that have no state directory.

    Same ``append(event) -> seq`` contract as the durable outbox; nothing is persisted.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._lock = threading.Lock()

    def append(self, event: Dict[str, Any]) -> int:
        with self._lock:
            self._seq += 1
            event["seq"] = self._seq
            return self._seq

    def ack(self, seqs) -> int:
        return 0

    def close(self) -> None:
        pass


class Latency:
    """Recent samples (ms) of one latency; p50/p95/max over the last ``n``."""

    def __init__(self, n: int = 300):
        self.samples: Deque[float] = collections.deque(maxlen=n)

    def add(self, ms: float) -> None:
        self.samples.append(ms)

    def summary(self) -> Dict[str, Optional[float]]:
        if not self.samples:
            return {"p50_ms": None, "p95_ms": None, "max_ms": None}
        a = np.fromiter(self.samples, float)
        return {"p50_ms": round(float(np.percentile(a, 50)), 2),
                "p95_ms": round(float(np.percentile(a, 95)), 2), "max_ms": round(float(a.max()), 2)}


@dataclass
class CameraState:
    """Per-camera pipeline state owned by the inference thread."""

    cfg: cfgmod.CameraConfig
    trackers: Dict[str, Tracker]
    events: CameraEvents
    processed: int = 0
    detected: int = 0
    last_processed_t: float = 0.0
    closed: bool = False
    last_frame: Optional[Frame] = None
    last_ctx: Optional[FrameContext] = None
    e2e: Latency = field(default_factory=Latency)
    fps: float = 0.0  # EMA of processed frames/s


FrameHook = Callable[[Frame, Dict[str, HeadTracks], CameraState], None]


class Pipeline:
    """Capture -> inference -> tracking -> events -> outbox/sinks, for any number of cameras.

    ``outbox`` is anything with ``append(event) -> seq`` and ``ack(seqs)`` (the durable MQTT
    outbox in the daemon). ``sinks`` have ``write(event)`` and ``close()``. When ``mqtt`` is None
    rows are acknowledged as soon as the sinks wrote them, so the outbox does not fill up.
    """

    def __init__(self, cfg: cfgmod.Config, engine, outbox, sinks: List[Any],
                 snapshots: Optional[SnapshotStore] = None, mqtt=None,
                 on_frame: Optional[FrameHook] = None, notifier=None,
                 capture_kw: Optional[Dict[str, Any]] = None, observer=None):
        if not cfg.cameras:
            raise ValueError("no cameras configured (add at least one under `cameras:`)")
        self.cfg = cfg
        self.engine = engine
        self.outbox = outbox
        self.sinks = sinks
        self.snapshots = snapshots
        self.mqtt = mqtt
        self.on_frame = on_frame
        self.notifier = notifier  # its watchdog() is called once per loop iteration
        self.observer = observer  # latencies and frame times (the exporter's Observations)
        self.stop_event = threading.Event()
        self.capture = CaptureGroup(cfg.cameras, **(capture_kw or {}))
        self.engine_info = _engine_info(engine.manifest)
        self.heads: Dict[str, List[str]] = _heads(engine.manifest)
        self.factory = EventFactory(cfg.device_id, self.engine_info)
        self._ocr: Optional[Any] = None
        self._ocr_status = "ocr_disabled"
        self._ocr_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ocr")
        self._calls: queue.Queue[tuple] = queue.Queue()
        self._calls_lock = threading.Lock()  # a call is either queued before `finished` or fails
        self.cams: Dict[str, CameraState] = {}
        self._build_cameras()
        self._order = list(self.cams)
        self._rr = 0
        self._pub_lock = threading.Lock()
        self.infer_ms = Latency()
        self.batch_sizes: Deque[int] = collections.deque(maxlen=300)
        self.counters: Dict[str, int] = collections.defaultdict(int)
        self.started_at = time.time()
        self.finished = threading.Event()
        self.stats_log_interval_s = 60.0
        self.drain = True  # on stop, process frames already read (track --max-frames: False)

    def _build_cameras(self) -> None:
        """(Re)create each camera's trackers and rules for the current heads."""
        cfg = self.cfg
        if cfg.events.plate.enabled and cfg.events.plate.ocr and "plate" in self.heads \
                and self._ocr is None:
            self._ocr, self._ocr_status = load_reader()
        params = tracker_params(cfg)
        for cam in cfg.cameras:
            trackers = {h: Tracker(**params) for h in self.heads}
            ev = CameraEvents(cam, cfg.events, self.factory, self.heads, self._ocr,
                              self._ocr_status)
            old = self.cams.get(cam.name)
            st = CameraState(cam, trackers, ev)
            if old is not None:  # counters and the last frame survive an engine swap
                st.processed, st.detected, st.closed = old.processed, old.detected, old.closed
                st.last_processed_t, st.fps, st.e2e = old.last_processed_t, old.fps, old.e2e
                st.last_frame, st.last_ctx = old.last_frame, old.last_ctx
            self.cams[cam.name] = st

    # --- between batches -------------------------------------------------------------------

    def run_in_loop(self, fn: Callable[[Pipeline], Any]) -> concurrent.futures.Future:
        """Run ``fn(pipeline)`` on the inference thread between two batches; returns a Future.

        This is how an engine swap (remote update) or a health check reaches the thread that
        owns the engine. After the pipeline stopped the Future fails with RuntimeError.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._calls_lock:
            if self.finished.is_set():
                fut.set_exception(RuntimeError("the pipeline has stopped"))
                return fut
            self._calls.put((fn, fut))
        self.capture.new_frame.set()  # wake the loop if it waits for frames
        return fut

    def _run_calls(self, fail: bool = False) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if fail:
                fut.set_exception(RuntimeError("the pipeline has stopped"))
                continue
            try:
                fut.set_result(fn(self))
            except BaseException as exc:
                fut.set_exception(exc)

    def swap_engine(self, engine) -> Any:
        """Use ``engine`` from the next batch on; returns the old engine (the caller closes it).

        Call on the inference thread (through :meth:`run_in_loop`). With the same heads the
        trackers carry on (track IDs stay); with other heads every open event is ended
        (reason ``engine_swap``) and trackers and rules are rebuilt.
        """
        m = engine.manifest
        heads = _heads(m)
        old = self.engine
        if heads != self.heads:
            for st in self.cams.values():  # these end events still name the old engine
                if st.last_ctx is not None and not st.closed:
                    self.dispatch(st.events.close(self._now_ctx(st.last_ctx), "engine_swap"))
            self.heads = heads
            self._build_cameras()  # the rules read factory.engine per event, not now
        self.engine = engine
        self.engine_info = self.factory.engine = _engine_info(m)
        log.info("engine swapped: %s %s -> %s %s", old.manifest.name, old.manifest.version,
                 m.name, m.version)
        return old

    def reconfigure(self, cfg: cfgmod.Config, cameras: List[str], tracker: bool,
                    events: bool) -> None:
        """Live reload (on the inference thread, via :meth:`run_in_loop`): new rules, zones,
        pacing and tracker parameters; capture keeps running. A camera whose rules or tracks
        are rebuilt ends its open events first (reason ``config_reload``)."""
        params = tracker_params(cfg)
        if tracker:
            Tracker(**params)  # refuse bad parameters before anything changed
        cams = {c.name: c for c in cfg.cameras}
        for name, st in self.cams.items():
            zones_changed = name in cameras and st.cfg.zones != cams[name].zones
            st.cfg = cams[name]  # detect_every, fps_limit: read per frame, nothing to rebuild
            if not (events or tracker or zones_changed):
                continue
            if st.last_ctx is not None and not st.closed:
                self.dispatch(st.events.close(self._now_ctx(st.last_ctx), "config_reload"))
            st.events = CameraEvents(st.cfg, cfg.events, self.factory, self.heads, self._ocr,
                                     self._ocr_status)
            if tracker:
                for tr in st.trackers.values():
                    tr.reconfigure(**params)  # IDs keep counting
        self.cfg = cfg

    @staticmethod
    def _now_ctx(ctx: FrameContext) -> FrameContext:
        return FrameContext(ctx.camera, ctx.frame, ctx.media_s, time.time(), ctx.width,
                            ctx.height, ctx.image)

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (signal-safe: only sets an event)."""
        self.stop_event.set()

    def run(self) -> None:
        """Run until ``stop()`` or until every camera has ended; then drain and close."""
        self.capture.start()
        next_log = time.monotonic() + self.stats_log_interval_s
        try:
            while not self.stop_event.is_set():
                self._run_calls()
                if not self._step():
                    if self.capture.all_done():
                        log.info("all cameras ended")
                        break
                self._close_ended_cameras()
                if self.notifier is not None:
                    self.notifier.watchdog()
                if time.monotonic() >= next_log:  # a heartbeat in the journal, MQTT or not
                    next_log = time.monotonic() + self.stats_log_interval_s
                    log.info("stats: %s", self._stats_line())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.capture.stop()
            try:
                self._drain()
            except Exception:  # e.g. the engine broke (why run() ends): still end and flush
                log.exception("processing the frames left at stop failed")
            for st in self.cams.values():
                self._close_camera(st, "agent_stop")
            self._ocr_pool.shutdown(wait=True)  # pending plate reads publish their end events
            for s in self.sinks:
                try:
                    s.close()
                except Exception:
                    log.exception("closing sink %s failed", getattr(s, "name", s))
        finally:
            with self._calls_lock:
                self.finished.set()
            self._run_calls(fail=True)  # no caller waits forever on a Future

    def _drain(self) -> None:
        """Process the frames already read, before the final `end` events."""
        while self.drain:
            frames = self.capture.take_all()
            if not frames:
                break
            mb = self.engine.max_batch
            for i in range(0, len(frames), mb):
                self._process(frames[i:i + mb])

    # --- the loop --------------------------------------------------------------------------

    def _step(self) -> bool:
        """Take and process one batch; False when there was nothing to do (it waited)."""
        self.capture.new_frame.clear()
        frames = self._collect()
        if not frames:
            self.capture.new_frame.wait(0.05)
            return False
        self._process(frames)
        return True

    def _collect(self) -> List[Frame]:
        """Newest frame of each camera that is due (fps limit), round-robin, up to max batch."""
        now = time.monotonic()
        out: List[Frame] = []
        n = len(self._order)
        for k in range(n):
            name = self._order[(self._rr + k) % n]
            st = self.cams[name]
            limit = st.cfg.fps_limit
            if limit > 0 and now - st.last_processed_t < 1.0 / limit:
                continue  # not due: a live reader replaces (and counts) the frame meanwhile
            f = self.capture.readers[name].take()
            if f is not None:
                out.append(f)
                if len(out) >= self.engine.max_batch:
                    self._rr = (self._rr + k + 1) % n  # the next batch starts after us
                    break
        return out

    def _process(self, frames: List[Frame]) -> None:
        det_idx = [i for i, f in enumerate(frames)
                   if self.cams[f.camera].processed % self.cams[f.camera].cfg.detect_every == 0]
        dets: List[Optional[Dict[str, np.ndarray]]] = [None] * len(frames)
        if det_idx:
            t0 = time.monotonic()
            try:
                res = self.engine.infer([frames[i].image for i in det_idx])
                for j, i in enumerate(det_idx):
                    dets[i] = res.detections[j]
                dt = time.monotonic() - t0
                self.infer_ms.add(dt * 1000.0)
                if self.observer is not None:
                    self.observer.inference(dt)
                self.batch_sizes.append(len(det_idx))
            except ValueError as exc:  # bad detector output: predict only, keep running
                self.counters["inference_errors"] += 1
                log.error("inference failed on %d frame(s): %s", len(det_idx), exc)
        for f, d in zip(frames, dets):
            try:
                self._track_and_emit(f, d)
            except Exception:  # one camera's bad frame must not stop the others
                self.counters["frame_errors"] += 1
                log.exception("camera %s: frame %d failed", f.camera, f.index)

    def _track_and_emit(self, f: Frame, dets: Optional[Dict[str, np.ndarray]]) -> None:
        st = self.cams[f.camera]
        tracks: Dict[str, HeadTracks] = {}
        t0 = time.monotonic()
        for head, tr in st.trackers.items():
            d = None if dets is None else dets.get(head)
            if dets is not None and d is None:
                d = np.zeros((0, 6), np.float32)  # detected, nothing found: not predict-only
            active = tr.update(d)
            tracks[head] = HeadTracks(active, tr.lost(), self.heads[head])
        if self.observer is not None:
            self.observer.tracker(time.monotonic() - t0)
        h, w = f.image.shape[:2]
        ctx = FrameContext(f.camera, f.index, f.media_s, f.wall, w, h, f.image)
        emissions = st.events.update(ctx, tracks)
        now = time.monotonic()
        if st.last_processed_t:
            dt = now - st.last_processed_t
            if dt > 0:
                st.fps = 1.0 / dt if st.fps == 0 else 0.9 * st.fps + 0.1 / dt
        st.last_processed_t = now
        st.processed += 1
        st.detected += dets is not None
        st.last_frame, st.last_ctx = f, ctx
        st.e2e.add((now - f.t_read) * 1000.0)
        if self.observer is not None:
            self.observer.frame(f.camera, now - f.t_read, now)
        self.dispatch(emissions)
        if self.on_frame is not None:
            self.on_frame(f, tracks, st)

    def _close_ended_cameras(self) -> None:
        for name, st in self.cams.items():
            if not st.closed and self.capture.readers[name].exhausted():
                self._close_camera(st, "camera_ended")

    def _close_camera(self, st: CameraState, reason: str) -> None:
        if st.closed:
            return
        st.closed = True
        ctx = st.last_ctx
        if ctx is None:
            return  # nothing was ever processed, so nothing is open
        self.dispatch(st.events.close(self._now_ctx(ctx), reason))

    # --- events ----------------------------------------------------------------------------

    def dispatch(self, emissions: List[Emission]) -> None:
        """Send events: slow ones (plate OCR) through the OCR worker, the rest now."""
        for em in emissions:
            if em.finish is not None:
                self._ocr_pool.submit(self._finish_and_publish, em)
            else:
                self._publish(em)

    def _finish_and_publish(self, em: Emission) -> None:
        try:
            em.finish()
        except Exception:
            log.exception("plate OCR failed; event sent without text")
        self._publish(em)

    def _publish(self, em: Emission) -> None:
        ev = em.event
        with self._pub_lock:  # one order for seq, file and console
            jpeg = None
            if em.snapshot is not None and self.snapshots is not None:
                try:
                    ev["snapshot"], jpeg = self.snapshots.save(ev["event_id"], em.snapshot)
                except (OSError, ValueError) as exc:
                    log.warning("snapshot of event %s not saved: %s", ev["event_id"], exc)
            try:
                seq = self.outbox.append(ev)
            except ValueError as exc:
                self.counters["events_rejected"] += 1
                log.error("event %s rejected by the outbox: %s", ev.get("event_id"), exc)
                return
            self.counters[f"events_{ev['type']}"] += 1
            for s in self.sinks:
                try:
                    s.write(ev)
                except Exception as exc:
                    self.counters["sink_errors"] += 1
                    log.error("sink %s failed: %s", getattr(s, "name", s), exc)
            if self.mqtt is None:
                self.outbox.ack([seq])  # no publisher: the sinks were the delivery
            elif jpeg is not None:
                try:
                    self.mqtt.publish_snapshot(ev["event_id"], jpeg)
                except Exception as exc:
                    log.warning("snapshot publish failed: %s", exc)

    # --- introspection ---------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Metrics: per camera frames in/processed/dropped, fps, latencies; inference latency."""
        cams = {}
        cap = self.capture.stats()
        for name, st in self.cams.items():
            c = cap[name]
            cams[name] = {
                "state": c["state"], "frames_in": c["frames_in"], "processed": st.processed,
                "detected": st.detected, "dropped": c["dropped"], "reconnects": c["reconnects"],
                "fps": round(st.fps, 2), "e2e_latency": st.e2e.summary(),
                "zone_counts": st.events.zone_counts(), "last_error": c["last_error"],
            }
        sizes = list(self.batch_sizes)
        return {
            "cameras": cams,
            "inference": dict(self.infer_ms.summary(),
                              mean_batch=round(sum(sizes) / len(sizes), 2) if sizes else None),
            "counters": dict(self.counters),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def _stats_line(self) -> str:
        st = self.stats()
        cams = ", ".join(
            f"{n} {c['state']} {c['fps']} fps in={c['frames_in']} done={c['processed']} "
            f"drop={c['dropped']} e2e_p50={c['e2e_latency']['p50_ms']} ms"
            for n, c in st["cameras"].items())
        return f"{cams}; infer p50 {st['inference']['p50_ms']} ms; {st['counters']}"

    def state(self) -> Dict[str, Any]:
        """The retained ``state`` document: versions, engine, cameras and their fps."""
        return {
            "agent_version": __version__,
            "engine": {"name": self.engine_info.name, "version": self.engine_info.version,
                       "sha256": self.engine_info.sha256,
                       "backend": getattr(self.engine, "backend_name", "?")},
            "cameras": {n: {"state": self.capture.readers[n].state, "fps": round(st.fps, 2)}
                        for n, st in self.cams.items()},
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def snapshot_command(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """MQTT ``cmd/snapshot``: publish the newest processed frame of ``camera`` as a JPEG."""
        from edge_agent.events.snapshots import encode_jpeg

        name = request.get("camera")
        if name is None and len(self.cams) == 1:
            name = next(iter(self.cams))
        if not isinstance(name, str) or name not in self.cams:
            raise ValueError(f"unknown camera {name!r}; known: {', '.join(self.cams)}")
        f = self.cams[name].last_frame
        if f is None:
            raise ValueError(f"camera {name} has no frame yet")
        sc = self.cfg.events.snapshots
        jpeg = encode_jpeg(f.image, sc.max_dim, sc.jpeg_quality)
        snap_id = f"{name}-{f.index}-{int(time.time() * 1000)}"
        published = self.mqtt.publish_snapshot(snap_id, jpeg) if self.mqtt is not None else False
        return {"camera": name, "frame": f.index, "snapshot_id": snap_id, "bytes": len(jpeg),
                "published": bool(published)}


def tracker_params(cfg: cfgmod.Config) -> Dict[str, Any]:
    """The Tracker parameters of a config: our defaults for calibrated scores + ``tracker:``."""
    params: Dict[str, Any] = dict(PIPELINE_TRACKER_DEFAULTS)
    params.update(cfg.tracker.model_extra or {})
    if "low_thresh" not in (cfg.tracker.model_extra or {}):
        # a config that lowers only high_thresh below our low_thresh must still be valid
        params["low_thresh"] = min(params["low_thresh"], params["high_thresh"])
    return params


def _engine_info(m) -> EngineInfo:
    return EngineInfo(str(m.name), str(m.version), str(m.sha256))


def _heads(m) -> Dict[str, List[str]]:
    return {h: list(c) for h, c in m.heads.items()}


# --- `edge-agent run` --------------------------------------------------------------------------


def _resolve_in(base: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else base / path


def cmd_run(args: argparse.Namespace) -> int:
    """`edge-agent run --config FILE`: the daemon (exit 0 after SIGTERM/SIGINT)."""
    try:
        cfg = preflight.load_checked(args.config)  # what `config validate` checks
    except cfgmod.ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logsetup.setup(getattr(args, "log_level", None) or cfg.log.level, cfg.log.format,
                   cfgmod.secrets(cfg))
    if not cfg.cameras:
        log.error("%s: no cameras configured; add at least one under `cameras:`", args.config)
        return EXIT_BAD_INPUT
    from edge_agent.capture import check_sources
    from edge_agent.inference import ModelError, open_engine
    from edge_agent.mqtt.outbox import Outbox
    from edge_agent.sdnotify import Notifier
    from edge_agent.supervise import Supervisor

    try:
        check_sources(cfg.cameras)
    except CaptureError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    state_dir = Path(cfg.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("state_dir %s is not writable: %s", state_dir, exc)
        return EXIT_BAD_INPUT
    sup = Supervisor(Notifier(), status_interval_s=5.0)
    try:
        with sup.extend_start("loading the engine"):  # a TensorRT build takes minutes
            engine = open_engine(cfg.model)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        log.error("model: %s", exc)
        return EXIT_BAD_INPUT
    ob_cfg = cfg.mqtt.outbox
    # Always the durable outbox: it owns the persisted per-device seq, MQTT or not.
    try:
        outbox = Outbox(_resolve_in(state_dir, ob_cfg.path), max_rows=ob_cfg.max_rows,
                        max_bytes=int(ob_cfg.max_mb * (1 << 20)),
                        commit_interval_ms=ob_cfg.commit_interval_ms)
    except (ValueError, OSError) as exc:
        log.error("outbox: %s", exc)
        engine.close()
        return EXIT_BAD_INPUT
    sinks: List[Any] = []

    def give_up(what: str, exc: Exception) -> int:
        log.error("%s: %s", what, exc)
        for s in sinks:
            s.close()
        outbox.close()
        engine.close()
        return EXIT_BAD_INPUT

    snaps = None
    sc = cfg.events.snapshots
    try:
        if cfg.events.sinks.jsonl:
            sinks.append(JsonlSink(_resolve_in(state_dir, cfg.events.sinks.jsonl)))
        if cfg.events.sinks.console:
            sinks.append(ConsoleSink())
        if sc.enabled:
            snaps = SnapshotStore(_resolve_in(state_dir, sc.dir),
                                  int(sc.max_total_mb * (1 << 20)), sc.max_dim, sc.jpeg_quality)
    except (OSError, ValueError) as exc:  # e.g. a path that is a directory, or not writable
        return give_up("events", exc)
    try:
        pipe = Pipeline(cfg, engine, outbox, sinks, snaps, notifier=sup)
    except (TypeError, ValueError) as exc:  # e.g. an unknown or out-of-range tracker parameter
        return give_up(args.config, exc)
    mqtt = None
    if cfg.mqtt.enabled:
        from edge_agent.mqtt.client import AgentMqtt

        try:
            mqtt = AgentMqtt(cfg.mqtt, cfg.device_id, outbox, state_fn=pipe.state,
                             stats_fn=pipe.stats, config_fn=lambda: cfgmod.effective(pipe.cfg),
                             cameras={c.name: [z.name for z in pipe.cams[c.name].events.zones]
                                      for c in cfg.cameras})
        except ValueError as exc:  # e.g. a TLS file that does not exist
            return give_up("mqtt", exc)
        mqtt.register_command("snapshot", pipe.snapshot_command)
        pipe.mqtt = mqtt
    from edge_agent import reload

    reloader = reload.Reloader(args.config, lambda: pipe.cfg, _applier(pipe), sup)
    if mqtt is not None:
        mqtt.register_command("config.reload", reload.command(reloader))
        mqtt.start()
    exporter = _start_exporter(cfg, pipe, outbox, mqtt)
    sup.watch(lambda: _cameras_settled(pipe), lambda: _status(pipe, mqtt))

    def on_signal(signum, _frame):
        log.info("received %s: stopping", signal.Signals(signum).name)
        pipe.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reloader.request("SIGHUP"))
    log.info("edge-agent %s: %d camera(s), engine %s %s on %s", __version__, len(cfg.cameras),
             pipe.engine_info.name, pipe.engine_info.version, engine.backend_name)
    rc = EXIT_OK
    try:
        pipe.run()
    except CaptureError as exc:
        log.error("%s", exc)
        rc = EXIT_BAD_INPUT
    except Exception as exc:  # e.g. the engine failing at run time: logged; systemd restarts us
        log.error("pipeline failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        rc = EXIT_RUNTIME
    finally:
        sup.stopping()
        if exporter is not None:
            exporter.stop()
        if mqtt is not None:
            mqtt.stop()
        outbox.close()
        engine.close()
        for s, h in old.items():
            signal.signal(s, h)
    st = pipe.stats()
    log.info("stopped: %s", {n: (c["processed"], c["dropped"]) for n, c in st["cameras"].items()})
    failed = [n for n, r in pipe.capture.readers.items() if r.state == "failed"]
    if rc == EXIT_OK and failed and len(failed) == len(pipe.cams):
        log.error("every camera failed: %s", ", ".join(failed))
        return EXIT_RUNTIME
    return rc


def _applier(pipe: Pipeline):
    """A reload plan applied on the inference thread (waits; raises what reconfigure raised)."""
    def apply(p) -> None:
        fut = pipe.run_in_loop(lambda pl: pl.reconfigure(p.config, p.cameras, p.tracker,
                                                           p.events))
        fut.result(timeout=30)
    return apply


def _cameras_settled(pipe: Pipeline) -> bool:
    """Every camera delivered a processed frame or reported an error (READY=1 may go)."""
    readers = pipe.capture.readers
    return all(st.processed > 0 or readers[n].last_error is not None
               or readers[n].state in ("failed", "ended") for n, st in pipe.cams.items())


def _status(pipe: Pipeline, mqtt) -> str:
    from edge_agent.supervise import status_line

    e = pipe.engine_info
    engine = f"{e.name} {e.version} ({getattr(pipe.engine, 'backend_name', '?')})"
    state = "off" if mqtt is None else ("connected" if mqtt.connected else "disconnected")
    return status_line(pipe.stats(), engine, state)


def _start_exporter(cfg: cfgmod.Config, pipe: Pipeline, outbox, mqtt):
    """The /metrics and /healthz server, fed by the pipeline; None when off or it cannot bind
    (logged: the cameras matter more than the metrics)."""
    mc = cfg.metrics
    if not mc.enabled:
        return None
    from edge_agent.exporter import Exporter, Sources

    def engine() -> Dict[str, str]:
        e = pipe.engine_info
        return {"name": e.name, "version": e.version, "sha256": e.sha256,
                "backend": getattr(pipe.engine, "backend_name", "?")}

    src = Sources(cameras=list(pipe.cams), stats=pipe.stats, engine=engine,
                  outbox_rows=lambda: len(outbox), outbox_path=outbox.path,
                  mqtt_connected=(lambda: mqtt.connected) if mqtt is not None else None)
    ex = Exporter(src, mc.max_frame_age_s)
    try:
        ex.start(mc.host, mc.port)
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%d (%s); running without /metrics and /healthz",
                  mc.host, mc.port, exc.strerror or exc)
        return None
    pipe.observer = ex.obs
    pipe.sinks.append(ex.sink())
    return ex


# --- `edge-agent track` ------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar with fps on stderr (only when it is a terminal or forced)."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        # A terminal gets a redrawn bar twice a second; a log file a line every 10 s.
        if not self.enabled or (not force and now - self._last < (0.5 if self.tty else 10.0)):
            return
        self._last = now
        fps = done / max(1e-6, now - self.t0)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {done}/{self.total} {fps:5.1f} fps"
        else:
            text = f"{done} frames {fps:5.1f} fps"
        sys.stderr.write(f"\r{text}" if self.tty else f"{text}\n")
        sys.stderr.flush()

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            if self.tty:
                sys.stderr.write("\n")


def track_config(args: argparse.Namespace) -> cfgmod.Config:
    """The config of a `track` run: file (or defaults) + the command line's overrides."""
    cfg = cfgmod.load(args.config) if args.config else cfgmod.load_text("", "<defaults>")
    data = cfg.model_dump()
    if args.model:
        data["model"]["path"] = args.model
        data["model"]["manifest"] = args.manifest
    elif args.manifest:
        data["model"]["manifest"] = args.manifest
    if not 0 <= args.confidence <= 1:
        raise cfgmod.ConfigError([f"-c/--confidence must be in 0..1, got {args.confidence}"])
    data["model"]["score_threshold"] = args.confidence
    base = data["cameras"][0] if data["cameras"] else {}
    cam = {"name": base.get("name", "input"), "source": args.input, "type": "file",
           "zones": base.get("zones", []), "detect_every": base.get("detect_every", 1)}
    data["cameras"] = [cam]
    data["mqtt"]["enabled"] = False
    data["events"]["sinks"] = {"console": False, "jsonl": None}
    data["events"]["snapshots"]["enabled"] = False
    if data["tracker"] is None:
        data["tracker"] = {}
    return cfgmod.Config.model_validate(data)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


class _VideoOut:
    """Annotated output video (mp4v), opened lazily at the first frame's size."""

    def __init__(self, path: str, fps: float):
        self.path = path
        self.fps = fps if fps > 0 else 25.0
        self.writer = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (w, h))
            if not self.writer.isOpened():
                raise ValueError(f"cannot write video {self.path} (unsupported extension?)")
        self.writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def cmd_track(args: argparse.Namespace) -> int:
    """`edge-agent track -i VIDEO`: detect, track and raise events over one file, headless."""
    logsetup.setup(getattr(args, "log_level", None) or "warning", "human")
    try:
        cfg = track_config(args)
    except cfgmod.ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not Path(args.input).is_file():
        print(f"error: input video not found: {args.input}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output and Path(args.output).suffix.lower() not in VIDEO_SUFFIXES:
        print(f"error: -o {args.output}: the output video must end in "
              f"{', '.join(VIDEO_SUFFIXES)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import cv2

    from edge_agent.events.overlay import draw
    from edge_agent.inference import ModelError, open_engine

    probe = cv2.VideoCapture(args.input, cv2.CAP_FFMPEG)
    if not probe.isOpened():
        print(f"error: cannot open video {args.input} (not a video, corrupt, or an unsupported "
              "codec)", file=sys.stderr)
        return EXIT_BAD_INPUT
    fps = probe.get(cv2.CAP_PROP_FPS)
    total = int(probe.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    probe.release()
    if args.max_frames and args.max_frames > 0:
        total = min(total, args.max_frames) if total else args.max_frames
    try:
        engine = open_engine(cfg.model)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        print(f"error: model: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        sinks: List[Any] = [JsonlSink(args.events, truncate=True) if args.events
                            else ConsoleSink()]
    except OSError as exc:  # e.g. a directory, or no permission
        print(f"error: --events {args.events}: cannot write it: {exc}", file=sys.stderr)
        engine.close()
        return EXIT_BAD_INPUT
    out = _VideoOut(args.output, fps) if args.output else None
    progress = _Progress(total, not args.no_progress)
    pipe: Optional[Pipeline] = None
    out_error: List[str] = []

    def on_frame(f: Frame, tracks: Dict[str, HeadTracks], st: CameraState) -> None:
        if out is not None:
            counts = st.events.zone_counts()
            draw(f.image, tracks, st.events.zones, {f"zone {k}": v for k, v in counts.items()},
                 footer=f"frame {f.index}")
            try:
                out.write(f.image)
            except (OSError, ValueError) as exc:  # it would fail on every frame: stop now
                out_error.append(str(exc))
                pipe.drain = False
                pipe.stop()
                return
        done = st.processed
        progress.update(done)
        if args.max_frames and done >= args.max_frames:
            pipe.drain = False  # exactly N frames
            pipe.stop()

    try:
        pipe = Pipeline(cfg, engine, SeqCounter(), sinks, on_frame=on_frame)
    except (TypeError, ValueError) as exc:  # e.g. an unknown or out-of-range tracker parameter
        print(f"error: {exc}", file=sys.stderr)
        engine.close()
        return EXIT_BAD_INPUT
    old = signal.signal(signal.SIGINT, lambda *_: pipe.stop())
    t0 = time.monotonic()
    try:
        pipe.run()
    finally:
        signal.signal(signal.SIGINT, old)
        if out is not None:
            out.close()
        engine.close()
    st = next(iter(pipe.cams.values()))
    elapsed = time.monotonic() - t0
    progress.close(st.processed)
    if out_error:
        print(f"error: -o {args.output}: {out_error[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    reader = next(iter(pipe.capture.readers.values()))
    if reader.state == "failed":
        print(f"error: {reader.last_error}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"{st.processed} frames in {elapsed:.1f} s ({st.processed / max(elapsed, 1e-6):.1f} "
          f"fps), {sum(v for k, v in pipe.counters.items() if k.startswith('events_'))} events"
          + (f", video -> {args.output}" if out is not None else ""), file=sys.stderr)
    return EXIT_OK
