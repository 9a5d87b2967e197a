"""Hypothesis sends thousands of malformed command payloads through a real broker: every one gets
exactly one well-formed reply (an error unless it happened to be valid), and the agent keeps
publishing events meanwhile."""

from __future__ import annotations

import collections
import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mqtt_helpers import Subscriber, event, make_cfg

from edge_agent.mqtt.client import AgentMqtt
from edge_agent.outbox.eventlog import Outbox

BASE = "edge-agent/dev1"
MAX_BYTES = 512
CODES = {"too_large", "bad_json", "bad_request", "unknown_command", "internal",
         "bad_response_topic"}

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=12,
)
request_ids = st.one_of(json_value, st.text(min_size=129, max_size=140),
                        st.integers(min_value=2**63 + 1), st.just(""))


def _objects():
    fields = st.dictionaries(
        st.sampled_from(["request_id", "section", "camera", "x", "engine", "url"]),
        json_value, max_size=4,
    )
    with_id = st.builds(lambda rid, f: {**f, "request_id": rid}, request_ids, fields)
    return st.one_of(fields, with_id).map(lambda d: json.dumps(d).encode())


payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    json_value.map(lambda v: json.dumps(v).encode()),
    _objects(),
    st.integers(min_value=1, max_value=4000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=MAX_BYTES + 1, max_value=3 * MAX_BYTES).map(lambda n: b"{" + b" " * n),
    st.sampled_from([b"", b"null", b"{}", b"[]", b'{"request_id": null}', b"\x00" * 10,
                     b'{"request_id": "a", "section": ["mqtt"]}', b"NaN", b'"str"']),
)
_topic_text = st.text(
    st.characters(blacklist_characters="+#", blacklist_categories=("Cs", "Cc", "Cn")),
    max_size=20,
)
OWN_NAMESPACE = "<own>"  # replaced per request by a topic below its own cmd/<name>/reply
# MQTT 5 response topics: usable ones, wildcards, and hostile ones that would fake an event or
# status, make the agent answer itself or relay a request to another device.
response_topics = st.one_of(
    st.none(),
    _topic_text.map(lambda s: "fuzz/" + s),
    _topic_text.map(lambda s: "fuzz/" + s + "/#"),
    _topic_text.map(lambda s: "fuzz/+/" + s),
    _topic_text.map(lambda s: OWN_NAMESPACE + s),
    st.sampled_from([
        f"{BASE}/events/weapon", f"{BASE}/events/crowd", f"{BASE}/status", f"{BASE}/state",
        f"{BASE}/stats", f"{BASE}/cmd/ping", f"{BASE}/cmd/config.get", f"{BASE}/cmd/state/reply",
        "edge-agent/dev2/cmd/config.get", "edge-agent/dev2/events/weapon", "edge-agent",
        "homeassistant/sensor/x/config", "homeassistant/status", "$SYS/x", "$share/g/fuzz/x",
        "fuzz/" + "x" * 65530, OWN_NAMESPACE + "/#",  # 65,535 bytes: the longest allowed
    ]),
    _topic_text.map(lambda s: f"edge-agent/{s or 'x'}/cmd/ping"),
)
correlations = st.one_of(st.none(), st.binary(min_size=1, max_size=64))

names = st.one_of(
    st.sampled_from(["ping", "state", "config.get", "snapshot", "engine.update", "nope", "a" * 80]),
    # any text a broker accepts as a topic level (MQTT forbids control characters there)
    st.text(st.characters(blacklist_characters="/+#", blacklist_categories=("Cs", "Cc", "Cn")),
            min_size=1, max_size=16),
)


def _under(topic: str, namespace: str) -> bool:
    return topic == namespace or topic.startswith(namespace + "/")


def expected_route(name: str, rtopic):
    """(reply topic, refused?) by the rule of docs/mqtt.md, written out independently."""
    default = f"{BASE}/cmd/{name}/reply"
    if rtopic is None:
        return default, False
    publishable = ("+" not in rtopic and "#" not in rtopic and not rtopic.startswith("$")
                   and len(rtopic.encode()) <= 65535)
    own = _under(rtopic, default)
    foreign = not _under(rtopic, "edge-agent") and not _under(rtopic, "homeassistant")
    if publishable and (own or foreign):
        return rtopic, False
    return default, True


