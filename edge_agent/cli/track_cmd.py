"""`edge-agent track -i VIDEO`: the daemon's pipeline once over a file, headless.

Events go to a JSON-lines file (or stdout) numbered by an in-memory event log; ``-o`` writes an
annotated video; a tqdm bar on stderr shows progress. No state directory, no MQTT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from edge_agent import config as cfgmod
from edge_agent.capture import Frame
from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from edge_agent.daemon import logsetup
from edge_agent.events import ConsoleSink, HeadTracks, JsonlSink
from edge_agent.events.overlay import PlateRead
from edge_agent.outbox.delivery import EventDelivery
from edge_agent.outbox.eventlog import MemoryLog
from edge_agent.pipeline import CameraState, Pipeline

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


class BadInput(Exception):
    """A problem with the command line or its files; the message is printed as ``error: ...``."""


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
           **{k: base[k] for k in ("zones", "detect_every", "tiles", "tile_heads") if k in base}}
    data["cameras"] = [cam]
    data["mqtt"]["enabled"] = False
    data["events"]["sinks"] = {"console": False, "jsonl": None}
    data["events"]["snapshots"]["enabled"] = False
    if data["tracker"] is None:
        data["tracker"] = {}
    return cfgmod.Config.model_validate(data)


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


def _check_args(args: argparse.Namespace) -> cfgmod.Config:
    try:
        cfg = track_config(args)
    except cfgmod.ConfigError as exc:
        raise BadInput("\nerror: ".join(exc.problems)) from None
    if not Path(args.input).is_file():
        raise BadInput(f"input video not found: {args.input}")
    if args.output and Path(args.output).suffix.lower() not in VIDEO_SUFFIXES:
        raise BadInput(f"-o {args.output}: the output video must end in "
                       f"{', '.join(VIDEO_SUFFIXES)}")
    return cfg


def _probe(args: argparse.Namespace) -> Tuple[float, int]:
    """(fps, frames to process; 0 = unknown) of the input video."""
    import cv2

    probe = cv2.VideoCapture(args.input, cv2.CAP_FFMPEG)
    if not probe.isOpened():
        raise BadInput(f"cannot open video {args.input} (not a video, corrupt, or an "
                       "unsupported codec)")
    fps = probe.get(cv2.CAP_PROP_FPS)
    total = int(probe.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    probe.release()
    if args.max_frames and args.max_frames > 0:
        total = min(total, args.max_frames) if total else args.max_frames
    return fps, total


def _open(args: argparse.Namespace, cfg: cfgmod.Config) -> Tuple[Any, List[Any]]:
    """The engine and the event sink; BadInput names what cannot be opened."""
    from edge_agent.inference import ModelError, open_engine

    try:
        engine = open_engine(cfg.model)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        raise BadInput(f"model: {exc}") from None
    try:
        sinks: List[Any] = [JsonlSink(args.events, truncate=True) if args.events
                            else ConsoleSink()]
    except OSError as exc:  # e.g. a directory, or no permission
        engine.close()
        raise BadInput(f"--events {args.events}: cannot write it: {exc}") from None
    return engine, sinks


class _PlateReads:
    """An event sink keeping the plate texts read in the last ``keep_frames`` frames, so the
    video shows them (OCR reads a plate track when it ends; the text comes with its end event)."""

    name = "overlay"

    def __init__(self, keep_frames: int):
        self.keep_frames = keep_frames
        self._reads: Dict[int, Tuple[int, PlateRead]] = {}  # track ID -> (end frame, read)
        self._lock = threading.Lock()

    def write(self, event: Dict[str, Any]) -> None:
        if event.get("type") == "plate" and event.get("phase") == "end" and event.get("text"):
            read = PlateRead(int(event["track_id"]), str(event["text"]), event["bbox"]["px"])
            with self._lock:
                self._reads[read.track_id] = (int(event["frame"]), read)

    def current(self, frame: int) -> List[PlateRead]:
        """The reads of the last ``keep_frames`` frames before ``frame``."""
        with self._lock:
            for tid in [t for t, (f, _) in self._reads.items() if frame - f > self.keep_frames]:
                del self._reads[tid]
            return [r for _, r in self._reads.values()]

    def close(self) -> None:
        pass


class _Run:
    """One `track` run's frame hook: draws and writes the video, moves the bar, stops at N."""

    def __init__(self, args: argparse.Namespace, fps: float, total: int):
        self.max_frames = args.max_frames
        self.out = _VideoOut(args.output, fps) if args.output else None
        self.plates = _PlateReads(keep_frames=int(round(2 * (fps if fps > 0 else 25))))
        self.bar = tqdm(total=total or None, unit="frame", file=sys.stderr, dynamic_ncols=True,
                        disable=args.no_progress, mininterval=0.5 if sys.stderr.isatty() else 10)
        self.error: Optional[str] = None
        self.pipe: Optional[Pipeline] = None

    def on_frame(self, f: Frame, tracks: Dict[str, HeadTracks], st: CameraState) -> None:
        assert self.pipe is not None
        if self.out is not None:
            from edge_agent.events.overlay import draw

            weapon = st.events.weapon
            alerts = [t for t, w in weapon.tracks.items() if w.started] if weapon else []
            draw(f.image, tracks, st.events.zones, st.events.zone_counts(),
                 footer=f"frame {f.index}", alerts=alerts,
                 plate_reads=self.plates.current(f.index))
            try:
                self.out.write(f.image)
            except (OSError, ValueError) as exc:  # it would fail on every frame: stop now
                self.error = str(exc)
                self._finish()
                return
        self.bar.update(1)
        if self.max_frames and st.processed >= self.max_frames:
            self._finish()  # exactly N frames

    def _finish(self) -> None:
        assert self.pipe is not None
        self.pipe.drain = False
        self.pipe.stop()

    def close(self) -> None:
        self.bar.close()
        if self.out is not None:
            self.out.close()


