"""Exceptions of the inference stage.

Both derive from ``ValueError`` so a caller that only knows "bad input" can still catch them; the
daemon logs a :class:`DetectorOutputError` and carries on with the next batch.
"""

from __future__ import annotations


class ModelError(ValueError):
    """A model, its manifest or a built plan cannot be used (missing, corrupt, mismatched)."""


class BackendUnavailableError(ModelError):
    """The backend cannot run on this machine (TensorRT, pycuda, a CUDA device or ONNX Runtime
    missing). A ``ModelError`` too, so callers that open a model catch it alike."""


class PlanMismatchError(ModelError):
    """A TensorRT plan was built for another device, TensorRT version, model or precision."""


class DetectorOutputError(ValueError):
    """The detector returned something unusable (wrong shape, NaN or inf values)."""
