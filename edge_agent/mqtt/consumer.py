"""The reference end-to-end consumer (``edge-agent listen --ack --store FILE``): stores events
durably, then acknowledges them to the devices (``mqtt.delivery: end_to_end``, docs/mqtt.md).

:class:`EventStore` appends each new event to a JSON-lines file and fsyncs it before anything is
acknowledged; an event whose ``event_id`` is already in the file is a duplicate (the agent
re-sends after a reconnect or an ack timeout) and is not stored again. Per device a
:class:`Chain` follows which seqs are stored without a hole: each event's ``prev_seq`` names the
highest lower seq the device still holds (0: none), so the seqs between the two will never come
and are no hole. The highest seq up to which the chain is whole is what gets acknowledged,
retained at QoS 1, on ``<prefix>/<device>/ack``. Restarted on the same file, the store reads it
back: the known event ids and every device's chain.

:class:`AckConsumer` is the MQTT side (a persistent session, so the broker keeps events queued
while the consumer is away); ``listen`` runs it, and the durability tests and bench run it in a
thread with a per-message delay.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.mqtt.paho_client import ClientTls, new_client
from edge_agent.mqtt.topics import ack_topic, event_filter, split_device_topic

log = logging.getLogger(__name__)

# CONNACK refusals that another attempt cannot cure (MQTT 5 reason codes; paho maps 3.1.1's
# return codes onto them): the listener stops and says so. Others, such as "Server
# unavailable" from a broker that is still starting, are retried by paho like a lost
# connection.
FATAL_REFUSALS = {
    132,  # unsupported protocol version
    133,  # client identifier not valid
    134,  # bad user name or password
    135,  # not authorized
    138,  # banned
    140,  # bad authentication method
}


class Chain:
    """One device's stored seqs: ``mark`` is the highest seq with no hole below it."""

    def __init__(self) -> None:
        self.mark = 0
        self.pending: Dict[int, int] = {}  # stored seq above the mark -> its prev_seq

    def stored(self, seq: int, prev: Optional[int]) -> bool:
        """Record a stored (or again received) event; True when the mark moved.

        ``prev`` None: an agent in ``puback`` mode, which sends no prev_seq and ignores acks;
        its holes are never filled, so the mark just follows its highest seq (holes kept
        pending would only grow)."""
        if prev is None:
            prev = 0
        if seq <= self.mark:
            return False
        if not self.pending and prev <= self.mark:  # the usual case: the next one, in order
            self.mark = seq
            return True
        old = self.pending.get(seq)
        # A device's prev_seq for a seq only goes down (what it holds below only shrinks).
        self.pending[seq] = prev if old is None else min(old, prev)
        return self._advance()

    def _advance(self) -> bool:
        start = self.mark
        moved = True
        while moved:
            moved = False
            for seq in sorted(self.pending):
                if self.pending[seq] <= self.mark < seq:
                    self.mark = seq
                    moved = True
            if moved:
                self.pending = {s: p for s, p in self.pending.items() if s > self.mark}
        return self.mark != start


class EventStore:
    """Append-only JSON-lines store with de-duplication by ``event_id`` (module docstring)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.ids: Set[str] = set()
        self.chains: Dict[str, Chain] = {}
        self.stored_total = 0
        self.duplicates = 0
        self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")
        self._lines: List[bytes] = []  # added, not yet written

    def _load(self) -> None:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for n, line in enumerate(f, 1):
                try:
                    ev = json.loads(line)
                    device, seq = ev["device_id"], ev["seq"]
                    self.ids.add(ev["event_id"])
                except (ValueError, KeyError, TypeError):
                    # A torn last line after a crash: that event was never acknowledged.
                    log.warning("%s:%d: not a stored event; skipped", self.path, n)
                    continue
                self.chain(device).stored(int(seq), _prev_of(ev))

    def chain(self, device: str) -> Chain:
        return self.chains.setdefault(device, Chain())

    def add(self, device: str, event: Dict[str, Any],
            raw: Optional[bytes] = None) -> Tuple[bool, bool]:
        """Store one event of ``device`` (written and fsynced by :meth:`sync`); ``raw``, its JSON
        as received, is written as it is when it names its device and is one line.
        Returns ``(new, mark_moved)``: new is False for a duplicate."""
        seq = event.get("seq")
        event_id = event.get("event_id")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(event_id, str):
            raise ValueError("an event needs an integer seq and a string event_id")
        new = event_id not in self.ids
        if new:
            if raw is None or "device_id" not in event or b"\n" in raw:
                event.setdefault("device_id", device)
                raw = json.dumps(event, separators=(",", ":")).encode()
            self._lines.append(raw)
            self.ids.add(event_id)
            self.stored_total += 1
        else:
            self.duplicates += 1
        return new, self.chain(device).stored(seq, _prev_of(event))

    def sync(self) -> None:
        """Write and fsync what was added (before its ack goes out). One write per batch: each
        write gives up the GIL, and getting it back from paho's thread costs milliseconds."""
        if self._lines:
            self._lines.append(b"")
            self._f.write(b"\n".join(self._lines))
            self._lines = []
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self.sync()
        self._f.close()


def _prev_of(event: Dict[str, Any]) -> Optional[int]:
    prev = event.get("prev_seq")
    return prev if isinstance(prev, int) and not isinstance(prev, bool) else None


Message = Tuple[str, bytes]
ACK_INTERVAL_S = 0.05


