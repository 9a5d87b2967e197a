"""The shipped unit passes systemd-analyze and keeps the properties the design requires."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "edge-agent.service"


def _unit():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNIT)
    return cp


def test_unit_has_required_properties():
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    assert svc["ProtectSystem"] == "strict" and svc["StateDirectory"] == "edge-agent"
    assert set(svc["SupplementaryGroups"].split()) >= {"video", "render"}
    assert "PrivateDevices" not in svc  # it would hide the GPU


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists: point it at a real executable in a copy of the unit.
    text = UNIT.read_text().replace(
        "/opt/edge-agent/.venv/bin/edge-agent", shutil.which("true") or "/bin/true"
    )
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    # Unknown keys or bad values are printed as "<unit>:<line>: ..." warnings with exit 0.
    problems = [line for line in proc.stderr.splitlines() if f"{unit.name}:" in line]
    assert proc.returncode == 0, proc.stderr
    assert not problems, proc.stderr
