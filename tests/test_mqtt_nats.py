"""A private NATS server with JetStream and its MQTT listener (MQTT 3.1.1 only): does it store a
QoS 1 message before its PUBACK (verified by SIGKILL, not assumed), and does the agent work on
it through ``protocol: "3.1.1"`` (status and Last Will, retained state, commands, end_to_end)."""

from __future__ import annotations

import json
import sqlite3
import sys
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
from brokers import NatsServer, Recorder, wait_for  # noqa: E402
from loss_bench import AgentProc  # noqa: E402

BASE = "edge-agent/dev1"


@pytest.fixture
def nats(tmp_path):
    n = NatsServer(tmp_path / "nats").start()
    yield n
    n.kill()


def _rows(outbox: Path) -> int:
    """Rows in the agent's outbox, read by a plain SQLite reader (WAL: it blocks nothing)."""
    db = sqlite3.connect(str(outbox), timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()



@pytest.mark.slow
def test_nats_stores_qos1_before_its_puback(nats):
    # A persistent session that is offline: everything published now is queued for it.
    sub = Recorder(nats.port, "durable-sub", ["t/#"], clean=False)
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
    sub = Recorder(nats.port, "durable-sub", ["t/#"], clean=False)
    assert wait_for(lambda: len(sub.payloads("/events")) >= 1000, 30), len(sub.payloads("/events"))
    assert sorted(sub.payloads("/events"), key=lambda p: int(p[1:])) == [
        f"m{i}".encode() for i in range(1000)]
    sub.close()
    fresh = Recorder(nats.port, "fresh", ["t/ack"])
    assert wait_for(lambda: fresh.payloads("/ack") == [b"1000"], 20), "retained message lost"
    fresh.close()


def test_mqtt5_is_refused_with_a_hint_to_use_311(nats, tmp_path, caplog):
    ob = Outbox(tmp_path / "o.sqlite")
    m = AgentMqtt(MqttConfig(host=nats.host, port=nats.port, reconnect_min_s=0.2,
                             reconnect_max_s=0.5), "dev1", ob)
    m.start()
    assert wait_for(lambda: "3.1.1" in (m.last_error or "") or any(
        'mqtt.protocol: "3.1.1"' in r.getMessage() for r in caplog.records), 10)
    assert not m.connected
    m.stop(timeout=1)
    ob.close()


@pytest.mark.slow
def test_agent_on_nats_311_status_will_state_commands_and_end_to_end(nats, tmp_path):
    watch = Recorder(nats.port, "watch", [f"{BASE}/status", f"{BASE}/state",
                                          f"{BASE}/cmd/ping/reply"])
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(nats.host, nats.port, store, protocol="3.1.1",
                           client_id="nats-consumer").start()
    assert consumer.subscribed.wait(20)
    outbox = tmp_path / "outbox.sqlite"
    # The agent as a process (bench/loss_agent.py), so that a SIGKILL shows the Last Will.
    agent = AgentProc(f"{nats.host}:{nats.port}", outbox, 0, 200, "3.1.1", "end_to_end",
                      ack_timeout=3.0, log=tmp_path / "agent.log", interval=0.002)
    try:
        assert wait_for(lambda: watch.payloads("/status")[-1:] == [b"online"], 30)
        assert wait_for(lambda: watch.payloads("/state"), 10), "no retained state"
        assert json.loads(watch.payloads("/state")[-1])["delivery"]["delivery"] == "end_to_end"
        req = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="req")
        req.connect("127.0.0.1", nats.port)
        req.loop_start()
        req.publish(f"{BASE}/cmd/ping", b'{"request_id": "n1"}', qos=1).wait_for_publish(10)
        assert wait_for(lambda: watch.payloads("/cmd/ping/reply"), 10), "no reply over 3.1.1"
        reply = json.loads(watch.payloads("/cmd/ping/reply")[0])
        assert reply["request_id"] == "n1" and reply["result"]["pong"] is True
        req.disconnect()
        req.loop_stop()
        assert wait_for(lambda: store.chain("dev1").mark == 200, 60), store.chain("dev1").mark
        assert wait_for(lambda: _rows(outbox) == 0, 20), "acked rows not deleted"
        agent.sigkill()
        assert wait_for(lambda: watch.payloads("/status")[-1:] == [b"offline"], 30), \
            watch.payloads("/status")
    finally:
        agent.stop()
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
    assert wait_for(lambda: len(ob) == 0, 30)
    assert m.counters["consumer_acks"] >= 1 and ob.acked_seq == 50
    m.stop()
    ob.close()
    consumer.stop()