class AckConsumer:
    """Subscribes to the events of ``device`` (``+``: all) with a persistent session, stores
    them (:class:`EventStore`) and acknowledges per device. ``on_event(device, event, new,
    payload)`` sees each received event, ``on_batch()`` follows each stored batch; ``delay_s``
    is extra work per message (a slow consumer, tests)."""

    def __init__(self, host: str, port: int, store: EventStore, prefix: str = "edge-agent",
                 device: str = "+", client_id: str = "edge-agent-listen-ack",
                 protocol: str = "5", delay_s: float = 0.0,
                 on_event: Optional[Callable[[str, Dict[str, Any], bool, bytes], None]] = None,
                 on_note: Optional[Callable[[str], None]] = None,
                 on_batch: Optional[Callable[[], None]] = None,
                 username: Optional[str] = None, password: Optional[str] = None,
                 ca_file: Optional[str] = None):
        self.host, self.port = host, port
        self.store = store
        self.prefix = prefix
        self.topic = event_filter(prefix, device)
        self.delay_s = delay_s
        self.on_event = on_event
        self.on_batch = on_batch
        self.on_note = on_note or (lambda text: log.info("%s", text))
        self.acks_sent = 0
        self.bad_messages = 0
        self.q: queue.Queue[Tuple[str, Any]] = queue.Queue()
        self.v5 = protocol == "5"
        # ValueError/OSError (a bad CA file) reach the caller, which names the option
        self.client = new_client(client_id, protocol, persistent=True, username=username,
                                 password=password, tls=ClientTls(ca_file) if ca_file else None)
        self.client.reconnect_delay_set(0.1, 2.0)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.q.put(("disconnect", rc))
        self.client.on_message = lambda c, u, m: self.q.put(("message", (m.topic,
                                                                         bytes(m.payload))))
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()  # set by every granted SUBACK
        self._resubscribe_at: Optional[float] = None
        self._unacked: Set[str] = set()  # devices with events stored since their last ack
        self._acked_at = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.q.put(("connect", reason_code))
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self.q.put(("refused", reason_codes))
        else:
            self.subscribed.set()

    def connect(self) -> None:
        """Start connecting (raises OSError when the first attempt cannot even start)."""
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 7 * 86400  # queued for us across our restarts
        clean = False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY  # 3.1.1: in the client
        self.client.connect_async(self.host, self.port, keepalive=10, clean_start=clean,
                                  properties=props)
        self.client.loop_start()

    def start(self) -> AckConsumer:
        """Connect and run :meth:`run` in a thread."""
        self.connect()
        self._thread = threading.Thread(target=self.run, name="ack-consumer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()

    def run(self, until: Callable[[], bool] = lambda: False) -> int:
        """Handle messages until :meth:`stop` or ``until()``; 1 when the broker refused us."""
        while not self._stop.is_set() and not until():
            due = self._resubscribe_at
            if due is not None and time.monotonic() >= due:
                self._resubscribe_at = None
                self.client.subscribe(self.topic, qos=1)
            batch = self._next_batch()
            if batch is None:
                return 1
            if batch:
                self._handle(batch)
            self._send_acks()
        self._send_acks(force=True)
        return 0

    def _next_batch(self) -> Optional[List[Message]]:
        """Queued messages (at most 500), after notes for connects / disconnects."""
        batch: List[Message] = []
        try:
            item = self.q.get(timeout=ACK_INTERVAL_S if self._unacked else 0.2)
        except queue.Empty:
            return batch
        while True:
            kind, data = item
            if kind == "message":
                batch.append(data)
            elif kind == "connect":
                if data.is_failure and data.value in FATAL_REFUSALS:
                    self.on_note(f"{self.host}:{self.port} refused the connection: {data}")
                    return None
                if data.is_failure:
                    self.on_note(f"{self.host}:{self.port} refused the connection for now "
                                 f"({data}); retrying")
                else:
                    self.on_note(f"connected to {self.host}:{self.port}, storing "
                                 f"{self.topic} in {self.store.path}")
            elif kind == "refused":
                self.on_note(f"the broker refused the subscription ({data}); trying again")
                self._resubscribe_at = time.monotonic() + 2.0
            else:
                self.on_note(f"disconnected ({data}); reconnecting")
            if len(batch) >= 500:
                return batch
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                return batch

    def _handle(self, batch: List[Message]) -> None:
        """Store the batch with one fsync; its devices are acknowledged next (_send_acks)."""
        devices: Set[str] = set()
        for topic, payload in batch:
            if self.delay_s:
                time.sleep(self.delay_s)
            device = split_device_topic(self.prefix, topic)[0]
            try:
                event = json.loads(payload)
                if not isinstance(event, dict):
                    raise ValueError("not a JSON object")
                new, _ = self.store.add(device, event, payload)
            except ValueError as exc:
                self.bad_messages += 1
                self.on_note(f"{topic}: not an event ({exc}); not stored")
                continue
            devices.add(device)
            if self.on_event is not None:
                self.on_event(device, event, new, payload)
        self.store.sync()
        if self.on_batch is not None:
            self.on_batch()
        # Also for duplicates only: an agent that restarted refuses a retained ack above what
        # it has sent again so far, and takes this one.
        self._unacked.update(devices)

    def _send_acks(self, force: bool = False) -> None:
        """Each device's contiguous seq, at most every ACK_INTERVAL_S: an ack per stored batch
        made the agent take (and the broker retain) hundreds of acks a second."""
        now = time.monotonic()
        if not self._unacked or (not force and now - self._acked_at < ACK_INTERVAL_S):
            return
        for device in sorted(self._unacked):
            mark = self.store.chain(device).mark
            try:
                topic = ack_topic(self.prefix, device)
            except ValueError:
                continue  # not a device name of ours: stored, never acknowledged
            if mark > 0:
                self.client.publish(topic, str(mark), qos=1, retain=True)
                self.acks_sent += 1
        self._unacked.clear()
        self._acked_at = now
