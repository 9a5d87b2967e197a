"""The exporter's HTTP server, metric families and health verdict, against a real Outbox.

The agent-level behaviour (metrics moving on a real clip, /healthz on a stalled RTSP camera) is in
test_service_systemd.py; here each family and each health reason is pinned down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge_agent.daemon.exporter import Exporter, Sources, outbox_oldest_age, outbox_problem
from edge_agent.outbox.eventlog import Outbox


def get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:  # not listening (yet)
        return 0, str(exc.reason)
    except ConnectionError as exc:  # accepted, then closed without an answer
        return 0, str(exc)


def sample(text: str, metric: str, **labels) -> float:
    """The value of one sample in Prometheus text format (fails when it is absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric and s.labels == {k: str(v) for k, v in labels.items()}:
                return float(s.value)
    raise AssertionError(f"{metric}{labels} not in metrics:\n{text}")


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=0)
    yield ob
    ob.close()


@pytest.fixture
def stack(outbox):
    cams = {"cam1": {"frames_in": 0, "processed": 0, "dropped": 0, "fps": 0.0}}
    state = {"connected": False, "update": "idle"}
    src = Sources(cameras=["cam1"], stats=lambda: {"cameras": cams},
                  engine=lambda: {"name": "yolox", "version": "1.2.0", "sha256": "ab" * 32,
                                  "backend": "onnxruntime"},
                  outbox_rows=lambda: len(outbox), outbox_path=outbox.path,
                  mqtt_connected=lambda: state["connected"],
                  update_state=lambda: state["update"])
    ex = Exporter(src, max_frame_age_s=0.5)
    ex.start("127.0.0.1", 0)
    yield ex, cams, state
    ex.stop()


def test_metric_families_follow_their_sources(stack, outbox):
    ex, cams, state = stack
    code, text = get(ex.port, "/metrics")
    assert code == 200
    assert sample(text, "edge_agent_frames_in_total", camera="cam1") == 0
    assert sample(text, "edge_agent_outbox_rows") == 0
    assert sample(text, "edge_agent_outbox_oldest_age_seconds") == 0
    assert sample(text, "edge_agent_mqtt_connected") == 0
    assert sample(text, "edge_agent_engine_info", name="yolox", version="1.2.0",
                  sha256="ab" * 32, backend="onnxruntime") == 1
    assert sample(text, "edge_agent_update_state", edge_agent_update_state="idle") == 1

    cams["cam1"].update(frames_in=12, processed=10, dropped=2, fps=9.5)
    state.update(connected=True, update="building")
    outbox.append({"event_id": "e1", "type": "crowd", "phase": "start"})
    sink = ex.sink()
    sink.write({"event_id": "e1", "type": "crowd", "phase": "start"})
    sink.write({"event_id": "e2", "type": "crowd", "phase": "end"})
    ex.obs.inference(0.012)
    ex.obs.tracker(0.00004)
    ex.obs.frame("cam1", 0.07)
    time.sleep(0.05)
    _, text = get(ex.port, "/metrics")
    assert sample(text, "edge_agent_frames_in_total", camera="cam1") == 12
    assert sample(text, "edge_agent_frames_processed_total", camera="cam1") == 10
    assert sample(text, "edge_agent_frames_dropped_total", camera="cam1") == 2
    assert sample(text, "edge_agent_camera_fps", camera="cam1") == 9.5
    assert sample(text, "edge_agent_outbox_rows") == 1
    assert sample(text, "edge_agent_outbox_oldest_age_seconds") > 0
    assert sample(text, "edge_agent_mqtt_connected") == 1
    assert sample(text, "edge_agent_update_state", edge_agent_update_state="building") == 1
    assert sample(text, "edge_agent_update_state", edge_agent_update_state="idle") == 0
    assert sample(text, "edge_agent_events_total", type="crowd", phase="start") == 1
    assert sample(text, "edge_agent_events_total", type="crowd", phase="end") == 1
    assert sample(text, "edge_agent_inference_seconds_bucket", le="0.02") == 1
    assert sample(text, "edge_agent_inference_seconds_bucket", le="0.01") == 0
    assert sample(text, "edge_agent_tracker_seconds_count") == 1
    assert sample(text, "edge_agent_end_to_end_seconds_count", camera="cam1") == 1


def test_healthz_needs_fresh_frames_on_every_camera(stack):
    ex, _, _ = stack
    code, body = get(ex.port, "/healthz")
    doc = json.loads(body)
    assert code == 503 and doc["status"] == "unhealthy"
    assert doc["reasons"][0].startswith("camera cam1: no frame yet")
    ex.obs.frame("cam1", 0.05)
    code, body = get(ex.port, "/healthz")
    doc = json.loads(body)
    assert doc.pop("resources")["problems"] == []
    assert code == 200 and doc == {
        "status": "ok", "reasons": [], "outbox": "ok",
        "cameras": {"cam1": {"last_frame_age_s": doc["cameras"]["cam1"]["last_frame_age_s"]}}}
    time.sleep(0.6)
    code, body = get(ex.port, "/healthz")
    assert code == 503 and "camera cam1: no frame for" in json.loads(body)["reasons"][0]
    assert get(ex.port, "/nope")[0] == 404


def test_outbox_age_counts_from_the_oldest_row(outbox):
    outbox.append({"event_id": "a", "type": "weapon"})
    created = time.time()
    outbox.append({"event_id": "b", "type": "weapon"})
    assert outbox_oldest_age(outbox.path, now=created + 30) == pytest.approx(30, abs=1)
    outbox.ack([1, 2])
    assert outbox_oldest_age(outbox.path) == 0


