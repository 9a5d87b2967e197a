"""Clips around alerts: the pipeline hands every processed frame and its events here.

On the inference thread, ``observe()`` only tags the events (``clip: {id, status: recording}``
on the start and end of a clip-worthy event) and queues the frame; one worker thread does the
rest: it keeps each camera's pre-roll ring, writes the MP4 of every open clip, finishes a clip
``post_s`` after its event ended (or ``max_s`` after it started, or when the camera or the agent
stops), commits it to the store and delivers a ``clip`` event that says it is ready.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import av
import numpy as np

from edge_agent.clips.mp4 import Mp4Writer
from edge_agent.clips.packets import PacketClip, PacketRing
from edge_agent.clips.ring import FrameRing
from edge_agent.clips.scale import to_record
from edge_agent.clips.store import ClipInfo, ClipStore
from edge_agent.config import ClipsConfig
from edge_agent.events import Emission, EventFactory, FrameContext, HeadTracks
from edge_agent.events.overlay import draw
from edge_agent.events.snapshots import fit
from edge_agent.tracking.columns import BOX, TRACK_ID

log = logging.getLogger(__name__)

# End reasons after which no frame of the camera follows: the clip is finished at once.
_FINAL_REASONS = ("agent_stop", "camera_ended", "engine_swap", "config_reload")
# What writing a clip raises when the disk is full or the encoder fails (PyAV has its own kinds).
_WRITE_ERRORS = (OSError, ValueError, RuntimeError, av.error.FFmpegError)
CONFIRM_S = 5.0  # longest a track may be followed before its event starts, for the pre-roll


@dataclass(frozen=True)
class ClipStats:
    """What ``/metrics`` shows of the clips: memory per camera, the store, the counters."""

    preroll_bytes: Dict[str, int]
    store_bytes: int
    counters: Dict[str, int]


@dataclass
class _Open:
    """A clip being written."""

    info: ClipInfo
    key: Tuple[str, str, str]  # camera, event type, track or zone
    start_t: float
    writer: Union[Mp4Writer, PacketClip, None] = None
    end_t: Optional[float] = None
    ctx: Optional[FrameContext] = None
    event_fields: Dict[str, object] = field(default_factory=dict)


@dataclass
class _Item:
    """One processed frame (image may be None for a control-only item)."""

    ctx: FrameContext
    image: Optional[np.ndarray]
    tracks: Dict[str, HeadTracks]
    starts: List[_Open]
    ends: List[Tuple[str, float, bool]]  # clip id, media time, final


def _key(ev: Dict) -> Tuple[str, str, str]:
    who = ev.get("zone") if ev["type"] == "crowd" else ev.get("track_id")
    return ev["camera"], ev["type"], str(who)


class ClipService:
    """Owns the pre-roll rings, the open clips and the clip worker thread."""

    def __init__(self, settings: ClipsConfig, store: ClipStore, factory: EventFactory,
                 deliver: Callable[[Sequence[Emission]], None],
                 protected: Optional[Callable[[], Set[str]]] = None, queue_size: int = 64,
                 records: Optional[Dict[str, str]] = None, rescale: Iterable[str] = ()):
        self.settings = settings
        self.store = store
        self.factory = factory
        self._deliver = deliver
        self._protected = protected or set
        self._q: queue.Queue[Optional[_Item]] = queue.Queue(queue_size)
        self._rings: Dict[str, FrameRing] = {}
        # Cameras with a record stream: clips are its packets, timed by the wall clock.
        keep = settings.pre_s + CONFIRM_S
        self._packets: Dict[str, PacketRing] = {
            cam: PacketRing(cam, url, keep, int(settings.ring_max_mb * 1e6))
            for cam, url in (records or {}).items()}
        # Cameras whose record stream is not their detect stream: boxes in its pixels.
        self._rescale = frozenset(rescale)
        self._open: Dict[str, _Open] = {}  # by clip id; written by the worker only
        self._by_key: Dict[Tuple[str, str, str], str] = {}  # inference thread only
        self._first_seen: Dict[Tuple[str, str, str], float] = {}  # inference thread only
        self.counters: Dict[str, int] = {"frames_dropped": 0, "clips_ready": 0,
                                         "clips_failed": 0, "write_errors": 0}
        self._thread = threading.Thread(target=self._run, name="clips", daemon=True)
        self._thread.start()

    # --- inference thread ------------------------------------------------------------------

    def observe(self, ctx: FrameContext, tracks: Dict[str, HeadTracks],
                emissions: Sequence[Emission], frame: bool = True) -> None:
        """Tag clip-worthy events and queue the frame (never blocks unless a clip starts/ends).

        ``frame`` False: ``ctx`` repeats an earlier frame (a camera being closed): only events.
        """
        starts: List[_Open] = []
        ends: List[Tuple[str, float, bool]] = []
        t = self._clock(ctx)
        if frame:
            self._see(ctx, tracks, t)
        for em in emissions:
            ev = em.event
            if ev["type"] not in self.settings.on:
                continue
            key = _key(ev)
            if ev["phase"] == "start" and key not in self._by_key:
                info = self.store.begin(ev["event_id"], ev["camera"], ev["type"], ev["label"],
                                        ev["track_id"])
                self._by_key[key] = info.id
                # The clip's pre-roll counts from when the object was first tracked, not from
                # when the rule was sure (its window and hold come after the first sighting).
                first = self._first_seen.get(key, t)
                starts.append(_Open(info, key, min(first, t), event_fields={
                    "track_id": ev["track_id"], "label": ev["label"], "score": ev["score"],
                    "box": ev["bbox"]["px"] if ev["bbox"] else None}))
            clip_id = self._by_key.get(key)
            if clip_id is None:
                continue
            ev["clip"] = {"id": clip_id, "status": "recording", "duration_s": 0.0, "bytes": 0,
                          "sha256": None, "reason": None}
            if ev["phase"] == "end":
                del self._by_key[key]
                ends.append((clip_id, t, ev.get("reason") in _FINAL_REASONS))
        item = _Item(ctx, ctx.image if frame else None, tracks, starts, ends)
        if starts or ends:
            self._q.put(item)  # must not be lost; the worker drains fast
            return
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.counters["frames_dropped"] += 1

    def boxes_to_record(self, ctx: FrameContext, emissions: Sequence[Emission]) -> None:
        """Event boxes of a camera with a ``record:`` stream in that stream's pixels, with
        ``bbox.frame`` naming the size (clips/scale.py); other cameras' are left alone. Call
        after :meth:`observe` (it keeps the detect stream's box for the clip event)."""
        if ctx.camera not in self._rescale:
            return
        ring = self._packets.get(ctx.camera)
        to_record(emissions, (ctx.width, ctx.height), ring.size if ring is not None else None)

    def _clock(self, ctx: FrameContext) -> float:
        """A record stream's packets carry arrival times: its camera's clips use the wall
        clock (a live source's media time is the wall clock anyway)."""
        return ctx.wall if ctx.camera in self._packets else ctx.media_s

    def _see(self, ctx: FrameContext, tracks: Dict[str, HeadTracks], t: float) -> None:
        """Remember when each track of a clip-worthy head was first seen on this camera."""
        alive = set()
        for head in self.settings.on:
            ht = tracks.get(head)
            if ht is None:
                continue
            for rows in (ht.active, ht.lost):
                for tid in rows[:, TRACK_ID]:
                    key = (ctx.camera, head, str(int(tid)))
                    alive.add(key)
                    self._first_seen.setdefault(key, t)
        for key in [k for k in self._first_seen if k[0] == ctx.camera and k not in alive]:
            del self._first_seen[key]

    def stats(self) -> ClipStats:
        """Pre-roll bytes per camera, bytes in the store, counters (any thread)."""
        rings = {cam: ring.bytes for cam, ring in list(self._rings.items())}
        rings.update({cam: ring.bytes for cam, ring in self._packets.items()})
        return ClipStats(rings, self.store.used_bytes(), dict(self.counters))

    def open_ids(self) -> Set[str]:
        """Clips still being written."""
        return set(self._open)

    def announce(self, infos: Sequence[ClipInfo]) -> None:
        """Deliver the ``clip`` events of clips finished by ``ClipStore.recover()`` at start."""
        for info in infos:
            ctx = FrameContext(info.camera, 0, 0.0, time.time(), 1, 1)
            key = (info.camera, info.alert_type or "weapon", str(info.track_id))
            fields: Dict[str, object] = {"track_id": info.track_id,
                                         "label": info.label or "unknown", "score": None,
                                         "box": None}
            self._announce(_Open(info, key, 0.0, ctx=ctx, event_fields=fields), info)

    def close(self, timeout: float = 30.0) -> None:
        """Finish every open clip with what it has and stop the worker."""
        self._q.put(None)
        self._thread.join(timeout)

    # --- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                break
            try:
                self._handle(item)
            except Exception:
                self.counters["write_errors"] += 1
                log.exception("clip worker: frame %d of %s failed", item.ctx.frame,
                              item.ctx.camera)
        for clip in list(self._open.values()):
            self._finish(clip, "agent_stop")
        for ring in self._packets.values():
            ring.stop()

    def _ring(self, camera: str) -> FrameRing:
        ring = self._rings.get(camera)
        if ring is None:
            s = self.settings
            # Room for the time between a track's first sighting and its event's start.
            ring = self._rings[camera] = FrameRing(s.pre_s + CONFIRM_S,
                                                   int(s.ring_max_mb * 1e6), s.max_dim)
        return ring

    def _handle(self, item: _Item) -> None:
        ctx, t = item.ctx, self._clock(item.ctx)
        packets = self._packets.get(ctx.camera)
        small = None
        if item.image is not None and packets is None:
            ring = self._ring(ctx.camera)
            small = self._render(item.image, item.tracks)
            ring.push(t, ring.encode(small))
        for clip in item.starts:
            clip.ctx = ctx
            if packets is None:
                self._begin(clip, self._ring(ctx.camera))
            else:
                self._begin_packets(clip, packets)
        mine = [c for c in self._open.values() if c.key[0] == ctx.camera]
        for clip in mine:
            clip.ctx = ctx
            done_t = clip.writer.last_t if clip.writer is not None else None
            if small is not None and (done_t is None or t > done_t):
                self._write(clip, small, t)  # the pre-roll may have had this frame
        for clip_id, end_t, final in item.ends:
            clip = self._open.get(clip_id)
            if clip is not None:
                clip.end_t = end_t
                if final:
                    self._finish(clip, None)
        s = self.settings
        for clip in [c for c in self._open.values() if c.key[0] == ctx.camera]:
            if clip.end_t is not None and t >= clip.end_t + s.post_s:
                self._finish(clip, None)
            elif t >= clip.start_t + s.max_s:
                self._finish(clip, "max_s")

    def _begin_packets(self, clip: _Open, packets: PacketRing) -> None:
        self._open[clip.info.id] = clip
        try:
            clip.writer = packets.start_clip(self.store.part_path(clip.info.id),
                                             clip.start_t - self.settings.pre_s)
        except _WRITE_ERRORS as exc:
            self._fail(clip, f"write_error: {exc}")
            return
        if clip.writer is None:
            self._fail(clip, f"record stream not open: {packets.error or 'connecting'}")

    def _render(self, image: np.ndarray, tracks: Dict[str, HeadTracks]) -> np.ndarray:
        small, scale = fit(image, self.settings.max_dim)
        if small is image:
            small = image.copy()
        if self.settings.overlay and tracks:
            scaled = {}
            for head, tr in tracks.items():
                active = tr.active.copy()
                active[:, BOX] *= scale
                scaled[head] = HeadTracks(active, tr.lost, tr.classes)
            draw(small, scaled, (), {})
        return small

    def _begin(self, clip: _Open, ring: FrameRing) -> None:
        self._open[clip.info.id] = clip
        pre = ring.since(clip.start_t - self.settings.pre_s)
        try:
            first = pre[-1].image() if pre else None
            if first is None:
                return  # no frame yet: the writer opens on the first frame written
            clip.writer = Mp4Writer(self.store.part_path(clip.info.id), first.shape[1],
                                    first.shape[0])
            for rf in pre:
                clip.writer.write(rf.image(), rf.t)
        except _WRITE_ERRORS as exc:
            self._fail(clip, f"write_error: {exc}")

    def _write(self, clip: _Open, small: np.ndarray, t: float) -> None:
        try:
            if clip.writer is None:
                clip.writer = Mp4Writer(self.store.part_path(clip.info.id), small.shape[1],
                                        small.shape[0])
            clip.writer.write(small, t)
        except _WRITE_ERRORS as exc:  # a full disk ends up here
            self._fail(clip, f"write_error: {exc}")

    def _fail(self, clip: _Open, reason: str) -> None:
        self._open.pop(clip.info.id, None)
        if clip.writer is not None:
            try:
                clip.writer.close()
            except Exception:  # the disk that failed the write may fail the flush too
                pass
        self.counters["clips_failed"] += 1
        log.error("clip %s failed: %s", clip.info.id, reason)
        self._announce(clip, self.store.fail(clip.info.id, reason))

    def _finish(self, clip: _Open, reason: Optional[str]) -> None:
        self._open.pop(clip.info.id, None)
        writer = clip.writer
        if writer is None or writer.frames == 0:
            self._announce(clip, self.store.fail(clip.info.id, "no_frames"))
            return
        try:
            writer.close()
            info = self.store.commit(clip.info.id, writer.duration_s(), reason,
                                     (writer.first_t, writer.last_t))
        except _WRITE_ERRORS as exc:
            self.counters["clips_failed"] += 1
            self._announce(clip, self.store.fail(clip.info.id, f"write_error: {exc}"))
            return
        self.counters["clips_ready"] += 1
        self.store.enforce_cap(self._protected() | set(self._open))
        self._announce(clip, info)

    def _announce(self, clip: _Open, info: ClipInfo) -> None:
        """Deliver the ``clip`` event: the clip of event ``clip.id`` is ready or failed."""
        ctx = clip.ctx
        if ctx is None:
            return
        f = clip.event_fields
        box = f["box"]
        ev = self.factory.make(ctx, "clip", "update", f["track_id"], str(f["label"]), f["score"],
                               box if isinstance(box, list) else None, alert_type=clip.key[1],
                               clip=info.payload())
        ems = [Emission(ev)]
        self.boxes_to_record(ctx, ems)
        self._deliver(ems)
