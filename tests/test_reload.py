"""Reload plans (what applies live, what needs a restart) and the systemd supervisor's messages.

The live reload of a running agent (SIGHUP, no frame gap, a broken file rejected) is in
test_service_systemd.py.
"""

from __future__ import annotations

import socket
import time

import pytest

from edge_agent import config as cfgmod
from edge_agent.daemon.reload import Reloader, plan
from edge_agent.daemon.sdnotify import Notifier
from edge_agent.daemon.supervise import Supervisor

BASE = """
mqtt: {username: cam, password: s3cret}
tracker: {default: {high_thresh: 0.5}}
cameras:
  - name: door
    source: rtsp://10.0.0.5/s
    zones: [{name: hall, min_count: 5}]
"""


def load(text: str) -> cfgmod.Config:
    return cfgmod.load_text(text, "site.yaml", environ={})


def test_zone_change_applies_and_keeps_the_capture_settings():
    new = load(BASE.replace("min_count: 5", "min_count: 2"))
    p = plan(load(BASE), new)
    assert p.cameras == ["door"] and not p.tracker and not p.events and not p.needs_restart
    assert p.config.cameras[0].zones[0].min_count == 2
    assert p.config.mqtt.password.get_secret_value() == "s3cret"  # secrets survive the merge


def test_restart_only_changes_are_reported_and_not_applied():
    new = load(BASE.replace("rtsp://10.0.0.5/s", "rtsp://10.0.0.6/s")
               .replace("min_count: 5", "min_count: 3")
               + "  - name: yard\n    source: /dev/video1\nmodel: {path: other.onnx}\n")
    p = plan(load(BASE), new)
    assert set(p.needs_restart) == {"model", "cameras.yard added", "cameras.door.source"}
    assert [c.name for c in p.config.cameras] == ["door"]
    assert p.config.cameras[0].source == "rtsp://10.0.0.5/s"  # the running stream stays
    assert p.config.cameras[0].zones[0].min_count == 3  # ... while its zone changes
    assert p.config.model.path == cfgmod.ModelConfig().path


def test_tracker_and_rules_changes_are_flagged():
    new = load(BASE.replace("high_thresh: 0.5", "high_thresh: 0.4")
               + "events: {weapon: {threshold: 0.7}}\n")
    p = plan(load(BASE), new)
    assert p.tracker and p.events and p.changed == ["events", "tracker"]


def test_reloader_rejects_a_broken_file_and_reports_file_line(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(BASE.replace("min_count: 5", "min_count: -1"))
    running = load(BASE)
    running.state_dir = str(tmp_path)
    applied = []
    r = Reloader(str(f), lambda: running, applied.append)
    report = r.reload("test")
    assert not report["ok"] and not applied
    assert report["errors"] == [f"{f}:7: cameras[0].zones[0].min_count: Input should be "
                                "greater than or equal to 1"]
    f.write_text(BASE.replace("min_count: 5", "min_count: 4") + f"state_dir: {tmp_path}\n")
    report = r.reload("test")
    assert report["ok"] and report["applied"] == ["cameras.door"] and len(applied) == 1


def test_reloader_reports_an_apply_failure(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(BASE.replace("high_thresh: 0.5", "high_thresh: 0.5, bogus: 1")
                 + f"state_dir: {tmp_path}\n")

    def apply(p):
        raise TypeError("Tracker() got unknown parameter(s) bogus")

    report = Reloader(str(f), lambda: load(BASE), apply).reload("test")
    assert not report["ok"] and "bogus" in report["errors"][0]


@pytest.fixture
def notify(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "n.sock"))
    s.settimeout(2)
    yield Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "2000000"}), s
    s.close()


def test_supervisor_ready_only_once_settled_then_status(notify):
    n, sock = notify
    settled = {"v": False}
    sup = Supervisor(n, status_interval_s=5.0)
    sup.watch(lambda: settled["v"], lambda: "door 10.0 fps 3 frames")
    sup.watchdog(now=100.0)
    assert sock.recv(100) == b"WATCHDOG=1"
    sup.watchdog(now=100.2)  # not settled: nothing
    settled["v"] = True
    sup.watchdog(now=100.4)
    assert sock.recv(100) == b"READY=1\nSTATUS=door 10.0 fps 3 frames"
    sup.watchdog(now=104.0)  # a ping (every 1 s), status not yet due (every 5 s)
    assert sock.recv(100) == b"WATCHDOG=1"
    sup.watchdog(now=105.5)
    assert sock.recv(100) == b"WATCHDOG=1"
    assert sock.recv(100) == b"STATUS=door 10.0 fps 3 frames"
    sup.reloading("site.yaml")
    assert sock.recv(100) == b"RELOADING=1\nSTATUS=reloading site.yaml"
    sup.reloaded("config reloaded")
    assert sock.recv(100) == b"READY=1\nSTATUS=config reloaded; door 10.0 fps 3 frames"


def test_supervisor_extends_the_start_timeout_while_the_engine_loads(notify):
    n, sock = notify
    sup = Supervisor(n)
    with sup.extend_start("building the TensorRT engine", step_s=0.2):
        time.sleep(0.5)
    msgs = []
    sock.settimeout(0.3)
    try:
        while True:
            msgs.append(sock.recv(200))
    except socket.timeout:
        pass
    assert len(msgs) >= 2 and all(m.startswith(b"EXTEND_TIMEOUT_USEC=400000\n") for m in msgs)
    assert b"building the TensorRT engine" in msgs[0]


def test_tracker_reconfigure_keeps_ids_counting_and_refuses_bad_params():
    import numpy as np

    from edge_agent.tracking import Tracker

    tr = Tracker(probation_age=1)
    det = np.array([[10, 10, 50, 90, 0.9, 0]], np.float32)
    for _ in range(3):
        first = tr.update(det)
    tr.reconfigure(probation_age=1, high_thresh=0.5)
    assert tr.num_tracks == 0 and tr.params["high_thresh"] == 0.5
    for _ in range(3):
        again = tr.update(det)
    assert again[0, 4] > first[0, 4]  # a new ID, never one seen before the reload
    with pytest.raises(ValueError, match="probation_age"):
        tr.reconfigure(probation_age=0)
    assert tr.params["high_thresh"] == 0.5 and len(tr.update(det)) == 1  # unchanged, working
