"""Event delivery: what happens to an event after a rule emitted it, in one place and one order.

``EventDelivery.deliver(emissions)`` (called by the pipeline on the inference thread):

1. plate events with slow work (OCR) go to one worker thread first and continue from there;
2. the snapshot JPEG is saved in the on-disk ring (``event["snapshot"]`` names the file);
3. the event is appended to the event log, which assigns ``seq`` (and, in the daemon, makes it
   durable; the MQTT publisher sends it, and its snapshot, from there);
4. every sink writes it (JSON-lines file, console, Home Assistant states);
5. without a consumer of the log (``ack_after_sinks``, no MQTT) the row is acknowledged at once,
   so the log does not fill up: the sinks were the delivery.

Steps 2-5 run under one lock, so ``seq``, the file and the console agree on the order. Nothing
here knows about MQTT: the path from a frame to a PUBACK only runs forward.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import Dict, List, Optional, Sequence

from edge_agent.common.interfaces import EventLog, Sink
from edge_agent.events import Emission, SnapshotStore

log = logging.getLogger(__name__)


class EventDelivery:
    """Hands every event to the snapshot ring, the event log and the sinks (module doc)."""

    def __init__(self, event_log: EventLog, sinks: Sequence[Sink] = (),
                 snapshots: Optional[SnapshotStore] = None, ack_after_sinks: bool = True):
        self.event_log = event_log
        self.sinks: List[Sink] = list(sinks)
        self.snapshots = snapshots
        self.ack_after_sinks = ack_after_sinks
        self.counters: Dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()
        self._slow = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ocr")
        self._closed = False

    def add_sink(self, sink: Sink) -> None:
        """One more sink (a part started after the delivery, e.g. Home Assistant over MQTT)."""
        with self._lock:
            self.sinks.append(sink)

    def deliver(self, emissions: Sequence[Emission]) -> None:
        """Deliver now, or after their slow work (plate OCR) on the worker thread."""
        for em in emissions:
            if em.finish is not None:
                self._slow.submit(self._finish_and_deliver, em)
            else:
                self._deliver(em)

    def _finish_and_deliver(self, em: Emission) -> None:
        try:
            em.finish()
        except Exception:
            log.exception("plate OCR failed; event sent without text")
        self._deliver(em)

    def _deliver(self, em: Emission) -> None:
        ev = em.event
        with self._lock:
            if em.snapshot is not None and self.snapshots is not None:
                try:
                    ev["snapshot"], _ = self.snapshots.save(ev["event_id"], em.snapshot)
                except (OSError, ValueError) as exc:
                    log.warning("snapshot of event %s not saved: %s", ev["event_id"], exc)
            try:
                seq = self.event_log.append(ev)
            except ValueError as exc:
                self.counters["events_rejected"] += 1
                log.error("event %s rejected by the event log: %s", ev.get("event_id"), exc)
                return
            self.counters[f"events_{ev['type']}"] += 1
            for s in self.sinks:
                try:
                    s.write(ev)
                except Exception as exc:
                    self.counters["sink_errors"] += 1
                    log.error("sink %s failed: %s", getattr(s, "name", s), exc)
            if self.ack_after_sinks:
                self.event_log.ack([seq])

    def events_total(self) -> int:
        """Events delivered so far (all types)."""
        return sum(v for k, v in self.counters.items() if k.startswith("events_"))

    def close(self) -> None:
        """Wait for pending slow work (its events are delivered), then close the sinks.

        Idempotent; the event log is not closed here (the agent owns it)."""
        if self._closed:
            return
        self._closed = True
        self._slow.shutdown(wait=True)
        for s in self.sinks:
            try:
                s.close()
            except Exception:
                log.exception("closing sink %s failed", getattr(s, "name", s))
