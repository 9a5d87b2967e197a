"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU EP, in the order the config lists them.

Which provider really runs is found out by a warm-up inference, not by what the session lists: a
GPU wheel on the wrong GPU still lists the CUDA EP and only fails when it runs. A provider that
fails the warm-up is dropped and the next one is tried.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_agent.inference import manifest as mf
from edge_agent.inference import resize
from edge_agent.inference.engine import Engine
from edge_agent.inference.errors import BackendUnavailableError, ModelError

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:  # the [cpu] or [gpu] extra is missing
        raise BackendUnavailableError(
            "ONNX Runtime is not installed (pip install 'edge-agent[cpu]')") from exc
    return onnxruntime


def provider_list(keys: Sequence[str], precision: str, engine_dir: os.PathLike,
                  available: Sequence[str]) -> List[Tuple[str, Dict[str, Any]]]:
    """(provider, options) for the configured keys that this ONNX Runtime build has."""
    out: List[Tuple[str, Dict[str, Any]]] = []
    for key in keys:
        name = PROVIDER_NAMES.get(key)
        if name is None:
            raise ModelError(f"unknown ONNX Runtime provider {key!r} (known: "
                             f"{sorted(PROVIDER_NAMES)})")
        if name not in available:
            continue
        opts: Dict[str, Any] = {}
        if key == "tensorrt":
            cache = str(Path(engine_dir) / "cache" / "ort-trt")
            opts = {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": cache}
        out.append((name, opts))
    return out


def tensor_infos(args) -> List[mf.TensorInfo]:
    """ONNX Runtime NodeArg list -> TensorInfo (dynamic axes as their names or None)."""
    return [mf.TensorInfo(a.name, tuple(a.shape), _ORT_TYPES.get(a.type, a.type)) for a in args]


def load_session(model_path: Path, providers, threads: int = 0,
                 model_bytes: Optional[bytes] = None):
    """An InferenceSession, with load failures turned into :class:`ModelError`.

    ``model_bytes``: the model rewritten in memory (:mod:`~edge_agent.inference.resize`), loaded
    instead of the file; ``model_path`` still names it in messages."""
    ort = _import_ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's own warnings go to stderr unformatted; we log ours
    if threads > 0:
        so.intra_op_num_threads = threads
    try:
        src = str(model_path) if model_bytes is None else model_bytes
        return ort.InferenceSession(src, sess_options=so, providers=providers)
    except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "protobuf" in msg.lower() or "parsing" in msg.lower():
            hint = " (not an ONNX file, or truncated)"
        raise ModelError(f"model {model_path}: ONNX Runtime cannot load it{hint}: {msg}") from exc


class OnnxRuntimeEngine(Engine):
    """An :class:`Engine` running on an ``onnxruntime.InferenceSession``.

    ``input_size`` (width, height): run the model at this input instead of the manifest's,
    rewritten in memory (:func:`~edge_agent.inference.resize.resized`); ``manifest.input`` then
    says the new size. ``parallel_batches``: calls that may run at once (a session's ``run`` is
    safe to call from several threads).
    """

    def __init__(self, manifest: mf.Manifest, model_path: Path, *, providers: Sequence[str],
                 precision: str = "fp16", max_batch: int = 1, intra_op_threads: int = 0,
                 score_threshold: float = 0.3, nms_iou: float = 0.45,
                 engine_dir: os.PathLike = "engines",
                 input_size: Optional[Tuple[int, int]] = None, parallel_batches: int = 1):
        if parallel_batches < 1:
            raise ValueError(f"parallel_batches must be >= 1, got {parallel_batches}")
        self.parallel_calls = int(parallel_batches)
        ort = _import_ort()
        model_bytes = None
        if input_size is not None and tuple(input_size) != (manifest.input.width,
                                                            manifest.input.height):
            model_bytes, manifest = resize.resized(model_path, manifest, *input_size)
        candidates = provider_list(providers, precision, engine_dir, ort.get_available_providers())
        if not candidates:
            raise BackendUnavailableError(
                f"none of the configured ONNX Runtime providers {list(providers)} is available "
                f"(this build has {ort.get_available_providers()})")
        self.session = None
        last_error: Optional[Exception] = None
        while candidates:
            first = candidates[0][0]
            try:
                sess = load_session(model_path, candidates, intra_op_threads, model_bytes)
            except ModelError as exc:
                if len(candidates) == 1:  # the last provider cannot load it: the model is bad
                    raise
                log.warning("ONNX Runtime with %s cannot load %s (%s); trying without it",
                            first, model_path, exc)
                last_error, candidates = exc, candidates[1:]
                continue
            if self.session is None:  # check the graph once, on the first session that loads
                self._check_graph(manifest, model_path, sess)
                self._setup(manifest, model_path, sess, max_batch, score_threshold, nms_iou)
            self.session = sess
            running = sess.get_providers()[0]
            self.backend_name = f"onnxruntime:{running}"
            try:
                self.warmup()
                break
            except Exception as exc:  # a GPU provider that lists itself but cannot run
                if running == "CPUExecutionProvider":
                    raise ModelError(f"model {model_path}: warm-up inference failed: {exc}") \
                        from exc
                log.warning("ONNX Runtime provider %s failed its warm-up (%s); trying the next",
                            running, exc)
                last_error = exc
                candidates = [c for c in candidates if c[0] != running]
        else:
            raise ModelError(f"model {model_path}: no provider could run it: {last_error}")

    def _check_graph(self, manifest: mf.Manifest, model_path: Path, sess) -> None:
        self.notes = mf.check_io(manifest, tensor_infos(sess.get_inputs()),
                                 tensor_infos(sess.get_outputs()), f"model {model_path}")

    def _setup(self, manifest, model_path, sess, max_batch, score_threshold, nms_iou) -> None:
        inp = sess.get_inputs()[0]
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        n = inp.shape[0]
        native = n if isinstance(n, int) and n > 0 else None
        super().__init__(manifest, model_path, max_batch, score_threshold, nms_iou, dtype,
                         native_batch=native)
        self._input_name = manifest.input.name
        self._output_names = [o.name for o in manifest.outputs]

    def _run_native(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("engine is closed")
        outs = self.session.run(self._output_names, {self._input_name: batch})
        return dict(zip(self._output_names, outs))

    def close(self) -> None:
        self.session = None


def create(model_cfg, manifest: mf.Manifest, model_path: Path) -> OnnxRuntimeEngine:
    """Backend factory used by :func:`edge_agent.inference.open_engine`."""
    return OnnxRuntimeEngine(
        manifest, model_path, providers=model_cfg.providers, precision=model_cfg.precision,
        max_batch=model_cfg.max_batch, intra_op_threads=model_cfg.intra_op_threads,
        score_threshold=model_cfg.score_threshold, nms_iou=model_cfg.nms_iou,
        engine_dir=model_cfg.engine_dir, input_size=model_cfg.input_size,
        parallel_batches=model_cfg.parallel_batches)
