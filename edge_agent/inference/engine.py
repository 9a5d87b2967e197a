"""The ``Engine`` protocol shared by every backend, and :func:`open_engine`.

A backend implements only ``_run`` (a pre-processed N x 3 x H x W batch in, raw outputs by name
out) and ``close``; pre- and post-processing, batching in chunks the model accepts, validation and
timing live here once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from edge_agent.inference import manifest as mf
from edge_agent.inference.errors import ModelError
from edge_agent.inference.postprocess import Postprocessor
from edge_agent.inference.preprocess import Preprocessor

log = logging.getLogger(__name__)


@dataclass
class InferResult:
    """One batch's detections and timing.

    ``detections[i][head]`` is a float32 (K, 6) array of x1, y1, x2, y2, score, class_id in
    frame i's pixels; ``timing`` has pre_ms, infer_ms and post_ms.
    """

    detections: List[Dict[str, np.ndarray]]
    timing: Dict[str, float] = field(default_factory=dict)


class Engine:
    """Base class: subclasses set ``backend_name`` and ``native_batch`` and implement ``_run``.

    ``max_batch`` is how many frames one :meth:`infer` call takes. ``native_batch`` is the batch
    the model itself runs (None when its batch axis is dynamic); when it is fixed, ``infer``
    feeds the batch through the model in chunks of that size.
    """

    backend_name = "?"
    #: how many ``infer`` calls may run at once on different threads
    parallel_calls = 1

    def __init__(self, manifest: mf.Manifest, model_path: Path, max_batch: int,
                 score_threshold: float, nms_iou: float, input_dtype=np.float32,
                 native_batch: Optional[int] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.manifest = manifest
        self.model_path = Path(model_path)
        self.max_batch = int(max_batch)
        self.native_batch = native_batch
        self.input_dtype = np.dtype(input_dtype)
        self._pre = Preprocessor(manifest.input, self.input_dtype)
        self._post = Postprocessor(manifest, score_threshold, nms_iou)

    # -- to implement -----------------------------------------------------------------------
    def _run_native(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one batch the model accepts as is; returns raw outputs by name (which may be
        views of the backend's buffers, valid until the next call)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's resources (idempotent)."""

    # -- shared ------------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        nb = self.native_batch
        n = batch.shape[0]
        if nb is None or nb == n:
            return self._run_native(batch)
        parts: List[Dict[str, np.ndarray]] = []
        for s in range(0, n, nb):
            chunk = batch[s:s + nb]
            if len(chunk) < nb:  # a fixed batch of e.g. 4 fed 3 frames: pad with copies
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], nb - len(chunk), 0)])
            # copy: a backend may hand back views of buffers the next chunk overwrites
            parts.append({k: np.array(v) for k, v in self._run_native(chunk).items()})
        outs = {}
        for name in parts[0]:
            outs[name] = np.concatenate([p[name] for p in parts])[:n]
        return outs

    def infer(self, frames: Sequence[np.ndarray]) -> InferResult:
        """Detect in up to ``max_batch`` BGR uint8 frames (sizes may differ).

        Raises ``ValueError`` for bad frames or too many of them, and
        :class:`~edge_agent.inference.errors.DetectorOutputError` when the model returns
        something unusable (wrong shape, NaN/inf).
        """
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            raise ValueError("infer() takes a list of frames, got a single array")
        if len(frames) > self.max_batch:
            raise ValueError(f"{len(frames)} frames, but this engine takes at most "
                             f"{self.max_batch} per call (model.max_batch)")
        if len(frames) == 0:
            return InferResult([], {"pre_ms": 0.0, "infer_ms": 0.0, "post_ms": 0.0})
        t0 = time.perf_counter()
        batch, geo = self._pre(frames)
        t1 = time.perf_counter()
        raw = self._run(batch)
        t2 = time.perf_counter()
        dets = self._post(raw, geo)
        t3 = time.perf_counter()
        return InferResult(dets, {"pre_ms": (t1 - t0) * 1e3, "infer_ms": (t2 - t1) * 1e3,
                                  "post_ms": (t3 - t2) * 1e3})

    def warmup(self) -> None:
        """One inference on a blank frame, so lazy allocations and kernel choices happen now."""
        spec = self.manifest.input
        blank = np.full((spec.height, spec.width, 3), 114, np.uint8)
        self._run(self._pre([blank])[0])

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return (f"<{type(self).__name__} {m.name} {m.version} on {self.backend_name}, "
                f"max_batch={self.max_batch}>")


# --- factory -------------------------------------------------------------------------------------

# backend key -> "module:function(model_cfg, manifest, model_path) -> Engine"; imported lazily so
# a CPU box never imports TensorRT.
BACKENDS: Dict[str, str] = {
    "onnxruntime": "edge_agent.inference.onnxrt:create",
    "tensorrt": "edge_agent.inference.trt:create",
}


def _factory(key: str) -> Callable:
    import importlib

    module, func = BACKENDS[key].split(":")
    return getattr(importlib.import_module(module), func)


def tensorrt_usable() -> Optional[str]:
    """None when TensorRT and a CUDA device are usable, else the reason why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as exc:  # pycuda missing, or no driver
        return f"CUDA unavailable: {exc}"
    return None


def open_engine(model_cfg) -> Engine:
    """Open the model of a :class:`edge_agent.config.ModelConfig` on the configured backend.

    ``backend: auto`` picks TensorRT when it and a CUDA device are usable, else ONNX Runtime.
    Raises :class:`ModelError` for a missing/corrupt model or a manifest that does not fit it.
    """
    model_path = mf.check_model_file(model_cfg.path)
    manifest = mf.resolve(model_path, model_cfg.manifest, model_cfg.engine_dir)
    backend = model_cfg.backend
    if backend == "auto":
        why = tensorrt_usable()
        backend = "tensorrt" if why is None else "onnxruntime"
        if why:
            log.info("backend auto: ONNX Runtime (%s)", why)
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r} (known: {sorted(BACKENDS)})")
    engine = _factory(backend)(model_cfg, manifest, model_path)
    log.info("opened %r", engine)
    return engine
