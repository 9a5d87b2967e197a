"""``mqtt.hosts``: the agent moves to the next broker when its broker dies (two private
Mosquittos here; the NATS cluster test is in test_mqtt_cluster.py)."""

from __future__ import annotations

import pytest
from mqtt_helpers import Subscriber, event

from edge_agent.config import MqttConfig, parse_host_port
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.outbox.eventlog import Outbox

BASE = "edge-agent/dev1"


def test_hosts_are_parsed_and_bad_ones_named():
    cfg = MqttConfig(hosts=["mq-a:1883", "10.0.0.2:8883", "[fd00::3]:1884"])
    assert cfg.endpoints() == [("mq-a", 1883), ("10.0.0.2", 8883), ("fd00::3", 1884)]
    assert MqttConfig(host="b", port=1884).endpoints() == [("b", 1884)]
    for bad in ("mq-a", "mq-a:", ":1883", "mq-a:0", "mq-a:65536", "mq a:1883", "mq-a:x"):
        with pytest.raises(ValueError, match="hosts"):
            MqttConfig(hosts=[bad])
    assert parse_host_port("h:1", "x") == ("h", 1)


def test_agent_moves_to_the_next_broker_when_its_broker_dies(broker_factory, tmp_path):
    a = broker_factory(name="a").start()
    b = broker_factory(name="b").start()
    sub_a = Subscriber(a, [f"{BASE}/events/+", f"{BASE}/status"]).ready()
    sub_b = Subscriber(b, [f"{BASE}/events/+", f"{BASE}/status"]).ready()
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    cfg = MqttConfig(hosts=[f"{a.host}:{a.port}", f"{b.host}:{b.port}"], reconnect_min_s=0.1,
                     reconnect_max_s=0.5, keepalive_s=5)
    m = AgentMqtt(cfg, "dev1", ob)
    m.start()
    assert m.wait_connected(10)
    for i in range(20):
        ob.append(event(i))
    assert sub_a.wait_for(lambda: len(sub_a.events()) == 20)
    assert m.stats()["mqtt"]["broker"] == f"{a.host}:{a.port}"
    a.kill()
    for i in range(20, 40):  # while the agent moves: they wait in the outbox
        ob.append(event(i))
    assert sub_b.wait_for(lambda: {f"r-{i}" for i in range(20, 40)} <= {
        e["event_id"] for e in sub_b.events()}, 20)
    assert b"online" in sub_b.payloads("/status")
    assert m.stats()["mqtt"]["broker"] == f"{b.host}:{b.port}"
    m.stop()
    ob.close()
    sub_b.close()
    sub_a.c.loop_stop()
