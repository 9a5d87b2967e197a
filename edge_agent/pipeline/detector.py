"""The detector on its own thread, one batch at a time, beside the inference loop.

ONNX Runtime and TensorRT release the GIL while they run, so the loop tracks and applies the
rules to other cameras' frames (between detections) while a batch is in the detector, instead of
one after the other. Only one batch is in flight, and only this thread calls the engine while it
is (the loop waits for the batch before an engine swap or any other call on the engine).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from edge_agent.capture import Frame
from edge_agent.common.interfaces import Engine
from edge_agent.inference.engine import InferResult
from edge_agent.inference.tiles import infer_tiled


@dataclass
class Batch:
    """Frames in the detector and the Future of ``(result, seconds)``."""

    frames: List[Frame]
    cameras: FrozenSet[str]
    future: concurrent.futures.Future


@dataclass(frozen=True)
class Tiling:
    """Per camera the tiles per side (``cameras[].tiles``, cameras at 1 left out) and heads
    that take them."""

    grids: Dict[str, int]
    heads: Dict[str, List[str]]
    nms_iou: float


def _infer(engine: Engine, frames: List[Frame], tiling: Optional[Tiling]
           ) -> Tuple[Any, float]:
    t0 = time.monotonic()
    res = detect(engine, frames, tiling)
    return res, time.monotonic() - t0


def detect(engine: Engine, frames: List[Frame], tiling: Optional[Tiling]) -> InferResult:
    """``engine.infer`` of the frames, each camera with tiles also on its tiles."""
    if tiling is None or not any(f.camera in tiling.grids for f in frames):
        return engine.infer([f.image for f in frames])
    return infer_tiled(engine, [f.image for f in frames],
                       [tiling.grids.get(f.camera, 1) for f in frames],
                       [tiling.heads.get(f.camera, []) for f in frames], tiling.nms_iou)


class DetectorThread:
    """Runs ``engine.infer`` on a thread of its own; ``wake`` is set when a batch finishes."""

    def __init__(self, wake: threading.Event):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="detector")
        self._wake = wake
        self.batch: Optional[Batch] = None

    def busy(self) -> bool:
        """A batch is in flight (finished or not, it was not taken yet)."""
        return self.batch is not None

    def ready(self) -> bool:
        """The batch in flight has finished."""
        return self.batch is not None and self.batch.future.done()

    def waiting(self) -> FrozenSet[str]:
        """Cameras with a frame in the detector: their next frames wait for its result."""
        return self.batch.cameras if self.batch is not None else frozenset()

    def submit(self, engine: Engine, frames: List[Frame], tiling: Optional[Tiling] = None
               ) -> None:
        """Start detecting in ``frames`` (at most ``engine.max_batch``); one batch at a time."""
        if self.batch is not None:
            raise RuntimeError("a batch is already in the detector")
        fut = self._pool.submit(_infer, engine, frames, tiling)
        fut.add_done_callback(lambda _: self._wake.set())
        self.batch = Batch(frames, frozenset(f.camera for f in frames), fut)

    def take(self) -> Tuple[List[Frame], concurrent.futures.Future]:
        """The batch in flight, once finished (waits for it); the detector is free after."""
        batch = self.batch
        if batch is None:
            raise RuntimeError("no batch in the detector")
        concurrent.futures.wait([batch.future])
        self.batch = None
        return batch.frames, batch.future

    def close(self) -> None:
        """Wait for the batch in flight (if any) and end the thread."""
        self._pool.shutdown(wait=True)
