"""The detector on threads of its own, beside the inference loop.

ONNX Runtime and TensorRT release the GIL while they run, so the loop tracks and applies the
rules to other cameras' frames (between detections) while a batch is in the detector, instead of
one after the other. Batches run one at a time, or as many at once as the engine allows
(``model.parallel_batches``), and only these threads call the engine while any is queued (the
loop takes every batch before an engine swap or any other call on the engine).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass
from typing import Deque, Dict, FrozenSet, List, Optional, Tuple

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
           ) -> Tuple[InferResult, float]:
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
    """Runs ``engine.infer`` on threads of its own; ``wake`` is set when a batch finishes.

    ``workers`` batches run at once (the engine's ``parallel_calls``); up to ``depth`` may be
    queued (default one more than ``workers``): the next batch waits in the queue while the
    others run, so the detector does not idle while the loop is busy with a pass of other frames
    and takes a finished batch late. Batches are taken in the order they were submitted.
    """

    def __init__(self, wake: threading.Event, workers: int = 1, depth: Optional[int] = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        depth = workers + 1 if depth is None else depth
        if depth < workers:
            raise ValueError(f"depth must be >= workers ({workers}), got {depth}")
        self._pool = concurrent.futures.ThreadPoolExecutor(workers,
                                                           thread_name_prefix="detector")
        self._wake = wake
        self.workers = workers
        self.depth = depth
        self._batches: Deque[Batch] = collections.deque()

    def busy(self) -> bool:
        """A batch was submitted and not taken yet (finished or not)."""
        return bool(self._batches)

    def full(self) -> bool:
        """``depth`` batches are in the detector: the next must wait."""
        return len(self._batches) >= self.depth

    def ready(self) -> bool:
        """The oldest batch has finished."""
        return bool(self._batches) and self._batches[0].future.done()

    def waiting(self) -> FrozenSet[str]:
        """Cameras with a frame in the detector: their next frames wait for its result."""
        return frozenset().union(*(b.cameras for b in self._batches))

    def submit(self, engine: Engine, frames: List[Frame], tiling: Optional[Tiling] = None
               ) -> None:
        """Queue ``frames`` (at most ``engine.max_batch``) for detection."""
        if self.full():
            raise RuntimeError(f"{self.depth} batches are already in the detector")
        fut = self._pool.submit(_infer, engine, frames, tiling)
        fut.add_done_callback(lambda _: self._wake.set())
        self._batches.append(Batch(frames, frozenset(f.camera for f in frames), fut))

    def take(self) -> Tuple[List[Frame], concurrent.futures.Future]:
        """The oldest batch, once finished (waits for it)."""
        if not self._batches:
            raise RuntimeError("no batch in the detector")
        concurrent.futures.wait([self._batches[0].future])
        batch = self._batches.popleft()
        return batch.frames, batch.future

    def close(self) -> None:
        """Wait for the batches in flight (if any) and end the thread."""
        self._pool.shutdown(wait=True)