def test_outbox_problem_names_what_blocks_a_write(outbox, tmp_path):
    assert outbox_problem(outbox.path) is None
    assert "does not exist" in outbox_problem(tmp_path / "gone.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    assert "junk.sqlite" in outbox_problem(tmp_path / "junk.sqlite")


def _as_nobody(path: Path) -> str:
    """``outbox_problem(path)`` computed by a forked child that became nobody. Its modules are
    already loaded, so the checkout and its venv need not be readable by nobody (they are not
    when the clone sits in a mode-0700 folder)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, answer through the pipe, exit without cleanup
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(w, str(outbox_problem(path)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0  # exited with status 0
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as another user")
def test_outbox_not_writable_by_the_service_user(tmp_path):
    open_dir = Path(tempfile.mkdtemp(prefix="edge-agent-outbox-"))
    try:
        open_dir.chmod(0o755)  # nobody may look, not write
        with Outbox(open_dir / "outbox.sqlite", commit_interval_ms=0):
            pass
        assert "is not writable by this user" in _as_nobody(open_dir / "outbox.sqlite")
    finally:
        shutil.rmtree(open_dir)
    with Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=0):
        pass
    tmp_path.chmod(0o700)  # nobody may not even enter
    assert "cannot reach it: Permission denied" in _as_nobody(tmp_path / "outbox.sqlite")


def test_port_in_use_raises_oserror(stack):
    ex, _, _ = stack
    other = Exporter(ex.health.src)
    with pytest.raises(OSError):
        other.start("127.0.0.1", ex.port)


def _connect_idle(port: int, n: int) -> list:
    import socket

    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def test_idle_connections_are_capped_and_healthz_still_answers(stack):
    # 60 clients that connect and say nothing: the server keeps at most its cap open (each is a
    # descriptor and a thread of the agent), and a health probe still gets in.
    ex, cams, _ = stack
    ex._server.max_connections = 4
    socks = _connect_idle(ex.port, 60)
    try:
        deadline = time.monotonic() + 20  # the server accepts them all, however loaded
        while ex.connections()["evicted"] < 56 and time.monotonic() < deadline:
            time.sleep(0.02)
        c = ex.connections()
        assert c["open"] <= 4, c
        assert c["evicted"] >= 56, c  # the older idle ones made room for newer ones
        code, body = get(ex.port, "/healthz")
        assert code in (200, 503) and json.loads(body)["resources"]["fds_limit"] > 0
        assert ex.connections()["open"] <= 4
    finally:
        for s in socks:
            s.close()
    # after they are gone nothing of them stays behind
    deadline = time.monotonic() + 5
    while ex.connections()["open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ex.connections()["open"] == 0


def test_a_silent_or_trickling_client_is_dropped_after_the_timeout(outbox):
    src = Sources(cameras=[], stats=lambda: {"cameras": {}}, engine=lambda: {})
    ex = Exporter(src, request_timeout_s=0.5)
    ex.start("127.0.0.1", 0)
    try:
        s = _connect_idle(ex.port, 1)[0]
        s.sendall(b"GET /hea")  # and then nothing
        t0 = time.monotonic()
        s.settimeout(10)
        assert s.recv(1024) == b""  # the server hung up ...
        assert time.monotonic() - t0 < 5  # ... after its timeout, not never
        s.close()
    finally:
        ex.stop()


def test_when_every_slot_is_busy_a_new_connection_is_refused(outbox):
    import threading

    release = threading.Event()

    def slow_stats():
        release.wait(60)  # a scrape that takes long: its connection is busy, not idle
        return {"cameras": {}}

    src = Sources(cameras=[], stats=slow_stats, engine=lambda: {})
    ex = Exporter(src, max_connections=2, request_timeout_s=5)
    ex.start("127.0.0.1", 0)
    socks = _connect_idle(ex.port, 2)
    try:
        for s in socks:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 20
        while ex.connections()["busy"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ex.connections()["busy"] == 2  # both request heads read: nothing to evict
        code, _ = get(ex.port, "/healthz")
        assert code == 0  # refused: closed without an answer
        assert ex.connections()["refused"] >= 1
        release.set()
        for s in socks:
            s.settimeout(10)
            assert s.recv(64).startswith(b"HTTP/1.0 200")
        deadline = time.monotonic() + 20
        while ex.connections()["open"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert get(ex.port, "/healthz")[0] in (200, 503)
    finally:
        release.set()
        for s in socks:
            s.close()
        ex.stop()


_LOW_FDS = """
import json, os, urllib.error, urllib.request
from edge_agent.daemon.exporter import Exporter, Sources

def healthz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())

ex = Exporter(Sources(cameras=[], stats=lambda: {"cameras": {}}, engine=lambda: {}))
ex.start("127.0.0.1", 0)
out = {"before": healthz(ex.port)}
hoard = []
while len(os.listdir("/proc/self/fd")) < 256 - 20:  # 20 left: under the 64 that are "low"
    hoard.append(os.open("/dev/null", os.O_RDONLY))
out["short"] = healthz(ex.port)
for fd in hoard:
    os.close(fd)
out["after"] = healthz(ex.port)
ex.stop()
print(json.dumps(out))
"""


def test_healthz_says_when_descriptors_run_low_and_recovers(tmp_path):
    # a real `ulimit -n 256` and a real table nearly full
    proc = subprocess.run(["bash", "-c", 'ulimit -n 256 && exec "$0" -c "$1"', sys.executable,
                           _LOW_FDS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"][0] == 200, out
    code, doc = out["short"]
    assert code == 503 and doc["resources"]["fds_limit"] == 256, doc
    assert any(r.startswith("low on file descriptors: ") for r in doc["reasons"]), doc
    assert out["after"][0] == 200 and not out["after"][1]["reasons"], out