def cmd_track(args: argparse.Namespace) -> int:
    """`edge-agent track -i VIDEO`: detect, track and raise events over one file, headless."""
    logsetup.setup(getattr(args, "log_level", None) or "warning", "human")
    try:
        cfg = _check_args(args)
        fps, total = _probe(args)
        engine, sinks = _open(args, cfg)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run = _Run(args, fps, total)
    delivery = EventDelivery(MemoryLog(), sinks)
    if run.out is not None:
        delivery.add_sink(run.plates)
    try:
        run.pipe = pipe = Pipeline(cfg, engine, delivery, on_frame=run.on_frame)
    except (TypeError, ValueError) as exc:  # e.g. an unknown or out-of-range tracker parameter
        print(f"error: {exc}", file=sys.stderr)
        delivery.close()
        run.close()
        engine.close()
        return EXIT_BAD_INPUT
    old = signal.signal(signal.SIGINT, lambda *_: pipe.stop())
    t0 = time.monotonic()
    try:
        pipe.run()
    finally:
        signal.signal(signal.SIGINT, old)
        run.close()
        engine.close()
    return _report(args, run, pipe, time.monotonic() - t0)


def _report(args: argparse.Namespace, run: _Run, pipe: Pipeline, elapsed: float) -> int:
    if run.error is not None:
        print(f"error: -o {args.output}: {run.error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cam = next(iter(pipe.stats()["cameras"].values()))  # track reads one file
    if pipe.failed_cameras():
        print(f"error: {cam['last_error']}", file=sys.stderr)
        return EXIT_FAILED
    n = cam["processed"]
    print(f"{n} frames in {elapsed:.1f} s ({n / max(elapsed, 1e-6):.1f} fps), "
          f"{pipe.delivery.events_total()} events"
          + (f", video -> {args.output}" if run.out is not None else ""), file=sys.stderr)
    return EXIT_OK
