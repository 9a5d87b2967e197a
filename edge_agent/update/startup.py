"""How the daemon uses the update stage: the store at start, the pipeline host, the commands.

The service calls, in order: :func:`open_store` and :func:`model_config` (before the engine is
opened, so the agent runs the store's ``current`` version), then :func:`make_updater` once the
pipeline exists, :func:`command_handlers` for the MQTT command server, ``updater.start()`` and
``updater.recover()``.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edge_agent.update import signing, versions
from edge_agent.update.download import Downloader
from edge_agent.update.errors import UpdateError
from edge_agent.update.health import HealthPolicy
from edge_agent.update.store import ModelStore
from edge_agent.update.updater import TERMINAL, Publish, Updater
from edge_agent.update.verify import Policy, needed_heads

log = logging.getLogger(__name__)

UNSIGNED_WARNING = ("update.allow_unsigned is ON: unsigned models are accepted. This is for "
                    "development only; never run a device like this in the field")


def open_store(cfg) -> Optional[ModelStore]:
    """The model store under ``state_dir/models`` (None when ``update.enabled`` is off)."""
    if not cfg.update.enabled:
        return None
    return ModelStore(Path(cfg.state_dir) / "models", keep=cfg.update.keep_versions)


def model_config(cfg, store: Optional[ModelStore]):
    """The model config the agent opens: the store's current version, else ``model`` as
    configured.

    ``model.path`` seeds the store on first start, and later joins it as the new current version
    when its manifest's version is above the current one (a package upgrade that ships a newer
    default model); an older or known configured model leaves the store as it is.
    """
    if store is None:
        return cfg.model
    if store.current is None or store.get(store.current) is None:
        _take_configured(cfg, store, seed=True)
    else:
        _take_configured(cfg, store, seed=False)
    info = store.get(store.current)  # type: ignore[arg-type]
    assert info is not None
    return cfg.model.model_copy(update={"path": str(info.model), "manifest": str(info.manifest),
                                        "engine_dir": str(info.path)})


def _take_configured(cfg, store: ModelStore, seed: bool) -> None:
    from edge_agent.inference import manifest as mf

    if not seed and not Path(cfg.model.path).is_file():
        return  # the store runs without the configured file (e.g. removed after seeding)
    path = mf.check_model_file(cfg.model.path)
    m = mf.resolve(path, cfg.model.manifest, cfg.model.engine_dir)
    data = Path(m.source).read_bytes() if m.source and Path(m.source).is_file() else \
        signing_json(m.to_dict())
    if seed:
        store.seed(path, data, m.version, m.name, m.sha256)
        return
    cur = store.get(store.current)  # type: ignore[arg-type]
    if any(v.sha256 == m.sha256 for v in store.stored()) or cur is None:
        return
    try:
        newer = versions.newer(m.version, cur.version)
    except UpdateError:
        newer = False  # a version we cannot order is not taken over the store's choice
    if newer:
        store.add(m.version, path, data, None, name=m.name, sha256=m.sha256, source="config")
        store.set_current(m.version)
        log.info("model store: the configured model %s %s is newer than %s; it is current now",
                 m.name, m.version, cur.version)


def open_running(cfg, store: Optional[ModelStore], open_fn: Callable[[Any], Any]) -> Any:
    """Open the store's current version; if it cannot be opened, the previous one (and say so).

    Records the version that runs in ``running.json``. Without a store: ``model`` as configured.
    """
    model_cfg = model_config(cfg, store)
    if store is None:
        return open_fn(model_cfg)
    try:
        engine = open_fn(model_cfg)
    except ValueError as exc:
        prev = store.previous
        if prev is None or store.get(prev) is None:
            raise
        log.error("model store: current version %s cannot be opened (%s); running the previous "
                  "version %s", store.current, exc, prev)
        store.rollback()
        engine = open_fn(model_config(cfg, store))
    m = engine.manifest
    store.set_running(str(m.version), str(m.sha256))
    return engine


def signing_json(obj: Dict[str, Any]) -> bytes:
    import json

    return (json.dumps(obj, indent=2) + "\n").encode()


class PipelineHost:
    """:class:`~edge_agent.update.updater.EngineHost` over the service's ``Pipeline``."""

    def __init__(self, pipeline, open_fn: Optional[Callable[[Any], Any]] = None):
        self.pipeline = pipeline
        if open_fn is None:
            from edge_agent.inference import open_engine as open_fn
        self._open = open_fn

    def running_engine(self) -> Any:
        return self.pipeline.engine

    def open_engine(self, model_cfg: Any) -> Any:
        return self._open(model_cfg)

    def between_batches(self, fn: Callable[[], Any]) -> Future:
        return self.pipeline.run_in_loop(lambda _pipe: fn())

    def swap_engine(self, engine: Any) -> Any:
        return self.pipeline.swap_engine(engine)


