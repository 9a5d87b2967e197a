"""Event rules: weapon, crowd and plate (design section 6), fed one frame of tracks at a time.

Track arrays are float64 (M, 8): x1, y1, x2, y2, track_id, score, class_id, frames_since_update
(the tracker's output). ``active`` holds confirmed tracks, ``lost`` the shadow tracks the tracker
still predicts. A track has *ended* when its ID is in neither.

Every rule returns :class:`Emission` lists from ``update`` and, from ``close``, the ``end`` of
everything it started (agent stop, camera gone), so no ``start`` is left without an ``end``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_agent.events.event import Emission, EventFactory, FrameContext
from edge_agent.events.platecrop import PlateCrop, grown, search_crop
from edge_agent.events.zones import Zone, anchor_points
from edge_agent.tracking.columns import (
    AGE,
    BOX,
    CLASS_ID,
    SCORE,
    TRACK_COLS,
    TRACK_ID,
    X1,
    X2,
    Y1,
    Y2,
)

EMPTY = np.zeros((0, TRACK_COLS))


@dataclass
class HeadTracks:
    """One head's tracks in one frame, with its class names (index = class_id)."""

    active: np.ndarray = field(default_factory=lambda: EMPTY)
    lost: np.ndarray = field(default_factory=lambda: EMPTY)
    classes: Sequence[str] = ()

    def label(self, class_id: float) -> str:
        i = int(class_id)
        return self.classes[i] if 0 <= i < len(self.classes) else str(i)

    def ids(self) -> set:
        return {int(t) for t in self.active[:, TRACK_ID]} | {int(t) for t in self.lost[:, TRACK_ID]}


Snapshotter = Callable[[FrameContext, Sequence[float], str], Optional[np.ndarray]]


def _centre(box: Sequence[float]) -> Tuple[float, float]:
    return (box[X1] + box[X2]) / 2.0, (box[Y1] + box[Y2]) / 2.0


def nearest_track(box: Sequence[float], others: np.ndarray) -> Optional[int]:
    """ID of the track in ``others`` whose box centre is nearest to ``box``'s centre."""
    if len(others) == 0:
        return None
    cx, cy = _centre(box)
    ox = (others[:, X1] + others[:, X2]) / 2.0
    oy = (others[:, Y1] + others[:, Y2]) / 2.0
    return int(others[int(np.argmin((ox - cx) ** 2 + (oy - cy) ** 2)), TRACK_ID])


def _ids(rows: np.ndarray) -> Tuple[int, ...]:
    return tuple(sorted(int(t) for t in rows[:, TRACK_ID]))


def _duration(ctx: FrameContext, start_s: float) -> float:
    """Seconds on the rules' clock since ``start_s`` (an end event's ``duration_s``)."""
    return round(max(0.0, ctx.media_s - start_s), 3)


# --- weapon ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarrierGeometry:
    """Where a gun must lie for a person track to count as the one carrying it.

    The gun box's centre lies inside the person's box grown by ``margin`` times the person box's
    width on every side (a gun held out at arm's length), and the gun box's longer side is at
    most ``max_size`` times the person box's longer side (a box the size of a car is no
    handgun, whoever stands next to it).
    """

    margin: float = 0.5
    max_size: float = 1.0

    def __post_init__(self):
        if not (self.margin >= 0 and self.max_size > 0):
            raise ValueError(f"carrier margin must be >= 0 and max_size > 0, got {self.margin}, "
                             f"{self.max_size}")


def carrier_track(box: Sequence[float], persons: np.ndarray,
                  geom: CarrierGeometry = CarrierGeometry()) -> Optional[int]:
    """ID of the person track carrying the gun ``box``, or None when no person qualifies.

    Of the persons that qualify (:class:`CarrierGeometry`), the one whose box centre is nearest
    to the gun's centre.
    """
    if len(persons) == 0:
        return None
    cx, cy = _centre(box)
    pw = persons[:, X2] - persons[:, X1]
    ph = persons[:, Y2] - persons[:, Y1]
    grow = geom.margin * pw
    inside = ((persons[:, X1] - grow <= cx) & (cx <= persons[:, X2] + grow)
              & (persons[:, Y1] - grow <= cy) & (cy <= persons[:, Y2] + grow))
    gun_side = max(box[X2] - box[X1], box[Y2] - box[Y1])
    ok = inside & (gun_side <= geom.max_size * np.maximum(pw, ph))
    if not ok.any():
        return None
    return nearest_track(box, persons[ok])


