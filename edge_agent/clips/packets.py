"""The pre-roll of a record stream: its encoded packets, kept and written without decoding.

For a camera with a ``record:`` stream (or an RTSP source, whose packets are already H.264 or
HEVC), one thread per camera demuxes the stream with PyAV and keeps the packets of the last
seconds, always from a key frame on. A clip is a remux of those packets plus the ones that follow:
no decode, no re-encode (DeepStream's smart record works the same way), so a 1080p main stream
costs the box its network traffic and a few MB of memory, not a decoder.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, List, Optional, Tuple

import av

from edge_agent.capture.sources import redact

log = logging.getLogger(__name__)

_OPEN_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}  # us: a dead server errs


@dataclass
class _Kept:
    t: float  # wall clock when it arrived
    packet: av.Packet


class PacketClip:
    """One clip being remuxed from the ring's stream."""

    def __init__(self, path: Path, template: av.video.stream.VideoStream,
                 detach: Callable[[PacketClip], None]):
        self.path = path
        self._detach = detach
        self.out = av.open(str(path), mode="w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof"})
        self.stream = self.out.add_stream_from_template(template)
        self.frames = 0  # video packets: one frame each
        self.first_t: Optional[float] = None
        self.last_t: Optional[float] = None
        self._base: Optional[int] = None
        self._last_dts = -1

    def write(self, kept: _Kept) -> None:
        pkt = kept.packet
        if pkt.dts is None or pkt.pts is None:
            return  # a packet without timestamps cannot be placed in the file
        if self._base is None:
            self._base = pkt.dts
        dts = pkt.dts - self._base
        if dts <= self._last_dts:
            return  # a repeat after a reconnect: MP4 needs increasing dts
        out = av.Packet(bytes(pkt))
        out.dts, out.pts = dts, pkt.pts - self._base
        out.time_base = pkt.time_base
        out.is_keyframe = pkt.is_keyframe
        out.stream = self.stream
        self.out.mux(out)
        self._last_dts = dts
        self.frames += 1
        self.first_t = kept.t if self.first_t is None else self.first_t
        self.last_t = kept.t

    def duration_s(self) -> float:
        """Wall time from the first packet written to the last."""
        if self.first_t is None or self.last_t is None:
            return 0.0
        return max(0.0, self.last_t - self.first_t)

    def close(self) -> None:
        """Stop taking packets from the ring and finish the file."""
        self._detach(self)
        self.out.close()


class PacketRing:
    """Demuxes ``url`` in its own thread and keeps ``seconds`` of packets (module doc)."""

    def __init__(self, camera: str, url: str, seconds: float, max_bytes: int):
        self.camera = camera
        self.url = url
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.bytes = 0
        self.codec: Optional[str] = None
        self.size: Optional[Tuple[int, int]] = None  # (width, height) once the stream is open
        self.error: Optional[str] = None
        self._kept: Deque[_Kept] = collections.deque()
        self._clips: List[PacketClip] = []
        self._template: Optional[av.video.stream.VideoStream] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"record-{camera}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the stream is open (its codec known)."""
        return self._ready.wait(timeout)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._read()
                delay = 0.5
            except Exception as exc:  # av raises its own OSError/FFmpegError kinds
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("camera %s: record stream %s: %s; retrying in %.1f s", self.camera,
                            redact(self.url), self.error, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _read(self) -> None:
        with av.open(self.url, options=_OPEN_OPTIONS, timeout=10.0) as src:
            stream = src.streams.video[0]
            with self._lock:
                self._template = stream
                self.codec = stream.codec_context.name
                cc = stream.codec_context
                self.size = (cc.width, cc.height) if cc.width > 0 and cc.height > 0 else None
                self._kept.clear()
                self.bytes = 0
            self._ready.set()
            self.error = None
            for pkt in src.demux(stream):
                if self._stop.is_set():
                    return
                if pkt.size == 0:
                    continue
                self._push(_Kept(time.time(), pkt))

    def _push(self, kept: _Kept) -> None:
        with self._lock:
            self._kept.append(kept)
            self.bytes += kept.packet.size
            self._evict(kept.t)
            for clip in self._clips:
                clip.write(kept)

    def _evict(self, now: float) -> None:
        """Drop whole key-frame groups that end before the window, and over the byte cap."""
        while len(self._kept) > 1:
            nxt = next((i for i in range(1, len(self._kept)) if self._kept[i].packet.is_keyframe),
                       None)
            if nxt is None:
                return
            too_old = self._kept[nxt].t <= now - self.seconds
            if not (too_old or self.bytes > self.max_bytes):
                return
            for _ in range(nxt):
                self.bytes -= self._kept.popleft().packet.size

    def start_clip(self, path: Path, since: float) -> Optional[PacketClip]:
        """A clip from the last key frame at or before ``since`` (wall clock) on; None while
        the stream is not open."""
        with self._lock:
            if self._template is None:
                return None
            clip = PacketClip(path, self._template, self._detach)
            kept = list(self._kept)
            start = 0
            for i, k in enumerate(kept):
                if k.packet.is_keyframe and k.t <= since:
                    start = i
            for k in kept[start:]:
                clip.write(k)
            self._clips.append(clip)
            return clip

    def _detach(self, clip: PacketClip) -> None:
        with self._lock:
            if clip in self._clips:
                self._clips.remove(clip)

    def stop(self) -> None:
        """Stop reading (open clips are the caller's to end)."""
        self._stop.set()
        self._thread.join(5.0)
