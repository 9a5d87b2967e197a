"""Model store, ed25519 signing and the `engine keygen|sign|install|list|activate|rollback` CLI."""

from __future__ import annotations

import json
import os
import time

import pytest
from update_helpers import make_model, manifest_bytes, signed

from edge_agent.cli import main as cli
from edge_agent.update import signing, versions
from edge_agent.update.errors import UpdateError
from edge_agent.update.store import ModelStore


@pytest.fixture
def key(tmp_path):
    priv, pub, kid = signing.keygen(tmp_path / "keys" / "k")
    return priv, pub.read_text().strip(), kid


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    return path, make_model(path)


# --- versions --------------------------------------------------------------------------------


def test_version_order_and_names():
    assert versions.newer("0.2.0", "0.1.1rc0")
    assert versions.newer("0.1.1", "0.1.1rc0")  # a release is above its release candidate
    assert versions.newer("10", "9.9")
    assert not versions.newer("1.0", "1")
    for bad in ("../x", "1/2", "", "v1", "1..2", "1.0 "):
        with pytest.raises(UpdateError, match="bad_version"):
            versions.check(bad)


# --- signing ---------------------------------------------------------------------------------


def test_sign_verify_and_every_refusal(tmp_path, key, tiny):
    priv, pub_hex, kid = key
    path, manifest = tiny
    data = path.read_bytes()
    keys = signing.trusted_keys([pub_hex])
    env = signed(manifest, data, "2", priv)
    got, m = signing.verify(env, keys)
    assert m["version"] == "2" and json.loads(got) == m

    with pytest.raises(UpdateError) as e:
        signing.verify(None, keys)
    assert e.value.code == "unsigned"

    tampered = dict(env, manifest=signing.base64.b64encode(
        manifest_bytes(manifest, data, "3")).decode())
    with pytest.raises(UpdateError) as e:
        signing.verify(tampered, keys)
    assert e.value.code == "bad_signature"

    other, _, other_id = signing.keygen(tmp_path / "other")
    with pytest.raises(UpdateError) as e:
        signing.verify(signed(manifest, data, "2", other), keys)
    assert e.value.code == "unknown_key" and other_id in e.value.message

    old = signed(manifest, data, "2", priv, not_after=time.time() - 60)
    with pytest.raises(UpdateError) as e:
        signing.verify(old, keys)
    assert e.value.code == "expired"

    # two trusted keys at once (rotation): both verify
    pub2 = (tmp_path / "other.pub").read_text().strip()
    both = signing.trusted_keys([pub_hex, pub2])
    assert signing.verify(signed(manifest, data, "2", other), both)[1]["version"] == "2"


def test_public_key_forms_and_errors(tmp_path, key):
    priv, pub_hex, kid = key
    from cryptography.hazmat.primitives import serialization

    k = serialization.load_pem_private_key(priv.read_bytes(), None)
    pem = k.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    assert signing.parse_public_key(str(tmp_path / "pub.pem")).key_id == kid
    assert signing.parse_public_key(pub_hex).key_id == kid
    with pytest.raises(ValueError, match="neither 64 hex digits nor a readable key file"):
        signing.parse_public_key("nothex")
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(UpdateError, match="not overwriting"):
        signing.keygen(priv.with_suffix(""))


# --- the store -------------------------------------------------------------------------------


def _add(store, tmp_path, version, content=b"x"):
    src = tmp_path / f"m{version}.onnx"
    src.write_bytes(content + version.encode())
    import hashlib

    return store.add(version, src, b"{}", None, name="m",
                     sha256=hashlib.sha256(src.read_bytes()).hexdigest(), source="test")


