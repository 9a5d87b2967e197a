"""The clip store: ``state_dir/clips/<event_id>.mp4`` under a size cap, with an index.

A clip is written as ``<id>.mp4.part`` and renamed to ``<id>.mp4`` when finished (after an
fsync), so a reader never sees half a file under the final name. ``index.json`` remembers every
clip's status (``recording``, ``ready``, ``failed``, ``rotated``) so a request for a clip that
rotated out gets that answer rather than "never existed". ``recover()`` at start finishes what a
crash interrupted: a ``.part`` that decodes becomes ``ready`` (``truncated``), else ``failed``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from edge_agent.common.files import fsync_dir, sha256_file

log = logging.getLogger(__name__)

CLIP_ID = re.compile(r"^[0-9a-f]{32}$")  # an event_id
STATUSES = ("recording", "ready", "failed", "rotated")
INDEX_MAX = 2000  # entries remembered, so "rotated out" stays answerable for a while


@dataclass
class ClipInfo:
    """What the event payload and ``clips list`` say about one clip."""

    id: str
    camera: str
    status: str
    created: float  # epoch s
    duration_s: float = 0.0
    bytes: int = 0
    sha256: Optional[str] = None
    reason: Optional[str] = None  # why failed / rotated / truncated
    alert_type: str = ""
    label: str = ""
    track_id: Optional[int] = None
    media_start_s: Optional[float] = None  # camera media time of the first and last frame
    media_end_s: Optional[float] = None

    def payload(self) -> Dict[str, object]:
        """The event's ``clip`` object."""
        return {"id": self.id, "status": self.status, "duration_s": round(self.duration_s, 3),
                "bytes": self.bytes, "sha256": self.sha256, "reason": self.reason}


def check_id(clip_id: str) -> str:
    """``clip_id`` if it is an event id (32 hex digits), else ValueError."""
    if not isinstance(clip_id, str) or not CLIP_ID.match(clip_id):
        raise ValueError(f"clip id must be an event id (32 lowercase hex digits), got {clip_id!r}")
    return clip_id


def decodable_frames(path: Path) -> int:
    """How many frames OpenCV decodes from ``path`` (0 for a file that is not video)."""
    import cv2  # here: the CLI imports this module, and an --extra none install has no OpenCV

    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.isOpened() and cap.grab():
            n += 1
    finally:
        cap.release()
    return n


