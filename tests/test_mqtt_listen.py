"""`edge-agent listen` as a real process against a real broker: table and JSON output, seq gaps,
late and duplicate events, status lines, connection errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
from mqtt_helpers import event, make_cfg

from edge_agent.mqtt.client import AgentMqtt
from edge_agent.mqtt.listen import SeqTracker
from edge_agent.outbox.eventlog import Outbox


def _listen(broker, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "listen", "--host", broker.host, "--port",
         str(broker.port), "--timeout", "20", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stderr.readline()  # "connected to ..." once subscribed-to-be
    assert "connected to" in line, line + proc.stderr.read()
    time.sleep(0.3)  # the SUBSCRIBE round trip
    return proc


def _publisher(broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fake-device")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_table_shows_gaps_late_and_duplicate_events(broker):
    proc = _listen(broker, "--count", "7")
    pub = _publisher(broker)
    pub.publish("edge-agent/cam-box/status", b"online", qos=1)
    for seq in (1, 2, 3, 6, 7, 4, 7):
        ev = {"event_id": f"e{seq}", "seq": seq, "type": "crowd", "phase": "update",
              "camera": "gate", "zone": "north", "count": 11, "track_id": None,
              "ts": "2026-01-02T03:04:05.678Z"}
        pub.publish("edge-agent/cam-box/events/crowd", json.dumps(ev), qos=1).wait_for_publish(5)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "-- cam-box is online"
    assert lines[1].split()[:3] == ["TIME", "DEVICE", "SEQ"]
    assert "!! cam-box: seq 4..5 missing (2 events)" in lines
    rows = [ln for ln in lines if ln.startswith("03:04:05.678")]
    assert len(rows) == 7
    assert "zone=north count=11" in rows[0] and rows[0].split()[1:3] == ["cam-box", "1"]
    assert rows[5].split()[2] == "4*" and rows[5].endswith("e4 (late)")
    assert rows[6].endswith("e7 (dup)")
    assert "7 events, 1 gaps, 1 missing" in err  # 5 never came
    pub.disconnect()
    pub.loop_stop()


def test_json_output_from_a_real_agent(broker, tmp_path):
    proc = _listen(broker, "--json", "--count", "5", "--device", "dev1")
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = AgentMqtt(make_cfg(broker), "dev1", ob)
    m.start()
    for i in range(5):
        ob.append(event(i))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    objs = [json.loads(ln) for ln in out.splitlines()]
    assert objs[0] == {"status": {"device": "dev1", "status": "online"}}
    assert [o["seq"] for o in objs[1:]] == [1, 2, 3, 4, 5]
    assert [o["event_id"] for o in objs[1:]] == [f"r-{i}" for i in range(5)]
    m.stop()
    ob.close()


def test_connection_errors_are_clear(broker):
    port = broker.port
    broker.kill()
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "listen", "--host", "127.0.0.1", "--port",
         str(port), "--timeout", "2"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "listen", "--device", "a/b"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--device" in proc.stderr


def test_a_ca_file_that_is_not_a_certificate_is_a_clear_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "listen", "--ca-file", str(bad), "--timeout",
         "1"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert f"--ca-file: cannot load {bad}" in proc.stderr and "Traceback" not in proc.stderr


def test_seq_tracker_counts():
    t = SeqTracker()
    assert t.see("d", 10) == {"mark": "", "gap": None}  # the first seen is no gap
    assert t.see("d", 13)["gap"] == (11, 12)
    assert t.see("d", 12)["mark"] == "late"
    assert t.see("d", 12)["mark"] == "dup"
    assert t.see("e", 1)["gap"] is None  # per device
    assert (t.gaps, t.missing_total) == (1, 1)
