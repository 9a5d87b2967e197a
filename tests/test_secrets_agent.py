"""Issue 23, finding 8: a camera password given only through the service's environment file
(mode 0600, read by systemd's ``EnvironmentFile=``) reaches a real RTSP camera that asks for it,
and appears nowhere: not in the agent's log, its MQTT state, stats or replies, /metrics,
/healthz, its state directory or ``config show``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict

import pytest
import yaml
from conftest import free_port, wait_for
from mqtt_helpers import Subscriber
from test_capture_rtsp import SYSTEM_PYTHON, _server_usable
from test_exporter import get

HERE = Path(__file__).resolve().parent


def _environment_file(path: Path) -> Dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments and blanks skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@pytest.mark.slow
def test_camera_password_from_the_env_file_reaches_the_camera_and_nothing_else(
        tmp_path, yolox_nano, broker):
    reason = _server_usable()
    if reason:
        pytest.fail(f"GStreamer RTSP server unavailable ({reason}); `make system-deps`",
                    pytrace=False)
    password = "pw" + uuid.uuid4().hex[:14]
    rtsp_port = free_port()
    metrics_port = free_port()
    while metrics_port == rtsp_port:
        metrics_port = free_port()
    server_log = tmp_path / "rtsp.log"
    with open(server_log, "w") as out:  # a file, not a pipe nobody reads: it cannot fill up
        server = subprocess.Popen(
            [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(rtsp_port), "--user",
             "cam"], stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, RTSP_PASSWORD=password))
    proc = None
    try:
        assert wait_for(lambda: "READY" in server_log.read_text(), 30), server_log.read_text()
        # the camera really asks: a DESCRIBE without the password is answered 401
        with socket.create_connection(("127.0.0.1", rtsp_port), timeout=10) as c:
            c.sendall(f"DESCRIBE rtsp://127.0.0.1:{rtsp_port}/cam RTSP/1.0\r\nCSeq: 1\r\n"
                      "\r\n".encode())
            assert c.recv(200).startswith(b"RTSP/1.0 401"), "the camera let us in unasked"

        etc = tmp_path / "etc"
        etc.mkdir()
        env_file = etc / "env"
        env_file.touch(mode=0o600)
        env_file.write_text(f"# secrets of the service\nCAM1_PASSWORD={password}\n")
        assert env_file.stat().st_mode & 0o777 == 0o600
        config = etc / "edge-agent.yaml"
        config.write_text(yaml.safe_dump({
            "device_id": "sec-1",
            "state_dir": str(tmp_path / "state"),
            "log": {"format": "human", "level": "debug"},
            "model": {"path": str(yolox_nano), "intra_op_threads": 1},
            "cameras": [{"name": "cam1", "source": f"rtsp://cam:${{CAM1_PASSWORD}}@127.0.0.1:"
                                                   f"{rtsp_port}/cam", "fps_limit": 5}],
            "events": {"sinks": {"jsonl": "events.jsonl"}},
            "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": 1},
            "metrics": {"port": metrics_port},
        }))
        assert password not in config.read_text()
        env = dict(os.environ, **_environment_file(env_file))
        sub = Subscriber(broker, ["edge-agent/sec-1/#"]).ready()
        log = tmp_path / "agent.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config",
                                     str(config)], stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(HERE.parent))
        # frames flow: the password reached the camera
        assert wait_for(lambda: get(metrics_port, "/healthz")[0] == 200, 90), (
            log.read_text()[-3000:] + f"\nRTSP server (exit {server.poll()}):\n"
            + server_log.read_text()[-2000:])
        assert sub.wait_for(lambda: sub.payloads("/stats"), 15)
        sub.request("edge-agent/sec-1/cmd/config.get", b'{"request_id": "c"}')
        sub.request("edge-agent/sec-1/cmd/state", b'{"request_id": "s"}')
        assert sub.wait_for(lambda: sub.payloads("/cmd/config.get/reply")
                            and sub.payloads("/cmd/state/reply"), 15)
        shown = json.loads(sub.payloads("/cmd/config.get/reply")[0])
        assert "cam:**********@127.0.0.1" in json.dumps(shown), shown
        proc.send_signal(signal.SIGHUP)  # a reload reads and logs the config again
        assert wait_for(lambda: "config reloaded (SIGHUP)" in log.read_text(), 15)
        pages = [get(metrics_port, p)[1] for p in ("/metrics", "/healthz")]
        time.sleep(1.5)  # another stats document
        show = subprocess.run([sys.executable, "-m", "edge_agent.cli", "config", "show",
                               str(config)], capture_output=True, text=True, env=env)
        assert show.returncode == 0 and "cam:**********@127.0.0.1" in show.stdout, show.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        sub.close()

        seen = {"log": log.read_text(), "config show": show.stdout + show.stderr,
                "http": "".join(pages),
                "mqtt": "".join(p.decode("utf-8", "replace") for _, p, _ in sub.snapshot())}
        for f in (tmp_path / "state").rglob("*"):
            if f.is_file():
                seen[str(f)] = f.read_bytes().decode("latin-1")
        assert len(seen["mqtt"]) > 1000 and "cam1" in seen["log"]
        leaks = [where for where, text in seen.items() if password in text]
        assert not leaks, leaks
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.terminate()
        server.wait(10)
