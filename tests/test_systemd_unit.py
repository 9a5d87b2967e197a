"""The shipped unit passes systemd-analyze and keeps the properties the design requires."""

from __future__ import annotations

import configparser
import re
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
    assert "PrivateUsers" not in svc  # it would unmap the video/render groups
    assert svc["ExecReload"].endswith("kill -HUP $MAINPID")
    # pinned, and not past select()'s 1024 (paho-mqtt's loop); the metrics cap stays far below
    assert int(svc["LimitNOFILE"]) == 1024


def test_device_allow_list_keeps_gpu_and_cameras():
    text = UNIT.read_text()
    allowed = re.findall(r"^DeviceAllow=(\S+) rw$", text, re.M)
    assert "DevicePolicy=closed" in text
    assert {"char-video4linux", "char-drm", "char-nvidia*"} <= set(allowed)


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.fail("systemd-analyze is missing (make test installs the systemd package)",
                    pytrace=False)
    return exe


def _runnable_copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists: point it at a real executable in a copy of the unit.
    text = UNIT.read_text().replace(
        "/opt/edge-agent/.venv/bin/edge-agent", shutil.which("true") or "/bin/true"
    )
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_security_exposure_at_most_4(tmp_path):
    unit = _runnable_copy(tmp_path)
    proc = subprocess.run([_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True)
    m = re.search(r"Overall exposure level for edge-agent.service: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 4.0, proc.stdout
    assert f"scores this unit {m.group(1)} " in UNIT.read_text()  # the comment tells the truth


def test_systemd_analyze_verify(tmp_path):
    unit = _runnable_copy(tmp_path)
    proc = subprocess.run(
        [_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    # Unknown keys or bad values are printed as "<unit>:<line>: ..." warnings with exit 0.
    problems = [line for line in proc.stderr.splitlines() if f"{unit.name}:" in line]
    assert proc.returncode == 0, proc.stderr
    assert not problems, proc.stderr
