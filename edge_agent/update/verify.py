"""Is a model the one asked for, trusted, newer, and usable by our rules?

:func:`precheck` judges the request by its signed envelope alone, before a byte of the model is
requested (each refusal an :class:`UpdateError` with the code in brackets):

1. the signature envelope is by a trusted key, intact and not expired [unsigned, bad_signature,
   unknown_key, expired] (``allow_unsigned`` accepts a missing envelope, for development);
2. the manifest parses, describes the sha256 the request names, with the version asked for
   [bad_manifest, sha256_mismatch, version_mismatch];
3. its name and version are safe file names inside the store [bad_name];
4. the version is above the device's floor (the highest version ever current there) unless
   ``allow_downgrade`` [version_not_newer];
5. it has every head (and class) the configured rules use, and an input size within bounds
   [missing_head, missing_class, input_size];
6. its declared ``size`` (bytes) is within ``update.max_download_mb`` [too_large].

:func:`verify` (VERIFYING, after the download) repeats them and adds: the file has the signed
sha256 and size [sha256_mismatch, size_mismatch], and it is an ONNX graph whose inputs and
outputs match the manifest [not_onnx].

Another input size or class order than the running model's is fine: the device builds its own
plan, and rules go by head and class *name*.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from edge_agent.common.files import sha256_file
from edge_agent.inference import manifest as mf
from edge_agent.inference.errors import BackendUnavailableError, ModelError
from edge_agent.update import signing, versions
from edge_agent.update.errors import UpdateError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The rules (edge_agent.events.processor) and what they read: head -> classes they need by name
# (empty: any class of the head).
RULE_NEEDS = {"weapon": (), "crowd": ("person",), "plate": ()}


@dataclass(frozen=True)
class Policy:
    """What the device accepts (from ``update:`` in the config and the running rules)."""

    keys: Mapping[str, signing.PublicKey]
    allow_unsigned: bool = False
    allow_downgrade: bool = False
    min_input: int = 32
    max_input: int = 2048
    needed_heads: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verified:
    """A model that passed every check (or, from :func:`precheck`, every check its signed
    manifest allows)."""

    manifest: mf.Manifest
    manifest_bytes: bytes
    envelope: Optional[Dict[str, Any]]

    @property
    def size(self) -> Optional[int]:
        """The file size the signed manifest declares (None for manifests without one)."""
        return declared_size(self.manifest)


def needed_heads(events_cfg, running_heads: Mapping[str, Sequence[str]],
                 camera_zones: bool = True) -> Dict[str, List[str]]:
    """The heads (and classes) the configured rules use with the running model.

    A rule counts when it is enabled and the running model has its head (so a COCO adapter
    without a plate head does not make the plate head mandatory).
    """
    enabled = {"weapon": events_cfg.weapon.enabled, "crowd": camera_zones,
               "plate": events_cfg.plate.enabled}
    out: Dict[str, List[str]] = {}
    for head, classes in RULE_NEEDS.items():
        if enabled[head] and head in running_heads:
            out[head] = [c for c in classes if c in running_heads[head]]
    return out


def declared_size(m: mf.Manifest) -> Optional[int]:
    """The manifest's ``size`` in bytes (written by ``engine sign``), or None without one."""
    size = m.extra.get("size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise UpdateError("bad_manifest", f"manifest size {str(size)[:40]!r} is not a positive "
                          "number of bytes")
    return size


def precheck(request: Mapping[str, Any], policy: Policy, floor_version: Optional[str],
             max_bytes: Optional[int] = None, now: Optional[float] = None) -> Verified:
    """Every check the signed envelope allows, with no model file: run before the download, so
    an untrusted, old, misnamed or oversized update never makes the device fetch anything."""
    envelope = request.get("signature") or None
    data, envelope_obj = _manifest_bytes(envelope, request, policy, now)
    try:
        m = mf.parse(signing.manifest_json(data), "signed manifest")
    except ModelError as exc:
        raise UpdateError("bad_manifest", str(exc)) from None
    if m.sha256 != request["sha256"]:
        raise UpdateError("sha256_mismatch", f"the request names sha256 {request['sha256']}, "
                          f"the signed manifest {m.sha256}")
    _check_names(m, request)
    if floor_version is not None and not policy.allow_downgrade \
            and not versions.newer(m.version, floor_version):
        raise UpdateError("version_not_newer", f"version {m.version} is not above "
                          f"{floor_version}, the highest version this device has run "
                          "(update.allow_downgrade is off; a rollback does not lower it)")
    check_compatible(m, policy)
    size = declared_size(m)
    if size is not None and max_bytes is not None and size > max_bytes:
        raise UpdateError("too_large", f"the signed model is {size} bytes; "
                          f"update.max_download_mb allows {max_bytes}")
    return Verified(m, data, envelope_obj)


