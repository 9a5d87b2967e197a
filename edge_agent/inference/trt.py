"""TensorRT backend (pycuda): runs this device's plan (found or built by :mod:`.provision`).

Only the name-based I/O API is used (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), so the same code runs on
TensorRT 8.5 (JetPack 5), 8.6 and 10.x (JetPack 6).

Threads: the engine creates its own CUDA context and pushes it around every call, so whichever
thread calls :meth:`infer` has it current, but only one thread may use an engine at a time (the
daemon's inference thread owns it). Pinned host and device buffers are allocated once, for the
largest batch, and reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from edge_agent.inference import manifest as mf
from edge_agent.inference.engine import Engine
from edge_agent.inference.errors import ModelError
from edge_agent.inference.plans import PlanStore
from edge_agent.inference.provision import ensure_plan
from edge_agent.inference.trtenv import device_key, import_cuda, import_trt, make_logger, plan_batch

log = logging.getLogger(__name__)


class TensorRTEngine(Engine):
    """An :class:`Engine` running a deserialised TensorRT plan."""

    def __init__(self, manifest: mf.Manifest, model_path: Path, plan: bytes, *,
                 plan_source: str = "<plan>", max_batch: int = 1, score_threshold: float = 0.3,
                 nms_iou: float = 0.45, device: int = 0):
        self._trt = trt = import_trt()
        self._cuda = cuda = import_cuda()
        self._ctx = cuda.Device(device).make_context()  # pushed: current in this thread
        self._closed = False
        self._dev: Dict[str, object] = {}
        try:
            self._setup(trt, cuda, manifest, model_path, plan, plan_source, max_batch,
                        score_threshold, nms_iou)
            self.backend_name = f"tensorrt:{trt.__version__}:{cuda.Device(device).name()}"
        except BaseException:
            self._release()
            self._ctx.pop()
            self._ctx.detach()
            self._closed = True
            raise
        self._ctx.pop()
        try:
            self.warmup()
        except BaseException:
            self.close()
            raise

    def _setup(self, trt, cuda, manifest, model_path, plan, plan_source, max_batch,
               score_threshold, nms_iou) -> None:
        self._logger = make_logger(trt)  # must outlive the runtime and engine
        self._runtime = trt.Runtime(self._logger)
        eng = self._runtime.deserialize_cuda_engine(plan)
        if eng is None:
            raise ModelError(f"plan {plan_source}: TensorRT could not deserialise it: "
                             + ("; ".join(self._logger.errors) or "no reason given"))
        self._engine = eng
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        is_in = {n: eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}

        def info(n):
            dims = tuple(int(d) for d in eng.get_tensor_shape(n))
            return mf.TensorInfo(n, tuple(d if d >= 0 else None for d in dims),
                                 np.dtype(trt.nptype(eng.get_tensor_dtype(n))).name)

        mf.check_io(manifest, [info(n) for n in names if is_in[n]],
                    [info(n) for n in names if not is_in[n]], f"plan {plan_source}")
        spec = manifest.input
        self._in_name = spec.name
        self._out_names = [o.name for o in manifest.outputs]
        n_in = int(eng.get_tensor_shape(spec.name)[0])
        if n_in > 0:
            native: Optional[int] = n_in
            run_batch = n_in
        else:  # dynamic batch: the optimisation profile's max bounds one run
            if hasattr(eng, "get_tensor_profile_shape"):
                profile = eng.get_tensor_profile_shape(spec.name, 0)  # (min, opt, max)
            else:  # older spelling, same answer
                profile = eng.get_profile_shape(0, spec.name)
            profile_max = int(profile[2][0])
            if max_batch > profile_max:
                raise ModelError(f"plan {plan_source} runs at most batch {profile_max}, "
                                 f"max_batch is {max_batch}; rebuild with --max-batch {max_batch}")
            native, run_batch = None, max_batch
        in_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(spec.name)))
        super().__init__(manifest, model_path, max_batch, score_threshold, nms_iou, in_dtype,
                         native_batch=native)
        self._context = eng.create_execution_context()
        if self._context is None:
            raise ModelError(f"plan {plan_source}: cannot create an execution context "
                             "(out of GPU memory?)")
        self._set_batch(run_batch)
        self._host: Dict[str, np.ndarray] = {}
        for n in names:  # buffers for the largest batch, allocated once
            shape = tuple(int(d) for d in self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise ModelError(f"plan {plan_source}: tensor {n!r} has a data-dependent shape "
                                 f"{shape}, which this backend does not support")
            dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(n)))
            self._host[n] = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            self._dev[n] = cuda.mem_alloc(max(1, self._host[n].nbytes))
            if not self._context.set_tensor_address(n, int(self._dev[n])):
                raise ModelError(f"plan {plan_source}: set_tensor_address({n!r}) failed")
        self._stream = cuda.Stream()

    def _set_batch(self, n: int) -> None:
        spec = self.manifest.input
        if not self._context.set_input_shape(self._in_name, (n, 3, spec.height, spec.width)):
            raise ModelError(f"TensorRT refused input shape ({n}, 3, {spec.height}, "
                             f"{spec.width})")
        self._batch_set = n

    def _run_native(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("engine is closed")
        cuda = self._cuda
        n = batch.shape[0]
        self._ctx.push()
        try:
            if n != self._batch_set:
                self._set_batch(n)
            host_in = self._host[self._in_name][:batch.size].reshape(batch.shape)
            np.copyto(host_in, batch, casting="unsafe")
            cuda.memcpy_htod_async(self._dev[self._in_name], host_in, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise RuntimeError("TensorRT execute_async_v3 failed: "
                                   + ("; ".join(self._logger.errors[-3:]) or "no reason given"))
            outs: Dict[str, np.ndarray] = {}
            for name in self._out_names:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
                host = self._host[name][:int(np.prod(shape))]
                cuda.memcpy_dtoh_async(host, self._dev[name], self._stream)
                outs[name] = host.reshape(shape)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        return outs  # views of the pinned buffers: valid until the next call

    def _release(self) -> None:
        for buf in self._dev.values():
            try:
                buf.free()
            except Exception:  # already freed with a dying context
                pass
        self._dev = {}
        # TensorRT objects before the runtime, all while the context is current.
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                setattr(self, attr, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.push()
        try:
            self._release()
        finally:
            self._ctx.pop()
            self._ctx.detach()


def create(model_cfg, manifest: mf.Manifest, model_path: Path) -> TensorRTEngine:
    """Backend factory: load this device's plan for the model, building it first if missing."""
    size = getattr(model_cfg, "input_size", None)
    if size is not None and tuple(size) != (manifest.input.width, manifest.input.height):
        # a plan is built from the file and keyed by its sha256: a rewritten graph needs both
        raise ModelError(f"model.input_size {size[0]}x{size[1]} is supported on ONNX Runtime "
                         f"only; the TensorRT backend runs the model's own "
                         f"{manifest.input.width}x{manifest.input.height}")
    if getattr(model_cfg, "parallel_batches", 1) > 1:  # one execution context, one stream
        log.info("model.parallel_batches %d: TensorRT runs one batch at a time",
                 model_cfg.parallel_batches)
    batch = plan_batch(manifest, model_cfg.max_batch)
    path = ensure_plan(manifest, model_path, engine_dir=model_cfg.engine_dir,
                       precision=model_cfg.precision, max_batch=batch)
    plan = PlanStore(model_cfg.engine_dir).load(path, device_key(manifest.sha256,
                                                                 model_cfg.precision, batch))
    return TensorRTEngine(manifest, model_path, plan, plan_source=str(path),
                          max_batch=model_cfg.max_batch, score_threshold=model_cfg.score_threshold,
                          nms_iou=model_cfg.nms_iou)
