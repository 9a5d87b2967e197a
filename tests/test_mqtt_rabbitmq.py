"""A private RabbitMQ node with ``rabbitmq_mqtt`` (3.10: MQTT 3.1.1 only): a QoS 1 message is
stored before its PUBACK (verified by SIGKILL of the Erlang VM), retained messages work (and
whether one survives a SIGKILL is reported), and the agent works on it over 3.1.1 (end_to_end
with the reference consumer, Last Will)."""

from __future__ import annotations

import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.mqtt.consumer import AckConsumer, EventStore

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from brokers import RabbitMq, Recorder, wait_for  # noqa: E402
from loss_bench import AgentProc  # noqa: E402

BASE = "edge-agent/dev1"



@pytest.fixture
def rabbit(tmp_path):
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.skip("rabbitmq-server is not installed (optional broker)")
    r = RabbitMq(tmp_path / "rabbit").start()
    yield r
    r.kill()


@pytest.mark.slow
def test_rabbitmq_stores_qos1_before_puback_and_the_agent_works_over_311(rabbit, tmp_path):
    sub = Recorder(rabbit.port, "durable", [f"{BASE}/#"], clean=False)
    sub.close()  # offline persistent session: what follows is queued for it
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect("127.0.0.1", rabbit.port)
    pub.loop_start()
    infos = [pub.publish(f"{BASE}/events/crowd", f"m{i}", qos=1) for i in range(500)]
    infos.append(pub.publish(f"{BASE}/ack", "500", qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    live = Recorder(rabbit.port, "live", [f"{BASE}/ack"])
    assert wait_for(lambda: live.payloads("/ack") == [b"500"], 30), "no retained message"
    live.close()
    rabbit.kill()
    pub.loop_stop()
    rabbit.start()
    sub = Recorder(rabbit.port, "durable", [f"{BASE}/#"], clean=False)
    assert wait_for(lambda: len(sub.payloads("/crowd")) >= 500, 30), len(sub.payloads("/crowd"))
    assert sorted(sub.payloads("/crowd"), key=lambda p: int(p[1:])) == [
        f"m{i}".encode() for i in range(500)]
    sub.close()
    # Retained messages live in a DETS file that RabbitMQ 3.10 writes lazily: one SIGKILL
    # right after the publish lost it here (docs/mqtt.md, Brokers). Reported, not asserted.
    fresh = Recorder(rabbit.port, "fresh", [f"{BASE}/ack"])
    kept = wait_for(lambda: fresh.payloads("/ack") == [b"500"], 3)
    print(f"retained message after the SIGKILL: {'kept' if kept else 'lost'}")
    fresh.close()

    # The agent over 3.1.1, end_to_end, the reference consumer acking; then its Last Will.
    rabbit_ack = Recorder(rabbit.port, "watch", [f"{BASE}/status"])
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(rabbit.host, rabbit.port, store, protocol="3.1.1",
                           client_id="rabbit-consumer").start()
    assert consumer.subscribed.wait(30)
    agent = AgentProc(f"{rabbit.host}:{rabbit.port}", tmp_path / "outbox.sqlite", 0, 100,
                      "3.1.1", "end_to_end", ack_timeout=3.0, log=tmp_path / "agent.log",
                      interval=0.002)
    try:
        # the retained ack of 500 above is for seqs this agent never sent: refused, and the
        # consumer acks what it stores
        assert wait_for(lambda: store.chain("dev1").mark == 100, 60), store.chain("dev1").mark
        assert wait_for(lambda: rabbit_ack.payloads("/status")[-1:] == [b"online"], 30)
        agent.sigkill()
        assert wait_for(lambda: rabbit_ack.payloads("/status")[-1:] == [b"offline"], 30), \
            rabbit_ack.payloads("/status")
    finally:
        agent.stop()
        consumer.stop()
        rabbit_ack.close()
    assert store.stored_total == 100
