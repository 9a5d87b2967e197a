"""The device's MQTT client: publishes the outbox, status/state/stats, answers commands.

Interface (used by ``service.py``; stable)::

    m = AgentMqtt(cfg.mqtt, cfg.device_id, outbox, metrics=metrics, snapshot_dir=dir)
    m.register_command("snapshot", fn)   # fn(request: dict) -> dict; runs on the command thread
    m.start()                            # connect_async + network loop; returns at once
    m.publish_snapshot(event_id, jpeg)   # QoS 1, not durable (cmd/snapshot; dropped offline)
    m.publish_state()                    # re-publish the retained state after a change
    m.publish_engine_update(progress)    # retained engine/update progress
    m.stop()                             # flush, publish "stopped", disconnect

Threads: paho's network thread only records what happened (connect, PUBACK, command received)
and wakes ours; the *publisher* thread moves rows from the outbox to the broker and deletes them
when their PUBACK arrives (``on_publish``); the *command* thread runs handlers and publishes
replies. User code (metrics sections, handlers) never runs on paho's thread.

Delivery: at least once. A row stays in the SQLite outbox until the broker acknowledged it, so a
broker outage or a crash of this process loses nothing that reached the outbox; duplicates are
possible after a reconnect or restart (subscribers dedupe by ``event_id`` or ``seq``). An event's
snapshot is a reference in the outbox row: the JPEG is read from ``snapshot_dir`` and published
on ``snapshots/<event_id>`` just before the event, so it survives an outage too. At most
``max_inflight`` events are unacknowledged at once: paho re-sends its whole in-memory backlog at
once on reconnect (it ignores its own in-flight limit there), so we never give it more than that
window.

Status: Last Will ``offline`` (retained), ``online`` on every connect, ``stopped`` on ``stop()``.
After every (re)connect: subscribe ``cmd/+``, publish ``online``, the retained ``state`` and (when
enabled) the Home Assistant discovery configs.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import __version__
from edge_agent.config import MASK, MqttConfig, mask_url_passwords
from edge_agent.eventlog import Outbox, OutboxRow
from edge_agent.metrics import Metrics
from edge_agent.mqtt.commands import Dispatcher, Handler, require
from edge_agent.mqtt.discovery import HaBridge
from edge_agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"
_SHORT_CONNECTION_S = 2.0  # a connection dropped sooner counts as a flap (backoff grows)
_STABLE_S = 10.0  # connected this long: the flap backoff is forgotten
_SECRET_KEYS = ("password", "secret", "token", "private_key")


class _PahoLog(logging.Filter):
    """On one client's paho logger: remembers the last error paho logged (some failures, e.g.
    a TLS alert after the handshake, are reported only there) and drops paho 2.2's "Client is
    not connected" line, which follows every failed attempt that we already reported.

    A logging filter rather than paho's ``on_log``: with ``on_log`` set, paho formats every
    debug line of every packet even when nobody wants it."""

    def __init__(self, owner: AgentMqtt):
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        if text.startswith("Client is not connected"):
            return False
        self.owner._last_paho_error = text
        return True


class _Client(paho.Client):
    """paho's client, remembering why the last connection attempt failed (paho only says that
    it failed), so a TLS or DNS problem can be reported clearly."""

    last_connect_error: Optional[BaseException] = None

    def reconnect(self):  # noqa: D102 (paho's own method)
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise


def _credentials(cfg: MqttConfig) -> Tuple[Optional[str], Optional[str]]:
    """(username, password); the environment overrides the password of the config."""
    password = os.environ.get(PASSWORD_ENV)
    if password is None and cfg.password is not None:
        password = cfg.password.get_secret_value()
    return cfg.username, password


def mask_secrets(data: Any, secrets: List[str]) -> Any:
    """A copy of ``data`` with secret-named keys, any secret value and the password of any URL
    (e.g. a camera's ``rtsp://user:password@host``) replaced by a mask."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if isinstance(k, str) and any(s in k.lower() for s in _SECRET_KEYS) and v is not None:
                out[k] = MASK
            else:
                out[k] = mask_secrets(v, secrets)
        return out
    if isinstance(data, list):
        return [mask_secrets(v, secrets) for v in data]
    if isinstance(data, str):
        for s in secrets:
            if s and s in data:
                data = data.replace(s, MASK)
        return mask_url_passwords(data)
    return data


class AgentMqtt:
    """One device's connection to the broker (see the module docstring)."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        outbox: Outbox,
        metrics: Optional[Metrics] = None,
        config_fn: Optional[Callable[[], Dict[str, Any]]] = None,
        cameras: Optional[Dict[str, List[str]]] = None,
        snapshot_dir: Optional[Path] = None,
    ):
        """``metrics`` builds the state and stats documents (we add our ``mqtt`` section; by
        default a :class:`Metrics` of the outbox alone); ``config_fn`` returns the config for
        ``config.get`` (default: the mqtt section); ``cameras`` maps camera name -> zone names
        for Home Assistant discovery (entities of cameras/zones seen later in events are added
        when they first appear); ``snapshot_dir`` holds the JPEGs outbox rows refer to."""
        self.cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.outbox = outbox
        if metrics is None:
            metrics = Metrics(device_id)
            metrics.add("outbox", stats=lambda: {"outbox": outbox.stats()})
        self.metrics = metrics
        metrics.add("mqtt", stats=lambda: {"mqtt": self._mqtt_stats()})
        self._snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self._config_fn = config_fn
        self._username, self._password = _credentials(cfg)
        self._secrets = [self._password] if self._password else []
        self._window = int(cfg.max_inflight)

        self.dispatcher = Dispatcher(cfg.max_command_bytes)
        self.dispatcher.register("ping", self._cmd_ping)
        self.dispatcher.register("state", self._cmd_state)
        self.dispatcher.register("config.get", self._cmd_config_get)

        self._ha: Optional[HaBridge] = None
        if cfg.ha_discovery:
            self._ha = HaBridge(self.topics, cfg.ha_prefix, device_id, __version__, cameras or {})

        # Shared between paho's thread and ours: deques (atomic append/popleft) and Events.
        self._acks: Deque[Tuple[int, Any]] = collections.deque()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._connect_pending = False
        self._cmd_queue: queue.Queue = queue.Queue(maxsize=1000)  # (name, payload, rtopic, corr)

        # Owned by the publisher thread.
        self._inflight: Dict[int, int] = {}  # paho mid -> outbox seq
        self._cursor = 0  # highest seq handed to paho
        self._to_delete: List[int] = []  # acknowledged, not yet deleted from the outbox
        self._to_delete_since = 0.0

        self._stopping = False
        self._stop_deadline = 0.0
        self._threads: List[threading.Thread] = []
        self._started = False
        self._lock = threading.Lock()
        self.counters: Dict[str, int] = collections.defaultdict(int)
        self.last_error: Optional[str] = None
        self._last_paho_error: Optional[str] = None
        self._engine_update: Optional[bytes] = None
        self._refused = False
        self._connected_at = 0.0
        self._flaps = 0  # consecutive connections dropped right after CONNACK
        # monotonic times of the latest failed attempts (shows the backoff)
        self.connect_attempts: Deque[float] = collections.deque(maxlen=100)

        self._client = self._make_client()

    # --- setup ------------------------------------------------------------------------------

    def _make_client(self) -> _Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = _Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"edge-agent-{self.device_id}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else True,
        )
        plog = logging.getLogger(f"edge_agent.mqtt.paho.{self.device_id}")
        for f in [f for f in plog.filters if isinstance(f, _PahoLog)]:
            plog.removeFilter(f)  # an earlier AgentMqtt of this device
        plog.addFilter(_PahoLog(self))
        client.enable_logger(plog)
        if self._username:
            client.username_pw_set(self._username, self._password)
        if cfg.tls is not None:
            self._setup_tls(client)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(
            cfg.reconnect_min_s, max(cfg.reconnect_max_s, cfg.reconnect_min_s)
        )
        # Headroom above our event window for status, replies, snapshots and HA states.
        client.max_inflight_messages_set(self._window + 16)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = _no_delay
        return client

    def _setup_tls(self, client: _Client) -> None:
        tls = self.cfg.tls
        assert tls is not None
        for what, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                           ("key_file", tls.key_file)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"mqtt.tls.{what}: no such file: {path}")
        if tls.key_file and not tls.cert_file:
            raise ValueError("mqtt.tls.key_file is set but mqtt.tls.cert_file is not")
        try:
            client.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"mqtt.tls: cannot load the certificates: {exc}") from None
        if tls.insecure:
            log.warning("mqtt.tls.insecure is true: the broker's hostname is NOT verified")
            client.tls_insecure_set(True)

    def register_command(self, name: str, fn: Handler) -> None:
        """Handle ``cmd/<name>``; ``fn(request) -> dict`` runs on the command thread.

        Raise ``ValueError`` in ``fn`` for a bad field (the requester gets ``bad_request``)."""
        self.dispatcher.register(name, fn)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start publishing; returns immediately."""
        with self._lock:
            if self._started:
                raise RuntimeError("AgentMqtt already started")
            self._started = True
        log.info(
            "mqtt: connecting to %s:%s as %s (MQTT %s%s)", self.cfg.host, self.cfg.port,
            f"edge-agent-{self.device_id}", self.cfg.protocol, ", TLS" if self.cfg.tls else "",
        )
        self.outbox.add_listener(self._wake.set)
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        for name, target in (("mqtt-publisher", self._run_publisher),
                             ("mqtt-commands", self._run_commands)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Flush the outbox for up to ``timeout`` s, publish ``stopped``, disconnect."""
        deadline = time.monotonic() + timeout
        try:
            # First: the publisher returns as soon as it sees _stopping and no visible row is
            # left, so rows appended but not yet synced would stay behind.
            self.outbox.sync()
        except Exception:
            log.exception("mqtt: outbox sync at stop failed")
        with self._lock:
            if not self._started or self._stopping:
                return
            self._stop_deadline = deadline  # before _stopping, which makes the publisher read it
            self._stopping = True
        self._wake.set()
        try:
            self._cmd_queue.put_nowait(None)
        except queue.Full:
            pass  # the worker also exits on its own once it sees _stopping
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()) + 1.0)
        self.outbox.remove_listener(self._wake.set)
        if self._connected.is_set():
            info = self._client.publish(self.topics.status, "stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: could not publish 'stopped': %s", exc)
        else:
            log.warning("mqtt: not connected at stop; 'stopped' not published")
        self._client.disconnect()
        self._client.loop_stop()
        left = len(self.outbox)
        log.info("mqtt: stopped (%d events left in the outbox for the next start)", left)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and subscribed to commands (for tests and the service)."""
        deadline = time.monotonic() + timeout
        return self._connected.wait(timeout) and self._subscribed.wait(
            max(0.0, deadline - time.monotonic())
        )

    # --- paho callbacks (network thread: record and wake only) -------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True
            self.counters["connect_failures"] += 1
            self.connect_attempts.append(time.monotonic())
            self.last_error = f"broker refused the connection: {reason_code}"
            hint = ""
            if reason_code.value in (0x86, 0x87, 4, 5):
                hint = " (check mqtt.username / mqtt.password or EDGE_AGENT_MQTT_PASSWORD)"
            log.error(
                "mqtt: %s:%s refused the connection: %s%s; retrying with backoff",
                self.cfg.host, self.cfg.port, reason_code, hint,
            )
            return
        self.counters["connections"] += 1
        self._connected_at = time.monotonic()
        self.last_error = None
        self._last_paho_error = None
        # Queue-only paho calls are fine here; state (user code) follows on our thread.
        self._subscribed.clear()
        client.subscribe(self.topics.cmd_filter, qos=1)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._connect_pending = True
        self._connected.set()
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("mqtt: the broker refused the command subscription: %s", reason_codes)
        self._subscribed.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self.counters["connect_failures"] += 1
        self.connect_attempts.append(time.monotonic())
        exc = getattr(client, "last_connect_error", None)
        what = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        if isinstance(exc, ssl.SSLCertVerificationError):
            what += " (is mqtt.tls.ca_file the CA that signed the broker's certificate?)"
        self.last_error = f"cannot connect: {what}"
        log.warning(
            "mqtt: cannot connect to %s:%s: %s; retrying with backoff",
            self.cfg.host, self.cfg.port, what,
        )

    def _short_lived(self, client, lived: float, reason_code) -> None:
        """A connection the broker dropped right after accepting it. paho would reconnect at
        the minimum delay every time (its backoff restarts on every CONNACK): back off
        ourselves, and say what was outstanding - mosquitto 2.0 drops a client whose publish
        its ACL denies, so that is the usual cause."""
        self._flaps += 1
        self.counters["short_connections"] += 1
        cfg = self.cfg
        # Exponent capped: 2 ** flaps as an int overflows float after ~1000 flaps (hours of
        # flapping), and an exception here would stop paho's network thread for good.
        delay = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2.0 ** min(self._flaps, 1000))
        client.reconnect_delay_set(delay, max(cfg.reconnect_max_s, delay))
        try:
            oldest = min(self._inflight.values(), default=None)
        except RuntimeError:  # the publisher thread changed it meanwhile; only a hint
            oldest = None
        hint = ""
        if oldest is not None:
            hint = (f"; event seq {oldest} was unacknowledged - check that the broker's ACL lets "
                    f"this client publish on {self.topics.base}/events/#")
        self.last_error = f"the broker closed the connection {lived:.1f} s after accepting it"
        log.warning("mqtt: %s (%s; %d in a row)%s; next reconnect in >= %.1f s",
                    self.last_error, reason_code, self._flaps, hint, delay)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._wake.set()
        if self._stopping:
            return
        if was:
            self.counters["disconnects"] += 1
            lived = time.monotonic() - self._connected_at
            if lived < _SHORT_CONNECTION_S:
                self._short_lived(client, lived, reason_code)
            else:
                log.warning("mqtt: connection lost (%s); reconnecting", reason_code)
        elif self._refused:
            self._refused = False  # already reported by _on_connect
        else:
            # Closed before CONNACK: e.g. the broker demanded a client certificate (TLS 1.3
            # sends that alert after the handshake) or is not an MQTT server.
            self.counters["connect_failures"] += 1
            self.connect_attempts.append(time.monotonic())
            what = self._last_paho_error or str(reason_code)
            hint = ""
            if "CERTIFICATE_REQUIRED" in what or "certificate required" in what:
                hint = " (the broker wants a client certificate: mqtt.tls.cert_file/key_file)"
            self.last_error = f"connection closed before CONNACK: {what}{hint}"
            log.warning("mqtt: %s:%s %s; retrying with backoff", self.cfg.host, self.cfg.port,
                        self.last_error)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, reason_code))
        self._wake.set()

    def _on_message(self, client, userdata, msg) -> None:
        name = self.topics.command_name(msg.topic)
        if name is None:
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            self._cmd_queue.put_nowait((name, bytes(msg.payload), response_topic, correlation))
        except queue.Full:
            self.counters["commands_dropped"] += 1

    # --- publisher thread -------------------------------------------------------------------

    def _run_publisher(self) -> None:
        interval = self.cfg.stats_interval_s
        next_stats = time.monotonic() + interval
        while True:
            self._wake.wait(0.02 if self._to_delete else 0.25)
            self._wake.clear()
            try:
                self._drain_acks()
                self._delete_acked(force=self._stopping)
                if self._connect_pending and self._connected.is_set():
                    self._connect_pending = False
                    self._after_connect()
                if self._stopping and (
                    time.monotonic() >= self._stop_deadline or self._flushed()
                ):
                    return
                if self._connected.is_set():
                    if self._flaps and time.monotonic() - self._connected_at > _STABLE_S:
                        self._flaps = 0  # stable again: back to the configured backoff
                        self._client.reconnect_delay_set(
                            self.cfg.reconnect_min_s,
                            max(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s))
                    self._fill_window()
                    now = time.monotonic()
                    if now >= next_stats:
                        next_stats = now + interval
                        self.publish_stats()
            except Exception:  # keep publishing whatever one step did
                log.exception("mqtt: publisher step failed")
                time.sleep(0.5)

    def _flushed(self) -> bool:
        return not self._inflight and not self._to_delete and not self.outbox.peek(self._cursor, 1)

    def _after_connect(self) -> None:
        """Per connection, after on_connect subscribed and said online: state, discovery."""
        if self.cfg.event_qos == 0 and self._inflight:
            # paho drops QoS 0 messages not yet written when a connection goes, and calls no
            # on_publish for them: free their window slots and send those rows again.
            self._cursor = min(self._inflight.values()) - 1
            self._inflight.clear()
        c = self._client
        self.publish_state()
        if self._engine_update is not None:
            c.publish(self.topics.engine_update, self._engine_update, qos=1, retain=True)
        if self._ha is not None:
            for topic, payload, retain in self._ha.discovery_messages():
                c.publish(topic, payload, qos=1, retain=retain)
        n = self.counters["connections"]
        log.info("mqtt: connected to %s:%s (connection %d); %d events waiting",
                 self.cfg.host, self.cfg.port, n, len(self.outbox))

    def _fill_window(self) -> None:
        room = self._window - len(self._inflight)
        # Refill at once: waiting to refill in batches measured 3-10x slower (stalls between
        # bursts), one small SELECT per PUBACK is cheap.
        if room <= 0:
            return
        rows = self.outbox.peek(self._cursor, room)
        qos = self.cfg.event_qos
        for row in rows:
            if row.snapshot is not None:
                self._publish_row_snapshot(row)
            info = self._client.publish(self.topics.event(row.type), row.payload, qos=qos)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                log.warning("mqtt: publish of seq %d refused by paho (%s); retrying later",
                            row.seq, paho.error_string(info.rc))
                break
            # NO_CONN: paho keeps QoS>0 messages and sends them after the reconnect.
            self._inflight[info.mid] = row.seq
            self._cursor = row.seq
            self.counters["published"] += 1
            if self._ha is not None:
                self._publish_ha(row.payload)

    def _publish_row_snapshot(self, row: OutboxRow) -> None:
        """The JPEG of an outbox row, before its event (the ring may have dropped it since)."""
        assert row.snapshot is not None
        event_id, name = row.snapshot
        if self._snapshot_dir is None:
            return
        try:
            jpeg = (self._snapshot_dir / name).read_bytes()
        except OSError as exc:
            self.counters["snapshots_missing"] += 1
            log.warning("mqtt: snapshot of event seq %d not published: %s", row.seq, exc)
            return
        self._client.publish(self.topics.snapshot(event_id), jpeg, qos=1)
        self.counters["snapshots"] += 1

    def _drain_acks(self) -> None:
        seqs = []
        while self._acks:
            mid, reason = self._acks.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # status, state, reply ...
            if getattr(reason, "is_failure", False):
                # Re-sending would be refused again (e.g. not authorised): count, log, drop.
                self.counters["rejected"] += 1
                log.error("mqtt: broker rejected event seq %d: %s", seq, reason)
            seqs.append(seq)
        if seqs:
            if not self._to_delete:
                self._to_delete_since = time.monotonic()
            self._to_delete.extend(seqs)
            self.counters["acked"] += len(seqs)

    def _delete_acked(self, force: bool = False) -> None:
        """Delete acknowledged rows in batches (a transaction per PUBACK would cost as much as
        the appends). Until deleted, a crash only means the broker gets those events twice."""
        if not self._to_delete:
            return
        if (force or len(self._to_delete) >= 256
                or time.monotonic() - self._to_delete_since >= 0.02):
            seqs, self._to_delete = self._to_delete, []
            self.outbox.ack(seqs)

    def _publish_ha(self, payload: bytes) -> None:
        assert self._ha is not None
        try:
            event = json.loads(payload)
            msgs = self._ha.on_event(event)
        except (ValueError, TypeError, KeyError) as exc:
            log.debug("mqtt: no Home Assistant state for an event: %s", exc)
            return
        for topic, data, retain in msgs:
            self._client.publish(topic, data, qos=1, retain=retain)

    # --- other publications -----------------------------------------------------------------

    def _state_payload(self) -> Dict[str, Any]:
        return self.metrics.state()

    def publish_state(self) -> None:
        """(Re-)publish the retained ``state``. While offline this does nothing: every connect
        publishes a fresh state anyway (and paho's memory queue stays small)."""
        if not self._connected.is_set():
            return
        payload = json.dumps(self._state_payload(), default=str).encode()
        self._client.publish(self.topics.state, payload, qos=1, retain=True)

    def _mqtt_stats(self) -> Dict[str, Any]:
        return {
            "connected": self.connected,
            "inflight": len(self._inflight),
            "last_error": self.last_error,
            "commands_ok": self.dispatcher.counts["ok"],
            "commands_error": self.dispatcher.counts["error"],
            **dict(self.counters),
        }

    def stats(self) -> Dict[str, Any]:
        """The ``stats`` message body (``metrics.stats()``, our section included)."""
        return self.metrics.stats()

    def publish_stats(self) -> None:
        payload = json.dumps(self.stats(), default=str).encode()
        self._client.publish(self.topics.stats, payload, qos=0)

    def publish_snapshot(self, event_id: str, jpeg: bytes) -> bool:
        """Publish a JPEG on ``snapshots/<event_id>`` (QoS 1). Not durable: returns False and
        counts a drop while disconnected (snapshots stay in the on-disk ring)."""
        topic = self.topics.snapshot(event_id)
        if not isinstance(jpeg, (bytes, bytearray, memoryview)):
            raise ValueError(f"snapshot must be bytes, got {type(jpeg).__name__}")
        if not self._connected.is_set():
            self.counters["snapshots_dropped"] += 1
            return False
        self._client.publish(topic, bytes(jpeg), qos=1)
        self.counters["snapshots"] += 1
        return True

    def publish_engine_update(self, progress: Dict[str, Any]) -> None:
        """Retained ``engine/update`` progress of the remote-update state machine. While offline
        only the latest is kept; it is published after the reconnect."""
        payload = json.dumps(progress, default=str).encode()
        self._engine_update = payload
        if self._connected.is_set():
            self._client.publish(self.topics.engine_update, payload, qos=1, retain=True)

    # --- commands ---------------------------------------------------------------------------

    def _run_commands(self) -> None:
        while True:
            try:
                item = self._cmd_queue.get(timeout=0.5)
            except queue.Empty:
                if self._stopping:
                    return
                continue
            if item is None:
                return
            try:
                self._serve(*item)
            except Exception:
                log.exception("mqtt: command handling failed")

    def _serve(self, name: str, payload: bytes, response_topic: Any, correlation: Any) -> None:
        reply = self.dispatcher.handle(name, payload)
        data = json.dumps(reply, default=str).encode()
        props = None
        if self.cfg.protocol == "5" and isinstance(correlation, (bytes, bytearray)):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = bytes(correlation)
        default_topic = self.topics.reply(name)
        topic = default_topic
        if self.cfg.protocol == "5" and _valid_topic(response_topic):
            topic = response_topic
        try:
            self._client.publish(topic, data, qos=1, properties=props)
        except ValueError as exc:  # e.g. a wildcard in the response topic
            log.info("mqtt: bad response topic for %s (%s); replying on %s", name, exc,
                     default_topic)
            self._client.publish(default_topic, data, qos=1, properties=props)

    def _cmd_ping(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return {"pong": True, "uptime_s": self.metrics.uptime_s()}

    def _cmd_state(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return self._state_payload()

    def _cmd_config_get(self, request: Dict[str, Any]) -> Dict[str, Any]:
        section = require(request, "section", str, default="")
        if self._config_fn is not None:
            config = self._config_fn()
        else:
            config = {"mqtt": self.cfg.model_dump(mode="json")}
        config = mask_secrets(config, self._secrets)
        if section:
            if section not in config:
                raise ValueError(f"unknown section {section!r}; known: {', '.join(config)}")
            return {"config": {section: config[section]}}
        return {"config": config}


def _no_delay(client, userdata, sock) -> None:
    """paho leaves Nagle's algorithm on: with a small in-flight window every PUBLISH then waits
    for the previous segment's delayed ACK (tens of ms per round trip on loopback)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (e.g. a proxy wrapper): only slower


def _valid_topic(topic: Any) -> bool:
    """A topic the broker will accept from us: a broker drops the connection of a client that
    publishes to a bad one, so a requester must not be able to make us do that."""
    if not isinstance(topic, str) or not topic or len(topic.encode("utf-8", "replace")) > 65535:
        return False
    if any(c in topic for c in "+#") or topic.startswith("$"):
        return False
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF
                   or ord(c) in (0xFFFE, 0xFFFF) for c in topic)
