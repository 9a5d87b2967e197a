"""Start-up checks past the schema, shared by ``config validate`` and ``run``.

Everything ``run`` would find wrong at start short of opening the cameras and the broker: the
model (exists, has a manifest, is an ONNX graph that fits it), file sources that do not exist, a
GStreamer source on an OpenCV without GStreamer, missing TLS files, trusted update keys that are
neither keys nor readable key files, event sink paths that cannot be written, and an unusable
state directory (tracker parameters, per head, are checked by the schema itself). Each problem
is one ``file:line: key: reason`` line (``config.problem``), the same shape as a schema error,
so both commands report them alike and exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Tuple, Union

from edge_agent import config as cfgmod

Check = Callable[[cfgmod.Config], List[str]]


def check_model(cfg: cfgmod.Config) -> List[str]:
    """The model run opens exists, has a manifest and is an ONNX graph whose I/O fits it."""
    out: List[str] = []
    for mc, where in _models_run_opens(cfg):
        out.extend(_check_one_model(cfg, mc, where))
    return out


def check_configured_model(cfg: cfgmod.Config) -> List[str]:
    """``model`` as the file names it, whatever the model store holds (a reload that changes
    it: the next start will need it)."""
    return _check_one_model(cfg, cfg.model, "")


def _check_one_model(cfg: cfgmod.Config, mc: cfgmod.ModelConfig, where: str) -> List[str]:
    from edge_agent.inference import ModelError
    from edge_agent.inference import manifest as mf
    from edge_agent.inference.cli import check_graph

    try:
        path = mf.check_model_file(mc.path)
    except ModelError as exc:
        return [cfgmod.problem(cfg, ("model", "path"), where + str(exc))]
    try:
        manifest = mf.resolve(path, mc.manifest, mc.engine_dir)
    except ModelError as exc:
        key = "manifest" if mc.manifest and not where else "path"
        return [cfgmod.problem(cfg, ("model", key), where + str(exc))]
    try:
        check_graph(path, manifest)
    except ModelError as exc:
        return [cfgmod.problem(cfg, ("model", "path"), where + str(exc))]
    return []


def _models_run_opens(cfg: cfgmod.Config) -> List[Tuple[cfgmod.ModelConfig, str]]:
    """``model`` as configured, or, once remote updates installed a version (docs/update.md),
    the model store's current version, plus ``model.path`` when that file is there (run reads it
    to see whether it is newer). Read only: nothing is created or installed here."""
    root = Path(cfg.state_dir) / "models"
    if not cfg.update.enabled or not (root / "versions").is_dir():
        return [(cfg.model, "")]
    from edge_agent.update.store import ModelStore

    store = ModelStore(root, keep=cfg.update.keep_versions)  # its folders exist already
    info = store.get(store.current) if store.current is not None else None
    if info is None:
        return [(cfg.model, "")]
    current = cfg.model.model_copy(update={"path": str(info.model),
                                           "manifest": str(info.manifest),
                                           "engine_dir": str(info.path)})
    out = [(current, f"the model store's version {store.current}: ")]
    if Path(cfg.model.path).is_file():
        out.append((cfg.model, ""))
    return out


def check_cameras(cfg: cfgmod.Config) -> List[str]:
    """File sources exist; GStreamer sources need an OpenCV built with GStreamer."""
    from edge_agent.capture import CaptureError, check_sources
    from edge_agent.capture.sources import resolve_kind

    out = []
    for i, cam in enumerate(cfg.cameras):
        if resolve_kind(cam) == "file" and not Path(cam.source.strip()).is_file():
            out.append(cfgmod.problem(cfg, ("cameras", i, "source"),
                                      f"video file not found: {cam.source}"))
        try:
            check_sources([cam])
        except CaptureError as exc:
            out.append(cfgmod.problem(cfg, ("cameras", i, "source"), str(exc)))
    return out


def check_tls(cfg: cfgmod.Config) -> List[str]:
    """The certificate files the MQTT client will load exist."""
    tls = cfg.mqtt.tls
    if not cfg.mqtt.enabled or tls is None:
        return []
    out = []
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None and not Path(path).is_file():
            out.append(cfgmod.problem(cfg, ("mqtt", "tls", key), f"no such file: {path}"))
    if tls.key_file and not tls.cert_file:
        out.append(cfgmod.problem(cfg, ("mqtt", "tls", "key_file"),
                                  "key_file is set but cert_file is not"))
    return out


def check_keys(cfg: cfgmod.Config) -> List[str]:
    """Every trusted update key is 64 hex digits or a readable file holding a key."""
    if not cfg.update.enabled:
        return []
    from edge_agent.update.signing import parse_public_key

    out = []
    for i, spec in enumerate(cfg.update.trusted_keys):
        try:
            parse_public_key(spec)
        except ValueError as exc:
            out.append(cfgmod.problem(cfg, ("update", "trusted_keys", i), str(exc)))
    return out


def check_sinks(cfg: cfgmod.Config) -> List[str]:
    """The JSON-lines sink and the snapshot folder can be written (nothing is created)."""
    state = Path(cfg.state_dir)
    out = []
    ev = cfg.events
    if ev.sinks.jsonl:
        why = _unwritable(state / ev.sinks.jsonl, folder=False)  # an absolute one stays as is
        if why:
            out.append(cfgmod.problem(cfg, ("events", "sinks", "jsonl"), why))
    if ev.snapshots.enabled:
        why = _unwritable(state / ev.snapshots.dir, folder=True)
        if why:
            out.append(cfgmod.problem(cfg, ("events", "snapshots", "dir"), why))
    return out


def _unwritable(path: Path, folder: bool) -> str:
    """Why ``path`` (a file, or a folder when ``folder``) could not be written; '' when it can
    (it may not exist yet, then its nearest existing parent must be a writable folder)."""
    if path.exists():
        if path.is_dir() != folder:
            return f"{path} is {'not ' if folder else ''}a directory"
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            return f"{path} is not writable"
        return ""
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path} cannot be created in {probe} (not writable)"
    return ""


def check_state_dir(cfg: cfgmod.Config) -> List[str]:
    """The state directory is a writable directory, or can be created (nothing is created)."""
    path = Path(cfg.state_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        why = "is not a directory" if probe == path else f"cannot be created: {probe} is a file"
    elif not os.access(probe, os.W_OK | os.X_OK):
        why = "is not writable" if probe == path else f"cannot be created in {probe}"
    else:
        return []
    return [cfgmod.problem(cfg, ("state_dir",), f"{path} {why}")]


CHECKS: List[Tuple[Check, Tuple[str, ...]]] = [  # each with the key its ImportError concerns
    (check_state_dir, ("state_dir",)), (check_model, ("model", "path")),
    (check_cameras, ("cameras",)), (check_tls, ("mqtt", "tls")),
    (check_keys, ("update", "trusted_keys")), (check_sinks, ("events", "sinks")),
]


def check(cfg: cfgmod.Config) -> List[str]:
    """Every problem of every check (empty when ``run`` may start)."""
    out: List[str] = []
    for fn, key in CHECKS:
        try:
            out.extend(fn(cfg))
        except ImportError as exc:  # an install without the [cpu]/[gpu] extra cannot run either
            out.append(cfgmod.problem(cfg, key, f"cannot be checked: {exc} (install edge-agent "
                                                "with the [cpu] or [gpu] extra)"))
    return out


def load_checked(path: Union[str, Path]) -> cfgmod.Config:
    """Load a config and run :func:`check`; raise ``ConfigError`` with every problem."""
    cfg = cfgmod.load(path)
    problems = check(cfg)
    if problems:
        raise cfgmod.ConfigError(problems)
    return cfg
