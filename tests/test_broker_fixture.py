"""The broker fixture is a real Mosquitto: messages pass between two paho clients, and a
persistent session's queued QoS 1 message survives a SIGKILL of the broker."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt


def _client(broker, client_id, clean=True, received=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    connected = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: connected.put(rc)
    if received is not None:
        c.on_message = lambda cl, ud, msg: received.put((msg.topic, msg.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert connected.get(timeout=5) == 0
    return c


def test_message_passes_between_two_clients(broker):
    got = queue.Queue()
    sub = _client(broker, "sub", received=got)
    sub.subscribe("t/#", qos=1)
    time.sleep(0.2)
    pub = _client(broker, "pub")
    pub.publish("t/x", b"hello", qos=1).wait_for_publish(5)
    assert got.get(timeout=5) == ("t/x", b"hello")
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()


def test_broker_survives_kill_and_restart(broker):
    got = queue.Queue()
    sub = _client(broker, "persist-sub", clean=False, received=got)
    sub.subscribe("q/#", qos=1)
    time.sleep(0.2)
    sub.loop_stop()
    sub.disconnect()  # offline: the broker queues for this persistent session

    pub = _client(broker, "pub")
    pub.publish("q/1", b"queued", qos=1).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    time.sleep(1.5)  # autosave_interval 1: persisted before the kill
    old_pid = broker.proc.pid
    broker.kill()
    assert not broker.running
    broker.start()
    assert broker.proc.pid != old_pid

    sub = _client(broker, "persist-sub", clean=False, received=got)
    assert got.get(timeout=5) == ("q/1", b"queued")
    sub.loop_stop()
    sub.disconnect()
