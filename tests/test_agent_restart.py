"""`edge-agent run` across restarts, as real processes: one agent per state directory, events a
crash left open are closed on the next start, and seq never goes back, not even when the outbox
is lost. MQTT through a real broker and a real subscriber."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest
import yaml
from conftest import wait_for
from mqtt_helpers import Subscriber

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "edge_agent" / "schemas" / "event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _config(tmp_path: Path, model: Path, video: Path, name: str = "agent.yaml",
            device: str = "rs-1", broker=None) -> Path:
    data: Dict[str, Any] = {
        "device_id": device,
        "state_dir": str(tmp_path / "state"),
        "log": {"format": "human", "level": "info"},
        "model": {"path": str(model)},
        "cameras": [{"name": "shop", "source": str(video), "loop": True, "realtime": True,
                     "zones": [{"name": "all", "min_count": 1, "hold_s": 0}]}],
        "events": {"sinks": {"jsonl": "events.jsonl"}, "snapshots": {"enabled": False}},
        "mqtt": {"enabled": False},
        "metrics": {"enabled": False},
    }
    if broker is not None:
        data["mqtt"] = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                        "reconnect_max_s": 0.5, "ha_discovery": True}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _start(config: Path, log: Path) -> subprocess.Popen:
    out = open(log, "a")
    return subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config",
                             str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))


def _events(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def retail(video_dir) -> Path:
    return video_dir / "nvidia_Retail02_short.mp4"


def test_second_agent_on_one_state_dir_exits_2_naming_the_holder(tmp_path, yolox_nano, retail):
    first = _config(tmp_path, yolox_nano, retail)
    # another file, another device id, the same state_dir: still the same outbox and seq
    other = _config(tmp_path, yolox_nano, retail, name="other.yaml", device="rs-2")
    log = tmp_path / "a.log"
    a = _start(first, log)
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
    c = _start(first, tmp_path / "c.log")
    try:
        assert wait_for(lambda: lock.read_text().strip() == str(c.pid), 60)
        assert wait_for(lambda: "camera(s), engine" in (tmp_path / "c.log").read_text(), 60)
    finally:
        assert _stop(c) == 0


def test_crash_leaves_no_event_open_and_seq_survives_a_lost_outbox(tmp_path, yolox_nano, retail,
                                                                     broker):
    config = _config(tmp_path, yolox_nano, retail, broker=broker)
    jsonl = tmp_path / "state" / "events.jsonl"
    sub = Subscriber(broker, ["edge-agent/rs-1/events/+", "edge-agent/rs-1/ha/#"]).ready()
    log = tmp_path / "agent.log"

    # run 1: a crowd starts, then SIGKILL: its end never goes out
    a = _start(config, log)
    try:
        assert wait_for(lambda: any(e["phase"] == "start" for e in _events(jsonl)), 90), \
            log.read_text()
        assert sub.wait_for(lambda: any(e["phase"] == "start" for e in sub.events()), 20)
    finally:
        a.kill()
        a.wait()
    run1 = _events(jsonl)
    opened = {(e["type"], e["camera"], e["track_id"], e.get("zone")) for e in run1
              if e["phase"] == "start"}
    closed = {(e["type"], e["camera"], e["track_id"], e.get("zone")) for e in run1
              if e["phase"] == "end"}
    left_open = opened - closed
    assert left_open

    # run 2: before any new event, an end with reason agent_restarted for each; then SIGTERM
    b = _start(config, log)
    try:
        assert wait_for(lambda: len(_events(jsonl)) >= len(run1) + len(left_open), 90), \
            log.read_text()
    finally:
        assert _stop(b) == 0
    run2 = _events(jsonl)[len(run1):]
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
    last_seq = max(e["seq"] for e in _events(jsonl))

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
        n = len(_events(jsonl))
        c = _start(config, log)
        try:
            assert wait_for(lambda n=n: len(_events(jsonl)) > n, 90), log.read_text()
        finally:
            assert _stop(c) == 0
        new = _events(jsonl)[n:]
        assert new[0]["seq"] == last_seq + 1, (how, new[0]["seq"], last_seq)  # no reuse, no gap
        assert all(e.get("reason") != "agent_restarted" for e in new)
        assert "was recreated, emptied or restored from an old copy" in log.read_text()
        last_seq = max(e["seq"] for e in _events(jsonl))

    # run 4: a crash, then the outbox is lost: seq jumps ahead, never back
    d = _start(config, log)
    n = len(_events(jsonl))
    try:
        assert wait_for(lambda: len(_events(jsonl)) > n, 90)
    finally:
        d.kill()
        d.wait()
    crashed_last = max(e["seq"] for e in _events(jsonl))
    _lost_outbox("deleted")
    n = len(_events(jsonl))
    e_ = _start(config, log)
    try:
        assert wait_for(lambda: len(_events(jsonl)) > n, 90)
    finally:
        assert _stop(e_) == 0
    after = _events(jsonl)[n:]
    assert after[0]["seq"] > crashed_last
    seqs = [e["seq"] for e in _events(jsonl)]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    sub.close()
    assert not os.path.exists(tmp_path / "state" / "agent.lock.tmp")
