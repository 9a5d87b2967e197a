"""What TensorRT and CUDA say about this device: the modules, the logger, the plan's cache key.

Shared by the runtime (:mod:`.trt`), the builder (:mod:`.build`) and provisioning
(:mod:`.provision`), so none of them imports another for these. The modules are imported only
when called: a CPU-only box never loads TensorRT.
"""

from __future__ import annotations

import logging
from typing import List

from edge_agent.inference import manifest as mf
from edge_agent.inference.errors import BackendUnavailableError
from edge_agent.inference.plans import PlanKey

log = logging.getLogger(__name__)


def import_trt():
    """The ``tensorrt`` module, or :class:`ModelError` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed (on Jetson it comes with JetPack: create the venv with "
            "--system-site-packages)") from exc
    return trt


def import_cuda():
    """``pycuda.driver``, initialised, or :class:`ModelError`."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailableError(
            "pycuda is not installed (pip install 'edge-agent[gpu]', or JetPack's "
            "python3-pycuda)") from exc
    cuda.init()
    if cuda.Device.count() == 0:
        raise BackendUnavailableError("no CUDA device")
    return cuda


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def make_logger(trt, keep: int = 20):
    """A TensorRT logger that forwards to Python logging and remembers the last errors."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors = (self.errors + [msg])[-keep:]
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def device_key(onnx_sha256: str, precision: str, max_batch: int, device: int = 0) -> PlanKey:
    """The :class:`PlanKey` a plan for this model must have on this device."""
    trt = import_trt()
    cuda = import_cuda()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return PlanKey(onnx_sha256, trt.__version__, dev.name(), f"{major}.{minor}", precision,
                   int(max_batch))


def plan_batch(manifest: mf.Manifest, max_batch: int) -> int:
    """The batch a plan is built for: the model's fixed batch, else ``max_batch``."""
    return manifest.input.batch or max_batch
