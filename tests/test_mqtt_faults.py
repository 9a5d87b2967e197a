"""Faults with real processes: the broker SIGKILLed mid-stream (each delivery mode's guarantee on
Mosquitto and on NATS with JetStream), the agent SIGKILLed mid-stream, and the Last Will /
online / stopped status sequence."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Tuple

import pytest
from mqtt_helpers import Subscriber

from edge_agent.outbox.eventlog import Outbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from loss_bench import run_scenario  # noqa: E402

BASE = "edge-agent/dev1"
HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mosquitto", "nats"])
def test_2000_events_end_to_end_lose_nothing_through_broker_and_agent_sigkills(kind, tmp_path):
    """end_to_end's guarantee, on every broker: 2,000 events, the broker SIGKILLed twice and the
    agent once, three busy loops, a consumer taking 2 ms a message: nothing lost. (One run of
    bench/loss_bench.py, which runs it 10 times.)"""
    r = run_scenario(kind, tmp_path, "end_to_end", events=2000, broker_kills=2, agent_kills=1,
                     busy=3, consumer_delay_s=0.002)
    print(r)
    timeline = (tmp_path / "timeline.log").read_text()
    assert r.lost == 0, f"{r}\n{timeline}"
    assert r.stored == 2000


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mosquitto", "nats"])
def test_2000_events_puback_guarantee_through_two_broker_sigkills(kind, tmp_path):
    """puback's guarantee: every event reaches the broker's acknowledgement (the outbox empties,
    nothing lost before the PUBACK). What a broker loses after its PUBACK is its own: Mosquitto
    acknowledges before it saves and may lose some (counted, not asserted); NATS stores a QoS 1
    message in JetStream before the PUBACK, so nothing may be lost there."""
    r = run_scenario(kind, tmp_path, "puback", events=2000, broker_kills=2, agent_kills=0,
                     busy=1, consumer_delay_s=0.002)
    print(r)
    assert r.outbox_left == 0, r
    if kind == "nats":
        assert r.lost == 0, r


class _Agent:
    """tests/mqtt_agent_proc.py as a subprocess; its stdout lines are collected."""

    def __init__(self, broker, outbox: Path, run: str, count: int, interval: float,
                 commit_ms: int = 20):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "mqtt_agent_proc.py"), "--host", broker.host,
             "--port", str(broker.port), "--outbox", str(outbox), "--run", run,
             "--count", str(count), "--interval", str(interval), "--commit-ms", str(commit_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: List[str] = []
        self.appended: List[Tuple[int, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            self.lines.append(line)
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                self.appended.append((int(parts[0]), parts[1]))

    def wait_line(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.lines:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"agent never printed {text!r}: {err[-2000:]}")
            time.sleep(0.02)

    def wait_appended(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.appended) < n:
            assert time.monotonic() < deadline, f"only {len(self.appended)} appended"
            time.sleep(0.01)


@pytest.mark.slow
def test_agent_sigkill_loses_nothing_seq_continues_and_lwt_sequence(broker, tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    sub = Subscriber(broker, [f"{BASE}/events/+", f"{BASE}/status"], client_id="crash-sub",
                     clean=False).ready()

    # A long fsync interval keeps a few hundred events in the outbox, unpublished, at the kill.
    a = _Agent(broker, outbox, "a", count=3000, interval=0.001, commit_ms=300)
    a.wait_line("CONNECTED")
    assert sub.wait_for(lambda: sub.payloads("/status") == [b"online"], 5)
    a.wait_appended(400)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    a._reader.join(5)
    in_outbox = dict((eid, seq) for seq, eid in a.appended)
    # Last Will: the broker saw the TCP connection die without DISCONNECT.
    assert sub.wait_for(lambda: sub.payloads("/status") == [b"online", b"offline"], 10)
    db = sqlite3.connect(str(outbox))
    left = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    db.close()
    assert left > 0, "the kill must leave unacknowledged events in the outbox"
    print(f"{len(in_outbox)} appended before the kill, {left} still in the outbox")

    b = _Agent(broker, outbox, "b", count=50, interval=0.0)
    b.wait_line("APPENDED")
    assert sub.wait_for(lambda: set(in_outbox) <= {e["event_id"] for e in sub.events()}, 20), (
        f"{len(set(in_outbox) - {e['event_id'] for e in sub.events()})} events of the killed "
        "agent never arrived"
    )
    assert sub.wait_for(lambda: {f"b-{i}" for i in range(50)} <= {
        e["event_id"] for e in sub.events()}, 10)
    assert sub.payloads("/status")[:3] == [b"online", b"offline", b"online"]

    # seq continues after the crash and no seq was ever given to two events
    assert min(s for s, _ in b.appended) > max(s for s, _ in a.appended)
    owner = {}
    for e in sub.events():
        assert owner.setdefault(e["seq"], e["event_id"]) == e["event_id"], e
    for eid, seq in in_outbox.items():
        assert owner[seq] == eid

    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(15) == 0
    assert sub.wait_for(lambda: sub.payloads("/status")[-1:] == [b"stopped"], 5)
    assert sub.payloads("/status") == [b"online", b"offline", b"online", b"stopped"]
    with Outbox(outbox) as ob:
        assert len(ob) == 0  # everything acknowledged, nothing left behind
    sub.close()
