"""The agent's numbers, built in one place: the ``stats`` and ``state`` documents.

The parts keep raw counters (the pipeline its frames and latencies, the event log its rows, the
MQTT connection its reconnects); this module turns them into the two documents that leave the
device. Readers: the MQTT state/stats publisher (``mqtt/status.py``), the journal heartbeat, and
the Prometheus endpoint (it reads :meth:`Metrics.stats` too, so both always agree).

``stats`` (MQTT ``stats``, docs/mqtt.md)::

    {"device_id", "ts", "uptime_s",
     "cameras": {name: {state, frames_in, processed, detected, dropped, reconnects, fps,
                        e2e_latency: {p50_ms, p95_ms, max_ms}, zone_counts, last_error}},
     "inference": {p50_ms, p95_ms, max_ms, mean_batch}, "counters": {...},
     "outbox": {rows, bytes, last_seq, ...}, "mqtt": {connected, inflight, ...}}

``state`` (MQTT retained ``state``)::

    {"device_id", "agent_version", "started", "uptime_s", "ts",
     "engine": {name, version, sha256, backend}, "cameras": {name: {state, fps}}}
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from edge_agent import __version__
from edge_agent.events.event import iso_utc

log = logging.getLogger(__name__)

Section = Callable[[], Dict[str, Any]]


class Latency:
    """Recent samples (ms) of one latency; p50/p95/max over the last ``n``."""

    def __init__(self, n: int = 300):
        self.samples: Deque[float] = collections.deque(maxlen=n)

    def add(self, ms: float) -> None:
        self.samples.append(ms)

    def summary(self) -> Dict[str, Optional[float]]:
        """``{"p50_ms", "p95_ms", "max_ms"}``, each None before the first sample."""
        if not self.samples:
            return {"p50_ms": None, "p95_ms": None, "max_ms": None}
        a = np.fromiter(self.samples, float)
        return {"p50_ms": round(float(np.percentile(a, 50)), 2),
                "p95_ms": round(float(np.percentile(a, 95)), 2), "max_ms": round(float(a.max()), 2)}


def stats_line(stats: Dict[str, Any]) -> str:
    """One journal line of the pipeline's part of ``stats`` (the heartbeat)."""
    cams = ", ".join(
        f"{n} {c['state']} {c['fps']} fps in={c['frames_in']} done={c['processed']} "
        f"drop={c['dropped']} e2e_p50={c['e2e_latency']['p50_ms']} ms"
        for n, c in stats["cameras"].items())
    return f"{cams}; infer p50 {stats['inference']['p50_ms']} ms; {stats['counters']}"


class Metrics:
    """The ``stats`` and ``state`` documents of one device, from sections its parts add.

    A section is a function returning a dict merged into the document (later sections win on
    a clash; the base fields come first). A section that raises is logged and left out: a
    broken part must not silence the rest.
    """

    def __init__(self, device_id: str, started_at: Optional[float] = None):
        self.device_id = device_id
        self.started_at = time.time() if started_at is None else started_at
        self._stats: List[Tuple[str, Section]] = []
        self._state: List[Tuple[str, Section]] = []

    def add(self, name: str, stats: Optional[Section] = None,
            state: Optional[Section] = None) -> None:
        """Add ``name``'s section of the stats and/or the state document."""
        if stats is not None:
            self._stats.append((name, stats))
        if state is not None:
            self._state.append((name, state))

    def uptime_s(self) -> float:
        return round(time.time() - self.started_at, 1)

    def stats(self) -> Dict[str, Any]:
        """The periodic ``stats`` document."""
        base = {"device_id": self.device_id, "ts": iso_utc(time.time()),
                "uptime_s": self.uptime_s()}
        return self._merge(base, self._stats, "stats")

    def state(self) -> Dict[str, Any]:
        """The retained ``state`` document."""
        base = {
            "device_id": self.device_id, "agent_version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "uptime_s": self.uptime_s(), "ts": iso_utc(time.time()),
        }
        return self._merge(base, self._state, "state")

    def _merge(self, doc: Dict[str, Any], sections: List[Tuple[str, Section]],
               what: str) -> Dict[str, Any]:
        for name, fn in sections:
            try:
                doc.update(fn())
            except Exception:
                log.exception("metrics: the %s section of %s failed; left out", name, what)
        return doc
