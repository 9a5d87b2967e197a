"""The real agent as systemd runs it: a real NOTIFY_SOCKET, /metrics and /healthz over HTTP,
SIGHUP reloads, a real RTSP camera frozen with SIGSTOP.

The agent runs as ``tests/agent_harness.py run --config ...``: the unchanged ``edge-agent run``
plus SIGUSR1, which blocks its inference loop for a few seconds (as a hung engine would).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from agent_procs import agent_config, read_events, start_agent, stop_agent
from conftest import free_port, wait_for
from mqtt_helpers import Subscriber
from test_exporter import get, sample
from test_pipeline_cli import VALIDATOR

HERE = Path(__file__).resolve().parent
PERSONS = "intel_one-by-one-person-detection.mp4"  # 768x432 H.264, 10 fps, people walking in


class NotifySocket:
    """A bound AF_UNIX datagram socket like systemd's, recording (monotonic time, message)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: List[Tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def with_field(self, key: str, since: float = 0.0) -> List[Tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages)
                if t >= since and any(line.startswith(f"{key}=") for line in m.splitlines())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def write_config(tmp_path: Path, model: Path, cameras: List[Dict[str, Any]], metrics_port: int,
                 **sections: Any) -> Path:
    """The agent's config for these tests: one ONNX thread, no snapshots, metrics on a port."""
    return agent_config(tmp_path, model, cameras, device_id="svc-test",
                        model={"path": str(model), "intra_op_threads": 1},
                        events={"sinks": {"jsonl": "events.jsonl"},
                                "snapshots": {"enabled": False}},
                        metrics={"port": metrics_port, "max_frame_age_s": 1.5}, **sections)


def events(tmp_path: Path) -> List[Dict[str, Any]]:
    return read_events(tmp_path / "state" / "events.jsonl")


def scrape(port: int, metric: str, **labels) -> float:
    code, text = get(port, "/metrics")
    assert code == 200
    return sample(text, metric, **labels)


