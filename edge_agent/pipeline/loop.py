"""The inference loop: collect -> infer -> track -> rules, for any number of cameras.

One thread (``Pipeline.run``) owns the engine. Each pass it takes the oldest queued frame of every
due camera (round-robin, at most ``max_batch`` of them due for detection), runs one ``infer`` (only
for frames whose camera is on a ``detect_every`` frame), updates each camera's per-head trackers
and rules, and hands every event to the :class:`~edge_agent.outbox.delivery.EventDelivery`.
Calls from other threads (an engine swap, a health check) run between two batches through
:meth:`Pipeline.run_in_loop`.

Others read it through methods (:meth:`Pipeline.stats`, :meth:`~Pipeline.state`,
:meth:`~Pipeline.settled`, :meth:`~Pipeline.failed_cameras`, :meth:`~Pipeline.last_frame`), not
through its parts; nothing here publishes anything.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from edge_agent import __version__
from edge_agent import config as cfgmod
from edge_agent.capture import CaptureGroup, Frame
from edge_agent.clips import ClipStore
from edge_agent.clips.scale import to_record
from edge_agent.clips.service import ClipService
from edge_agent.common.interfaces import Engine, Notifier, Observer
from edge_agent.events import (
    CameraEvents,
    Emission,
    EngineInfo,
    EventFactory,
    FrameContext,
    HeadTracks,
)
from edge_agent.events.ocr import Reader, load_reader
from edge_agent.metrics import Latency, stats_line
from edge_agent.outbox.delivery import EventDelivery
from edge_agent.pipeline.detector import DetectorThread, Tiling, detect
from edge_agent.tracking import CAMERA_PARAMS, PARAMS, Tracker
from edge_agent.tracking.columns import DET_COLS

log = logging.getLogger(__name__)

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
    phase: int = 0  # place in config order: spreads the cameras' detections (Pipeline._detects)

    def carry_over(self, old: CameraState) -> None:
        """Keep the counters and the last frame of ``old`` (an engine swap rebuilt us)."""
        self.processed, self.detected, self.closed = old.processed, old.detected, old.closed
        self.last_processed_t, self.fps, self.e2e = old.last_processed_t, old.fps, old.e2e
        self.last_frame, self.last_ctx = old.last_frame, old.last_ctx

    def count_frame(self, f: Frame, ctx: FrameContext, detected: bool) -> float:
        """Processed-frame counters, fps (EMA) and end-to-end latency; returns the time."""
        now = time.monotonic()
        if self.last_processed_t:
            dt = now - self.last_processed_t
            if dt > 0:
                self.fps = 1.0 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
        self.last_processed_t = now
        self.processed += 1
        self.detected += detected
        self.last_frame, self.last_ctx = f, ctx
        self.e2e.add((now - f.t_read) * 1000.0)
        return now


FrameHook = Callable[[Frame, Dict[str, HeadTracks], CameraState], None]


def engine_info(engine: Engine) -> EngineInfo:
    m = engine.manifest
    return EngineInfo(str(m.name), str(m.version), str(m.sha256))


def engine_heads(engine: Engine) -> Dict[str, List[str]]:
    return {h: list(c) for h, c in engine.manifest.heads.items()}


class Pipeline:
    """Capture -> inference -> tracking -> rules -> delivery (module docstring).

    ``on_frame(frame, tracks, camera_state)`` runs after each processed frame (the ``track``
    command draws its video there). ``notifier.watchdog()`` is called every pass.
    ``observer`` (:class:`~edge_agent.common.interfaces.Observer`, the exporter's) gets
    ``inference(s)``, ``tracker(s)`` and ``frame(camera, e2e_s, now)`` as they happen.
    """

    def __init__(self, cfg: cfgmod.Config, engine: Engine, delivery: EventDelivery,
                 on_frame: Optional[FrameHook] = None, notifier: Optional[Notifier] = None,
                 capture_kw: Optional[Dict[str, Any]] = None,
                 observer: Optional[Observer] = None,
                 clip_store: Optional[ClipStore] = None):
        if not cfg.cameras:
            raise ValueError("no cameras configured (add at least one under `cameras:`)")
        self.cfg = cfg
        self.engine = engine
        self.delivery = delivery
        self.on_frame = on_frame
        self.notifier = notifier  # its watchdog() is called once per loop iteration
        self.observer = observer
        self.stop_event = threading.Event()
        self.capture = CaptureGroup(cfg.cameras, **(capture_kw or {}))
        self.engine_info = engine_info(engine)
        self.heads = engine_heads(engine)
        self.factory = EventFactory(cfg.device_id, self.engine_info)
        self.clips: Optional[ClipService] = None
        if clip_store is not None and cfg.events.clips.enabled:
            records = {c.name: url for c in cfg.cameras if (url := c.record_stream())}
            self.clips = ClipService(cfg.events.clips, clip_store, self.factory, delivery.deliver,
                                     records=records,
                                     rescale=[c.name for c in cfg.cameras if c.record])
        self._ocr: Optional[Reader] = None
        self._ocr_status = "ocr_disabled"
        self._calls: queue.Queue[tuple] = queue.Queue()
        self._calls_lock = threading.Lock()  # a call is either queued before `finished` or fails
        self.cams: Dict[str, CameraState] = {}
        self._build_cameras()
        self._order = list(self.cams)
        self._rr = 0
        self.detector = DetectorThread(self.capture.new_frame, workers=engine.parallel_calls)
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
        for i, cam in enumerate(cfg.cameras):
            # The source's own fps is known once it is open: _track re-times then.
            trackers = {h: Tracker(frame_rate=self._frame_rate(cam), **cfg.tracker.params_for(h))
                        for h in self.heads}
            ev = CameraEvents(cam, cfg.events, self.factory, self.heads, self._ocr,
                              self._ocr_status)
            st = CameraState(cam, trackers, ev, phase=i)
            old = self.cams.get(cam.name)
            if old is not None:
                st.carry_over(old)
            self.cams[cam.name] = st
        self.tiling = Tiling({c.name: c.tiles for c in cfg.cameras if c.tiles > 1},
                             {c.name: list(c.tile_heads) for c in cfg.cameras},
                             cfg.model.nms_iou)

    # --- what others read (any thread) -----------------------------------------------------

    def cameras(self) -> List[str]:
        """The camera names, in config order."""
        return list(self.cams)

    def camera_zones(self) -> Dict[str, List[str]]:
        """Each camera's zone names (its own and the default crowd zone)."""
        return {n: [z.name for z in st.events.zones] for n, st in self.cams.items()}

    def last_frame(self, camera: str) -> Optional[Frame]:
        """The newest processed frame of ``camera`` (None before its first); KeyError when there
        is no such camera."""
        return self.cams[camera].last_frame

    def stats(self) -> Dict[str, Any]:
        """Cameras, inference latency and counters: the pipeline's part of ``stats``."""
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
            "counters": {**self.counters, **self.delivery.counters},
        }

    def state(self) -> Dict[str, Any]:
        """Engine and cameras for the retained ``state`` document."""
        info = self.engine_info
        return {
            "agent_version": __version__,
            "engine": {"name": info.name, "version": info.version, "sha256": info.sha256,
                       "backend": getattr(self.engine, "backend_name", "?")},
            "cameras": {n: {"state": self.capture.readers[n].state, "fps": round(st.fps, 2)}
                        for n, st in self.cams.items()},
        }

    def settled(self) -> bool:
        """Every camera delivered a processed frame or reported an error (READY=1 may go)."""
        readers = self.capture.readers
        return all(st.processed > 0 or readers[n].last_error is not None
                   or readers[n].state in ("failed", "ended") for n, st in self.cams.items())

    def failed_cameras(self) -> List[str]:
        """The cameras whose reader gave up (state ``failed``)."""
        return [n for n, r in self.capture.readers.items() if r.state == "failed"]

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
        while not self._calls.empty() and self.detector.busy():
            self._finish_batch()  # a call may use or swap the engine: it must be idle
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

    def swap_engine(self, engine: Engine) -> Engine:
        """Use ``engine`` from the next batch on; returns the old engine (the caller closes it).

        Call on the inference thread (through :meth:`run_in_loop`). With the same heads the
        trackers carry on (track IDs stay); with other heads every open event is ended
        (reason ``engine_swap``) and trackers and rules are rebuilt.
        """
        heads = engine_heads(engine)
        old = self.engine
        if heads != self.heads:
            for st in self.cams.values():  # these end events still name the old engine
                self._close_camera(st, "engine_swap", keep_open=True)
            self.heads = heads
            self._build_cameras()  # the rules read factory.engine per event, not now
        self.engine = engine
        if engine.parallel_calls != self.detector.workers:  # idle: calls run between batches
            self.detector.close()
            self.detector = DetectorThread(self.capture.new_frame, workers=engine.parallel_calls)
        self.engine_info = self.factory.engine = engine_info(engine)
        m, om = engine.manifest, old.manifest
        log.info("engine swapped: %s %s -> %s %s", om.name, om.version, m.name, m.version)
        return old

    def reconfigure(self, cfg: cfgmod.Config, cameras: List[str], tracker: bool,
                    events: bool) -> None:
        """Live reload (on the inference thread, via :meth:`run_in_loop`): new rules, zones,
        pacing and tracker parameters; capture keeps running. A camera whose rules or tracks
        are rebuilt ends its open events first (reason ``config_reload``)."""
        if tracker:  # refuse bad parameters before anything changed
            for head in self.heads:
                Tracker(**cfg.tracker.params_for(head))
        cams = {c.name: c for c in cfg.cameras}
        for name, st in self.cams.items():
            zones_changed = name in cameras and st.cfg.zones != cams[name].zones
            st.cfg = cams[name]  # detect_every, fps_limit: read per frame, nothing to rebuild
            if not (events or tracker or zones_changed):
                continue
            self._close_camera(st, "config_reload", keep_open=True)
            st.events = CameraEvents(st.cfg, cfg.events, self.factory, self.heads, self._ocr,
                                     self._ocr_status)
            if tracker:
                for head, tr in st.trackers.items():  # IDs keep counting
                    camera = {k: tr.params[k] for k in CAMERA_PARAMS}
                    tr.reconfigure(**camera, **cfg.tracker.params_for(head))
        self.cfg = cfg

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
                if not self._step() and self.capture.all_done():
                    log.info("all cameras ended")
                    break
                self._close_ended_cameras()
                if self.notifier is not None:
                    self.notifier.watchdog()
                if time.monotonic() >= next_log:  # a heartbeat in the journal, MQTT or not
                    next_log = time.monotonic() + self.stats_log_interval_s
                    log.info("stats: %s", stats_line(self.stats()))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.capture.stop()
            try:
                while self.detector.busy():
                    if self.drain:
                        self._finish_batch()
                    else:  # wait for it, but its frames go unprocessed like the queued ones
                        self.detector.take()
                self._drain()
            except Exception:  # e.g. the engine broke (why run() ends): still end and flush
                log.exception("processing the frames left at stop failed")
            for st in self.cams.values():
                self._close_camera(st, "agent_stop")
            if self.clips is not None:  # its last clip events go out before the sinks close
                self.clips.close()
            self.delivery.close()  # pending plate reads deliver their end events first
        finally:
            self.detector.close()
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
        """Take and process one pass; False when there was nothing to do (it waited).

        Frames due for detection go to the detector thread as one batch; the pass's other
        frames are tracked meanwhile. A camera with a frame in the detector is not taken from
        until that frame is processed, so each camera's frames are processed in order.
        """
        self.capture.new_frame.clear()
        finished = self.detector.ready()
        while self.detector.ready():
            self._finish_batch()
        frames = self._collect(can_detect=not self.detector.full())
        if not frames:
            if finished:
                return True
            busy = self.detector.busy()
            self.capture.new_frame.wait(0.05)  # set by a new frame or the detector
            return busy
        det = [f for f in frames if self._detects(self.cams[f.camera])]
        if det:
            self.detector.submit(self.engine, det, self.tiling)
        for f in frames:
            if f.camera not in self.detector.waiting():
                self._process_one(f, None)
        return True

    def _finish_batch(self) -> None:
        """Take the detector's batch (waiting for it) and process its frames in order."""
        frames, fut = self.detector.take()
        try:
            res, dt = fut.result()
        except ValueError as exc:  # bad frames or detector output: predict only, keep running
            self.counters["inference_errors"] += 1
            log.error("inference failed on %d frame(s): %s", len(frames), exc)
            dets: List[Optional[Dict[str, np.ndarray]]] = [None] * len(frames)
        else:
            self._count_inference(dt, len(frames))
            dets = list(res.detections)
        for f, d in zip(frames, dets):
            self._process_one(f, d)

    def _collect(self, can_detect: bool = True) -> List[Frame]:
        """One frame (the oldest queued) of each camera that is due (fps limit), round-robin;
        at most ``max_batch`` of them due for the detector, none while ``can_detect`` is False
        (the detector is full), and none of a camera with a frame in the detector. Frames
        between detections only track, which is cheap, so every camera's queue moves on every
        pass; a camera whose detection did not fit waits for the next pass, which starts with
        it."""
        now = time.monotonic()
        out: List[Frame] = []
        n = len(self._order)
        detect, first_left = 0, None
        room = self.engine.max_batch if can_detect else 0
        waiting = self.detector.waiting()
        for k in range(n):
            name = self._order[(self._rr + k) % n]
            if name in waiting:
                continue
            st = self.cams[name]
            limit = st.cfg.fps_limit
            if limit > 0 and now - st.last_processed_t < 1.0 / limit:
                continue  # not due: a live reader's queue fills and drops its oldest meanwhile
            due = self._detects(st)
            reader = self.capture.readers[name]
            if due and detect >= room:
                if first_left is None and reader.queued():
                    first_left = (self._rr + k) % n
                continue
            # fps_limit thins the stream: its newest frame, not a backlog of stale ones
            f = reader.take(newest=limit > 0)
            if f is not None:
                out.append(f)
                detect += due
        if first_left is not None:
            self._rr = first_left
        return out

    def _detects(self, st: CameraState) -> bool:
        """The camera's next frame goes to the detector (``detect_every``).

        Every camera's first frame is detected. After it, camera i of n (config order) detects
        ``i * detect_every // n`` frames out of step with the first camera, so that n cameras
        that started together do not all wait for the detector on the same pass (with one
        camera: every Nth frame from its first).
        """
        every = st.cfg.detect_every
        return st.processed == 0 or \
            (st.processed + st.phase * every // len(self.cams)) % every == 0

    def _process(self, frames: List[Frame]) -> None:
        """Detect and process ``frames`` on this thread (the drain at stop)."""
        dets = self._infer(frames)
        for f, d in zip(frames, dets):
            self._process_one(f, d)

    def _process_one(self, f: Frame, dets: Optional[Dict[str, np.ndarray]]) -> None:
        try:
            self._process_frame(f, dets)
        except Exception:  # one camera's bad frame must not stop the others
            self.counters["frame_errors"] += 1
            log.exception("camera %s: frame %d failed", f.camera, f.index)

    def _count_inference(self, dt: float, frames: int) -> None:
        self.infer_ms.add(dt * 1000.0)
        if self.observer is not None:
            self.observer.inference(dt)
        self.batch_sizes.append(frames)

    def _infer(self, frames: List[Frame]) -> List[Optional[Dict[str, np.ndarray]]]:
        """Detections per frame; None for frames not due for detection (predict only)."""
        det_idx = [i for i, f in enumerate(frames) if self._detects(self.cams[f.camera])]
        dets: List[Optional[Dict[str, np.ndarray]]] = [None] * len(frames)
        if not det_idx:
            return dets
        t0 = time.monotonic()
        try:
            res = detect(self.engine, [frames[i] for i in det_idx], self.tiling)
            for j, i in enumerate(det_idx):
                dets[i] = res.detections[j]
            self._count_inference(time.monotonic() - t0, len(det_idx))
        except ValueError as exc:  # bad detector output: predict only, keep running
            self.counters["inference_errors"] += 1
            log.error("inference failed on %d frame(s): %s", len(det_idx), exc)
        return dets

    def _frame_rate(self, cam: cfgmod.CameraConfig) -> float:
        """Frames/s the camera's trackers are updated at: the source's fps (once open), capped
        by fps_limit; 30 while neither is known."""
        info = self.capture.readers[cam.name].info
        fps = info.fps if info is not None else 0.0
        limit = cam.fps_limit
        rate = min(fps, limit) if fps > 0 and limit > 0 else (fps or limit)
        spec = PARAMS["frame_rate"]
        return min(max(rate, spec.lo), spec.hi) if rate > 0 else spec.default

    def _retime_trackers(self, st: CameraState, f: Frame) -> None:
        """Trackers count time in frames: tell them the rate frames really come at, and the
        image size (coasted boxes are reported only inside it)."""
        rate = self._frame_rate(st.cfg)
        height, width = f.image.shape[:2]
        for tr in st.trackers.values():
            if tr.params["frame_rate"] != rate:
                tr.set_frame_rate(rate)
            if (tr.params["frame_width"], tr.params["frame_height"]) != (width, height):
                tr.set_frame_size(width, height)

    def _process_frame(self, f: Frame, dets: Optional[Dict[str, np.ndarray]]) -> None:
        """One frame after inference: its camera's trackers, then rules, counters, the events
        to the delivery, and the frame hook."""
        st = self.cams[f.camera]
        tracks = self._update_trackers(st, f, dets)
        h, w = f.image.shape[:2]
        ctx = FrameContext(f.camera, f.index, f.media_s, f.wall, w, h, f.image)
        emissions = st.events.update(ctx, tracks)
        now = st.count_frame(f, ctx, dets is not None)
        if self.observer is not None:
            self.observer.frame(f.camera, now - f.t_read, now)
        self._emit(ctx, tracks, emissions)
        if self.on_frame is not None:
            self.on_frame(f, tracks, st)

    def _update_trackers(self, st: CameraState, f: Frame,
                         dets: Optional[Dict[str, np.ndarray]]) -> Dict[str, HeadTracks]:
        """Each head's tracker of the camera, with the frame's detections (None: predict)."""
        h, w = f.image.shape[:2]
        if st.processed == 0 or any((tr.params["frame_width"], tr.params["frame_height"])
                                    != (w, h) for tr in st.trackers.values()):
            self._retime_trackers(st, f)  # also when the source changed resolution
        tracks: Dict[str, HeadTracks] = {}
        t0 = time.monotonic()
        for head, tr in st.trackers.items():
            d = None if dets is None else dets.get(head)
            if dets is not None and d is None:
                d = np.zeros((0, DET_COLS), np.float32)  # detected, none found: not predict-only
            # the picture too: trackers with `visual` follow their tracks in it between detections
            tracks[head] = HeadTracks(tr.update(d, f.image), tr.lost(), self.heads[head])
        if self.observer is not None:
            self.observer.tracker(time.monotonic() - t0)
        return tracks

    def _close_ended_cameras(self) -> None:
        waiting = self.detector.waiting()  # their last frame is still to be processed
        for name, st in self.cams.items():
            if not st.closed and name not in waiting and self.capture.readers[name].exhausted():
                self._close_camera(st, "camera_ended")

    def _close_camera(self, st: CameraState, reason: str, keep_open: bool = False) -> None:
        """``end`` every open event of the camera; ``keep_open``: the camera goes on (a swap)."""
        if st.closed:
            return
        st.closed = not keep_open
        ctx = st.last_ctx
        if ctx is None:
            return  # nothing was ever processed, so nothing is open
        now = FrameContext(ctx.camera, ctx.frame, ctx.media_s, time.time(), ctx.width,
                           ctx.height, ctx.image)
        self._emit(now, {}, st.events.close(now, reason), frame=False)

    def _emit(self, ctx: FrameContext, tracks: Dict[str, HeadTracks],
              emissions: List[Emission], frame: bool = True) -> None:
        """Events to the clips (which tag them) and then to the delivery."""
        if self.clips is not None:
            self.clips.observe(ctx, tracks, emissions, frame)
            self.clips.boxes_to_record(ctx, emissions)  # detect -> record stream pixels
        elif self.cams[ctx.camera].cfg.record is not None:
            to_record(emissions, (ctx.width, ctx.height), None)  # not read: bbox.frame says so
        self.delivery.deliver(emissions)
