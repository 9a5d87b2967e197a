"""The model store at the agent's start: which model version the engine opens.

The agent's ``engine`` step calls :func:`open_store`, then :func:`open_running` (the store's
current version, or the previous one when the current cannot be opened); ``config validate``
checks the same model through :func:`model_config`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from edge_agent.common.interfaces import Engine
from edge_agent.config import Config, ModelConfig
from edge_agent.update import signing, versions
from edge_agent.update.errors import UpdateError
from edge_agent.update.store import ModelStore

log = logging.getLogger(__name__)


def open_store(cfg: Config) -> Optional[ModelStore]:
    """The model store under ``state_dir/models`` (None when ``update.enabled`` is off)."""
    if not cfg.update.enabled:
        return None
    return ModelStore(Path(cfg.state_dir) / "models", keep=cfg.update.keep_versions)


def model_config(cfg: Config, store: Optional[ModelStore]) -> ModelConfig:
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


def _take_configured(cfg: Config, store: ModelStore, seed: bool) -> None:
    from edge_agent.inference import manifest as mf

    if not seed and not Path(cfg.model.path).is_file():
        return  # the store runs without the configured file (e.g. removed after seeding)
    path = mf.check_model_file(cfg.model.path)
    m = mf.resolve(path, cfg.model.manifest, cfg.model.engine_dir)
    data = Path(m.source).read_bytes() if m.source and Path(m.source).is_file() else \
        signing.manifest_bytes(m.to_dict())
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


def open_running(cfg: Config, store: Optional[ModelStore],
                 open_fn: Callable[[ModelConfig], Engine]) -> Engine:
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
