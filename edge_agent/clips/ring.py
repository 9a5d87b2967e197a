"""The pre-roll ring: the last seconds of a camera as down-scaled JPEGs, bounded in bytes."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Deque, List

import cv2
import numpy as np

from edge_agent.events.snapshots import fit


@dataclass(frozen=True)
class RingFrame:
    """One frame of the ring: its media time (s) and its JPEG bytes."""

    t: float
    jpeg: bytes

    def image(self) -> np.ndarray:
        """The decoded BGR frame."""
        img = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("a pre-roll JPEG does not decode")
        return img


class FrameRing:
    """Keeps frames no older than ``seconds`` behind the newest and at most ``max_bytes``.

    Frames are stored as JPEG at most ``max_dim`` px: a 1080p frame becomes ~40 KB, so 5 s at
    30 frames/s cost ~6 MB instead of ~900 MB of raw frames.
    """

    def __init__(self, seconds: float, max_bytes: int, max_dim: int = 960, quality: int = 80):
        if seconds < 0 or max_bytes <= 0:
            raise ValueError("ring needs seconds >= 0 and max_bytes > 0")
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.max_dim = max_dim
        self.quality = quality
        self._frames: Deque[RingFrame] = collections.deque()
        self.bytes = 0
        self.evicted_for_size = 0

    def encode(self, image: np.ndarray) -> bytes:
        """JPEG bytes of ``image`` as the ring keeps it (also used for frames after the start)."""
        small, _ = fit(image, self.max_dim)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError("JPEG encoding of a pre-roll frame failed")
        return buf.tobytes()

    def push(self, t: float, jpeg: bytes) -> None:
        """Add a frame taken at media time ``t``; drops what is too old or over the byte cap."""
        if self._frames and t < self._frames[-1].t:
            self.clear()  # the clock went back (a file looped): old frames are not "before"
        self._frames.append(RingFrame(t, jpeg))
        self.bytes += len(jpeg)
        while self._frames and self._frames[0].t < t - self.seconds:
            self.bytes -= len(self._frames.popleft().jpeg)
        while self.bytes > self.max_bytes and len(self._frames) > 1:
            self.bytes -= len(self._frames.popleft().jpeg)
            self.evicted_for_size += 1

    def since(self, t0: float) -> List[RingFrame]:
        """The kept frames taken at ``t0`` or later, oldest first."""
        return [f for f in self._frames if f.t >= t0]

    def clear(self) -> None:
        """Forget every frame."""
        self._frames.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._frames)