def policy(cfg, running_heads: Dict[str, Any]) -> Policy:
    u = cfg.update
    zones = cfg.events.crowd_default_zone or any(c.zones for c in cfg.cameras)
    return Policy(keys=signing.trusted_keys(u.trusted_keys), allow_unsigned=u.allow_unsigned,
                  allow_downgrade=u.allow_downgrade, min_input=u.min_input,
                  max_input=u.max_input, needed_heads=needed_heads(cfg.events, running_heads,
                                                                   zones))


def _trt_builder(model_cfg, manifest, onnx_path: Path, progress: Callable[[float], None]) -> None:
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


def builder_for(model_cfg) -> Optional[Callable]:
    """The BUILDING step for this backend (None on ONNX Runtime: nothing to build ahead)."""
    backend = model_cfg.backend
    if backend == "auto":
        from edge_agent.inference.engine import tensorrt_usable

        backend = "tensorrt" if tensorrt_usable() is None else "onnxruntime"
    return _trt_builder if backend == "tensorrt" else None


def make_updater(cfg, store: ModelStore, host, publish: Publish, notifier=None) -> Updater:
    """The updater for a running pipeline (``host``); logs the allow_unsigned warning."""
    u = cfg.update
    if u.allow_unsigned:
        log.warning("%s", UNSIGNED_WARNING)
    pipe = getattr(host, "pipeline", None)

    def current_policy() -> Policy:  # the rules after a reload, the heads of what runs now
        return policy(getattr(pipe, "cfg", cfg), host.running_engine().manifest.heads)

    current_policy()  # a trusted key that is no key fails the start, not the first update
    notify = getattr(notifier, "notifier", notifier)  # a Supervisor wraps the Notifier
    return Updater(
        store, host, current_policy,
        Downloader(timeout_s=u.download_timeout_s, max_bytes=int(u.max_download_mb * (1 << 20)),
                   retries=u.download_retries, ca_file=u.ca_file,
                   deadline_s=u.download_deadline_s, min_rate=u.download_min_rate_kb_s * 1024),
        HealthPolicy(u.health_check_batches, u.health_latency_factor, u.health_timeout_s,
                     u.health_require_detections),
        cfg.model, publish, builder_for(cfg.model),
        extend_timeout=getattr(notify, "extend_timeout", None),
        max_resumes=u.download_max_resumes)


def command_handlers(updater: Updater, error_type: Callable[[str, str], Exception],
                     route_fn: Optional[Callable[[], Any]] = None
                     ) -> Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]]:
    """``cmd/engine.*`` handlers; an :class:`UpdateError` becomes ``error_type(code, message)``
    (the command server's error, so the reply carries the code). ``route_fn()`` (inside a
    handler) gives the request's reply route, which the later transitions' replies follow."""

    def route() -> Any:
        return route_fn() if route_fn is not None else None

    def wrap(fn: Callable[[Dict[str, Any]], Dict[str, Any]]):
        def handler(request: Dict[str, Any]) -> Dict[str, Any]:
            try:
                return fn(request)
            except UpdateError as exc:
                raise error_type(exc.code, exc.message) from None
        return handler

    return {
        "engine.update": wrap(lambda r: updater.submit(r, route())),
        "engine.rollback": wrap(lambda r: updater.request_rollback(r, route())),
        "engine.cancel": wrap(updater.cancel),
        "engine.status": wrap(lambda _r: updater.status()),
        "engine.list": wrap(lambda _r: updater.list_versions()),
    }


def reply_doc(doc: Dict[str, Any]) -> Dict[str, Any]:
    """A transition as a command reply (the shape the command server's replies have)."""
    from edge_agent.update.updater import FAILED, ROLLED_BACK

    reply: Dict[str, Any] = {"request_id": doc.get("request_id"),
                             "command": f"engine.{doc.get('kind', 'update')}",
                             "ok": doc.get("state") not in (FAILED, ROLLED_BACK) or
                             doc.get("kind") == "rollback" and "error" not in doc,
                             "result": doc, "ts": doc.get("ts")}
    if "error" in doc:
        reply["error"] = doc["error"]
    return reply


def mqtt_publisher(get_mqtt: Callable[[], Any]) -> Publish:
    """``publish`` for the updater: retained ``engine/update`` and a reply per transition."""

    def publish(doc: Dict[str, Any], route: Any = None) -> None:
        mqtt = get_mqtt()
        if mqtt is None:
            return
        mqtt.publish_engine_update(doc)
        mqtt.publish_reply(f"engine.{doc.get('kind', 'update')}", reply_doc(doc), route)
        if doc.get("state") in TERMINAL:  # the retained state names the engine that runs
            mqtt.publish_state()

    return publish
