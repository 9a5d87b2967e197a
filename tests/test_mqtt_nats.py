"""A private NATS server with JetStream and its MQTT listener (MQTT 3.1.1 only): does it store a
QoS 1 message before its PUBACK (verified by SIGKILL, not assumed), and does the agent work on
it through ``protocol: "3.1.1"`` (status and Last Will, retained state, commands, end_to_end)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_helpers import event

from edge_agent.config import MqttConfig
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.mqtt.consumer import AckConsumer, EventStore
from edge_agent.outbox.eventlog import Outbox

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from brokers import NatsServer  # noqa: E402

BASE = "edge-agent/dev1"


@pytest.fixture
def nats(tmp_path):
    n = NatsServer(tmp_path / "nats").start()
    yield n
    n.kill()


class _Client:
    """A paho 3.1.1 client that records messages (NATS speaks no MQTT 5)."""

    def __init__(self, port: int, client_id: str, clean: bool = True, topics=()):
        self.messages = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, 1) for t in topics]
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()
        if topics:
            assert self.subscribed.wait(20), "no SUBACK"

    def _on_message(self, c, u, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.retain))

    def payloads(self, suffix: str):
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _rows(outbox: Path) -> int:
    """Rows in the agent's outbox, read by a plain SQLite reader (WAL: it blocks nothing)."""
    db = sqlite3.connect(str(outbox), timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()


def _wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.slow
def test_nats_stores_qos1_before_its_puback(nats):
    # A persistent session that is offline: everything published now is queued for it.
    sub = _Client(nats.port, "durable-sub", clean=False, topics=["t/#"])
    sub.close()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect("127.0.0.1", nats.port)
    pub.loop_start()
    infos = [pub.publish("t/events", f"m{i}", qos=1) for i in range(1000)]
    infos.append(pub.publish("t/ack", "1000", qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(30)
    nats.kill()  # at once after the last PUBACK: no time for a lazy save
    pub.loop_stop()
    nats.start()
    sub = _Client(nats.port, "durable-sub", clean=False, topics=["t/#"])
    assert _wait(lambda: len(sub.payloads("/events")) >= 1000, 30), len(sub.payloads("/events"))
    assert sorted(sub.payloads("/events"), key=lambda p: int(p[1:])) == [
        f"m{i}".encode() for i in range(1000)]
    sub.close()
    fresh = _Client(nats.port, "fresh", topics=["t/ack"])
    assert _wait(lambda: fresh.payloads("/ack") == [b"1000"]), "retained message lost"
    fresh.close()


def test_mqtt5_is_refused_with_a_hint_to_use_311(nats, tmp_path, caplog):
    ob = Outbox(tmp_path / "o.sqlite")
    m = AgentMqtt(MqttConfig(host=nats.host, port=nats.port, reconnect_min_s=0.2,
                             reconnect_max_s=0.5), "dev1", ob)
    m.start()
    assert _wait(lambda: "3.1.1" in (m.last_error or "") or any(
        'mqtt.protocol: "3.1.1"' in r.getMessage() for r in caplog.records), 10)
    assert not m.connected
    m.stop(timeout=1)
    ob.close()


@pytest.mark.slow
def test_agent_on_nats_311_status_will_state_commands_and_end_to_end(nats, tmp_path):
    watch = _Client(nats.port, "watch", topics=[f"{BASE}/status", f"{BASE}/state",
                                                f"{BASE}/cmd/ping/reply"])
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(nats.host, nats.port, store, protocol="3.1.1",
                           client_id="nats-consumer").start()
    assert consumer.subscribed.wait(20)
    outbox = tmp_path / "outbox.sqlite"
    # The agent as a process (bench/loss_agent.py), so that a SIGKILL shows the Last Will.
    agent = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "loss_agent.py"), "--hosts",
         f"{nats.host}:{nats.port}", "--outbox", str(outbox), "--count", "200",
         "--interval", "0.002", "--protocol", "3.1.1", "--delivery", "end_to_end"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert _wait(lambda: watch.payloads("/status")[-1:] == [b"online"], 30)
        assert _wait(lambda: watch.payloads("/state"), 10), "no retained state"
        assert json.loads(watch.payloads("/state")[-1])["delivery"]["delivery"] == "end_to_end"
        req = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="req")
        req.connect("127.0.0.1", nats.port)
        req.loop_start()
        req.publish(f"{BASE}/cmd/ping", b'{"request_id": "n1"}', qos=1).wait_for_publish(10)
        assert _wait(lambda: watch.payloads("/cmd/ping/reply"), 10), "no reply over 3.1.1"
        reply = json.loads(watch.payloads("/cmd/ping/reply")[0])
        assert reply["request_id"] == "n1" and reply["result"]["pong"] is True
        req.disconnect()
        req.loop_stop()
        assert _wait(lambda: store.chain("dev1").mark == 200, 60), store.chain("dev1").mark
        assert _wait(lambda: _rows(outbox) == 0, 20), "acked rows not deleted"
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        assert _wait(lambda: watch.payloads("/status")[-1:] == [b"offline"], 30), \
            watch.payloads("/status")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        consumer.stop()
        watch.close()
    assert store.stored_total == 200


def test_ack_consumer_store_roundtrip_on_nats(nats, tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(nats.host, nats.port, store, protocol="3.1.1",
                           client_id="c2").start()
    assert consumer.subscribed.wait(20)
    m = AgentMqtt(MqttConfig(host=nats.host, port=nats.port, protocol="3.1.1",
                             delivery="end_to_end", reconnect_min_s=0.1, reconnect_max_s=0.5),
                  "dev1", ob)
    m.start()
    assert m.wait_connected(20)
    for i in range(50):
        ob.append(event(i))
    assert _wait(lambda: len(ob) == 0, 30)
    assert m.counters["consumer_acks"] >= 1 and ob.acked_seq == 50
    m.stop()
    ob.close()
    consumer.stop()
