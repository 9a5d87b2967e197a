"""The retained ``state`` stays current: republished when something in it changes (a camera
comes up, the engine is swapped, an update moves on) and once per stats interval, so a
subscriber that connects late reads the truth. Against a real broker."""

from __future__ import annotations

import json
from typing import Dict

from mqtt_helpers import Subscriber, make_cfg, metrics_of

from edge_agent.mqtt.client import AgentMqtt
from edge_agent.mqtt.status import state_key

BASE = "edge-agent/dev1"


class _Device:
    """A state section the test changes, as the pipeline's and updater's sections change."""

    def __init__(self):
        self.camera = "starting"
        self.fps = 0.0
        self.engine = "1.0.0"

    def section(self) -> Dict[str, object]:
        return {"cameras": {"door": {"state": self.camera, "fps": self.fps}},
                "engine": {"version": self.engine}}


def _start(broker, outbox, dev: _Device, interval: float) -> AgentMqtt:
    m = AgentMqtt(make_cfg(broker, stats_interval_s=interval), "dev1", outbox,
                  metrics=metrics_of(outbox, state=dev.section))
    m.start()
    assert m.wait_connected(10)
    return m


def _last_state(sub: Subscriber) -> dict:
    got = sub.payloads("/state")
    return json.loads(got[-1]) if got else {}


def _door(sub: Subscriber) -> dict:
    return _last_state(sub).get("cameras", {}).get("door", {})


def test_state_key_ignores_numbers_and_the_timestamp():
    a = {"ts": "2026-01-01T00:00:00.000Z", "uptime_s": 3.5, "ok": True, "problems": ["disk"],
         "cameras": {"door": {"state": "running", "fps": 9.9}}}
    moved = {**a, "ts": "2026-01-01T00:00:07.000Z", "uptime_s": 10.5,
             "cameras": {"door": {"state": "running", "fps": 12.0}}}
    assert state_key(a) == state_key(moved)
    for change in ({"cameras": {"door": {"state": "reconnecting", "fps": 9.9}}},
                   {"ok": False}, {"problems": []}, {"engine": {"version": "1.1.0"}}):
        assert state_key({**a, **change}) != state_key(a), change


def test_a_change_is_republished_at_once_and_a_late_subscriber_reads_it(broker, outbox):
    dev = _Device()
    # The periodic republish is a minute away: whatever arrives sooner came from the change.
    m = _start(broker, outbox, dev, interval=60.0)
    try:
        sub = Subscriber(broker, [f"{BASE}/state"]).ready()
        assert sub.wait_for(lambda: _door(sub).get("state") == "starting")
        dev.camera = "running"
        assert sub.wait_for(lambda: _door(sub).get("state") == "running")
        dev.engine = "1.1.0"  # an engine swap
        assert sub.wait_for(lambda: _last_state(sub).get("engine") == {"version": "1.1.0"})
        late = Subscriber(broker, [f"{BASE}/state"]).ready()
        assert late.wait_for(lambda: _door(late).get("state") == "running")
        assert _last_state(late)["engine"] == {"version": "1.1.0"}
        late.close()
        sub.close()
    finally:
        m.stop()


def test_numbers_go_out_with_the_periodic_republish(broker, outbox):
    dev = _Device()
    dev.camera = "running"
    m = _start(broker, outbox, dev, interval=1.0)
    try:
        sub = Subscriber(broker, [f"{BASE}/state"]).ready()
        assert sub.wait_for(lambda: _door(sub).get("state") == "running")
        dev.fps = 12.5  # no change of state, only of a number
        assert sub.wait_for(lambda: _door(sub).get("fps") == 12.5)
        sub.close()
    finally:
        m.stop()
