"""`edge-agent service install|uninstall`: runs the checkout's ``systemd/install.sh``.

The shell script is the one implementation (it must also run before any venv exists, as
``sudo systemd/install.sh``); this command finds it beside the package and passes the options on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

SCRIPT = Path(__file__).resolve().parents[2] / "systemd" / "install.sh"  # edge_agent/cli/ -> repo


def script_args(args: argparse.Namespace) -> List[str]:
    """The install.sh command line for parsed ``service`` options."""
    out: List[str] = []
    if args.prefix:
        out += ["--prefix", args.prefix]
    if args.dry_run:
        out.append("--dry-run")
    if args.service_cmd == "uninstall" or args.uninstall:
        out.append("--uninstall")
    if args.purge:
        out.append("--purge")
    if args.extra:
        out += ["--extra", args.extra]
    if args.python:
        out += ["--python", args.python]
    return out


def main(args: argparse.Namespace, script: Optional[Path] = None) -> int:
    """Run install.sh with the options; its exit status (1 when it cannot be found)."""
    script = SCRIPT if script is None else script
    if not script.is_file():
        print(f"error: {script} not found: `edge-agent service` runs systemd/install.sh from a "
              "source checkout (this edge-agent was installed without one); clone the "
              "repository and run `sudo systemd/install.sh` there", file=sys.stderr)
        return 1
    return subprocess.call(["bash", str(script), *script_args(args)])
