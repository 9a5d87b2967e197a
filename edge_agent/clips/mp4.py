"""MP4 writing with PyAV: H.264 (libx264) where the FFmpeg build has it, else MPEG-4 Part 2.

The file is a fragmented MP4 (a ``moof`` per key frame, the ``moov`` first): what was written
before a crash is still a playable file, so a clip cut short by SIGKILL can be finished on
restart instead of thrown away. Browsers and VLC play fragmented H.264 MP4.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple

import av
import numpy as np

# Chromium, Firefox and Safari decode H.264 in MP4; MPEG-4 Part 2 ("mp4v") plays in VLC only.
PREFERRED = ("libx264", "h264_nvenc", "mpeg4")
_TIME_BASE = Fraction(1, 1000)  # pts in milliseconds: clips are variable frame rate


def encoder_name() -> str:
    """The first encoder of ``PREFERRED`` this PyAV build can open."""
    for name in PREFERRED:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # av raises its own UnknownCodecError per build
            continue
        return name
    raise RuntimeError("PyAV has no H.264 or MPEG-4 encoder")


def even_size(width: int, height: int) -> Tuple[int, int]:
    """4:2:0 video needs even sides."""
    return max(2, width - width % 2), max(2, height - height % 2)


class Mp4Writer:
    """Writes BGR frames with their media times (seconds) to a fragmented MP4."""

    def __init__(self, path: Path, width: int, height: int, fps: float = 30.0,
                 codec: Optional[str] = None):
        self.path = Path(path)
        self.width, self.height = even_size(width, height)
        self.codec = codec or encoder_name()
        self._out = av.open(str(self.path), mode="w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof"})
        try:
            self._stream = self._out.add_stream(self.codec, rate=max(1, int(round(fps))))
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.time_base = _TIME_BASE
            # A key frame every 2 s bounds what a crash can lose to the last fragment.
            self._stream.codec_context.gop_size = max(1, int(round(fps * 2)))
            if self.codec == "libx264":
                self._stream.codec_context.options = {"preset": "veryfast", "crf": "26"}
        except Exception:
            self._out.close()
            raise
        self._t0: Optional[float] = None
        self._last_pts = -1
        self.frames = 0
        self.first_t: Optional[float] = None
        self.last_t: Optional[float] = None

    def write(self, image: np.ndarray, t: float) -> None:
        """Add ``image`` (BGR uint8) shown at media time ``t``; out-of-order times are nudged."""
        if self._t0 is None:
            self._t0 = t
            self.first_t = t
        pts = max(int(round((t - self._t0) * 1000)), self._last_pts + 1)
        h, w = image.shape[:2]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        if (w, h) != (self.width, self.height):
            frame = frame.reformat(width=self.width, height=self.height)
        frame.pts, frame.time_base = pts, _TIME_BASE
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        self._last_pts = pts
        self.frames += 1
        self.last_t = t

    def duration_s(self) -> float:
        """Media time from the first to the last frame written."""
        if self.first_t is None or self.last_t is None:
            return 0.0
        return max(0.0, self.last_t - self.first_t)

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._out is None:
            return
        out, self._out = self._out, None
        try:
            for packet in self._stream.encode(None):
                out.mux(packet)
        finally:
            out.close()
