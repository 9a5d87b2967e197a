"""The state and stats publisher: the retained ``state`` (every connect, and on change), the
periodic ``stats``, and the retained ``engine/update`` progress of a remote update.

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


class StatusPublisher:
    """Publishes ``state``, ``stats`` and ``engine/update`` (module docstring)."""

    def __init__(self, conn: Connection, metrics: Metrics, stats_interval_s: float):
        self.conn = conn
        self.metrics = metrics
        self.interval = stats_interval_s
        self._next_stats = time.monotonic() + stats_interval_s
        self._engine_update: Optional[bytes] = None

    def on_connected(self) -> None:
        """After every (re)connect: a fresh state and the latest update progress."""
        self.publish_state()
        if self._engine_update is not None:
            self.conn.publish(self.conn.topics.engine_update, self._engine_update, qos=1,
                              retain=True)

    def tick(self, now: float) -> None:
        """Publish ``stats`` once per interval (called while connected)."""
        if now >= self._next_stats:
            self._next_stats = now + self.interval
            payload = json.dumps(self.metrics.stats(), default=str).encode()
            self.conn.publish(self.conn.topics.stats, payload, qos=0)

    def publish_state(self) -> None:
        """(Re-)publish the retained ``state``. While offline this does nothing: every connect
        publishes a fresh state anyway (and paho's memory queue stays small)."""
        if not self.conn.connected.is_set():
            return
        payload = json.dumps(self.metrics.state(), default=str).encode()
        self.conn.publish(self.conn.topics.state, payload, qos=1, retain=True)

    def publish_engine_update(self, progress: Dict[str, Any]) -> None:
        """Retained ``engine/update`` progress. While offline only the latest is kept; it is
        published after the reconnect."""
        payload = json.dumps(progress, default=str).encode()
        self._engine_update = payload
        if self.conn.connected.is_set():
            self.conn.publish(self.conn.topics.engine_update, payload, qos=1, retain=True)
