"""Hypothesis sends thousands of malformed command payloads through a real broker: every one gets
exactly one well-formed reply (an error unless it happened to be valid), and the agent keeps
publishing events meanwhile."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mqtt_helpers import Subscriber, event, make_cfg

from edge_agent.eventlog import Outbox
from edge_agent.mqtt.client import AgentMqtt

BASE = "edge-agent/dev1"
MAX_BYTES = 512
CODES = {"too_large", "bad_json", "bad_request", "unknown_command", "internal"}

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
# MQTT 5 response topics: mostly usable, some with wildcards the agent must not publish to.
response_topics = st.one_of(
    st.none(),
    _topic_text.map(lambda s: "fuzz/" + s),
    _topic_text.map(lambda s: "fuzz/" + s + "/#"),
    _topic_text.map(lambda s: "fuzz/+/" + s),
)
correlations = st.one_of(st.none(), st.binary(min_size=1, max_size=64))

names = st.one_of(
    st.sampled_from(["ping", "state", "config.get", "snapshot", "engine.update", "nope", "a" * 80]),
    # any text a broker accepts as a topic level (MQTT forbids control characters there)
    st.text(st.characters(blacklist_characters="/+#", blacklist_categories=("Cs", "Cc", "Cn")),
            min_size=1, max_size=16),
)


def _snapshot(request):
    camera = request.get("camera")
    if not isinstance(camera, str):
        raise ValueError("field 'camera' must be a string")
    if camera != "cam1":
        raise ValueError(f"unknown camera {camera!r}")
    return {"camera": camera}


@pytest.mark.slow
def test_fuzzed_commands_get_one_wellformed_reply_each_and_events_keep_flowing(broker, tmp_path):
    sub = Subscriber(broker, [f"{BASE}/cmd/+/reply", f"{BASE}/events/+", "fuzz/#"],
                     v5=True).ready()
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = AgentMqtt(make_cfg(broker, max_command_bytes=MAX_BYTES), "dev1", ob)
    m.register_command("snapshot", _snapshot)
    m.start()
    assert m.wait_connected(10)
    sent = {"n": 0, "batches": 0}

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
        for name, payload, rtopic, corr in items:
            sub.request(f"{BASE}/cmd/{name}", payload, response_topic=rtopic, correlation=corr)
        barrier = f"barrier-{k}".encode()
        sub.request(f"{BASE}/cmd/ping", b'{"request_id": "' + barrier + b'"}')
        sent["n"] += len(items)

        def barrier_seen():
            return any(t.endswith("/cmd/ping/reply") and barrier in p
                       for t, p, _ in sub.snapshot()[before:])

        assert sub.wait_for(barrier_seen, 20), "the agent stopped answering"
        replies = [(t, json.loads(p), props) for t, p, props in sub.snapshot()[before:]
                   if (t.endswith("/reply") or t.startswith("fuzz/")) and barrier not in p]
        assert len(replies) == len(items)  # exactly one reply each, in order
        for (name, _, rtopic, corr), (topic, r, props) in zip(items, replies):
            usable = rtopic is not None and "#" not in rtopic and "+" not in rtopic
            assert topic == (rtopic if usable else f"{BASE}/cmd/{name}/reply")
            assert getattr(props, "CorrelationData", None) == corr
            assert isinstance(r["ok"], bool)
            if not r["ok"]:
                assert r["error"]["code"] in CODES and r["error"]["message"]
                assert r["error"]["code"] != "internal", r

    batch()
    assert sent["n"] >= 2000, sent
    want = {f"fuzz-{k}" for k in range(sent["batches"])}
    assert sub.wait_for(lambda: want <= {e["event_id"] for e in sub.events()}, 10)
    print(f"{sent['n']} fuzzed commands in {sent['batches']} batches, all answered")
    m.stop()
    ob.close()
    sub.close()
