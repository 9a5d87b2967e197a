"""systemd/install.sh for real, in --prefix mode in a temp dir (and as an unprivileged user).

The prefix install creates a real venv and pip-installs this checkout into it (``--extra none``
keeps it to the core dependencies, from the warm pip cache: ~10-20 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "systemd" / "install.sh"
NOBODY = 65534


def _copy_checkout(dest: Path) -> Path:
    """The checkout's own files (tracked and new, not ignored) copied to ``dest``."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    for name in filter(None, out.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _run(script: Path, *args: str, env=None, user: int = -1) -> subprocess.CompletedProcess:
    cmd = ["bash", str(script), *args]
    if user >= 0:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _tree(root: Path) -> Dict[str, Tuple[int, int, int]]:
    """path -> (mode, size, mtime_ns) of everything under root (bytecode caches aside)."""
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return _copy_checkout(tmp_path_factory.mktemp("src"))


def test_prefix_install_is_idempotent_keeps_user_config_and_uninstalls(checkout, tmp_path):
    script = checkout / "systemd" / "install.sh"
    root = tmp_path / "root"
    dry = _run(script, "--prefix", str(root), "--dry-run", "--extra", "none")
    assert dry.returncode == 0, dry.stderr
    assert "would: create venv" in dry.stdout and "nothing was changed" in dry.stdout
    assert not root.exists()  # --dry-run changed nothing

    first = _run(script, "--prefix", str(root), "--extra", "none")
    assert first.returncode == 0, first.stdout + first.stderr
    app, etc, state = root / "opt/edge-agent", root / "etc/edge-agent", root / "var/lib/edge-agent"
    unit = root / "etc/systemd/system/edge-agent.service"
    agent = app / ".venv/bin/edge-agent"
    assert os.access(agent, os.X_OK)
    assert (etc / "env").stat().st_mode & 0o777 == 0o600
    conf = (etc / "edge-agent.yaml").read_text()
    assert f"state_dir: {state} " in conf
    assert (state / "engines/manifests/yolox_nano_coco.json").is_file()
    assert f"ExecStart={agent} run --config {etc}/edge-agent.yaml" in unit.read_text()
    assert (unit.parent / "edge-agent.service.d/devices.conf").is_file()
    ver = subprocess.run([str(agent), "--version"], capture_output=True, text=True)
    assert ver.returncode == 0 and ver.stdout.startswith("edge-agent ")
    if shutil.which("systemd-analyze"):  # the installed unit (its ExecStart exists)
        v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                           capture_output=True, text=True)
        assert v.returncode == 0 and "edge-agent.service:" not in v.stderr, v.stderr

    before = _tree(root)
    second = _run(script, "--prefix", str(root), "--extra", "none")
    assert second.returncode == 0, second.stderr
    assert second.stdout.rstrip().endswith("nothing to change"), second.stdout
    assert "do:" not in second.stdout
    again = _run(script, "--prefix", str(root), "--extra", "none", "--dry-run")
    assert again.stdout.rstrip().endswith("nothing to change")
    assert _tree(root) == before

    # The user edits the config; a newer default ships: the edit stays, the default goes to .new.
    user_conf = conf.replace("device_id: edge-1 ", "device_id: lobby-cam ")
    (etc / "edge-agent.yaml").write_text(user_conf)
    default = checkout / "configs/edge-agent.yaml"
    default.write_text(default.read_text().replace("level: info ", "level: warning "))
    upgrade = _run(script, "--prefix", str(root), "--extra", "none")
    assert upgrade.returncode == 0, upgrade.stderr
    assert (etc / "edge-agent.yaml").read_text() == user_conf
    assert "level: warning " in (etc / "edge-agent.yaml.new").read_text()
    assert "kept" in upgrade.stderr and "edge-agent.yaml.new" in upgrade.stderr
    assert _run(script, "--prefix", str(root), "--extra", "none").stdout.rstrip().endswith(
        "nothing to change")

    data = state / "outbox.sqlite"
    data.write_bytes(b"events")
    gone = _run(script, "--prefix", str(root), "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not app.exists() and not unit.exists() and not unit.with_suffix(".service.d").exists()
    assert data.read_bytes() == b"events" and (etc / "edge-agent.yaml").read_text() == user_conf
    assert f"kept: {etc}" in gone.stdout and f"kept: {state}" in gone.stdout
    assert _run(script, "--prefix", str(root), "--uninstall").stdout.rstrip().endswith(
        "nothing to change")
    purge = _run(script, "--prefix", str(root), "--uninstall", "--purge")
    assert purge.returncode == 0 and not etc.exists() and not state.exists()


@pytest.fixture(scope="module")
def public_script():
    """install.sh in a copy of the checkout that the unprivileged user can read: the real
    checkout may sit below a directory only root can enter (pytest's and mktemp's are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="edge-agent-src-"))
    try:
        root.chmod(0o755)
        yield _copy_checkout(root) / "systemd" / "install.sh"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _unprivileged() -> int:
    """A uid without root for the refusal tests: nobody when we are root, else ourselves."""
    if os.geteuid() != 0:
        return -1
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop root")
    return NOBODY


def test_real_install_without_root_is_refused(public_script):
    proc = _run(public_script, user=_unprivileged())
    assert proc.returncode == 1
    assert "needs root" in proc.stderr and "sudo" in proc.stderr
    assert "do:" not in proc.stdout


def test_real_dry_run_without_root_lists_the_steps_and_changes_nothing(public_script):
    if Path("/opt/edge-agent").exists() or Path("/etc/edge-agent").exists():
        pytest.skip("edge-agent is installed on this machine")
    proc = _run(public_script, "--dry-run", user=_unprivileged())
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "would: create user edge-agent (groups video, render)" in out or "ok: user" in out
    assert "would: create /etc/systemd/system/edge-agent.service" in out
    assert "nothing was changed" in out
    assert not Path("/opt/edge-agent").exists() and not Path("/etc/edge-agent").exists()


def test_jetson_gets_system_site_packages_and_warnings(tmp_path):
    tegra = tmp_path / "nv_tegra_release"
    tegra.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    env = dict(os.environ, EDGE_AGENT_TEGRA_RELEASE=str(tegra))
    proc = _run(SCRIPT, "--prefix", str(tmp_path / "root"), "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Jetson: # R35 (release)" in proc.stdout
    assert "would: create venv" in proc.stdout and "--system-site-packages" in proc.stdout
    assert f"pip install {REPO} into" in proc.stdout  # no PyPI extra over JetPack's packages
    checks = {"TensorRT": "import tensorrt", "pycuda": "import pycuda.driver",
              "OpenCV with GStreamer": "import re, cv2; assert re.search("
              "r'GStreamer:\\s+YES', cv2.getBuildInformation())"}
    for what, code in checks.items():  # warned about exactly when python3 lacks it
        missing = subprocess.run(["python3", "-c", code], capture_output=True).returncode != 0
        assert (f"warning: {what}" in proc.stderr) == missing, proc.stderr
    other = _run(SCRIPT, "--prefix", str(tmp_path / "root"), "--dry-run")
    assert f"pip install {REPO}[cpu] into" in other.stdout or f"{REPO}[gpu]" in other.stdout
    assert "--system-site-packages" not in other.stdout


@pytest.mark.parametrize("args, msg", [
    (["--purge"], "--purge only goes with --uninstall"),
    (["--bogus"], "unknown option: --bogus"),
    (["--extra", "tpu"], "--extra must be auto, cpu, gpu or none"),
])
def test_bad_usage_exits_2(args, msg, tmp_path):
    proc = _run(SCRIPT, "--prefix", str(tmp_path), *args)
    assert proc.returncode == 2 and msg in proc.stderr


def test_cli_service_install_runs_the_script(tmp_path):
    root = tmp_path / "root"
    cli = subprocess.run([sys.executable, "-m", "edge_agent.cli", "service", "install",
                          "--prefix", str(root), "--dry-run", "--extra", "cpu"],
                         capture_output=True, text=True, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    assert f"would: pip install {REPO}[cpu]" in cli.stdout and not root.exists()
    un = subprocess.run([sys.executable, "-m", "edge_agent.cli", "service", "uninstall",
                         "--prefix", str(root), "--dry-run"], capture_output=True, text=True)
    assert un.returncode == 0 and "edge-agent uninstall" in un.stdout


def test_cli_service_without_checkout_says_so(tmp_path, capsys):
    from edge_agent.cli import build_parser, service_cmd

    args = build_parser().parse_args(["service", "install", "--dry-run"])
    assert service_cmd.main(args, script=tmp_path / "missing.sh") == 1
    assert "source checkout" in capsys.readouterr().err
