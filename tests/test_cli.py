"""The CLI: every subcommand is registered; logging never prints secrets."""

from __future__ import annotations

import json
import logging

import pytest

from edge_agent import cli
from edge_agent.daemon import logsetup


@pytest.mark.parametrize("command", sorted(cli.HANDLERS))
def test_subcommands_registered_with_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: edge-agent " + command in capsys.readouterr().out


def test_json_logs_redact_secrets(monkeypatch, capsys):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logsetup.setup("info", "auto", secrets=["s3cr3t-pw"])
    logging.getLogger("edge_agent.test").info("connecting with password %s", "s3cr3t-pw")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    rec = json.loads(line)
    assert rec["level"] == "info" and rec["logger"] == "edge_agent.test"
    assert "s3cr3t-pw" not in line and "***" in rec["msg"]
