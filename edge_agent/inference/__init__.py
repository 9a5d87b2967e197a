"""Inference stage: frames in, per-head detections out, on TensorRT or ONNX Runtime.

The interface the pipeline codes against::

    from edge_agent.inference import open_engine, InferResult
    eng = open_engine(model_cfg)      # edge_agent.config.ModelConfig
    eng.manifest.name / .version / .sha256
    eng.manifest.heads                # head name -> class names, e.g.
                                      # {"crowd": ["person"], "weapon": ["knife"]}
    eng.max_batch                     # frames one infer() call takes
    eng.native_batch                  # batch the model itself runs (None: dynamic); a fixed
                                      # batch-1 model runs a batch of N frame by frame
    eng.backend_name                  # what really runs, e.g. "onnxruntime:CPUExecutionProvider"
    res = eng.infer(frames)           # list of BGR uint8 HxWx3 arrays (sizes may differ),
                                      # len(frames) <= max_batch
    res.detections[i][head]           # float32 (K, 6): x1, y1, x2, y2, score, class_id in frame
                                      # pixels, score-descending; class_id indexes
                                      # manifest.heads[head]; every head present ((0, 6) if none)
    res.timing                        # {"pre_ms", "infer_ms", "post_ms"}
    eng.close()                       # or use the engine as a context manager

Errors: :class:`ModelError` (a ``ValueError``) when a model cannot be used (missing file, not
ONNX, truncated, input shape or outputs not as its manifest says, sha256 mismatch, a TensorRT plan
built for another device; its subclass :class:`BackendUnavailableError` when the backend cannot
run on this machine); :class:`DetectorOutputError` (a ``ValueError``) when an inference
returns a wrong shape or NaN/inf: log it and go on with the next batch. ``infer`` raises
``ValueError`` for bad frames.

Modules: ``manifest`` (the model's JSON manifest), ``preprocess`` and ``postprocess`` (shared by
all backends), ``engine`` (the protocol and :func:`open_engine`), ``onnxrt`` (ONNX Runtime),
``trt`` (TensorRT with pycuda), ``plans`` (the engine-plan store and its cache key), ``build``
(the TensorRT builder), ``commands`` (``edge-agent engine inspect|build|bench``).
"""

from __future__ import annotations

from edge_agent.inference.engine import Engine, InferResult, open_engine
from edge_agent.inference.errors import (
    BackendUnavailableError,
    DetectorOutputError,
    ModelError,
    PlanMismatchError,
)
from edge_agent.inference.manifest import Manifest

__all__ = ["BackendUnavailableError", "DetectorOutputError", "Engine", "InferResult", "Manifest",
           "ModelError", "PlanMismatchError", "open_engine"]
