"""Helpers for the MQTT tests: a recording subscriber and config/event builders."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from conftest import wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig


def wait_persisted(broker, timeout: float = 10.0, since: Optional[float] = None) -> None:
    """Wait until the broker saved its persistence file after ``since`` (default: this call;
    autosave_interval 1), so sessions and subscriptions made before survive a SIGKILL. A fixed
    sleep is not enough on a loaded machine: the broker's save timer then runs late."""
    db = broker.workdir / "mosquitto.db"
    since = time.time() if since is None else since
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists() and db.stat().st_mtime > since:
            return
        time.sleep(0.05)
    raise AssertionError(f"the broker did not save {db} within {timeout} s")


def make_cfg(broker, **kw: Any) -> MqttConfig:
    """A config for ``broker`` with fast reconnects (overridable)."""
    base: Dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "keepalive_s": 5,
    }
    base.update(kw)
    return MqttConfig(**base)


def event(i: int, etype: str = "crowd", run: str = "r") -> Dict[str, Any]:
    return {"event_id": f"{run}-{i}", "type": etype, "phase": "start", "camera": "cam1",
            "zone": "all", "count": i % 9, "track_id": i}


class Subscriber:
    """A paho client that records every message; reconnects by itself.

    ``clean=False`` gives a persistent session (3.1.1 clean_session false), so the broker queues
    QoS 1 messages for it while it is disconnected and keeps them across a broker restart.
    """

    def __init__(self, broker, topics: List[str], client_id: Optional[str] = None,
                 clean: bool = True, v5: bool = False):
        self.client_id = client_id or f"sub-{uuid.uuid4().hex[:8]}"
        self.v5 = v5
        if v5:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv5)
        else:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=clean)
        self.topics = topics
        self.messages: List[Tuple[str, bytes, Any]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.on_message = self._on_message
        self.c.connect_async(broker.host, broker.port, keepalive=5)
        self.c.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("test subscriber could not connect")

    def _on_connect(self, client, userdata, flags, rc, props):
        if rc.is_failure:
            return
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), getattr(msg, "properties", None)))

    def ready(self, delay: float = 0.3) -> Subscriber:
        time.sleep(delay)  # the SUBSCRIBE round trip
        return self

    def snapshot(self) -> List[Tuple[str, bytes, Any]]:
        with self.lock:
            return list(self.messages)

    def payloads(self, suffix: str) -> List[bytes]:
        return [p for t, p, _ in self.snapshot() if t.endswith(suffix)]

    def events(self) -> List[Dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.snapshot() if "/events/" in t]

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        return wait_for(pred, timeout, step=0.02)

    def request(self, topic: str, payload: bytes, response_topic: Optional[str] = None,
                correlation: Optional[bytes] = None) -> None:
        props = None
        if self.v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        self.c.publish(topic, payload, qos=1, properties=props)

    def close(self) -> None:
        self.c.disconnect()  # first: it wakes the network loop, so loop_stop returns at once
        self.c.loop_stop()


def metrics_of(outbox, device: str = "dev1", state=None, stats=None):
    """The agent's Metrics for an AgentMqtt on its own: the outbox's section plus, as the
    pipeline adds them, an extra state and/or stats section."""
    from edge_agent.metrics import Metrics

    m = Metrics(device)
    m.add("outbox", stats=lambda: {"outbox": outbox.stats()})
    m.add("extra", stats=stats, state=state)
    return m
