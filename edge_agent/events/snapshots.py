"""Event snapshots: size-bounded JPEGs, kept in an on-disk ring with a total size cap."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

GREEN, RED, YELLOW = (0, 200, 0), (0, 0, 255), (0, 220, 255)


def fit(image: np.ndarray, max_dim: int) -> Tuple[np.ndarray, float]:
    """``image`` scaled down so its longest side is at most ``max_dim``; returns (image, scale)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_dim / float(max(h, w)))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))),
                           interpolation=cv2.INTER_AREA)
    return image, scale


def annotated(image: np.ndarray, box: Sequence[float], text: str, max_dim: int,
              color=RED) -> np.ndarray:
    """A scaled copy of the frame with ``box`` (pixels of the original) drawn and labelled."""
    small, s = fit(image, max_dim)
    if small is image:
        small = image.copy()
    x1, y1, x2, y2 = (int(round(v * s)) for v in box[:4])
    cv2.rectangle(small, (x1, y1), (x2, y2), color, 2)
    cv2.putText(small, text, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2,
                cv2.LINE_AA)
    return small


def encode_jpeg(image: np.ndarray, max_dim: int = 1280, quality: int = 85,
                max_bytes: int = 1 << 20) -> bytes:
    """JPEG bytes of ``image`` no larger than ``max_dim`` px and (by lowering quality) about
    ``max_bytes``; raises ValueError for an image that is not H x W x 3 uint8."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.size == 0:
        raise ValueError("snapshot image must be a non-empty H x W x 3 uint8 BGR array")
    small, _ = fit(image, max_dim)
    q = quality
    while True:
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if buf.nbytes <= max_bytes or q <= 30:
            return buf.tobytes()
        q -= 15


class SnapshotStore:
    """JPEG files ``<dir>/<event_id>.jpg``; the oldest are removed once the total passes the cap.

    Existing files are counted at start, so the cap holds across restarts.
    """

    def __init__(self, directory: os.PathLike, max_total_bytes: int, max_dim: int = 1280,
                 quality: int = 85):
        if max_total_bytes <= 0:
            raise ValueError(f"max_total_bytes must be > 0, got {max_total_bytes}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_total = int(max_total_bytes)
        self.max_dim = max_dim
        self.quality = quality
        self._lock = threading.Lock()
        files = sorted(self.dir.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        self._ring: List[Tuple[Path, int]] = [(p, p.stat().st_size) for p in files]
        self._total = sum(n for _, n in self._ring)
        self.removed = 0
        self._trim()

    @property
    def total_bytes(self) -> int:
        return self._total

    def save(self, event_id: str, image: np.ndarray) -> Tuple[str, bytes]:
        """Encode and store; returns (file name, JPEG bytes)."""
        if not event_id or "/" in event_id or event_id.startswith("."):
            raise ValueError(f"bad event_id for a snapshot file name: {event_id!r}")
        jpeg = encode_jpeg(image, self.max_dim, self.quality,
                           max_bytes=min(1 << 20, self.max_total))
        name = f"{event_id}.jpg"
        path = self.dir / name
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)  # readers never see half a file
        except OSError:  # e.g. disk full: a left-over .tmp would sit outside the size cap
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self._ring.append((path, len(jpeg)))
            self._total += len(jpeg)
            self._trim()
        return name, jpeg

    def files(self) -> List[Path]:
        with self._lock:
            return [p for p, _ in self._ring]

    def _trim(self) -> None:
        while self._total > self.max_total and self._ring:
            path, n = self._ring.pop(0)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("snapshot ring: cannot remove %s: %s", path, exc)
            self._total -= n
            self.removed += 1

