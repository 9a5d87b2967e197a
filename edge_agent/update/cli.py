"""`edge-agent engine keygen|sign|list|install|activate|rollback|push`.

keygen/sign run on the operator's machine; list/install/activate/rollback work on a device's
model store (``state_dir/models`` of its config) and take effect at the agent's next start;
push sends ``cmd/engine.update`` over MQTT and follows it to COMMITTED or a failure.

Exit status: 0 ok, 1 the update did not commit (or the broker/device could not be reached),
2 bad input (file, key, signature, version).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List

from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_OK, fail
from edge_agent.common.files import sha256_file
from edge_agent.update import signing
from edge_agent.update.errors import UpdateError


def add_parsers(esub) -> None:
    """Add the update subcommands to the `engine` subparsers (called from cli.py)."""
    k = esub.add_parser("keygen", help="make an ed25519 signing key pair")
    k.add_argument("--out", default="edge-agent-signing",
                   help="file prefix: writes PREFIX.key (private) and PREFIX.pub")
    s = esub.add_parser("sign", help="write a model's signed manifest and signature")
    s.add_argument("model")
    s.add_argument("--key", required=True, help="private key (from engine keygen)")
    s.add_argument("--version", required=True, help="the model version, e.g. 0.2.0")
    s.add_argument("--manifest", help="base manifest (default: beside the model or by sha256)")
    s.add_argument("--valid-days", type=float, default=365, help="expiry (not_after) from now")
    s.add_argument("--out", help="file prefix (default: MODEL-VERSION beside the model)")
    for name, text in (("list", "the versions in the device's model store"),
                       ("rollback", "make the previous version current (next start)")):
        p = esub.add_parser(name, help=text)
        _store_args(p)
    i = esub.add_parser("install", help="verify a signed model and add it to the store")
    i.add_argument("file")
    i.add_argument("--sig", required=True, help="signature file (from engine sign)")
    _store_args(i)
    a = esub.add_parser("activate", help="make a stored version current (next start)")
    a.add_argument("version")
    _store_args(a)
    p = esub.add_parser("push", help="send a signed model to devices over MQTT and follow it")
    p.add_argument("--device", help="device id")
    p.add_argument("--devices", help="comma-separated device ids (with --canary)")
    p.add_argument("--canary", type=int, default=0,
                   help="update this many devices first; the rest only if all of them commit")
    p.add_argument("--url", required=True, help="where the devices download the ONNX file")
    p.add_argument("--sig", required=True, help="signature file (from engine sign)")
    p.add_argument("--version", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="edge-agent")
    p.add_argument("--username")
    p.add_argument("--password", help="or env EDGE_AGENT_MQTT_PASSWORD")
    p.add_argument("--ca-file")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per device")
    p.add_argument("--no-progress", action="store_true")
    for name in ("keygen", "sign", "list", "rollback", "install", "activate", "push"):
        esub.choices[name].set_defaults(handler=HANDLER)


HANDLER = "edge_agent.update.cli:main"


def _store_args(p) -> None:
    p.add_argument("--config", "-C", help="the device's config (for state_dir, trusted keys)")
    p.add_argument("--state-dir", help="override the config's state_dir")


# --- operator side: keys and signing -----------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    priv, pub, kid = signing.keygen(args.out)
    print(f"private key {priv} (keep it secret; mode 0600)")
    print(f"public key  {pub}: {pub.read_text().strip()}")
    print(f"key id      {kid}")
    print("put the public key into each device's config under update.trusted_keys")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    model = Path(args.model)
    data = signing.manifest_to_sign(model, args.version, args.manifest, args.valid_days)
    env = signing.sign(data, args.key)
    prefix = Path(args.out) if args.out else model.with_name(f"{model.stem}-{args.version}")
    man_path = prefix.with_name(prefix.name + ".manifest.json")
    sig_path = prefix.with_name(prefix.name + ".sig")
    man_path.write_bytes(data)
    sig_path.write_text(json.dumps(env, indent=2) + "\n")
    m = json.loads(data)
    print(f"manifest  {man_path} (version {m['version']}, sha256 {m['sha256'][:16]}..., "
          f"expires {m['not_after']})")
    print(f"signature {sig_path} (key {env['key_id']})")
    return EXIT_OK


# --- device side: the store ---------------------------------------------------------------------


def _load_cfg(args: argparse.Namespace):
    from edge_agent import config as cfgmod

    cfg = cfgmod.load(args.config) if args.config else cfgmod.load_text("", "<defaults>")
    if args.state_dir:
        cfg = cfg.model_copy(update={"state_dir": args.state_dir})
    return cfg


def _store(cfg):
    from edge_agent.update.store import ModelStore

    return ModelStore(Path(cfg.state_dir) / "models", keep=cfg.update.keep_versions)


def store_lines(store) -> List[str]:
    """One line per stored version, with its pointer, and the failed ones."""
    cur, prev = store.current, store.previous
    run = (store.running or {}).get("version")
    lines = []
    for v in store.stored():
        mark = "current" if v.version == cur else "previous" if v.version == prev else ""
        ran = " (running)" if v.version == run else ""
        lines.append(f"{mark:<9}{v.version:<14}{v.name:<22}{v.sha256[:12]}  {v.installed}  "
                     f"{v.source}{', signed by ' + v.signer if v.signer else ''}{ran}")
    lines += [f"{'failed':<9}{name}" for name in store.failed()]
    if store.floor_version() is not None:
        lines.append(f"{'floor':<9}{store.floor_version()} (updates must be above it)")
    return lines or ["(empty store)"]


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(_load_cfg(args))
    print(f"model store {store.root}")
    for line in store_lines(store):
        print(line)
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    from edge_agent.inference import manifest as mf
    from edge_agent.update import verify as vf
    from edge_agent.update.worker import policy

    cfg = _load_cfg(args)
    store = _store(cfg)
    env = signing.read_envelope_file(args.sig)
    path = mf.check_model_file(args.file)
    m = signing.envelope_manifest(env)
    request = {"sha256": sha256_file(path), "version": str(m.get("version")),
               "signature": env}
    running = store.get(store.current) if store.current else None
    heads = mf.load(running.manifest).heads if running else {}
    v = vf.verify(path, request, policy(cfg, heads), floor_version=None)
    info = store.add(v.manifest.version, path, v.manifest_bytes, v.envelope,
                     name=v.manifest.name, sha256=v.manifest.sha256, source="install")
    print(f"installed {info.name} {info.version} in {info.path} (signed by {info.signer}); "
          f"`edge-agent engine activate {info.version}` makes it current")
    return EXIT_OK


def cmd_activate(args: argparse.Namespace) -> int:
    store = _store(_load_cfg(args))
    store.set_current(args.version)
    print(f"current: {args.version} (previous: {store.previous}); the agent runs it from its "
          "next start (a running agent: cmd/engine.update or cmd/engine.rollback)")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    store = _store(_load_cfg(args))
    now = store.rollback()
    print(f"current: {now} (previous: {store.previous}); the agent runs it from its next start")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from edge_agent.update.push import push

    return push(args)


COMMANDS = {"keygen": cmd_keygen, "sign": cmd_sign, "list": cmd_list, "install": cmd_install,
            "activate": cmd_activate, "rollback": cmd_rollback, "push": cmd_push}


def main(args: argparse.Namespace) -> int:
    """Handler of the update subcommands of `edge-agent engine`."""
    from edge_agent.config import ConfigError
    from edge_agent.inference.errors import ModelError

    name = args.engine_cmd
    try:
        return COMMANDS[name](args)
    except UpdateError as exc:
        return fail(f"engine {name}", f"refused ({exc.code}): {exc.message}", EXIT_BAD_INPUT)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ModelError, ValueError) as exc:
        return fail(f"engine {name}", exc, EXIT_BAD_INPUT)