def test_store_pointers_prune_failed_and_confinement(tmp_path):
    store = ModelStore(tmp_path / "models", keep=3)
    assert store.current is None and store.stored() == []
    for v in ("1", "2", "3"):
        _add(store, tmp_path, v)
        store.set_current(v)
    assert (store.current, store.previous) == ("3", "2")
    assert store.rollback() == "2"
    assert (store.current, store.previous) == ("2", "3")
    _add(store, tmp_path, "4")
    _add(store, tmp_path, "5")  # 5 versions > keep 3: the oldest non-pointer ones go
    store.set_current("5")
    names = [v.version for v in store.stored()]
    assert names == ["2", "4", "5"] and (store.current, store.previous) == ("5", "2")
    assert store.mark_failed("4", "NaN outputs") is not None
    assert [v.version for v in store.stored()] == ["2", "5"]
    failed = store.failed()
    assert len(failed) == 1 and failed[0].startswith("4-")
    assert json.loads((store.failed_dir / failed[0] / "failed.json").read_text())["reason"] \
        == "NaN outputs"
    for bad in ("../../etc", "..", "a/b"):
        with pytest.raises(UpdateError) as e:
            store.version_dir(bad)
        assert e.value.code == "bad_name"
    with pytest.raises(UpdateError, match="unknown_version"):
        store.set_current("9")
    # pointers are whole JSON files and no temporary file is left behind
    assert json.loads((store.root / "current").read_text())["version"] == "5"
    assert not [p for p in os.listdir(store.root) if ".tmp" in p]


def test_store_running_persisted_and_journal(tmp_path):
    store = ModelStore(tmp_path / "models")
    _add(store, tmp_path, "1")
    store.set_current("1")
    store.set_running("1", "ab" * 32)
    again = ModelStore(tmp_path / "models")
    assert again.running["version"] == "1" and again.floor_version() == "1"
    store.write_journal({"state": "DOWNLOADING"})
    assert again.journal()["state"] == "DOWNLOADING"
    again.clear_journal()
    assert store.journal() is None


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_keygen_sign_install_activate_rollback(tmp_path, tiny, capsys):
    path, manifest = tiny
    (tmp_path / "tiny.json").write_text(json.dumps(manifest))
    assert cli(["engine", "keygen", "--out", str(tmp_path / "ops")]) == 0
    pub = (tmp_path / "ops.pub").read_text().strip()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nupdate:\n  trusted_keys: [{pub}]\n")
    for v in ("1.0", "1.1"):
        assert cli(["engine", "sign", str(path), "--key", str(tmp_path / "ops.key"),
                    "--version", v]) == 0
        assert cli(["engine", "install", str(path), "--sig", str(tmp_path / f"tiny-{v}.sig"),
                    "-C", str(cfg)]) == 0
    signed_m = json.loads((tmp_path / "tiny-1.1.manifest.json").read_text())
    assert signed_m["version"] == "1.1" and signed_m["sha256"] == manifest["sha256"]
    assert signed_m["not_after"] > signing.format_time(time.time() + 300 * 86400)
    capsys.readouterr()
    assert cli(["engine", "activate", "1.0", "-C", str(cfg)]) == 0
    assert cli(["engine", "activate", "1.1", "-C", str(cfg)]) == 0
    assert cli(["engine", "rollback", "-C", str(cfg)]) == 0
    assert cli(["engine", "list", "-C", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "current  1.0" in out and "previous 1.1" in out
    # a signature by a key the device does not trust, and a wrong file, are refused (exit 2)
    assert cli(["engine", "keygen", "--out", str(tmp_path / "rogue")]) == 0
    assert cli(["engine", "sign", str(path), "--key", str(tmp_path / "rogue.key"),
                "--version", "9", "--out", str(tmp_path / "rogue-9")]) == 0
    assert cli(["engine", "install", str(path), "--sig", str(tmp_path / "rogue-9.sig"),
                "-C", str(cfg)]) == 2
    other = tmp_path / "other.onnx"
    other.write_bytes(path.read_bytes() + b"\0")
    assert cli(["engine", "install", str(other), "--sig", str(tmp_path / "tiny-1.1.sig"),
                "-C", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown_key" in err and "sha256_mismatch" in err
    assert cli(["engine", "activate", "7", "-C", str(cfg)]) == 2