def _snapshot(request):
    camera = request.get("camera")
    if not isinstance(camera, str):
        raise ValueError("field 'camera' must be a string")
    if camera != "cam1":
        raise ValueError(f"unknown camera {camera!r}")
    return {"camera": camera}


@pytest.mark.slow
def test_fuzzed_commands_get_one_wellformed_reply_each_and_events_keep_flowing(broker, tmp_path):
    # "#": everything anyone publishes, so a reply anywhere it must not go is seen
    sub = Subscriber(broker, ["#"], v5=True).ready()
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = AgentMqtt(make_cfg(broker, max_command_bytes=MAX_BYTES), "dev1", ob)
    m.register_command("snapshot", _snapshot)
    m.start()
    assert m.wait_connected(10)
    sent = {"n": 0, "batches": 0, "refused": 0}

    # No shrinking: a failure is reported as generated (shrinking a broker round trip is slow).
    @settings(max_examples=60, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(names, payloads, response_topics, correlations),
                    min_size=36, max_size=60))
    def batch(items):
        k = sent["batches"]
        sent["batches"] += 1
        ob.append(event(k, run="fuzz"))
        before = len(sub.snapshot())
        items = [(n, p, r.replace(OWN_NAMESPACE, f"{BASE}/cmd/{n}/reply/", 1)
                  if isinstance(r, str) and r.startswith(OWN_NAMESPACE) else r, c)
                 for n, p, r, c in items]
        requests = collections.Counter()
        for name, payload, rtopic, corr in items:
            sub.request(f"{BASE}/cmd/{name}", payload, response_topic=rtopic, correlation=corr)
            requests[f"{BASE}/cmd/{name}"] += 1
        barrier = f"barrier-{k}".encode()
        sub.request(f"{BASE}/cmd/ping", b'{"request_id": "' + barrier + b'"}')
        requests[f"{BASE}/cmd/ping"] += 1
        sent["n"] += len(items)

        def barrier_seen():
            return any(t.endswith("/cmd/ping/reply") and barrier in p
                       for t, p, _ in sub.snapshot()[before:])

        assert sub.wait_for(barrier_seen, 20), "the agent stopped answering"
        seen = sub.snapshot()[before:]
        own = {f"{BASE}/status", f"{BASE}/state", f"{BASE}/stats", f"{BASE}/events/crowd"}
        for t, p, _ in seen:  # the agent's own topics carry nothing reply-shaped
            if t in own:
                assert b"request_id" not in p, (t, p[:200])
        replies = [(t, json.loads(p), props) for t, p, props in seen
                   if t not in own and not (requests[t] and _is_request(t, p, items, barrier))
                   and barrier not in p]
        assert len(replies) == len(items)  # exactly one reply each, in order
        for (name, _, rtopic, corr), (topic, r, props) in zip(items, replies):
            where, refused = expected_route(name, rtopic)
            assert topic == where, (name, rtopic and rtopic[:100], topic[:100])
            assert getattr(props, "CorrelationData", None) == corr
            assert isinstance(r["ok"], bool)
            if refused:
                sent["refused"] += 1
                assert r["ok"] is False and r["error"]["code"] == "bad_response_topic", r
            if not r["ok"]:
                assert r["error"]["code"] in CODES and r["error"]["message"]
                assert r["error"]["code"] != "internal", r
        # nothing else anywhere: every message seen is a request, a reply above or our own
        assert len(seen) == sum(requests.values()) + len(replies) + 1 + sum(
            1 for t, _, _ in seen if t in own), [t[:80] for t, _, _ in seen]

    batch()
    assert sent["n"] >= 2000 and sent["refused"] >= 100, sent
    want = {f"fuzz-{k}" for k in range(sent["batches"])}
    assert sub.wait_for(lambda: want <= {e["event_id"] for e in sub.events()}, 10)
    print(f"{sent['n']} fuzzed commands in {sent['batches']} batches, all answered "
          f"({sent['refused']} response topics refused)")
    m.stop()
    ob.close()
    sub.close()


def _is_request(topic, payload, items, barrier) -> bool:
    """True when (topic, payload) is one of the requests we sent (the spy sees those too)."""
    if payload.endswith(barrier + b'"}') and topic.endswith("/cmd/ping"):
        return True
    return any(topic == f"{BASE}/cmd/{n}" and payload == p for n, p, _, _ in items)
