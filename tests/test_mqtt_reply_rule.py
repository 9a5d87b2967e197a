"""The Response Topic rule and topic limits against a real broker, with real second clients: a
hostile requester cannot make the agent publish where its replies could be mistaken for events,
status or commands (its own or another device's)."""

from __future__ import annotations

import json
import logging

import pytest
from mqtt_helpers import Subscriber, make_cfg

from edge_agent.mqtt.client import AgentMqtt
from edge_agent.outbox.eventlog import Outbox

BASE = "edge-agent/dev1"
OTHER = "edge-agent/dev2"

REFUSED = [
    f"{BASE}/events/weapon",  # would count as a weapon event
    f"{BASE}/events/crowd",
    f"{BASE}/status",  # would overwrite the availability
    f"{BASE}/state",
    f"{BASE}/cmd/ping",  # the agent answering itself
    f"{BASE}/cmd/state/reply",  # another command's replies
    f"{OTHER}/cmd/config.get",  # a valid request relayed to another device
    f"{OTHER}/cmd/ping/reply",
    f"{OTHER}/events/weapon",
    "homeassistant/binary_sensor/edge-agent-dev1/config",  # a discovery config
    "edge-agent",
    f"{BASE}/cmd/ping/reply/+",  # wildcards are never published to
    "$SYS/broker/x",
]
ALLOWED = [f"{BASE}/cmd/ping/reply/ui-7", "app/ui-7/replies", "clients/é/42"]


@pytest.fixture
def agents(broker, tmp_path):
    made = []
    for dev in ("dev1", "dev2"):
        ob = Outbox(tmp_path / f"{dev}.sqlite", commit_interval_ms=5)
        m = AgentMqtt(make_cfg(broker, ha_discovery=True), dev, ob)
        m.start()
        assert m.wait_connected(10)
        made.append((m, ob))
    yield [m for m, _ in made]
    for m, ob in made:
        m.stop()
        ob.close()


def _reply_for(sub, rid: str):
    for topic, payload, props in sub.snapshot():
        try:
            body = json.loads(payload)
        except ValueError:
            continue
        if isinstance(body, dict) and "ok" in body and body.get("request_id") == rid:
            return topic, body, props
    return None


def test_refused_response_topics_get_an_error_on_the_default_topic_and_run_nothing(
        broker, agents):
    dev1, dev2 = agents
    spy = Subscriber(broker, ["#"], v5=True).ready(0.5)  # sees everything anyone publishes
    requester = Subscriber(broker, [f"{BASE}/cmd/+/reply"], v5=True).ready()
    before = len(spy.snapshot())
    for i, topic in enumerate(REFUSED):
        requester.request(f"{BASE}/cmd/ping", json.dumps({"request_id": f"r{i}"}).encode(),
                          response_topic=topic, correlation=f"c{i}".encode())
    for i, topic in enumerate(REFUSED):
        assert requester.wait_for(lambda i=i: _reply_for(requester, f"r{i}") is not None, 10), topic
        where, body, props = _reply_for(requester, f"r{i}")
        assert where == f"{BASE}/cmd/ping/reply", topic
        assert body["ok"] is False and body["error"]["code"] == "bad_response_topic", body
        assert "response topic refused" in body["error"]["message"]
        assert props.CorrelationData == f"c{i}".encode()
    seen = {t for t, _, _ in spy.snapshot()[before:]}
    assert seen <= {f"{BASE}/cmd/ping", f"{BASE}/cmd/ping/reply"}, seen - {f"{BASE}/cmd/ping"}
    assert dev1.dispatcher.counts["ok"] == 0  # ping never ran
    assert dev2.dispatcher.counts == {"ok": 0, "error": 0}  # nothing was relayed to dev2
    retained = Subscriber(broker, [f"{BASE}/status"]).ready()
    assert retained.payloads("/status") == [b"online"]
    for s in (spy, requester, retained):
        s.close()


def test_allowed_response_topics_get_the_reply_there_only(broker, agents):
    spy = Subscriber(broker, ["#"], v5=True).ready(0.5)
    requester = Subscriber(broker, ["app/#", "clients/#", f"{BASE}/cmd/#"], v5=True).ready()
    before = len(spy.snapshot())
    for i, topic in enumerate(ALLOWED):
        requester.request(f"{BASE}/cmd/ping", json.dumps({"request_id": f"a{i}"}).encode(),
                          response_topic=topic, correlation=b"k")
    for i, topic in enumerate(ALLOWED):
        assert requester.wait_for(lambda i=i: _reply_for(requester, f"a{i}") is not None, 10)
        where, body, props = _reply_for(requester, f"a{i}")
        assert where == topic and body["ok"] is True and props.CorrelationData == b"k"
    seen = {t for t, _, _ in spy.snapshot()[before:]}
    assert seen == set(ALLOWED) | {f"{BASE}/cmd/ping"}, seen
    spy.close()
    requester.close()


@pytest.mark.parametrize("name", ["n" * 65512, "é" * 32756])  # request fits, reply not
def test_a_name_too_long_for_its_reply_topic_is_one_short_log_line(broker, agents, caplog, name):
    spy = Subscriber(broker, ["#"], v5=True).ready(0.5)
    before = len(spy.snapshot())
    with caplog.at_level(logging.INFO, logger="edge_agent.mqtt"):
        spy.request(f"{BASE}/cmd/{name}", b'{"request_id": "long"}')
        # the same name with a usable response topic is answered there
        spy.request(f"{BASE}/cmd/{name}", b'{"request_id": "long2"}', response_topic="app/r")
        assert spy.wait_for(lambda: _reply_for(spy, "long2") is not None, 10)
        spy.request(f"{BASE}/cmd/ping", b'{"request_id": "after"}')
        assert spy.wait_for(lambda: _reply_for(spy, "after") is not None, 10)  # still serving
    where, body, _ = _reply_for(spy, "long2")
    assert where == "app/r" and body["error"]["code"] == "unknown_command"
    assert len(body["command"]) <= 64
    assert _reply_for(spy, "long") is None
    published = [t for t, _, _ in spy.snapshot()[before:] if not t.startswith(f"{BASE}/cmd/n")
                 and not t.startswith(f"{BASE}/cmd/é")]
    assert set(published) == {"app/r", f"{BASE}/cmd/ping", f"{BASE}/cmd/ping/reply"}, published
    ours = [r for r in caplog.records if r.name.startswith("edge_agent.mqtt")
            and "reply" in r.getMessage()]
    assert len(ours) == 1 and len(ours[0].getMessage()) < 300, [r.getMessage() for r in ours]
    assert not any(r.exc_info for r in caplog.records)
    spy.close()
