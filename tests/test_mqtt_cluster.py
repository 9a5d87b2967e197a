"""Failover across a broker cluster: three NATS servers (JetStream, MQTT streams replicated on
all three) on loopback; the agent on node A with ``mqtt.hosts`` naming all three, the consumer
on node B; node A SIGKILLed mid-stream. The agent moves on and nothing is lost; what comes twice
has the same ``event_id`` and ``seq``."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from mqtt_helpers import event

from edge_agent.config import MqttConfig
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.mqtt.consumer import AckConsumer, EventStore
from edge_agent.outbox.eventlog import Outbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from brokers import NatsCluster, wait_for  # noqa: E402

N = 1000



@pytest.mark.slow
def test_three_node_nats_cluster_node_a_sigkilled_mid_stream_nothing_lost(tmp_path):
    cluster = NatsCluster(tmp_path / "cluster").start()
    a, b, c = cluster.nodes
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(b.host, b.port, store, protocol="3.1.1", client_id="control-room",
                           delay_s=0.001)
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=20)
    m = AgentMqtt(MqttConfig(hosts=[f"{n.host}:{n.port}" for n in (a, b, c)],
                             protocol="3.1.1", delivery="end_to_end", ack_timeout_s=5,
                             reconnect_min_s=0.1, reconnect_max_s=1.0, keepalive_s=5),
                  "cam-7", ob)
    try:
        consumer.start()
        assert consumer.subscribed.wait(30)
        m.start()
        assert m.wait_connected(30)
        assert m.stats()["mqtt"]["broker"] == f"{a.host}:{a.port}"

        def produce():
            for i in range(N):
                ob.append(event(i))
                time.sleep(0.002)

        producer = threading.Thread(target=produce)
        producer.start()
        assert wait_for(lambda: ob.last_seq >= N // 3, 30)
        a.kill()
        assert producer.is_alive(), "node A must die mid-stream"
        producer.join()
        want = {f"r-{i}" for i in range(N)}
        assert wait_for(lambda: want <= store.ids, 120), f"lost {len(want - store.ids)}"
        assert wait_for(lambda: len(ob) == 0, 30), "acknowledged rows not deleted"
        assert m.stats()["mqtt"]["broker"] in (f"{b.host}:{b.port}", f"{c.host}:{c.port}")
        assert m.counters["disconnects"] >= 1
    finally:
        m.stop(timeout=2)
        ob.close()
        consumer.stop()
        cluster.kill()
    lines = [json.loads(x) for x in (tmp_path / "store.jsonl").read_text().splitlines()]
    assert len(lines) == N == len({e["event_id"] for e in lines}), "each event stored once"
    owner = {}
    for e in lines:
        assert owner.setdefault(e["seq"], e["event_id"]) == e["event_id"]
    print(f"{N} events, {store.duplicates} duplicates de-duplicated, failed over to "
          f"{m.stats()['mqtt']['broker']}")
