"""A private RabbitMQ node with ``rabbitmq_mqtt`` (3.10: MQTT 3.1.1 only): a QoS 1 message is
stored before its PUBACK (verified by SIGKILL of the Erlang VM), retained messages work (and
whether one survives a SIGKILL is reported), and the agent works on it over 3.1.1 (end_to_end
with the reference consumer, Last Will)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.mqtt.consumer import AckConsumer, EventStore

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from brokers import RabbitMq  # noqa: E402

BASE = "edge-agent/dev1"


def _wait(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class _Recorder:
    def __init__(self, port: int, client_id: str, topic: str, clean: bool = True):
        self.got = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert self.subscribed.wait(30), "no SUBACK"

    def _on_message(self, c, u, msg):
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def payloads(self, suffix: str):
        with self.lock:
            return [p for t, p in self.got if t.endswith(suffix)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def rabbit(tmp_path):
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.skip("rabbitmq-server is not installed (optional broker)")
    r = RabbitMq(tmp_path / "rabbit").start()
    yield r
    r.kill()


@pytest.mark.slow
def test_rabbitmq_stores_qos1_before_puback_and_the_agent_works_over_311(rabbit, tmp_path):
    sub = _Recorder(rabbit.port, "durable", f"{BASE}/#", clean=False)
    sub.close()  # offline persistent session: what follows is queued for it
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect("127.0.0.1", rabbit.port)
    pub.loop_start()
    infos = [pub.publish(f"{BASE}/events/crowd", f"m{i}", qos=1) for i in range(500)]
    infos.append(pub.publish(f"{BASE}/ack", "500", qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    live = _Recorder(rabbit.port, "live", f"{BASE}/ack")
    assert _wait(lambda: live.payloads("/ack") == [b"500"]), "no retained message"
    live.close()
    rabbit.kill()
    pub.loop_stop()
    rabbit.start()
    sub = _Recorder(rabbit.port, "durable", f"{BASE}/#", clean=False)
    assert _wait(lambda: len(sub.payloads("/crowd")) >= 500), len(sub.payloads("/crowd"))
    assert sorted(sub.payloads("/crowd"), key=lambda p: int(p[1:])) == [
        f"m{i}".encode() for i in range(500)]
    sub.close()
    # Retained messages live in a DETS file that RabbitMQ 3.10 writes lazily: one SIGKILL
    # right after the publish lost it here (docs/mqtt.md, Brokers). Reported, not asserted.
    fresh = _Recorder(rabbit.port, "fresh", f"{BASE}/ack")
    kept = _wait(lambda: fresh.payloads("/ack") == [b"500"], 3)
    print(f"retained message after the SIGKILL: {'kept' if kept else 'lost'}")
    fresh.close()

    # The agent over 3.1.1, end_to_end, the reference consumer acking; then its Last Will.
    rabbit_ack = _Recorder(rabbit.port, "watch", f"{BASE}/status")
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(rabbit.host, rabbit.port, store, protocol="3.1.1",
                           client_id="rabbit-consumer").start()
    assert consumer.subscribed.wait(30)
    agent = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "loss_agent.py"), "--hosts",
         f"{rabbit.host}:{rabbit.port}", "--outbox", str(tmp_path / "outbox.sqlite"),
         "--count", "100", "--interval", "0.002", "--protocol", "3.1.1",
         "--delivery", "end_to_end"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the retained ack of 500 above is for seqs this agent never sent: refused, and the
        # consumer acks what it stores
        assert _wait(lambda: store.chain("dev1").mark == 100, 60), store.chain("dev1").mark
        assert _wait(lambda: rabbit_ack.payloads("/status")[-1:] == [b"online"])
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        assert _wait(lambda: rabbit_ack.payloads("/status")[-1:] == [b"offline"]), \
            rabbit_ack.payloads("/status")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        consumer.stop()
        rabbit_ack.close()
    assert store.stored_total == 100
