"""The event record (design section 6) and the per-frame context the rules see.

Common fields of every event: ``event_id``, ``seq`` (set by the outbox), ``type``, ``phase``,
``device_id``, ``camera``, ``track_id``, ``label``, ``score``, ``bbox`` (pixels and normalised),
``ts`` (UTC ISO-8601 and epoch ms), ``frame``, ``engine`` (name, version, sha256), ``snapshot``
(file name of the JPEG or null). Each type adds its own fields; docs/events.md lists them and
``edge_agent/schemas/event.schema.json`` is the machine-checkable form.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, TypedDict

import numpy as np

SCHEMA_VERSION = 1
PHASES = ("start", "update", "end")


class BBox(TypedDict):
    px: List[float]
    norm: List[float]


class Timestamp(TypedDict):
    iso: str
    epoch_ms: int


class EngineRef(TypedDict):
    name: str
    version: str
    sha256: str


class _EventBase(TypedDict):
    """The fields every event has (``schemas/event.schema.json`` ``required``)."""

    schema: int
    event_id: str
    seq: Optional[int]  # None until the event log assigns it
    type: str
    phase: str
    device_id: str
    camera: str
    track_id: Optional[int]
    label: str
    score: Optional[float]
    bbox: Optional[BBox]
    ts: Timestamp
    frame: int
    engine: EngineRef
    snapshot: Optional[str]


class Event(_EventBase, total=False):
    """One event as published and written to the sinks (a plain dict at run time).

    The optional fields belong to a type or phase: ``reason``/``duration_s`` on every ``end``;
    weapon ``top_score``, ``person_track_id``; crowd ``zone``, ``count``, ``track_ids``,
    ``min_count``, ``peak_count``; plate end ``text``, ``text_score``, ``text_status``,
    ``best_frame``; ``clip`` on events that get a clip, ``alert_type`` on ``clip`` events. A test
    checks these names against the JSON schema.
    """

    reason: str
    duration_s: float
    top_score: float
    person_track_id: Optional[int]
    zone: str
    count: int
    track_ids: List[int]
    min_count: int
    peak_count: int
    text: Optional[str]
    text_score: Optional[float]
    text_status: str
    best_frame: int
    clip: Dict[str, Any]
    alert_type: str


@dataclass(frozen=True)
class EngineInfo:
    """Which model produced the detections behind an event."""

    name: str
    version: str
    sha256: str


@dataclass
class FrameContext:
    """What the rules know about the frame being processed.

    ``media_s`` is the rules' clock (file position for files, wall clock for live cameras), so
    hold times and throttles mean the same on a slow CPU replaying a file as on a live camera.
    ``image`` is the BGR frame (for snapshots and plate crops); rules never modify it.
    """

    camera: str
    frame: int
    media_s: float
    wall: float
    width: int
    height: int
    image: Optional[np.ndarray] = None


@dataclass
class Emission:
    """An event produced by a rule, plus what its snapshot should show.

    ``snapshot`` is a BGR image to encode as the event's JPEG (an annotated frame or a crop), or
    None. ``finish`` is slow work to run off the inference thread before the event goes out
    (plate OCR); it fills in fields of ``event`` in place.
    """

    event: Event
    snapshot: Optional[np.ndarray] = None
    finish: Optional[Any] = None  # Callable[[], None]


def bbox_fields(box: Optional[Sequence[float]], width: int, height: int) -> Optional[Dict]:
    """``{"px": [x1, y1, x2, y2], "norm": [...]}`` rounded for JSON, or None.

    Clipped to the frame (``norm`` to 0..1): a tracker's box may reach past the edge.
    """
    if box is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if width > 0 and height > 0:
        x1, x2 = (min(max(v, 0.0), float(width)) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), float(height)) for v in (y1, y2))
    w, h = float(max(width, 1)), float(max(height, 1))
    return {
        "px": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
        "norm": [round(min(max(v / d, 0.0), 1.0), 5)
                 for v, d in ((x1, w), (y1, h), (x2, w), (y2, h))],
    }


def iso_utc(epoch_s: float) -> str:
    """``2026-11-22T16:23:04.123Z``."""
    ms = int(round(epoch_s * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class EventFactory:
    """Builds event dicts with the fields common to every event of one device and engine."""

    def __init__(self, device_id: str, engine: EngineInfo):
        self.device_id = device_id
        self.engine = engine

    def make(
        self,
        ctx: FrameContext,
        type_: str,
        phase: str,
        track_id: Optional[int],
        label: str,
        score: Optional[float],
        box: Optional[Sequence[float]],
        **extra: Any,
    ) -> Event:
        """A new event; ``seq`` stays None until the event log assigns it."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        event: Event = {
            "schema": SCHEMA_VERSION,
            "event_id": uuid.uuid4().hex,
            "seq": None,
            "type": type_,
            "phase": phase,
            "device_id": self.device_id,
            "camera": ctx.camera,
            "track_id": None if track_id is None else int(track_id),
            "label": label,
            "score": None if score is None else round(float(score), 4),
            "bbox": bbox_fields(box, ctx.width, ctx.height),
            "ts": {"iso": iso_utc(ctx.wall), "epoch_ms": int(round(ctx.wall * 1000))},
            "frame": int(ctx.frame),
            "engine": {
                "name": self.engine.name,
                "version": self.engine.version,
                "sha256": self.engine.sha256,
            },
            "snapshot": None,
        }
        event.update(extra)  # type: ignore[typeddict-item]
        return event
