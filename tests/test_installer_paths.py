"""Issue 23, finding 8 (installer): paths with spaces and other characters are quoted the way
systemd reads them (the installed unit passes ``systemd-analyze verify``), paths systemd or a
venv cannot take are refused before anything changes, and one install runs at a time."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_installer import _copy_checkout, _run


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return _copy_checkout(tmp_path_factory.mktemp("src"))


def test_a_prefix_with_a_space_installs_a_unit_systemd_accepts(checkout, tmp_path):
    # a space, and '|' and '&' that broke the sed that wrote the unit, and a systemd specifier
    root = tmp_path / "edge root|a&b%n"
    # --extra cpu: the installer's own `config validate` runs the CLI, which needs OpenCV
    proc = _run(checkout / "systemd" / "install.sh", "--prefix", str(root), "--extra", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app, etc = root / "opt/edge-agent", root / "etc/edge-agent"
    state = root / "var/lib/edge-agent"
    unit = root / "etc/systemd/system/edge-agent.service"
    text = unit.read_text()
    esc = str(root).replace("%", "%%")
    assert (f'ExecStart="{esc}/opt/edge-agent/.venv/bin/edge-agent" run --config '
            f'"{esc}/etc/edge-agent/edge-agent.yaml"') in text, text
    assert f"WorkingDirectory={esc}/var/lib/edge-agent\n" in text
    assert f"EnvironmentFile=-{esc}/etc/edge-agent/env\n" in text
    conf = yaml.safe_load((etc / "edge-agent.yaml").read_text())
    assert conf["state_dir"] == str(state)
    assert conf["model"]["engine_dir"] == str(state / "engines")
    assert (app / ".venv/bin/edge-agent").is_file()
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (make system-deps)")
    v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True)
    assert v.returncode == 0 and "edge-agent.service:" not in v.stderr, v.stderr


@pytest.mark.parametrize("bad", ['a"b', "a'b", "a\\b", "a$b", "a\nb", "a\tb"])
def test_a_prefix_systemd_or_a_venv_cannot_take_is_refused_first(tmp_path, bad):
    root = tmp_path / bad
    proc = _run(Path(__file__).resolve().parent.parent / "systemd" / "install.sh",
                "--prefix", str(root), "--extra", "none")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be in the paths of a systemd unit" in proc.stderr
    assert not root.exists() and "do:" not in proc.stdout


def test_one_install_at_a_time(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    script = Path(__file__).resolve().parent.parent / "systemd" / "install.sh"
    with open(root / ".edge-agent-install.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running install holds it
        proc = _run(script, "--prefix", str(root), "--extra", "none")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "another edge-agent install or uninstall is running" in proc.stderr
        assert not (root / "opt").exists()  # it changed nothing
        gone = _run(script, "--prefix", str(root), "--uninstall")
        assert gone.returncode == 1 and "is running" in gone.stderr
        dry = _run(script, "--prefix", str(root), "--extra", "none", "--dry-run")
        assert dry.returncode == 0 and "nothing was changed" in dry.stdout  # reads only