@dataclass
class _WeaponTrack:
    label: str
    scores: Deque[float]
    box: np.ndarray
    top: float = 0.0
    started: bool = False
    start_s: float = 0.0
    last_emit_s: float = 0.0
    carrier: Optional[int] = None  # the person track that carried it when last seen with one


class WeaponRule:
    """weapon start / update / end.

    Start: a confirmed weapon track whose median detection score over the last ``window``
    detected frames is >= ``threshold`` (one confident frame is not enough; neither is a track
    that only the Kalman filter keeps alive) and, with ``carrier`` set, that lies on or next to
    a confirmed person track in that frame (a gun on asphalt with nobody near it is no alert;
    the track waits until a carrier appears). Update: at most every ``update_interval_s`` while
    it lasts. End: when the track ends, or on ``close``. Each event names the carrying person
    track (the last one seen) or, without ``carrier``, the nearest person track.
    """

    type = "weapon"

    def __init__(self, factory: EventFactory, threshold: float = 0.5, window: int = 5,
                 update_interval_s: float = 2.0, snapshot: Optional[Snapshotter] = None,
                 carrier: Optional[CarrierGeometry] = CarrierGeometry()):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.f = factory
        self.threshold = threshold
        self.window = window
        self.update_interval_s = update_interval_s
        self.snapshot = snapshot
        self.carrier = carrier
        self.tracks: Dict[int, _WeaponTrack] = {}

    def update(self, ctx: FrameContext, weapon: HeadTracks,
               persons: Optional[HeadTracks] = None) -> List[Emission]:
        out: List[Emission] = []
        person_rows = persons.active if persons is not None else EMPTY
        for row in weapon.active:
            tid = int(row[TRACK_ID])
            st = self.tracks.get(tid)
            if st is None:
                st = self.tracks[tid] = _WeaponTrack(
                    weapon.label(row[CLASS_ID]), collections.deque(maxlen=self.window),
                    row[BOX].copy())
            st.box = row[BOX].copy()
            if row[AGE] == 0:  # scored by a detection this frame, not only predicted
                st.scores.append(float(row[SCORE]))
                st.top = max(st.top, float(row[SCORE]))
            now = (carrier_track(st.box, person_rows, self.carrier)
                   if self.carrier is not None else None)
            if now is not None:
                st.carrier = now
            if not st.scores:
                continue
            median = float(np.median(st.scores))
            if not st.started:
                carried = self.carrier is None or now is not None
                if len(st.scores) >= self.window and median >= self.threshold and carried:
                    st.started, st.start_s, st.last_emit_s = True, ctx.media_s, ctx.media_s
                    out.append(self._emit(ctx, tid, st, "start", median, person_rows, True))
            elif ctx.media_s - st.last_emit_s >= self.update_interval_s:
                st.last_emit_s = ctx.media_s
                out.append(self._emit(ctx, tid, st, "update", median, person_rows, False))
        alive = weapon.ids()
        for tid in [t for t in self.tracks if t not in alive]:
            st = self.tracks.pop(tid)
            if st.started:
                out.append(self._end(ctx, tid, st, "track_ended", person_rows))
        return out

    def close(self, ctx: FrameContext, reason: str = "agent_stop") -> List[Emission]:
        out = [self._end(ctx, tid, st, reason, EMPTY)
               for tid, st in self.tracks.items() if st.started]
        self.tracks.clear()
        return out

    def _end(self, ctx, tid, st, reason, person_rows) -> Emission:
        median = float(np.median(st.scores)) if st.scores else 0.0
        em = self._emit(ctx, tid, st, "end", median, person_rows, False)
        em.event["reason"] = reason
        em.event["duration_s"] = _duration(ctx, st.start_s)
        return em

    def _emit(self, ctx, tid, st, phase, median, person_rows, snap) -> Emission:
        person = st.carrier if self.carrier is not None else nearest_track(st.box, person_rows)
        ev = self.f.make(
            ctx, "weapon", phase, tid, st.label, median, st.box,
            top_score=round(st.top, 4), person_track_id=person,
        )
        img = self.snapshot(ctx, st.box, f"{st.label} #{tid}") if snap and self.snapshot else None
        return Emission(ev, img)


# --- crowd -----------------------------------------------------------------------------------