def frames_during(port: int, seconds: float) -> List[Tuple[float, float]]:
    """(time, frames processed) sampled every 0.25 s."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append((time.monotonic(), scrape(port, "edge_agent_frames_processed_total",
                                             camera="door")))
        time.sleep(0.25)
    return out


def longest_stall(samples: List[Tuple[float, float]]) -> float:
    """The longest time the frame counter stood still."""
    worst, since = 0.0, samples[0][0]
    for (_t0, n0), (t1, n1) in zip(samples, samples[1:]):
        if n1 > n0:
            since = t1
        worst = max(worst, t1 - since)
    return worst


@pytest.mark.slow
def test_notify_watchdog_metrics_and_reload_on_a_real_clip(tmp_path, video_dir, yolox_nano,
                                                           broker):
    port = free_port()
    config = tmp_path / "agent.yaml"
    cam = {"name": "door", "source": str(video_dir / PERSONS), "loop": True, "realtime": True,
           "zones": [{"name": "hall", "min_count": 50, "hold_s": 0}]}
    mqtt = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2}
    write_config(tmp_path, yolox_nano, [cam], port, mqtt=mqtt)
    sock = NotifySocket(tmp_path / "notify.sock")
    proc = start_agent(config, tmp_path / "agent.log", harness=True,
                       env=dict(os.environ, NOTIFY_SOCKET=str(sock.path), WATCHDOG_USEC="1000000"))
    log = tmp_path / "agent.log"
    try:
        # READY=1 comes once the camera delivered frames, and says so.
        assert wait_for(lambda: sock.with_field("READY"), 90), log.read_text()
        t_ready, ready = sock.with_field("READY")[0]
        frames = int(re.search(r"door [\d.]+ fps (\d+) frames", ready).group(1))
        assert frames >= 1, ready
        assert "engine yolox_nano_coco" in ready and "(onnxruntime" in ready
        extend = sock.with_field("EXTEND_TIMEOUT_USEC")  # sent while the engine was opened
        assert extend and extend[0][0] < t_ready and "loading the engine" in extend[0][1]
        # STATUS lines follow (every 5 s), with the MQTT state.
        assert wait_for(lambda: [m for t, m in sock.with_field("STATUS", t_ready + 0.5)
                                 if "mqtt connected" in m and "READY" not in m], 15), sock.messages

        # Metrics move as frames flow.
        before = scrape(port, "edge_agent_frames_processed_total", camera="door")
        inferred = scrape(port, "edge_agent_inference_seconds_count")
        time.sleep(1.5)
        assert scrape(port, "edge_agent_frames_processed_total", camera="door") > before
        assert scrape(port, "edge_agent_frames_in_total", camera="door") > before
        assert scrape(port, "edge_agent_inference_seconds_count") > inferred
        assert scrape(port, "edge_agent_end_to_end_seconds_count", camera="door") > 0
        assert scrape(port, "edge_agent_mqtt_connected") == 1
        assert scrape(port, "edge_agent_update_state", edge_agent_update_state="idle") == 1
        assert get(port, "/healthz")[0] == 200

        # Watchdog: periodic pings from the loop, none while the loop is blocked (3 s).
        t_hang = time.monotonic()
        proc.send_signal(signal.SIGUSR1)
        time.sleep(4.5)
        pings = [t for t, _ in sock.with_field("WATCHDOG", t_ready)]
        steady = [b - a for a, b in zip(pings, pings[1:]) if b < t_hang]
        assert steady and max(steady) < 1.0, steady  # every ~0.5 s (half of WATCHDOG_USEC)
        assert not [t for t in pings if t_hang + 0.7 < t < t_hang + 2.8], pings
        assert [t for t in pings if t > t_hang + 3.0], "pings did not resume after the hang"

        # SIGHUP with a lower min_count: crowd events start, the stream goes on without a gap.
        assert not [e for e in events(tmp_path) if e["type"] == "crowd"]
        cam["zones"][0]["min_count"] = 1
        write_config(tmp_path, yolox_nano, [cam], port, mqtt=mqtt)
        reconnects = scrape(port, "edge_agent_camera_reconnects_total", camera="door")
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        samples = frames_during(port, 3.0)
        assert longest_stall(samples) < 1.0, samples
        assert scrape(port, "edge_agent_camera_reconnects_total", camera="door") == reconnects
        assert wait_for(lambda: [e for e in events(tmp_path)
                                 if e["type"] == "crowd" and e["phase"] == "start"], 20)
        assert "config reloaded (SIGHUP): applied cameras.door" in log.read_text()
        reload_msgs = [m for _, m in sock.messages[-40:]]
        assert any("RELOADING=1" in m for m in reload_msgs)
        assert sock.with_field("READY", t_hup), "no READY=1 after the reload"

        # A broken config is rejected with file:line and the agent keeps its running config.
        n_crowd = len([e for e in events(tmp_path) if e["type"] == "crowd"])
        broken = config.read_text().replace("min_count: 1", "min_count: 0")
        config.write_text(broken)
        line = broken.splitlines().index(
            next(x for x in broken.splitlines() if "min_count: 0" in x)) + 1
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config reload (SIGHUP) rejected" in log.read_text(), 10)
        text = log.read_text()
        assert f"{config}:{line}: cameras[0].zones[0].min_count" in text, text
        samples = frames_during(port, 1.5)
        assert proc.poll() is None and longest_stall(samples) < 1.0
        ends = [e for e in events(tmp_path)[n_crowd:] if e.get("reason") == "config_reload"]
        assert not ends  # nothing was rebuilt by the rejected reload

        # A change that needs a restart is reported and not applied.
        write_config(tmp_path, yolox_nano, [cam, dict(cam, name="yard")], port,
                     mqtt=mqtt)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "needs a restart, not applied: cameras.yard added"
                        in log.read_text(), 10), log.read_text()
        code, text = get(port, "/metrics")
        assert 'camera="yard"' not in text

        # The same reload over MQTT: cmd/config.reload answers with the report.
        sub = Subscriber(broker, ["edge-agent/svc-test/cmd/+/reply"]).ready()
        sub.request("edge-agent/svc-test/cmd/config.reload", b'{"request_id": "r1"}')
        assert sub.wait_for(lambda: sub.payloads("/cmd/config.reload/reply"), 10)
        reply = json.loads(sub.payloads("/cmd/config.reload/reply")[0])
        sub.close()
        assert reply["request_id"] == "r1", reply
        assert reply["result"]["ok"] is True
        assert reply["result"]["needs_restart"] == ["cameras.yard added"]

        assert stop_agent(proc) == 0
        assert sock.with_field("STOPPING")
        for e in events(tmp_path):
            VALIDATOR.validate(e)
    finally:
        stop_agent(proc)
        sock.close()


@pytest.mark.slow
def test_healthz_turns_503_while_the_rtsp_camera_is_frozen(tmp_path, yolox_nano):
    from test_capture_rtsp import RtspServer, _server_usable

    reason = _server_usable()
    if reason:
        pytest.fail(f"GStreamer RTSP server unavailable ({reason}); `make system-deps` installs "
                    "it", pytrace=False)
    srv = RtspServer(free_port()).start()
    port = free_port()
    config = tmp_path / "agent.yaml"
    cam = {"name": "door", "source": srv.url, "stall_timeout_s": 2.0,
           "reconnect": {"min_s": 0.3, "max_s": 1.0}}
    write_config(tmp_path, yolox_nano, [cam], port)
    proc = start_agent(config, tmp_path / "agent.log", harness=True)
    try:
        assert wait_for(lambda: get(port, "/healthz")[0] == 200, 60), \
            (tmp_path / "agent.log").read_text()
        srv.proc.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: get(port, "/healthz")[0] == 503, 10)
        doc = json.loads(get(port, "/healthz")[1])
        assert doc["status"] == "unhealthy" and doc["outbox"] == "ok"
        assert doc["reasons"][0].startswith("camera door: no frame for"), doc
        srv.proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: get(port, "/healthz")[0] == 200, 30), \
            (tmp_path / "agent.log").read_text()
        before = scrape(port, "edge_agent_frames_processed_total", camera="door")
        assert wait_for(lambda: scrape(port, "edge_agent_frames_processed_total",
                                       camera="door") > before, 5)
        assert stop_agent(proc) == 0
    finally:
        stop_agent(proc)
        srv.stop()