class ClipStore:
    """Clips of one agent under ``directory``, at most ``max_bytes`` of finished clips."""

    def __init__(self, directory: Path, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("clip store needs max_bytes > 0")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._index: Dict[str, ClipInfo] = self._read_index()
        self.rotated = 0

    # --- paths ---------------------------------------------------------------------------

    def final_path(self, clip_id: str) -> Path:
        return self.dir / f"{check_id(clip_id)}.mp4"

    def part_path(self, clip_id: str) -> Path:
        return self.dir / f"{check_id(clip_id)}.mp4.part"

    # --- the index -----------------------------------------------------------------------

    def _read_index(self) -> Dict[str, ClipInfo]:
        path = self.dir / "index.json"
        try:
            raw = json.loads(path.read_text())
            return {k: ClipInfo(**v) for k, v in raw.items() if CLIP_ID.match(k)}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.warning("clip index %s unreadable (%s); starting a new one", path, exc)
            return {}

    def _write_index(self) -> None:
        items = sorted(self._index.values(), key=lambda c: c.created)[-INDEX_MAX:]
        self._index = {c.id: c for c in items}
        tmp = self.dir / "index.json.tmp"
        tmp.write_text(json.dumps({c.id: asdict(c) for c in items}))
        os.replace(tmp, self.dir / "index.json")

    def _set(self, info: ClipInfo) -> ClipInfo:
        with self._lock:
            self._index[info.id] = info
            self._write_index()
        return info

    # --- writing ---------------------------------------------------------------------------

    def begin(self, clip_id: str, camera: str, alert_type: str = "", label: str = "",
              track_id: Optional[int] = None) -> ClipInfo:
        """Record that a clip is being written (its ``.part`` is the writer's to create)."""
        return self._set(ClipInfo(check_id(clip_id), camera, "recording", time.time(),
                                  alert_type=alert_type, label=label, track_id=track_id))

    def _update(self, clip_id: str, **fields: object) -> ClipInfo:
        """The index entry of ``clip_id`` (a new one if unknown) with ``fields`` changed."""
        old = self._index.get(clip_id) or ClipInfo(clip_id, "", "failed", time.time())
        return self._set(replace(old, **fields))

    def commit(self, clip_id: str, duration_s: float, reason: Optional[str] = None,
               span: Tuple[Optional[float], Optional[float]] = (None, None)) -> ClipInfo:
        """Make the finished ``.part`` the clip: fsync, hash, rename, fsync the folder."""
        part, final = self.part_path(clip_id), self.final_path(clip_id)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(part)
        size = part.stat().st_size
        os.replace(part, final)
        fsync_dir(self.dir)
        return self._update(clip_id, status="ready", duration_s=duration_s, bytes=size,
                            sha256=digest, reason=reason, media_start_s=span[0],
                            media_end_s=span[1])

    def fail(self, clip_id: str, reason: str) -> ClipInfo:
        """Drop a clip that could not be finished; its status says why."""
        self.part_path(clip_id).unlink(missing_ok=True)
        return self._update(clip_id, status="failed", duration_s=0.0, bytes=0, sha256=None,
                            reason=reason)

    def recover(self) -> List[ClipInfo]:
        """Finish what a crash interrupted (call once at start, before any clip begins)."""
        done: List[ClipInfo] = []
        for part in sorted(self.dir.glob("*.mp4.part")):
            clip_id = part.name[:-len(".mp4.part")]
            if not CLIP_ID.match(clip_id):
                part.unlink(missing_ok=True)
                continue
            frames = decodable_frames(part)
            if frames > 0:
                old = self._index.get(clip_id)
                done.append(self.commit(clip_id, old.duration_s if old else 0.0,
                                        reason="truncated_by_restart"))
            else:
                done.append(self.fail(clip_id, "interrupted_by_restart"))
        for info in list(self._index.values()):  # recording, but its .part never got written
            if info.status == "recording" and not self.part_path(info.id).exists():
                done.append(self.fail(info.id, "interrupted_by_restart"))
        return done

    # --- the cap ---------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of finished and in-progress clips on disk."""
        total = 0
        for p in self.dir.glob("*.mp4*"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def enforce_cap(self, protected: Iterable[str] = ()) -> List[str]:
        """Delete the oldest finished clips until under the cap; never one in ``protected``.

        Clips being written are ``.part`` files and never candidates. Returns the ids removed.
        """
        keep: Set[str] = set(protected)
        removed: List[str] = []
        used = self.used_bytes()
        if used <= self.max_bytes:
            return removed
        finals = sorted(self.dir.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
        for path in finals:
            if used <= self.max_bytes:
                break
            clip_id = path.stem
            if clip_id in keep:
                continue
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            used -= size
            removed.append(clip_id)
            old = self._index.get(clip_id)
            if old is not None:
                old.status, old.reason = "rotated", "size_cap"
        if removed:
            self.rotated += len(removed)
            with self._lock:
                self._write_index()
            log.info("clip store over %d bytes: removed %d oldest clip(s)", self.max_bytes,
                     len(removed))
        return removed

    # --- reading ---------------------------------------------------------------------------

    def lookup(self, clip_id: str) -> Tuple[Optional[Path], ClipInfo | None, str]:
        """``(path, info, reason)``: the file of a ready clip, else None and why not."""
        check_id(clip_id)
        info = self._index.get(clip_id)
        path = self.final_path(clip_id)
        if info is not None and info.status == "ready" and path.is_file():
            return path, info, "ready"
        if info is None:
            return None, None, "no clip with this id: it was never recorded here"
        if info.status == "recording":
            return None, info, "the clip is still recording"
        if info.status == "rotated":
            return None, info, "the clip was removed to keep the store under its size cap"
        return None, info, f"the clip failed: {info.reason or 'unknown'}"

    def list(self) -> List[ClipInfo]:
        """Every clip the index remembers, oldest first."""
        with self._lock:
            return sorted(self._index.values(), key=lambda c: c.created)


ProtectedIds = Callable[[], Set[str]]
