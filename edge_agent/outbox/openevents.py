"""Events that started and have not ended, persisted so a crash does not leave them open forever.

Every ``start`` gets an ``end`` while the agent runs (track or zone ended, camera ended, stop).
A crash (SIGKILL, OOM, power cut) skips those ends: a crowd stays "on" for every subscriber and
the Home Assistant sensor with it. So this record, a sink like the others, keeps the latest event
of each open thing in ``<state_dir>/open-events.json``; the next start reads what the previous
run left and sends an ``end`` for each with ``reason: agent_restarted``, before any new event.

One open thing is ``(type, camera, track_id, zone)``. The file is rewritten (write, rename) when
a thing opens or closes; an ``update`` only refreshes the copy in memory, written with the next
change. Surviving a crash of the process needs no fsync (the page cache outlives the process); a
power cut may lose the newest change, so at worst an ``end`` is missed or sent twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from edge_agent.events.event import iso_utc

log = logging.getLogger(__name__)

FILE_NAME = "open-events.json"
REASON = "agent_restarted"
Key = Tuple[str, str, Optional[int], Optional[str]]


def _key(ev: Dict[str, Any]) -> Key:
    return (ev["type"], ev["camera"], ev.get("track_id"), ev.get("zone"))


class OpenEvents:
    """The sink that records open events, and the leftovers of the previous run."""

    name = "open-events"

    def __init__(self, state_dir: Union[str, Path]):
        self.path = Path(state_dir) / FILE_NAME
        self._open: Dict[Key, Dict[str, Any]] = {}  # key -> {"start_ms": ..., "event": {...}}
        self._left = self._read()

    def _read(self) -> List[Dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): events the previous run left open stay open",
                      self.path, exc)
            return []
        if not isinstance(data, list):
            log.error("%s does not hold a list: ignored", self.path)
            return []
        return [r for r in data if isinstance(r, dict) and isinstance(r.get("event"), dict)]

    # --- the previous run ------------------------------------------------------------------

    def closing_events(self, now: Optional[float] = None) -> List[Dict[str, Any]]:
        """An ``end`` (reason ``agent_restarted``) for every event the previous run left open.

        Deliver them, then call :meth:`forget_leftovers`."""
        now = time.time() if now is None else now
        out = []
        for rec in self._left:
            try:
                out.append(_end_of(rec, now))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("an open event in %s cannot be closed (%s): skipped", self.path, exc)
        return out

    def forget_leftovers(self) -> None:
        """The previous run's events are closed: drop them from the file."""
        self._left = []
        self._write()

    # --- this run (the Sink protocol) ------------------------------------------------------

    def write(self, event: Dict[str, Any]) -> None:
        """Track ``event``: a ``start`` opens its thing, an ``end`` closes it."""
        key = _key(event)
        phase = event.get("phase")
        if phase == "end":
            if self._open.pop(key, None) is not None:
                self._write()
        elif phase == "start" or key in self._open:
            rec = self._open.get(key)
            start_ms = rec["start_ms"] if rec else event["ts"]["epoch_ms"]
            self._open[key] = {"start_ms": start_ms, "event": dict(event)}
            if rec is None:
                self._write()

    def close(self) -> None:
        """Write the final state: empty after a clean stop (every start got its end)."""
        self._write()

    def _write(self) -> None:
        data = list(self._left) + list(self._open.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot record open events in %s: %s", self.path, exc)


def _end_of(rec: Dict[str, Any], now: float) -> Dict[str, Any]:
    """The ``end`` of a recorded open event: its last known fields, closed now."""
    ev = dict(rec["event"])
    start_ms = int(rec["start_ms"])
    now_ms = int(round(now * 1000))
    ev.update({
        "event_id": uuid.uuid4().hex, "seq": None, "phase": "end", "reason": REASON,
        "duration_s": round(max(0, now_ms - start_ms) / 1000.0, 3),
        "ts": {"iso": iso_utc(now), "epoch_ms": now_ms}, "snapshot": None,
    })
    if ev["type"] == "crowd":  # nobody is known to be in the zone any more (and HA shows 0)
        ev.update({"count": 0, "track_ids": []})
    if ev["type"] == "plate":  # the crops and the OCR worker died with the previous run
        ev.update({"text": ev.get("text"), "text_score": ev.get("text_score"),
                   "text_status": ev.get("text_status") or "no_crop",
                   "best_frame": ev.get("best_frame", ev.get("frame", 0))})
    return ev
