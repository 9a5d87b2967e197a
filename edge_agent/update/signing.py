"""ed25519 signing of model manifests (``cryptography``).

What is signed is the manifest's exact bytes; the manifest carries the ONNX file's sha256, so one
signature covers the model too. The signature travels in a small JSON *envelope* (the ``.sig``
file, and the ``signature`` field of ``cmd/engine.update``) together with a copy of those bytes,
so a device needs nothing else than the ONNX file and the envelope::

    {"format": 1, "alg": "ed25519", "key_id": "<16 hex>",
     "manifest": "<base64 of the manifest bytes>", "signature": "<base64 of 64 bytes>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw 32-byte public key. A device
trusts the public keys listed in ``update.trusted_keys`` (several, so keys can rotate); an
envelope signed by any other key is refused as ``unknown_key``. The manifest must carry
``not_after`` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``); past it the artifact is refused as ``expired``.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from edge_agent.update.errors import UpdateError

ENVELOPE_FORMAT = 1
ALG = "ed25519"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_TIME_FMT = "%Y-%m-%dT%H:%M:%SZ"
MAX_MANIFEST_BYTES = 1 << 20


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # a dependency of edge-agent; only a broken install lacks it
        raise UpdateError("no_crypto", "the 'cryptography' package is not installed") from exc
    return ed25519, serialization


def key_id(raw_public: bytes) -> str:
    """The id of a public key: first 16 hex digits of sha256 of its raw 32 bytes."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key and its id."""

    key_id: str
    raw: bytes

    def verify(self, signature: bytes, data: bytes) -> bool:
        ed25519, _ = _crypto()
        from cryptography.exceptions import InvalidSignature

        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def parse_public_key(spec: str, base: Optional[Path] = None) -> PublicKey:
    """A public key from 64 hex digits, or from a file holding them or a PEM public key.

    Raises ``ValueError`` naming what is wrong (config validation reports it with the key path).
    """
    text = spec.strip()
    if not _HEX64.match(text):
        path = Path(text)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"public key {spec!r} is neither 64 hex digits nor a readable key "
                             f"file ({exc})") from None
    if _HEX64.match(text):
        raw = bytes.fromhex(text)
    else:
        ed25519, serialization = _crypto()
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError:
            raise ValueError(f"public key file {spec!r}: not 64 hex digits nor a PEM public "
                             "key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"public key file {spec!r}: not an ed25519 key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(key_id(raw), raw)


def trusted_keys(specs: Iterable[str], base: Optional[Path] = None) -> Dict[str, PublicKey]:
    """key_id -> key for every configured key."""
    out: Dict[str, PublicKey] = {}
    for s in specs:
        k = parse_public_key(s, base)
        out[k.key_id] = k
    return out


# --- keys and signing (operator side) -----------------------------------------------------------


def keygen(prefix: os.PathLike) -> Tuple[Path, Path, str]:
    """Write ``PREFIX.key`` (private, PKCS#8 PEM, mode 0600) and ``PREFIX.pub`` (hex).

    Refuses to overwrite an existing private key. Returns (private path, public path, key id).
    """
    ed25519, serialization = _crypto()
    prefix = Path(prefix)
    priv_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(
        prefix.name + ".pub")
    if priv_path.exists():
        raise UpdateError("exists", f"{priv_path} exists; not overwriting a private key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_text(raw.hex() + "\n", encoding="ascii")
    return priv_path, pub_path, key_id(raw)


def _load_private(path: os.PathLike):
    ed25519, serialization = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UpdateError("bad_key", f"cannot read private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UpdateError("bad_key", f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UpdateError("bad_key", f"{path} is not an ed25519 private key")
    return key, serialization


def sign(manifest_bytes: bytes, private_key: os.PathLike) -> Dict[str, Any]:
    """The envelope signing ``manifest_bytes`` with the key in ``private_key``."""
    key, serialization = _load_private(private_key)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return {"format": ENVELOPE_FORMAT, "alg": ALG, "key_id": key_id(raw),
            "manifest": base64.b64encode(manifest_bytes).decode("ascii"),
            "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii")}


def format_time(t: float) -> str:
    return time.strftime(_TIME_FMT, time.gmtime(t))


def parse_time(text: Any, what: str) -> float:
    """Epoch seconds of a ``YYYY-MM-DDTHH:MM:SSZ`` string; UpdateError ``bad_manifest``."""
    try:
        return float(calendar.timegm(time.strptime(str(text), _TIME_FMT)))
    except ValueError:
        raise UpdateError("bad_manifest", f"{what} {text!r} is not a UTC time like "
                          "2027-01-31T00:00:00Z") from None


# --- verification (device side) ------------------------------------------------------------------


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise UpdateError("bad_signature", f"envelope {what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise UpdateError("bad_signature", f"envelope {what} is not valid base64") from None


def read_envelope(value: Any) -> Dict[str, Any]:
    """An envelope from a dict, its JSON text or bytes; UpdateError ``bad_signature`` if not."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UpdateError("bad_signature", "the signature is not a JSON envelope") from None
    if not isinstance(value, dict):
        raise UpdateError("bad_signature", "the signature must be a JSON object (envelope)")
    return value


def verify(envelope: Any, keys: Dict[str, PublicKey], now: Optional[float] = None
           ) -> Tuple[bytes, Dict[str, Any]]:
    """Check an envelope; returns (manifest bytes, manifest JSON) once it is trusted.

    Refusals (:class:`UpdateError` codes): ``unsigned`` (no envelope), ``bad_signature``
    (malformed, or the signature does not match), ``unknown_key`` (signed by a key not in
    ``keys``), ``expired`` (past ``not_after``), ``bad_manifest`` (not JSON, no ``not_after``).
    """
    if envelope is None or envelope == "" or envelope == {}:
        raise UpdateError("unsigned", "the artifact carries no signature, and update."
                          "allow_unsigned is off")
    env = read_envelope(envelope)
    if env.get("alg") != ALG:
        raise UpdateError("bad_signature", f"envelope alg {env.get('alg')!r}, expected {ALG!r}")
    kid = env.get("key_id")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise UpdateError("unknown_key", f"signed by key {str(kid)[:32]!r}, which is not among "
                          f"the {len(keys)} trusted key(s) ({', '.join(sorted(keys)) or 'none'})")
    data = _b64(env.get("manifest"), "manifest")
    sig = _b64(env.get("signature"), "signature")
    if len(data) > MAX_MANIFEST_BYTES:
        raise UpdateError("bad_manifest", f"manifest of {len(data)} bytes is too large")
    if len(sig) != 64 or not key.verify(sig, data):
        raise UpdateError("bad_signature", f"the signature does not match the manifest for key "
                          f"{kid} (altered manifest, or signed by another key)")
    manifest = manifest_json(data)
    if "not_after" not in manifest:
        raise UpdateError("bad_manifest", "the signed manifest has no not_after (expiry)")
    expiry = parse_time(manifest["not_after"], "not_after")
    now = time.time() if now is None else now
    if now > expiry:
        raise UpdateError("expired", f"the manifest expired at {manifest['not_after']} "
                          f"(now {format_time(now)})")
    return data, manifest


def manifest_json(data: bytes) -> Dict[str, Any]:
    """The JSON object of manifest bytes; UpdateError ``bad_manifest`` when it is not one."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UpdateError("bad_manifest", "the manifest is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise UpdateError("bad_manifest", "the manifest is not a JSON object")
    return obj


def manifest_bytes(obj: Dict[str, Any]) -> bytes:
    """A manifest as the bytes that are signed and stored (indented JSON, newline at the end)."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def manifest_to_sign(model: Path, version: str, base_manifest: Optional[str],
                     valid_days: float) -> bytes:
    """The manifest bytes to sign: the base manifest re-pointed at ``model`` and ``version``,
    valid for ``valid_days`` from now."""
    from edge_agent.inference import manifest as mf  # the inference package is heavy to import
    from edge_agent.update import versions

    versions.check(version)
    if valid_days <= 0:
        raise UpdateError("bad_request", f"--valid-days must be > 0, got {valid_days}")
    mf.check_model_file(model)
    base = mf.resolve(model, base_manifest, verify_sha=False)
    data = base.to_dict()
    now = time.time()
    data.update(sha256=mf.file_sha256(model), size=model.stat().st_size, version=version,
                signed_at=format_time(now), not_after=format_time(now + valid_days * 86400))
    return manifest_bytes(data)


def read_envelope_file(path: str) -> Dict[str, Any]:
    """The envelope in the ``.sig`` file at ``path``; UpdateError ``bad_signature`` when it
    cannot be read or is not one."""
    try:
        return read_envelope(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UpdateError("bad_signature", f"cannot read {path}: {exc.strerror}") from None


def envelope_manifest(env: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest JSON inside an envelope, not verified (the device verifies)."""
    try:
        return manifest_json(base64.b64decode(env.get("manifest", ""), validate=True))
    except ValueError:
        raise UpdateError("bad_signature", "the envelope's manifest is not base64") from None
