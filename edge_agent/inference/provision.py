"""Provisioning: this device's TensorRT plan for a model, found in the engine store or built.

``ensure_plan(manifest, onnx, progress=callback)`` is the one way to get a plan: the TensorRT
backend calls it when it opens an engine, ``edge-agent engine build`` (with ``rebuild``) and a
remote update (BUILDING, before the switch) too. Build progress goes to the callback
(:class:`~edge_agent.inference.build.BuildProgress`): a terminal bar, a log line, or an MQTT
progress message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

from edge_agent.inference import manifest as mf
from edge_agent.inference.build import ProgressFn, build_and_store
from edge_agent.inference.plans import PlanStore
from edge_agent.inference.trtenv import device_key, plan_batch

log = logging.getLogger(__name__)


def ensure_plan(manifest: mf.Manifest, onnx: os.PathLike, *, engine_dir: os.PathLike = "engines",
                precision: str = "fp16", max_batch: int = 1, workspace_mb: int = 1024,
                progress: Union[bool, ProgressFn, None] = None, rebuild: bool = False) -> Path:
    """The stored plan of ``onnx`` for this device (its :class:`PlanKey`), building and storing
    it first when there is none (or ``rebuild``); returns the plan's path.

    ``max_batch`` is raised or lowered to the model's own fixed batch when it has one. Raises
    :class:`ModelError` when the model cannot be built, ``BackendUnavailableError`` without
    TensorRT or a GPU. ``progress``: a callback, True for a bar on the terminal, or None."""
    batch = plan_batch(manifest, max_batch)
    key = device_key(manifest.sha256, precision, batch)
    found = None if rebuild else PlanStore(engine_dir).find(key, manifest.name)
    if found is not None:
        return found
    if not rebuild:
        log.warning("no TensorRT plan for %s on this device (key %s); building one now, this "
                    "takes minutes", manifest.name, key.digest())
    return build_and_store(Path(onnx), manifest, engine_dir, precision=precision,
                           max_batch=batch, workspace_mb=workspace_mb, progress=progress)
