"""`edge-agent config validate|show`.

``validate`` runs the same checks as ``run``'s start-up (``edge_agent.daemon.preflight``: model,
file sources, TLS files, state directory) after the schema, so a config it accepts starts;
``--schema-only`` checks the file alone (e.g. on another machine, or right after an install)."""

from __future__ import annotations

import argparse
import sys

import yaml

from edge_agent import config as cfgmod
from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_OK
from edge_agent.config.secrets import masked_config
from edge_agent.daemon import preflight


def main(args: argparse.Namespace) -> int:
    """Validate a config (exit 2 on error) or print the effective config with secrets masked."""
    try:
        if args.config_cmd == "show" and not args.file:
            cfg = cfgmod.load_text("", "<defaults>")
        elif args.config_cmd == "validate" and not getattr(args, "schema_only", False):
            cfg = preflight.load_checked(args.file)
        else:
            cfg = cfgmod.load(args.file)
    except cfgmod.ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.config_cmd == "validate":
        print(f"{args.file}: ok ({len(cfg.cameras)} camera(s))")
    else:
        sys.stdout.write(yaml.safe_dump(masked_config(cfg), sort_keys=False))
    return EXIT_OK
