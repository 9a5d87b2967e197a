"""The outbox publisher: moves rows from the event log to the broker, at most ``max_inflight``
unacknowledged at once, and deletes each row when its PUBACK arrives (``mqtt.delivery: puback``)
or once the consumer acknowledged it end to end (``end_to_end``).

Its thread is also where work that follows a (re)connect runs (``on_connected`` hooks: retained
state, discovery) and where periodic publications tick (``on_tick``: stats), so user code never
runs on paho's network thread.

Delivery: at least once. A row stays in the SQLite outbox until the broker acknowledged it, so a
broker outage or a crash loses nothing that reached the outbox; duplicates are possible after a
reconnect or restart (subscribers dedupe by ``event_id`` or ``seq``). paho re-sends its whole
in-memory backlog at once on reconnect (it ignores its own in-flight limit there), so it never
gets more than the window. An event's snapshot is a reference in its row: the JPEG is read from
``snapshot_dir`` and published on ``snapshots/<event_id>`` just before the event.

``end_to_end``: a PUBACK only frees a window slot; rows are deleted up to the seq the consumer
acknowledges on ``<prefix>/<device>/ack`` (:mod:`edge_agent.mqtt.acks`). After every reconnect,
and whenever ``ack_timeout_s`` passes without ack progress while events are outstanding, every
unacknowledged row is published again from the acknowledged seq on (same ``event_id``, same
``seq``). Each event then carries ``prev_seq``: the highest lower seq the agent still holds
unacknowledged, 0 when it holds none; the seqs between ``prev_seq`` and ``seq`` will never come
(dropped by a full outbox), so a consumer knows when its stored events are contiguous.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import paho.mqtt.client as paho

from edge_agent.config import MqttConfig
from edge_agent.mqtt.acks import AckTracker
from edge_agent.mqtt.connection import Connection
from edge_agent.outbox.eventlog import Outbox, OutboxRow

log = logging.getLogger(__name__)


class OutboxPublisher:
    """The publisher thread (module docstring)."""

    def __init__(self, cfg: MqttConfig, conn: Connection, outbox: Outbox,
                 counters: Dict[str, int], snapshot_dir: Optional[Path] = None):
        self.cfg = cfg
        self.conn = conn
        self.outbox = outbox
        self.counters = counters
        self.snapshot_dir = snapshot_dir
        self.window = int(cfg.max_inflight)
        self.on_connected: List[Callable[[], None]] = []
        self.on_tick: List[Callable[[float], None]] = []
        # Owned by the publisher thread.
        self.inflight: Dict[int, int] = {}  # paho mid -> outbox seq
        self._cursor = 0  # highest seq handed to paho
        self._to_delete: List[int] = []  # acknowledged, not yet deleted from the outbox
        self._to_delete_since = 0.0
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread: Optional[threading.Thread] = None
        self.end_to_end = cfg.delivery == "end_to_end"
        self.ack_timeout_s = float(cfg.ack_timeout_s)
        self.consumer = AckTracker(outbox.acked_seq, counters)
        self._deleted_through = self.consumer.mark  # rows up to here are gone from the outbox
        self._deleted_at = 0.0
        if self.end_to_end:
            self._cursor = self.consumer.mark

    def start(self) -> None:
        self.outbox.add_listener(self.conn.wake.set)
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Flush until everything is acknowledged or ``deadline`` (monotonic) passed."""
        self._stop_deadline = deadline  # before _stopping, which makes the thread read it
        self._stopping = True
        self.conn.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()) + 1.0)
        self.outbox.remove_listener(self.conn.wake.set)

    def oldest_unacked(self) -> Optional[int]:
        """The lowest seq in flight (read from paho's thread: only a hint)."""
        try:
            return min(self.inflight.values(), default=None)
        except RuntimeError:  # the publisher thread changed it meanwhile
            return None

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        conn = self.conn
        while True:
            pending = self._to_delete or self.consumer.mark > self._deleted_through
            conn.wake.wait(0.02 if pending else 0.25)
            conn.wake.clear()
            try:
                self._drain_acks()
                self._delete_acked(force=self._stopping)
                if self.end_to_end:
                    self._take_consumer_acks(force=self._stopping)
                if conn.connect_pending and conn.connected.is_set():
                    conn.connect_pending = False
                    self._after_connect()
                if self._stopping and (time.monotonic() >= self._stop_deadline
                                       or self._flushed()):
                    return
                if conn.connected.is_set():
                    conn.forget_flaps_when_stable()
                    conn.resubscribe_if_due()
                    if self.end_to_end:
                        self._republish_when_ack_overdue()
                    self._fill_window()
                    now = time.monotonic()
                    for tick in self.on_tick:
                        tick(now)
            except Exception:  # keep publishing whatever one step did
                log.exception("mqtt: publisher step failed")
                time.sleep(0.5)

    def _flushed(self) -> bool:
        """All handed to the broker and PUBACKed (end_to_end: rows the consumer has not
        acknowledged yet stay in the outbox for the next start)."""
        return not self.inflight and not self._to_delete and not self.outbox.peek(self._cursor, 1)

    # --- end_to_end -------------------------------------------------------------------------

    def _take_consumer_acks(self, force: bool = False) -> None:
        """The consumer's acks since the last pass; rows up to the newest good one go, at most
        one delete per 50 ms: a consumer acks per batch it stored, hundreds a second when it
        keeps up, and a transaction each cost a fifth of the throughput. Until deleted, a
        crash only means those events are sent again."""
        acks = self.conn.consumer_acks
        while acks:
            size, head = acks.popleft()
            self.consumer.offer(size, head)
        mark = self.consumer.mark
        now = time.monotonic()
        if mark > self._deleted_through and (force or now - self._deleted_at >= 0.05):
            self.outbox.ack_through(mark)
            self._deleted_through, self._deleted_at = mark, now

    def _republish_when_ack_overdue(self) -> None:
        c = self.consumer
        now = time.monotonic()
        if c.overdue(self.ack_timeout_s, now):
            self.counters["ack_timeouts"] += 1
            log.warning("mqtt: no end-to-end ack for %.0f s (acknowledged seq %d, sent up to "
                        "%d); publishing the unacknowledged events again", now - c.progress_at,
                        c.mark, c.sent_max)
            self._publish_again_from_mark()
            c.timed_out(now)

    def _publish_again_from_mark(self) -> None:
        """Send every row after the consumer's ack again (PUBACKs of the old sends are then
        ignored: they no longer count towards the window)."""
        self.inflight.clear()
        self._cursor = self.consumer.mark

    def _with_prev_seq(self, row: OutboxRow) -> bytes:
        """The row's JSON with ``prev_seq`` added (module docstring)."""
        prev = self._cursor if self._cursor > self.consumer.mark else 0
        payload = row.payload
        if not payload.endswith(b"}") or len(payload) < 3:
            return payload
        return b"%s,\"prev_seq\":%d}" % (payload[:-1], prev)

    def lag(self) -> Dict[str, object]:
        """How far behind the consumer is (end_to_end) for the stats: events held and the age
        of the oldest (read from other threads: a snapshot)."""
        oldest = self.outbox.oldest() if self.end_to_end else None
        return {
            "delivery": self.cfg.delivery,
            "consumer_acked_seq": self.consumer.mark if self.end_to_end else None,
            "consumer_lag_events": len(self.outbox) if self.end_to_end else None,
            "consumer_lag_s": round(max(0.0, time.time() - oldest[1]), 1) if oldest else 0.0,
        }

    def _after_connect(self) -> None:
        """Per connection, after on_connect subscribed and said online: state, discovery."""
        if self.end_to_end:
            # The broker may have lost what it acknowledged (a restart): everything the
            # consumer has not acknowledged goes again.
            if self.consumer.outstanding:
                self.counters["republish_reconnects"] += 1
            self._publish_again_from_mark()
        elif self.cfg.event_qos == 0 and self.inflight:
            # paho drops QoS 0 messages not yet written when a connection goes, and calls no
            # on_publish for them: free their window slots and send those rows again.
            self._cursor = min(self.inflight.values()) - 1
            self.inflight.clear()
        for fn in self.on_connected:
            fn()
        log.info("mqtt: connected to %s:%s (connection %d); %d events waiting",
                 self.conn.host, self.conn.port, self.counters["connections"], len(self.outbox))

    def _fill_window(self) -> None:
        room = self.window - len(self.inflight)
        # Refill at once: waiting to refill in batches measured 3-10x slower (stalls between
        # bursts), one small SELECT per PUBACK is cheap.
        if room <= 0:
            return
        qos = self.cfg.event_qos
        for row in self.outbox.peek(self._cursor, room):
            if row.snapshot is not None:
                self._publish_snapshot(row)
            payload = self._with_prev_seq(row) if self.end_to_end else row.payload
            info = self.conn.publish(self.conn.topics.event(row.type), payload, qos=qos)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                log.warning("mqtt: publish of seq %d refused by paho (%s); retrying later",
                            row.seq, paho.error_string(info.rc))
                break
            # NO_CONN: paho keeps QoS>0 messages and sends them after the reconnect.
            self.inflight[info.mid] = row.seq
            self._cursor = row.seq
            self.counters["published"] += 1
            if self.end_to_end:
                if row.seq <= self.consumer.sent_max:
                    self.counters["republished"] += 1
                self.consumer.sent(row.seq)

    def _publish_snapshot(self, row: OutboxRow) -> None:
        """The JPEG of an outbox row, before its event (the ring may have dropped it since)."""
        assert row.snapshot is not None
        event_id, name = row.snapshot
        if self.snapshot_dir is None:
            return
        try:
            jpeg = (self.snapshot_dir / name).read_bytes()
        except OSError as exc:
            self.counters["snapshots_missing"] += 1
            log.warning("mqtt: snapshot of event seq %d not published: %s", row.seq, exc)
            return
        self.conn.publish(self.conn.topics.snapshot(event_id), jpeg, qos=1)
        self.counters["snapshots"] += 1

    def _drain_acks(self) -> None:
        """PUBACKs: free window slots; ``puback`` mode queues their rows for deletion."""
        seqs = []
        pubacks = 0
        acks = self.conn.acks
        while acks:
            mid, reason = acks.popleft()
            seq = self.inflight.pop(mid, None)
            if seq is None:
                continue  # status, state, reply, a send from before a republish ...
            pubacks += 1
            if getattr(reason, "is_failure", False):
                # Re-sending would be refused again (e.g. not authorised): count, log, drop.
                self.counters["rejected"] += 1
                log.error("mqtt: broker rejected event seq %d: %s", seq, reason)
                if self.end_to_end:
                    self.outbox.ack([seq])  # never deliverable; its gap shows in prev_seq
                    continue
            if not self.end_to_end:
                seqs.append(seq)
        if seqs:
            if not self._to_delete:
                self._to_delete_since = time.monotonic()
            self._to_delete.extend(seqs)
        self.counters["acked"] += pubacks

    def _delete_acked(self, force: bool = False) -> None:
        """Delete acknowledged rows in batches (a transaction per PUBACK would cost as much as
        the appends). Until deleted, a crash only means the broker gets those events twice."""
        if not self._to_delete:
            return
        if (force or len(self._to_delete) >= 256
                or time.monotonic() - self._to_delete_since >= 0.02):
            seqs, self._to_delete = self._to_delete, []
            self.outbox.ack(seqs)
