"""The service as installed: `install.sh --prefix DIR`, then the unit's own ExecStart with the
installed config (its model.path left at the default) until systemd's READY=1.

The install is real: a venv under DIR with this checkout and its [cpu] extra pip-installed from
the local wheels (a minute or so); the agent runs the default model from the installed package.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_installer import _copy_checkout, _run
from test_service_systemd import NotifySocket


def _exec_start(unit: Path) -> list:
    lines = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0][len("ExecStart="):])


@pytest.mark.slow
def test_installed_exec_start_runs_the_installed_config_and_model_to_ready(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    root = tmp_path / "root"
    inst = _run(src / "systemd" / "install.sh", "--prefix", str(root), "--extra", "cpu")
    assert inst.returncode == 0, inst.stdout + inst.stderr
    app, etc, state = root / "opt/edge-agent", root / "etc/edge-agent", root / "var/lib/edge-agent"
    conf = etc / "edge-agent.yaml"
    agent = app / ".venv" / "bin" / "edge-agent"

    # The default model.path names the model installed with the package, not the checkout's.
    show = subprocess.run([str(agent), "config", "show", str(conf)], capture_output=True,
                          text=True, cwd="/")
    assert show.returncode == 0, show.stderr
    shown = yaml.safe_load(show.stdout)
    model = Path(shown["model"]["path"])
    assert model.is_file() and app in model.parents and "_shipped" in model.parts
    assert shown["model"]["engine_dir"] == str(state / "engines")

    # The operator's edits: one camera (the sample clip), no broker, any free metrics port.
    data = yaml.safe_load(conf.read_text())
    data["cameras"] = [{"name": "shop", "source": str(src / "samples" / "retail02_12s.mp4"),
                        "loop": True, "realtime": True}]
    data["mqtt"]["enabled"] = False
    data["metrics"]["port"] = 0
    conf.write_text(yaml.safe_dump(data, sort_keys=False))

    cmd = _exec_start(root / "etc/systemd/system/edge-agent.service")
    assert cmd[0] == str(agent) and cmd[-1] == str(conf)
    sock = NotifySocket(tmp_path / "notify.sock")
    log = open(tmp_path / "agent.log", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = subprocess.Popen(cmd, cwd=state, stdout=log, stderr=subprocess.STDOUT,
                            env={**env, "NOTIFY_SOCKET": str(sock.path)})
    try:
        deadline = time.monotonic() + 240
        while not sock.with_field("READY") and proc.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        text = (tmp_path / "agent.log").read_text()
        assert sock.with_field("READY"), f"no READY=1 (exit {proc.poll()}):\n{text[-3000:]}"
        assert proc.poll() is None
        status = [m for _, m in sock.with_field("STATUS")]
        assert any("edge_multihead" in m for m in status) or "edge_multihead" in text, status
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        sock.close()
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert (state / "outbox.sqlite").is_file()  # its state went where the installer put it
