"""`edge-agent run` across restarts, as real processes: one agent per state directory, events a
crash left open are closed on the next start, and seq never goes back, not even when the outbox
is lost. MQTT through a real broker and a real subscriber."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import jsonschema
import pytest
from agent_procs import agent_config, read_events, start_agent, stop_agent
from conftest import wait_for
from mqtt_helpers import Subscriber

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "edge_agent" / "schemas" / "event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _config(tmp_path: Path, model: Path, video: Path, name: str = "agent.yaml",
            device: str = "rs-1", broker=None) -> Path:
    mqtt: Dict[str, Any] = {"enabled": False}
    if broker is not None:
        mqtt = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5, "ha_discovery": True}
    cams = [{"name": "shop", "source": str(video), "loop": True, "realtime": True,
             "zones": [{"name": "all", "min_count": 1, "hold_s": 0}]}]
    return agent_config(tmp_path, model, cams, device_id=device, name=name, mqtt=mqtt,
                        events={"sinks": {"jsonl": "events.jsonl"},
                                "snapshots": {"enabled": False}},
                        metrics={"enabled": False})


@pytest.fixture
def retail(video_dir) -> Path:
    return video_dir / "nvidia_Retail02_short.mp4"


def test_second_agent_on_one_state_dir_exits_2_naming_the_holder(tmp_path, yolox_nano, retail):
    first = _config(tmp_path, yolox_nano, retail)
    # another file, another device id, the same state_dir: still the same outbox and seq
    other = _config(tmp_path, yolox_nano, retail, name="other.yaml", device="rs-2")
    log = tmp_path / "a.log"
    a = start_agent(first, log)
    try:
        lock = tmp_path / "state" / "agent.lock"
        assert wait_for(lambda: lock.exists() and lock.read_text().strip() == str(a.pid), 60), \
            log.read_text()
        for cfg in (first, other):
            t0 = time.monotonic()
            b = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config",
                                str(cfg)], capture_output=True, text=True, timeout=60,
                               cwd=str(REPO))
            assert b.returncode == 2, b.stderr
            assert f"is in use by another edge-agent (pid {a.pid}" in b.stderr, b.stderr
            assert "Traceback" not in b.stderr and time.monotonic() - t0 < 30
        assert a.poll() is None  # the first one runs on, untouched
    finally:
        a.kill()  # SIGKILL: the kernel frees the lock
        a.wait()
    c = start_agent(first, tmp_path / "c.log")
    try:
        assert wait_for(lambda: lock.read_text().strip() == str(c.pid), 60)
        assert wait_for(lambda: "camera(s), engine" in (tmp_path / "c.log").read_text(), 60)
    finally:
        assert stop_agent(c) == 0


def test_crash_leaves_no_event_open_and_seq_survives_a_lost_outbox(tmp_path, yolox_nano, retail,
                                                                     broker):
    config = _config(tmp_path, yolox_nano, retail, broker=broker)
    jsonl = tmp_path / "state" / "events.jsonl"
    sub = Subscriber(broker, ["edge-agent/rs-1/events/+", "edge-agent/rs-1/ha/#"]).ready()
    log = tmp_path / "agent.log"

    # run 1: a crowd starts, then SIGKILL: its end never goes out
    a = start_agent(config, log)
    try:
        assert wait_for(lambda: any(e["phase"] == "start" for e in read_events(jsonl)), 90), \
            log.read_text()
        assert sub.wait_for(lambda: any(e["phase"] == "start" for e in sub.events()), 20)
    finally:
        a.kill()
        a.wait()
    run1 = read_events(jsonl)
    opened = {(e["type"], e["camera"], e["track_id"], e.get("zone")) for e in run1
              if e["phase"] == "start"}
    closed = {(e["type"], e["camera"], e["track_id"], e.get("zone")) for e in run1
              if e["phase"] == "end"}
    left_open = opened - closed
    assert left_open

    # run 2: before any new event, an end with reason agent_restarted for each; then SIGTERM
    b = start_agent(config, log)
    try:
        assert wait_for(lambda: len(read_events(jsonl)) >= len(run1) + len(left_open), 90), \
            log.read_text()
    finally:
        assert stop_agent(b) == 0
    run2 = read_events(jsonl)[len(run1):]
    first = run2[:len(left_open)]
    assert {(e["type"], e["camera"], e["track_id"], e.get("zone")) for e in first} == left_open
    for e in first:
        VALIDATOR.validate(e)
        assert e["phase"] == "end" and e["reason"] == "agent_restarted"
        assert e["duration_s"] >= 0 and e["seq"] > max(x["seq"] for x in run1)
        if e["type"] == "crowd":  # Home Assistant's sensor goes back to 0 with it
            assert e["count"] == 0 and e["track_ids"] == []
    assert all(e.get("reason") != "agent_restarted" for e in run2[len(left_open):])
    # the subscriber got them too
    want = {e["event_id"] for e in first}
    assert sub.wait_for(lambda: want <= {e["event_id"] for e in sub.events()}, 20)
    last_seq = max(e["seq"] for e in read_events(jsonl))

    # run 3 after a clean stop: nothing was left open, so nothing is closed again
    def _lost_outbox(how: str) -> None:
        ob = tmp_path / "state" / "outbox.sqlite"
        for side in (ob.with_name(ob.name + "-wal"), ob.with_name(ob.name + "-shm")):
            if side.exists():
                side.unlink()
        if how == "emptied":
            ob.write_bytes(b"")
        else:
            ob.unlink()

    for how in ("emptied", "deleted"):
        _lost_outbox(how)
        n = len(read_events(jsonl))
        c = start_agent(config, log)
        try:
            assert wait_for(lambda n=n: len(read_events(jsonl)) > n, 90), log.read_text()
        finally:
            assert stop_agent(c) == 0
        new = read_events(jsonl)[n:]
        assert new[0]["seq"] == last_seq + 1, (how, new[0]["seq"], last_seq)  # no reuse, no gap
        assert all(e.get("reason") != "agent_restarted" for e in new)
        assert "was recreated, emptied or restored from an old copy" in log.read_text()
        last_seq = max(e["seq"] for e in read_events(jsonl))

    # run 4: a crash, then the outbox is lost: seq jumps ahead, never back
    d = start_agent(config, log)
    n = len(read_events(jsonl))
    try:
        assert wait_for(lambda: len(read_events(jsonl)) > n, 90)
    finally:
        d.kill()
        d.wait()
    crashed_last = max(e["seq"] for e in read_events(jsonl))
    _lost_outbox("deleted")
    n = len(read_events(jsonl))
    e_ = start_agent(config, log)
    try:
        assert wait_for(lambda: len(read_events(jsonl)) > n, 90)
    finally:
        assert stop_agent(e_) == 0
    after = read_events(jsonl)[n:]
    assert after[0]["seq"] > crashed_last
    seqs = [e["seq"] for e in read_events(jsonl)]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    sub.close()
    assert not os.path.exists(tmp_path / "state" / "agent.lock.tmp")
