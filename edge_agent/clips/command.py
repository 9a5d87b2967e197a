"""`edge-agent clips list|get`: the clips of the agent whose config is given, on this box."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from edge_agent import config as cfgmod
from edge_agent.clips.store import ClipStore
from edge_agent.common.exitcodes import EXIT_FAILED, EXIT_OK, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``clips`` subcommand and its two actions."""
    p = sub.add_parser("clips", help="list or copy the video clips recorded around alerts")
    p.add_argument("--config", "-C", required=True, help="the agent's YAML config file")
    csub = p.add_subparsers(dest="clips_cmd", required=True)
    csub.add_parser("list", help="every clip the store remembers: id, status, seconds, bytes")
    g = csub.add_parser("get", help="copy one clip (by the event_id of its alert) to a file")
    g.add_argument("event_id")
    g.add_argument("-o", "--output", help="destination (default: <event_id>.mp4 here)")


def _store(cfg: cfgmod.Config) -> ClipStore:
    cc = cfg.events.clips
    folder = Path(cc.dir)
    if not folder.is_absolute():
        folder = Path(cfg.state_dir) / folder
    if not folder.is_dir():
        raise FileNotFoundError(f"no clip folder {folder} (has the agent recorded any clip?)")
    return ClipStore(folder, int(cc.max_total_mb * 1e6))


def main(args: argparse.Namespace) -> int:
    """List clips, or copy one; exit 2 with the reason when it is not there."""
    try:
        store = _store(cfgmod.load(args.config))
    except cfgmod.ConfigError as exc:
        return fail("clips", "\n".join(exc.problems))
    except OSError as exc:
        return fail("clips", exc)
    if args.clips_cmd == "list":
        print(f"{'event_id':32}  {'camera':12} {'status':9} {'seconds':>8} {'bytes':>10}  reason")
        for c in store.list():
            print(f"{c.id:32}  {c.camera:12} {c.status:9} {c.duration_s:8.1f} {c.bytes:10d}  "
                  f"{c.reason or ''}")
        return EXIT_OK
    try:
        path, _, reason = store.lookup(args.event_id)
    except ValueError as exc:
        return fail("clips", exc)
    if path is None:
        return fail("clips", f"clip {args.event_id}: {reason}")
    dest = Path(args.output or f"{args.event_id}.mp4")
    try:
        shutil.copyfile(path, dest)
    except OSError as exc:  # a full disk, a folder that is not there: say so, no traceback
        return fail("clips", f"cannot copy clip {args.event_id} to {dest}: {exc}", EXIT_FAILED)
    print(f"{dest} ({path.stat().st_size} bytes)")
    return EXIT_OK
