"""The state and stats publisher: the retained ``state`` (every connect, on every change, and
once per stats interval), the periodic ``stats``, and the retained ``engine/update`` progress of a
remote update.

A change is found by looking at the state document once a second: any value that is not a number
(a camera's state, the engine, an update phase, a problem) differs from the last published one.
Its numbers (fps, uptime, lag) move all the time, so they go out with the periodic republish.

The documents come from :class:`edge_agent.metrics.Metrics`; this module only publishes them.
Everything runs on the outbox publisher's thread (its ``on_connected`` and ``on_tick`` hooks) or
on the caller's.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional

from edge_agent.metrics import Metrics
from edge_agent.mqtt.connection import Connection

CHECK_S = 1.0  # how often the state document is looked at for a change
_UNCOMPARED = ("ts",)  # the document's own timestamp


def state_key(doc: Any) -> Any:
    """``doc`` without its numbers and timestamp: what a change of state is judged on."""
    if isinstance(doc, dict):
        return {k: state_key(v) for k, v in doc.items() if k not in _UNCOMPARED}
    if isinstance(doc, (list, tuple)):
        return [state_key(v) for v in doc]
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return None
    return doc if doc is None or isinstance(doc, (str, bool)) else str(doc)


class StatusPublisher:
    """Publishes ``state``, ``stats`` and ``engine/update`` (module docstring)."""

    def __init__(self, conn: Connection, metrics: Metrics, stats_interval_s: float):
        self.conn = conn
        self.metrics = metrics
        self.interval = stats_interval_s
        self._next_stats = time.monotonic() + stats_interval_s
        self._next_state = self._next_stats
        self._next_check = 0.0
        self._last_key: Any = None  # state_key of the last state published
        self._engine_update: Optional[bytes] = None

    def on_connected(self) -> None:
        """After every (re)connect: a fresh state and the latest update progress."""
        self.publish_state()
        if self._engine_update is not None:
            self.conn.publish(self.conn.topics.engine_update, self._engine_update, qos=1,
                              retain=True)

    def tick(self, now: float) -> None:
        """Publish ``stats`` and ``state`` once per interval, and ``state`` as soon as it
        changed (called while connected, several times a second)."""
        if now >= self._next_stats:
            self._next_stats = now + self.interval
            payload = json.dumps(self.metrics.stats(), default=str).encode()
            self.conn.publish(self.conn.topics.stats, payload, qos=0)
        if now >= self._next_state:
            self._next_state = now + max(self.interval, CHECK_S)
            self._next_check = now + CHECK_S
            self.publish_state()
        elif now >= self._next_check:
            self._next_check = now + CHECK_S
            doc = self.metrics.state()
            if state_key(doc) != self._last_key:
                self._publish(doc)

    def publish_state(self) -> None:
        """(Re-)publish the retained ``state``. While offline this does nothing: every connect
        publishes a fresh state anyway (and paho's memory queue stays small)."""
        if self.conn.connected.is_set():
            self._publish(self.metrics.state())

    def _publish(self, doc: Dict[str, Any]) -> None:
        self._last_key = state_key(doc)
        self.conn.publish(self.conn.topics.state, json.dumps(doc, default=str).encode(), qos=1,
                          retain=True)

    def publish_engine_update(self, progress: Dict[str, Any]) -> None:
        """Retained ``engine/update`` progress. While offline only the latest is kept; it is
        published after the reconnect."""
        payload = json.dumps(progress, default=str).encode()
        self._engine_update = payload
        if self.conn.connected.is_set():
            self.conn.publish(self.conn.topics.engine_update, payload, qos=1, retain=True)