@dataclass
class _ZoneState:
    above_since: Optional[float] = None
    active: bool = False
    start_s: float = 0.0
    last_emit_s: float = 0.0
    count: int = 0
    ids: Tuple[int, ...] = ()
    peak: int = 0
    inside: np.ndarray = field(default_factory=lambda: EMPTY)  # last frame's rows, for close()


class CrowdRule:
    """crowd start / update / end per zone.

    Counts person tracks (active and shadow: a person hidden behind a shelf for a moment still
    counts) whose bottom-centre point is inside the zone. Start once the count stays
    >= ``min_count`` for ``hold_s``; end when it drops below ``min_count - hysteresis``; updates
    when the count or the set of IDs changed, at most every ``update_interval_s``.
    """

    type = "crowd"

    def __init__(self, factory: EventFactory, zones: Sequence[Zone],
                 snapshot: Optional[Snapshotter] = None):
        self.f = factory
        self.zones = list(zones)
        self.snapshot = snapshot
        self.state: Dict[str, _ZoneState] = {z.name: _ZoneState() for z in self.zones}
        self.last_counts: Dict[str, int] = {z.name: 0 for z in self.zones}

    def update(self, ctx: FrameContext, persons: HeadTracks) -> List[Emission]:
        rows = np.concatenate([persons.active, persons.lost]) if len(persons.lost) else \
            persons.active
        pts = anchor_points(rows, ctx.width, ctx.height)
        out: List[Emission] = []
        for z in self.zones:
            inside = rows[z.contains(pts)] if len(rows) else EMPTY
            count = len(inside)
            ids = _ids(inside)
            self.last_counts[z.name] = count
            st = self.state[z.name]
            st.inside = inside
            if not st.active:
                if count >= z.min_count:
                    if st.above_since is None:
                        st.above_since = ctx.media_s
                    if ctx.media_s - st.above_since >= z.hold_s:
                        st.active, st.start_s, st.last_emit_s = True, ctx.media_s, ctx.media_s
                        st.count, st.ids, st.peak = count, ids, count
                        out.append(self._emit(ctx, z, st, inside, "start", True))
                else:
                    st.above_since = None
                continue
            st.peak = max(st.peak, count)
            if count < z.min_count - z.hysteresis:
                st.count, st.ids = count, ids
                out.append(self._end(ctx, z, st, inside, "below_threshold"))
                self.state[z.name] = _ZoneState()
            elif (count, ids) != (st.count, st.ids) and \
                    ctx.media_s - st.last_emit_s >= z.update_interval_s:
                st.count, st.ids, st.last_emit_s = count, ids, ctx.media_s
                out.append(self._emit(ctx, z, st, inside, "update", False))
        return out

    def close(self, ctx: FrameContext, reason: str = "agent_stop") -> List[Emission]:
        out = []
        for z in self.zones:
            st = self.state[z.name]
            if st.active:
                st.count, st.ids = len(st.inside), _ids(st.inside)
                out.append(self._end(ctx, z, st, st.inside, reason))
            self.state[z.name] = _ZoneState()
        return out

    def _end(self, ctx, z, st, inside, reason) -> Emission:
        em = self._emit(ctx, z, st, inside, "end", False)
        em.event["reason"] = reason
        em.event["duration_s"] = _duration(ctx, st.start_s)
        return em

    def _emit(self, ctx, z: Zone, st: _ZoneState, inside: np.ndarray, phase: str,
              snap: bool) -> Emission:
        box = None
        if len(inside):
            box = [inside[:, X1].min(), inside[:, Y1].min(), inside[:, X2].max(),
                   inside[:, Y2].max()]
        score = float(inside[:, SCORE].mean()) if len(inside) else None
        ev = self.f.make(
            ctx, "crowd", phase, None, "person", score, box,
            zone=z.name, count=st.count, track_ids=list(st.ids), min_count=z.min_count,
            peak_count=st.peak,
        )
        img = None
        if snap and self.snapshot and box is not None:
            img = self.snapshot(ctx, box, f"{z.name}: {st.count} persons")
        return Emission(ev, img)


# --- plate -----------------------------------------------------------------------------------


@dataclass
class _PlateTrack:
    label: str
    start_s: float
    best_score: float = -1.0
    best_box: Optional[np.ndarray] = None
    best_frame: int = 0
    crops: List[Tuple[float, PlateCrop]] = field(default_factory=list)  # (score, region)


# reader(crops) -> (text or None, text_score or None)
PlateReader = Callable[[List[PlateCrop]], Tuple[Optional[str], Optional[float]]]


