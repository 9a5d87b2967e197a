"""The device's MQTT client, composed of one part per job:

===================  ===========================================================  ===========
part                 job                                                          thread
===================  ===========================================================  ===========
``Connection``       paho client, TLS, Last Will, reconnect and flap backoff,      paho's
                     why a connection failed (connection.py)
``OutboxPublisher``  outbox rows (and their snapshots) to the broker, window,      publisher
                     PUBACK or the consumer's end-to-end ack -> delete
                     (publisher.py, acks.py)
``CommandServer``    ``cmd/<name>`` -> reply; ping, state, config.get (server.py)   commands
``StatusPublisher``  retained state, periodic stats, engine/update (status.py)     publisher
``HaSink``           Home Assistant discovery and entity states, fed the event     delivery's
                     objects as a sink of the pipeline (discovery.py)
===================  ===========================================================  ===========

Interface (used by the agent; stable)::

    m = AgentMqtt(cfg.mqtt, cfg.device_id, outbox, metrics=metrics, snapshot_dir=dir)
    m.register_command("snapshot", fn)   # fn(request: dict) -> dict; runs on the command thread
    m.start()                            # connect_async + network loop; returns at once
    m.ha_sink                            # an event sink (None unless mqtt.ha_discovery)
    m.publish_snapshot(event_id, jpeg)   # QoS 1, not durable (cmd/snapshot; dropped offline)
    m.publish_state()                    # re-publish the retained state after a change
    m.publish_engine_update(progress)    # retained engine/update progress
    m.stop()                             # flush, publish "stopped", disconnect

paho's network thread only records what happened and wakes ours; user code (metrics sections,
command handlers) never runs on it. Status: Last Will ``offline`` (retained), ``online`` on
every connect, ``stopped`` on ``stop()``. After every (re)connect: subscribe ``cmd/+`` (and
``ack`` in ``end_to_end``), publish ``online``, the retained ``state`` and (when enabled) the Home
Assistant discovery configs.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from edge_agent import __version__
from edge_agent.config import MqttConfig
from edge_agent.metrics import Metrics
from edge_agent.mqtt.connection import Connection
from edge_agent.mqtt.discovery import HaBridge, HaSink
from edge_agent.mqtt.dispatch import Handler
from edge_agent.mqtt.publisher import OutboxPublisher
from edge_agent.mqtt.server import CommandServer
from edge_agent.mqtt.status import StatusPublisher
from edge_agent.mqtt.topics import Topics
from edge_agent.outbox.eventlog import Outbox

log = logging.getLogger(__name__)

_HEADROOM = 16  # paho in-flight slots above the event window: status, replies, snapshots, HA


class AgentMqtt:
    """One device's MQTT parts, wired together (see the module docstring)."""

    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox,
                 metrics: Optional[Metrics] = None,
                 config_fn: Optional[Callable[[], Dict[str, Any]]] = None,
                 cameras: Optional[Dict[str, List[str]]] = None,
                 snapshot_dir: Optional[Path] = None):
        """``metrics`` builds the state and stats documents (we add our ``mqtt`` section; by
        default a :class:`Metrics` of the outbox alone); ``config_fn`` returns the config for
        ``config.get`` (default: the mqtt section); ``cameras`` maps camera name -> zone names
        for Home Assistant discovery (entities of cameras/zones seen later in events are added
        when they first appear); ``snapshot_dir`` holds the JPEGs outbox rows refer to."""
        self.cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.topic_prefix, device_id, cfg.ha_prefix)
        self.outbox = outbox
        if metrics is None:
            metrics = Metrics(device_id)
            metrics.add("outbox", stats=lambda: {"outbox": outbox.stats()})
        self.metrics = metrics
        self.counters: Dict[str, int] = collections.defaultdict(int)
        self.commands = CommandServer(cfg, metrics, self.counters, config_fn)
        self.dispatcher = self.commands.dispatcher
        ha = HaBridge(self.topics, cfg.ha_prefix, device_id, __version__, cameras or {}) \
            if cfg.ha_discovery else None
        wake = threading.Event()
        self.connection = Connection(cfg, device_id, self.topics, self.counters, wake,
                                     self.commands.enqueue, int(cfg.max_inflight) + _HEADROOM)
        self.publisher = OutboxPublisher(cfg, self.connection, outbox, self.counters,
                                         None if snapshot_dir is None else Path(snapshot_dir))
        self.connection.outstanding = self.publisher.oldest_unacked
        self.status = StatusPublisher(self.connection, metrics, cfg.stats_interval_s)
        self.ha_sink = HaSink(ha, self.connection) if ha is not None else None
        self.publisher.on_connected.append(self.status.on_connected)
        if self.ha_sink is not None:
            self.publisher.on_connected.append(self.ha_sink.on_connected)
        self.publisher.on_tick.append(self.status.tick)
        metrics.add("mqtt", stats=lambda: {"mqtt": self._mqtt_stats()},
                    state=lambda: {"delivery": self.publisher.lag()})
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    def register_command(self, name: str, fn: Handler) -> None:
        """Handle ``cmd/<name>``; ``fn(request) -> dict`` runs on the command thread.

        Raise ``ValueError`` in ``fn`` for a bad field (the requester gets ``bad_request``)."""
        self.commands.register(name, fn)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start publishing; returns immediately."""
        with self._lock:
            if self._started:
                raise RuntimeError("AgentMqtt already started")
            self._started = True
        self.connection.start()
        self.publisher.start()
        self.commands.start(self.connection)

    def stop(self, timeout: float = 5.0) -> None:
        """Flush the outbox for up to ``timeout`` s, publish ``stopped``, disconnect."""
        deadline = time.monotonic() + timeout
        try:
            # First: the publisher returns as soon as it sees the stop and no visible row is
            # left, so rows appended but not yet synced would stay behind.
            self.outbox.sync()
        except Exception:
            log.exception("mqtt: outbox sync at stop failed")
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
        self.connection.stopping = True
        self.commands.stop()
        self.publisher.stop(deadline)
        self.commands.join(timeout=max(0.1, deadline - time.monotonic()) + 1.0)
        self.connection.close(deadline)
        log.info("mqtt: stopped (%d events left in the outbox for the next start)",
                 len(self.outbox))

    @property
    def connected(self) -> bool:
        return self.connection.connected.is_set()

    @property
    def last_error(self) -> Optional[str]:
        return self.connection.last_error

    @property
    def connect_attempts(self) -> Deque[float]:
        return self.connection.connect_attempts

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and subscribed to commands (for tests and the service)."""
        deadline = time.monotonic() + timeout
        conn = self.connection
        return conn.connected.wait(timeout) and conn.subscribed.wait(
            max(0.0, deadline - time.monotonic()))

    # --- publications -----------------------------------------------------------------------

    def publish_state(self) -> None:
        """Re-publish the retained ``state`` (after a change such as an engine swap)."""
        self.status.publish_state()

    def publish_engine_update(self, progress: Dict[str, Any]) -> None:
        """Retained ``engine/update`` progress of the remote-update state machine."""
        self.status.publish_engine_update(progress)

    def reply_route(self) -> Optional[Tuple[Optional[str], Optional[bytes]]]:
        """Inside a command handler: the request's MQTT 5 response topic and correlation data
        (for :meth:`publish_reply` later)."""
        return self.commands.route

    def publish_reply(self, name: str, reply: Dict[str, Any],
                      route: Optional[Tuple[Optional[str], Optional[bytes]]] = None) -> None:
        """A further reply after the command's own (the remote update sends one per
        transition): on the request's response topic with its correlation data when ``route``
        (from :meth:`reply_route`) has them and the protocol is MQTT 5, else on
        ``cmd/<name>/reply``. Dropped while offline: ``engine/update`` keeps the latest
        transition retained and is sent again after the reconnect."""
        if not self.connected:
            return
        topic, corr = route if route is not None else (None, None)
        if self.cfg.protocol != "5" or not topic:
            topic = self.topics.reply(name)
        self.connection.publish(topic, json.dumps(reply, default=str).encode(), qos=1,
                                correlation=corr)

    def publish_snapshot(self, event_id: str, jpeg: bytes) -> bool:
        """Publish a JPEG on ``snapshots/<event_id>`` (QoS 1). Not durable: returns False and
        counts a drop while disconnected (``cmd/snapshot``; event snapshots use the outbox)."""
        topic = self.topics.snapshot(event_id)
        if not isinstance(jpeg, (bytes, bytearray, memoryview)):
            raise ValueError(f"snapshot must be bytes, got {type(jpeg).__name__}")
        if not self.connected:
            self.counters["snapshots_dropped"] += 1
            return False
        self.connection.publish(topic, bytes(jpeg), qos=1)
        self.counters["snapshots"] += 1
        return True

    def stats(self) -> Dict[str, Any]:
        """The ``stats`` message body (``metrics.stats()``, our section included)."""
        return self.metrics.stats()

    def _mqtt_stats(self) -> Dict[str, Any]:
        return {
            "connected": self.connected,
            "inflight": len(self.publisher.inflight),
            "last_error": self.last_error,
            "commands_ok": self.dispatcher.counts["ok"],
            "commands_error": self.dispatcher.counts["error"],
            "broker": f"{self.connection.host}:{self.connection.port}",
            **self.publisher.lag(),
            **dict(self.counters),
        }