def verify(path: Path, request: Mapping[str, Any], policy: Policy,
           floor_version: Optional[str], now: Optional[float] = None) -> Verified:
    """Run every check on the downloaded ``path`` for ``request``; returns the manifest."""
    v = precheck(request, policy, floor_version, now=now)
    size = v.size
    if size is not None and path.stat().st_size != size:
        raise UpdateError("size_mismatch", f"the file has {path.stat().st_size} bytes; the "
                          f"signed manifest says {size}")
    if sha256_file(path) != v.manifest.sha256:  # the fetched file's own hash is not reported
        raise UpdateError("sha256_mismatch", f"the downloaded file does not have the signed "
                          f"sha256 {v.manifest.sha256}")
    check_graph(path, v.manifest)
    return v


def _manifest_bytes(envelope: Any, request: Mapping[str, Any], policy: Policy,
                    now: Optional[float]):
    if envelope is not None:
        data, _ = signing.verify(envelope, dict(policy.keys), now)
        return data, signing.read_envelope(envelope)
    if not policy.allow_unsigned:
        signing.verify(None, dict(policy.keys), now)  # raises "unsigned"
    raw = request.get("manifest")
    if not isinstance(raw, str):
        raise UpdateError("bad_manifest", "an unsigned update (allow_unsigned) needs the manifest "
                          "as base64 in the request's 'manifest' field")
    try:
        return base64.b64decode(raw, validate=True), None
    except ValueError:
        raise UpdateError("bad_manifest", "'manifest' is not valid base64") from None


def _check_names(m: mf.Manifest, request: Mapping[str, Any]) -> None:
    for what, value in (("name", m.name), ("version", m.version)):
        if not _SAFE_NAME.fullmatch(value) or ".." in value:
            raise UpdateError("bad_name", f"manifest {what} {value!r} is not a safe file name "
                              "([A-Za-z0-9._-], no '..'): files must stay inside the store")
    try:
        versions.check(m.version)
    except UpdateError as exc:
        raise UpdateError("bad_name", exc.message) from None
    if m.version != request["version"]:
        raise UpdateError("version_mismatch", f"the request asks for version "
                          f"{request['version']!r}, the signed manifest is {m.version!r}")


def check_compatible(m: mf.Manifest, policy: Policy) -> None:
    """Heads and classes the rules need, and the input size bounds."""
    heads = m.heads
    for head, classes in dict(policy.needed_heads).items():
        if head not in heads:
            raise UpdateError("missing_head", f"the model has no {head!r} head, which the "
                              f"configured rules use (its heads: {', '.join(sorted(heads))})")
        missing = [c for c in classes if c not in heads[head]]
        if missing:
            raise UpdateError("missing_class", f"head {head!r} lacks class(es) {missing} that "
                              "the rules use")
    i = m.input
    lo, hi = policy.min_input, policy.max_input
    if not (lo <= i.height <= hi and lo <= i.width <= hi):
        raise UpdateError("input_size", f"input {i.height}x{i.width} is outside the accepted "
                          f"{lo}..{hi} (update.min_input/max_input)")


def check_graph(path: Path, m: mf.Manifest) -> None:
    """The file must load as ONNX and match its manifest (ONNX Runtime on CPU, or onnx)."""
    try:
        from edge_agent.inference.onnxrt import load_session, tensor_infos

        sess = load_session(path, ["CPUExecutionProvider"], threads=1)
        mf.check_io(m, tensor_infos(sess.get_inputs()), tensor_infos(sess.get_outputs()),
                    "the downloaded model")
        return
    except BackendUnavailableError:
        pass
    except ModelError as exc:
        raise UpdateError("not_onnx", str(exc).replace(str(path), "the downloaded model")
                          ) from None
    try:  # no ONNX Runtime on this device (TensorRT only): the structural check alone
        import onnx

        onnx.checker.check_model(str(path))
    except ImportError:
        return  # BUILDING will parse it and fail with the parser's own message
    except Exception as exc:  # onnx raises ValidationError, DecodeError, ...
        raise UpdateError("not_onnx", f"not a valid ONNX file: {str(exc)[:300]}") from None


def describe(m: mf.Manifest) -> Dict[str, Any]:
    """A short JSON summary of a manifest for replies."""
    return {"name": m.name, "version": m.version, "sha256": m.sha256,
            "input": [m.input.height, m.input.width], "heads": m.heads}