class PlateRule:
    """plate start / end.

    Start when a plate track is confirmed. While it lasts, the search regions around its
    best-scoring boxes are kept (up to ``keep_crops``; ``platecrop.search_crop``: the box is a
    hint, OCR finds the text line in the region); at the end OCR reads them together
    (``reader``), and the end event carries
    the text, its score and the best-shot box. Without a reader the end says why there is no text
    (``text_status``: ``ocr_unavailable`` or ``ocr_disabled``).
    """

    type = "plate"

    def __init__(self, factory: EventFactory, reader: Optional[PlateReader] = None,
                 no_text_status: str = "ocr_unavailable", keep_crops: int = 8,
                 snapshot: Optional[Snapshotter] = None):
        self.f = factory
        self.reader = reader
        self.no_text_status = no_text_status
        self.keep_crops = keep_crops
        self.snapshot = snapshot
        self.tracks: Dict[int, _PlateTrack] = {}

    def update(self, ctx: FrameContext, plates: HeadTracks) -> List[Emission]:
        out: List[Emission] = []
        for row in plates.active:
            tid = int(row[TRACK_ID])
            st = self.tracks.get(tid)
            if st is None:
                st = self.tracks[tid] = _PlateTrack(plates.label(row[CLASS_ID]), ctx.media_s)
                st.best_box, st.best_score, st.best_frame = row[BOX].copy(), float(row[SCORE]), \
                    ctx.frame
                img = self.snapshot(ctx, row[BOX], f"plate #{tid}") if self.snapshot else None
                out.append(Emission(
                    self.f.make(ctx, "plate", "start", tid, st.label, row[SCORE], row[BOX]), img))
            if row[AGE] == 0:
                self._keep(ctx, st, row)
        alive = plates.ids()
        for tid in [t for t in self.tracks if t not in alive]:
            out.append(self._end(ctx, tid, self.tracks.pop(tid), "track_ended"))
        return out

    def close(self, ctx: FrameContext, reason: str = "agent_stop") -> List[Emission]:
        out = [self._end(ctx, tid, st, reason) for tid, st in self.tracks.items()]
        self.tracks.clear()
        return out

    def _keep(self, ctx: FrameContext, st: _PlateTrack, row: np.ndarray) -> None:
        score = float(row[SCORE])
        if score > st.best_score:
            st.best_score, st.best_box, st.best_frame = score, row[BOX].copy(), ctx.frame
        if ctx.image is None or self.reader is None:
            return
        if len(st.crops) >= self.keep_crops and score <= st.crops[-1][0]:
            return
        crop = search_crop(ctx.image, row[BOX])
        if crop is None:
            return
        st.crops.append((score, crop))
        st.crops.sort(key=lambda c: -c[0])
        del st.crops[self.keep_crops:]

    def _end(self, ctx: FrameContext, tid: int, st: _PlateTrack, reason: str) -> Emission:
        ev = self.f.make(
            ctx, "plate", "end", tid, st.label, st.best_score, st.best_box,
            text=None, text_score=None,
            text_status=self.no_text_status if self.reader is None else "pending",
            best_frame=st.best_frame, reason=reason,
            duration_s=_duration(ctx, st.start_s),
        )
        snap = st.crops[0][1].image if st.crops else None
        finish = None
        if self.reader is not None:
            crops = [c for _, c in st.crops]
            reader = self.reader

            def finish() -> None:
                # Runs off the inference thread: OCR takes ~0.1-0.5 s per crop on a CPU.
                if not crops:
                    ev["text_status"] = "no_crop"
                    return
                try:
                    text, conf = reader(crops)
                except Exception as exc:  # OCR trouble must not lose the event
                    ev["text_status"] = f"ocr_error: {type(exc).__name__}"
                    return
                ev["text"] = text
                ev["text_score"] = None if conf is None else round(float(conf), 4)
                ev["text_status"] = "read" if text else "unreadable"
        return Emission(ev, snap, finish)


def crop_box(image: np.ndarray, box: Sequence[float], pad: float = 0.0) -> Optional[np.ndarray]:
    """A copy of ``box`` (pixels) grown by ``pad`` of its size on each side, clipped; None if
    nothing is left."""
    xa, ya, xb, yb = grown(image, tuple(float(v) for v in box[:4]), pad, pad)
    if xb - xa < 2 or yb - ya < 2:
        return None
    return image[ya:yb, xa:xb].copy()
