"""Secrets: where they come from and how they are masked, in one place.

Secrets are the MQTT password (config ``mqtt.password`` or the environment variable
:data:`PASSWORD_ENV`, which wins), the password of any URL (a camera's
``rtsp://user:password@host``) and every value a ``${NAME}`` reference in the config stands for
(:func:`resolve_refs`: an environment variable, from systemd's ``EnvironmentFile=``, or a
systemd credential, ``LoadCredential=NAME:...``), so that no secret has to sit in the
world-readable config. They never reach a log line (:func:`redact` in the log handler),
``config show`` or an MQTT ``config.get`` reply (:func:`masked_config`, :func:`mask`): each
shows :data:`MASK` instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, List, Mapping, Optional, Tuple

if TYPE_CHECKING:  # config imports this module
    from edge_agent.config import Config, MqttConfig

MASK = "**********"
PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"
# Keys whose value is a secret wherever they appear in a document.
SECRET_KEYS = ("password", "secret", "token", "private_key")
# The password of a URL such as a camera's rtsp://user:password@host is a secret too (greedy up
# to the last '@' before the path: a raw '@' inside a password is common).
_URL_PASSWORD = re.compile(r"(//[^/@:\s]*:)([^/\s]*)@")
# ``${NAME}`` in a config string: the value of NAME, a secret (resolve_refs).
REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,127})\}")
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
_MAX_SECRET_BYTES = 64 * 1024


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it masked."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)


def url_passwords(text: str) -> List[str]:
    """The passwords of the URLs in ``text``."""
    return [m.group(2) for m in _URL_PASSWORD.finditer(text) if m.group(2)]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every known secret value and URL password masked."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, MASK)
    return mask_url_passwords(text)


def mask(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``data`` (JSON-like) with secret-named keys, any secret value and the password
    of any URL replaced by :data:`MASK`."""
    secrets = list(secrets)
    if isinstance(data, dict):
        return {k: MASK if _secret_key(k) and v is not None else mask(v, secrets)
                for k, v in data.items()}
    if isinstance(data, list):
        return [mask(v, secrets) for v in data]
    if isinstance(data, str):
        return redact(data, secrets)
    return data


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and any(s in key.lower() for s in SECRET_KEYS)


def masked_config(cfg: Config) -> Any:
    """The config as plain data with secrets masked (``config show``, ``config.get``)."""
    data = cfg.model_dump(mode="json")
    if cfg.mqtt.password is not None:
        data["mqtt"]["password"] = MASK
    for cam in data["cameras"]:
        cam["source"] = mask_url_passwords(cam["source"])
        if cam.get("record"):
            cam["record"] = mask_url_passwords(cam["record"])
    return mask(data, cfg._secrets) if cfg._secrets else data


def config_secrets(cfg: Config) -> List[str]:
    """Secret values of a loaded config that must never reach a log line."""
    out = list(cfg._secrets)
    if cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value():
        out.append(cfg.mqtt.password.get_secret_value())
    if cfg.metrics.token is not None and cfg.metrics.token.get_secret_value():
        out.append(cfg.metrics.token.get_secret_value())
    for cam in cfg.cameras:
        out.extend(url_passwords(cam.source))
        out.extend(url_passwords(cam.record or ""))
    return out


def mqtt_password(given: Optional[str] = None,
                  environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The MQTT password: :data:`PASSWORD_ENV` when set, else ``given``."""
    env = os.environ if environ is None else environ
    return env.get(PASSWORD_ENV, given)


def mqtt_credentials(cfg: MqttConfig) -> Tuple[Optional[str], Optional[str]]:
    """(username, password) of the agent's connection; the environment wins for the password."""
    given = cfg.password.get_secret_value() if cfg.password is not None else None
    return cfg.username, mqtt_password(given)


def lookup(name: str, environ: Mapping[str, str]) -> Optional[str]:
    """The value of ``${name}``: the environment variable, else the systemd credential file
    ``$CREDENTIALS_DIRECTORY/name`` (its trailing newline dropped); None when neither exists.
    Raises ``ValueError`` for a credential that cannot be read."""
    if name in environ:
        return environ[name]
    folder = environ.get(CREDENTIALS_ENV)
    if not folder:
        return None
    path = Path(folder) / name
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"credential {name}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > _MAX_SECRET_BYTES:
        raise ValueError(f"credential {name}: larger than {_MAX_SECRET_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"credential {name}: not UTF-8 text") from None


Path_ = Tuple[Any, ...]


def resolve_refs(data: Any, environ: Mapping[str, str], path: Path_ = ()
                 ) -> Tuple[Any, List[str], List[Tuple[Path_, str]]]:
    """``data`` (parsed YAML) with every ``${NAME}`` in its string values replaced by
    :func:`lookup`; also the values used (secrets from then on) and the (key path, problem) of
    every reference that could not be resolved."""
    if isinstance(data, dict):
        out, used, bad = {}, [], []
        for k, v in data.items():
            out[k], u, b = resolve_refs(v, environ, path + (k,))
            used += u
            bad += b
        return out, used, bad
    if isinstance(data, list):
        items, used, bad = [], [], []
        for i, v in enumerate(data):
            item, u, b = resolve_refs(v, environ, path + (i,))
            items.append(item)
            used += u
            bad += b
        return items, used, bad
    if not isinstance(data, str) or "${" not in data:
        return data, [], []
    used, bad = [], []

    def one(m: re.Match) -> str:
        try:
            value = lookup(m.group(1), environ)
        except ValueError as exc:
            bad.append((path, str(exc)))
            return m.group(0)
        if value is None:
            bad.append((path, f"${{{m.group(1)}}} is not set (no environment variable "
                              f"{m.group(1)}, e.g. from the unit's EnvironmentFile=, and no "
                              "systemd credential of that name)"))
            return m.group(0)
        used.append(value)
        return value

    return REF.sub(one, data), used, bad
