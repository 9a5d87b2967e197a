"""One device's connection to the broker: paho's client (composed, not subclassed), connection
policy (reconnect delays, flap backoff, Last Will) and the diagnosis of why a connection failed.

paho's network thread only runs the callbacks here, and they only record and wake: a CONNACK
sets :attr:`Connection.connected` and ``connect_pending``, a PUBACK goes to :attr:`acks`, a
consumer's end-to-end ack to :attr:`consumer_acks`, a command request to ``on_request``.
Everything else runs on the publisher's thread.

With several brokers (``mqtt.hosts``) every reconnect attempt goes to the next one in turn, with
paho's backoff between attempts; TLS and credentials are the same for each.
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.config.secrets import mqtt_credentials
from edge_agent.mqtt.paho_client import ClientTls, new_client
from edge_agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

SHORT_CONNECTION_S = 2.0  # a connection dropped sooner counts as a flap (backoff grows)
STABLE_S = 10.0  # connected this long: the flap backoff is forgotten
RESUBSCRIBE_S = 2.0  # a refused subscription is tried again after this long

Request = Tuple[str, bytes, Any, Any]  # command name, payload, response topic, correlation


class _PahoLog(logging.Filter):
    """On one client's paho logger: remembers the last error paho logged (some failures, e.g.
    a TLS alert after the handshake, are reported only there) and drops paho 2.2's "Client is
    not connected" line, which follows every failed attempt that we already reported.

    A logging filter rather than paho's ``on_log``: with ``on_log`` set, paho formats every
    debug line of every packet even when nobody wants it."""

    def __init__(self, owner: Connection):
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        if text.startswith("Client is not connected"):
            return False
        self.owner.last_paho_error = text
        return True


class Connection:
    """paho client + connection state and diagnostics (module docstring).

    ``counters`` is shared with the other MQTT parts (one ``mqtt`` stats section);
    :attr:`outstanding` (set by whoever publishes events, the ``OutboxPublisher``) returns the
    oldest unacknowledged event seq, for the flap hint.
    """

    def __init__(self, cfg: MqttConfig, device_id: str, topics: Topics,
                 counters: Dict[str, int], wake: threading.Event,
                 on_request: Callable[[Request], None], extra_inflight: int):
        self.cfg = cfg
        self.client_id = f"edge-agent-{device_id}"
        self.topics = topics
        self.counters = counters
        self.wake = wake
        self._on_request = on_request
        self.outstanding: Callable[[], Optional[int]] = lambda: None  # no events published
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connect_pending = False  # a CONNACK the publisher has not followed up yet
        self.acks: Deque[Tuple[int, Any]] = collections.deque()  # (mid, reason) from PUBACKs
        # (size, first bytes) of each message on the ack topic; bounded: a newer ack supersedes
        self.consumer_acks: Deque[Tuple[int, bytes]] = collections.deque(maxlen=10_000)
        self.end_to_end = cfg.delivery == "end_to_end"
        self.endpoints = cfg.endpoints()
        self._endpoint = 0
        self._attempted = False
        self.resubscribe_at: Optional[float] = None
        self.stopping = False
        self.last_error: Optional[str] = None
        self.last_paho_error: Optional[str] = None
        self.last_connect_error: Optional[BaseException] = None
        self.connected_at = 0.0
        self.flaps = 0  # consecutive connections dropped right after CONNACK
        self._refused = False
        # monotonic times of the latest failed attempts (shows the backoff)
        self.connect_attempts: Deque[float] = collections.deque(maxlen=100)
        self.client = self._make_client(device_id, extra_inflight)

    # --- setup ------------------------------------------------------------------------------

    def _make_client(self, device_id: str, inflight: int) -> paho.Client:
        cfg = self.cfg
        username, password = mqtt_credentials(cfg)
        tls = self._tls()
        try:
            client = new_client(self.client_id, cfg.protocol, username=username,
                                password=password, tls=tls)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"mqtt.tls: cannot load the certificates: {exc}") from None
        if tls is not None and tls.insecure:
            log.warning("mqtt.tls.insecure is true: the broker's hostname is NOT verified")
        plog = logging.getLogger(f"edge_agent.mqtt.paho.{device_id}")
        for f in [f for f in plog.filters if isinstance(f, _PahoLog)]:
            plog.removeFilter(f)  # an earlier connection of this device
        plog.addFilter(_PahoLog(self))
        client.enable_logger(plog)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_s, max(cfg.reconnect_max_s,
                                                            cfg.reconnect_min_s))
        client.max_inflight_messages_set(inflight)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = _no_delay
        # paho's loop calls client.reconnect() for every attempt and only says that it failed:
        # wrap it (on this instance) to keep the reason, so a TLS or DNS problem reads clearly.
        client.reconnect = self._reconnect  # type: ignore[method-assign]
        return client

    def _reconnect(self) -> Any:
        if self._attempted and len(self.endpoints) > 1:
            # paho reconnects to the host it was given and offers no public way to change it
            # while a connection is being retried: set its target for this attempt directly.
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            self.client._host, self.client._port = self.endpoints[self._endpoint]
        self._attempted = True
        try:
            return paho.Client.reconnect(self.client)
        except OSError as exc:
            self.last_connect_error = exc
            raise

    def _tls(self) -> Optional[ClientTls]:
        """``mqtt.tls`` with its files checked (ValueError naming the key), or None."""
        tls = self.cfg.tls
        if tls is None:
            return None
        for what, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                           ("key_file", tls.key_file)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"mqtt.tls.{what}: no such file: {path}")
        if tls.key_file and not tls.cert_file:
            raise ValueError("mqtt.tls.key_file is set but mqtt.tls.cert_file is not")
        return ClientTls(tls.ca_file, tls.cert_file, tls.key_file, tls.insecure)

    # --- use --------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The broker of the current (or latest) connection attempt."""
        return self.endpoints[self._endpoint][0]

    @property
    def port(self) -> int:
        return self.endpoints[self._endpoint][1]

    def start(self) -> None:
        """Connect in the background (paho's network thread); returns at once."""
        cfg = self.cfg
        others = f" (then {len(self.endpoints) - 1} more in turn)" if len(self.endpoints) > 1 \
            else ""
        log.info("mqtt: connecting to %s:%s%s as %s (MQTT %s%s)", self.host, self.port, others,
                 self.client_id, cfg.protocol, ", TLS" if cfg.tls else "")
        self.client.connect_async(self.host, self.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False,
                correlation: Optional[bytes] = None) -> paho.MQTTMessageInfo:
        """Hand one message to paho; ``correlation`` becomes MQTT 5 CorrelationData."""
        props = None
        if correlation is not None and self.cfg.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = bytes(correlation)
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def close(self, deadline: float) -> None:
        """Publish ``stopped`` (until ``deadline``, monotonic) and disconnect."""
        if self.connected.is_set():
            info = self.client.publish(self.topics.status, "stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: could not publish 'stopped': %s", exc)
        else:
            log.warning("mqtt: not connected at stop; 'stopped' not published")
        self.client.disconnect()
        self.client.loop_stop()

    def forget_flaps_when_stable(self) -> None:
        """Connected long enough: back to the configured reconnect backoff."""
        if self.flaps and time.monotonic() - self.connected_at > STABLE_S:
            self.flaps = 0
            self.client.reconnect_delay_set(self.cfg.reconnect_min_s,
                                            max(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s))

    # --- paho callbacks (network thread: record and wake only) -------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True
            self._failed(f"broker refused the connection: {reason_code}")
            hint = ""
            if reason_code.value in (0x86, 0x87, 4, 5):
                hint = " (check mqtt.username / mqtt.password or EDGE_AGENT_MQTT_PASSWORD)"
            elif reason_code.value in (0x84, 1):
                hint = (" (the broker may speak MQTT 3.1.1 only, as NATS and RabbitMQ before "
                        "3.13 do: set mqtt.protocol: \"3.1.1\")")
            log.error("mqtt: %s:%s refused the connection: %s%s; retrying with backoff",
                      self.host, self.port, reason_code, hint)
            return
        self.counters["connections"] += 1
        self.connected_at = time.monotonic()
        self.last_error = None
        self.last_paho_error = None
        # Queue-only paho calls are fine here; state (user code) follows on our thread.
        self.subscribed.clear()
        self.subscribe()
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self.connect_pending = True
        self.connected.set()
        self.wake.set()

    def _failed(self, error: str) -> None:
        self.counters["connect_failures"] += 1
        self.connect_attempts.append(time.monotonic())
        self.last_error = error

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            # e.g. a NATS node whose JetStream is electing leaders after a peer died
            self.counters["subscribe_failures"] += 1
            self.resubscribe_at = time.monotonic() + RESUBSCRIBE_S
            log.error("mqtt: the broker refused a subscription (%s); trying again in %.0f s",
                      reason_codes, RESUBSCRIBE_S)
        self.subscribed.set()

    def subscribe(self) -> None:
        """Our subscriptions: commands, and the consumer's acks in end_to_end."""
        self.resubscribe_at = None
        self.client.subscribe(self.topics.cmd_filter, qos=1)
        if self.end_to_end:
            self.client.subscribe(self.topics.ack, qos=1)  # retained: the latest comes at once

    def resubscribe_if_due(self) -> None:
        """After a refused subscription (publisher thread)."""
        due = self.resubscribe_at
        if due is not None and time.monotonic() >= due:
            self.subscribe()

    def _on_connect_fail(self, client, userdata) -> None:
        exc = self.last_connect_error
        what = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        if isinstance(exc, ssl.SSLCertVerificationError):
            what += " (is mqtt.tls.ca_file the CA that signed the broker's certificate?)"
        self._failed(f"cannot connect: {what}")
        log.warning("mqtt: cannot connect to %s:%s: %s; retrying with backoff",
                    self.host, self.port, what)

    def _short_lived(self, client, lived: float, reason_code) -> None:
        """A connection the broker dropped right after accepting it. paho would reconnect at
        the minimum delay every time (its backoff restarts on every CONNACK): back off
        ourselves, and say what was outstanding - mosquitto 2.0 drops a client whose publish
        its ACL denies, so that is the usual cause."""
        self.flaps += 1
        self.counters["short_connections"] += 1
        cfg = self.cfg
        # Exponent capped: 2 ** flaps as an int overflows float after ~1000 flaps (hours of
        # flapping), and an exception here would stop paho's network thread for good.
        delay = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2.0 ** min(self.flaps, 1000))
        client.reconnect_delay_set(delay, max(cfg.reconnect_max_s, delay))
        oldest = self.outstanding()
        hint = ""
        if oldest is not None:
            hint = (f"; event seq {oldest} was unacknowledged - check that the broker's ACL lets "
                    f"this client publish on {self.topics.events_tree}")
        self.last_error = f"the broker closed the connection {lived:.1f} s after accepting it"
        log.warning("mqtt: %s (%s; %d in a row)%s; next reconnect in >= %.1f s",
                    self.last_error, reason_code, self.flaps, hint, delay)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self.wake.set()
        if self.stopping:
            return
        if was:
            self.counters["disconnects"] += 1
            lived = time.monotonic() - self.connected_at
            if lived < SHORT_CONNECTION_S:
                self._short_lived(client, lived, reason_code)
            else:
                log.warning("mqtt: connection to %s:%s lost (%s); reconnecting", self.host,
                            self.port, reason_code)
        elif self._refused:
            self._refused = False  # already reported by _on_connect
        else:
            # Closed before CONNACK: e.g. the broker demanded a client certificate (TLS 1.3
            # sends that alert after the handshake) or is not an MQTT server.
            what = self.last_paho_error or str(reason_code)
            hint = ""
            if "CERTIFICATE_REQUIRED" in what or "certificate required" in what:
                hint = " (the broker wants a client certificate: mqtt.tls.cert_file/key_file)"
            self._failed(f"connection closed before CONNACK: {what}{hint}")
            log.warning("mqtt: %s:%s %s; retrying with backoff", self.host, self.port,
                        self.last_error)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acks.append((mid, reason_code))
        self.wake.set()

    def _on_message(self, client, userdata, msg) -> None:
        if self.end_to_end and msg.topic == self.topics.ack:
            payload = msg.payload
            self.consumer_acks.append((len(payload), bytes(payload[:64])))
            self.wake.set()
            return
        name = self.topics.command_name(msg.topic)
        if name is None:
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._on_request((name, bytes(msg.payload), response_topic, correlation))


def _no_delay(client, userdata, sock) -> None:
    """paho leaves Nagle's algorithm on: with a small in-flight window every PUBLISH then waits
    for the previous segment's delayed ACK (tens of ms per round trip on loopback)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (e.g. a proxy wrapper): only slower
