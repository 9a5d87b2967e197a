"""The remote-update worker of a running agent: its verification policy, its BUILDING step
(a TensorRT plan for this device) and :func:`make_updater`, which the agent's ``update`` step
calls once the pipeline exists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edge_agent.config import Config, ModelConfig
from edge_agent.update import signing
from edge_agent.update.download import Downloader
from edge_agent.update.health import HealthPolicy
from edge_agent.update.host import PipelineHost
from edge_agent.update.store import ModelStore
from edge_agent.update.updater import Builder, Publish, Updater
from edge_agent.update.verify import Policy, needed_heads

log = logging.getLogger(__name__)

UNSIGNED_WARNING = ("update.allow_unsigned is ON: unsigned models are accepted. This is for "
                    "development only; never run a device like this in the field")


def policy(cfg: Config, running_heads: Dict[str, Any]) -> Policy:
    """The verification rules of ``cfg`` for a model that replaces one with ``running_heads``."""
    u = cfg.update
    zones = cfg.events.crowd_default_zone or any(c.zones for c in cfg.cameras)
    return Policy(keys=signing.trusted_keys(u.trusted_keys), allow_unsigned=u.allow_unsigned,
                  allow_downgrade=u.allow_downgrade, min_input=u.min_input,
                  max_input=u.max_input, needed_heads=needed_heads(cfg.events, running_heads,
                                                                   zones))


def _trt_builder(model_cfg: ModelConfig, manifest: Any, onnx_path: Path,
                 progress: Callable[[float], None]) -> None:
    """BUILDING on TensorRT: this device's plan (in the version's folder) through the
    provisioning module, unless one is stored already."""
    try:
        from edge_agent.inference.provision import ensure_plan
    except ImportError:  # before the provisioning module existed
        ensure_plan = None
    if ensure_plan is None:
        from edge_agent.inference import build
        from edge_agent.inference.plans import PlanStore
        from edge_agent.inference.trt import device_key, plan_batch

        batch = plan_batch(manifest, model_cfg.max_batch)
        key = device_key(manifest.sha256, model_cfg.precision, batch)
        if PlanStore(model_cfg.engine_dir).find(key, manifest.name) is None:
            build.build_and_store(onnx_path, manifest, model_cfg.engine_dir,
                                  precision=model_cfg.precision, max_batch=batch, progress=False)
        progress(100.0)
        return

    def report(p) -> None:  # a BuildProgress: step of total in the innermost phase
        progress(100.0 if p.done else 100.0 * p.step / p.total if p.total else 0.0)

    ensure_plan(manifest, onnx_path, engine_dir=model_cfg.engine_dir,
                precision=model_cfg.precision, max_batch=model_cfg.max_batch, progress=report)
    progress(100.0)


def builder_for(model_cfg: ModelConfig) -> Optional[Builder]:
    """The BUILDING step for this backend (None on ONNX Runtime: nothing to build ahead)."""
    backend = model_cfg.backend
    if backend == "auto":
        from edge_agent.inference.engine import tensorrt_usable

        backend = "tensorrt" if tensorrt_usable() is None else "onnxruntime"
    return _trt_builder if backend == "tensorrt" else None


def make_updater(cfg: Config, store: ModelStore, host: PipelineHost, publish: Publish,
                 extend_timeout: Optional[Callable[[float], Any]] = None) -> Updater:
    """The updater for a running pipeline (``host``); logs the allow_unsigned warning.

    ``extend_timeout(seconds)`` asks systemd for more time while a stop waits on an update."""
    u = cfg.update
    if u.allow_unsigned:
        log.warning("%s", UNSIGNED_WARNING)

    def current_policy() -> Policy:  # the rules after a reload, the heads of what runs now
        return policy(host.pipeline.cfg, host.running_engine().manifest.heads)

    current_policy()  # a trusted key that is no key fails the start, not the first update
    return Updater(
        store, host, current_policy,
        Downloader(timeout_s=u.download_timeout_s, max_bytes=int(u.max_download_mb * (1 << 20)),
                   retries=u.download_retries, ca_file=u.ca_file,
                   deadline_s=u.download_deadline_s, min_rate=u.download_min_rate_kb_s * 1024),
        HealthPolicy(u.health_check_batches, u.health_latency_factor, u.health_timeout_s,
                     u.health_require_detections),
        cfg.model, publish, builder_for(cfg.model),
        extend_timeout=extend_timeout,
        max_resumes=u.download_max_resumes)
