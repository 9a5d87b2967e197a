"""One reader thread per camera that keeps the newest few frames.

Live sources (RTSP, USB, GStreamer) never wait for the consumer: each keeps a short queue of
``frame_queue`` decoded frames (default 4), so an inference pass that takes longer than a frame
period (a detection, a batch) costs no frame; only when the queue is full is its oldest frame
dropped and counted. ``frame_queue: 1`` keeps only the newest frame (the lowest latency).

A stream that stops delivering (frame age over ``stall_timeout_s``) is released and reopened
with doubling backoff; a reader stuck inside ``VideoCapture.read()`` (opencv#4506) is abandoned,
not waited for, so it never blocks anything.

A failure to open a source is retried with the camera's backoff for as long as the agent runs,
once the source has been opened once (a missing or undecodable file at start-up fails the camera,
since nothing would change); while the process is short of descriptors or memory the retry comes
as soon as the shortage has passed.

File sources that are not ``realtime`` are read at the consumer's pace instead (a file is not
live, so dropping its frames would only lose data): the reader decodes the next frame while the
consumer works on the current one, and waits while that one is not taken (a queue of 1).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Optional, Tuple

import cv2
import numpy as np

from edge_agent.capture.sources import (
    CaptureError,
    SourceInfo,
    open_capture,
    redact,
    resolve_kind,
)
from edge_agent.common import resources
from edge_agent.config import CameraConfig

log = logging.getLogger(__name__)

Opener = Callable[[CameraConfig], Tuple[cv2.VideoCapture, SourceInfo]]
_SHORTAGE_POLL_S = 0.5


def _open_error(cam: CameraConfig, exc: Exception) -> CaptureError:
    """Any failure to open as a CaptureError saying what it is (no password in it)."""
    if isinstance(exc, CaptureError):
        return exc
    short = resources.exhaustion(exc)
    if short:
        return CaptureError(f"camera {cam.name}: cannot open {redact(cam.source)}: {short}",
                            shortage=True)
    # e.g. cv2.error for an option this backend rejects: nothing a retry would change
    return CaptureError(redact(f"camera {cam.name}: cannot open {cam.source}: {exc}"),
                        permanent=True)


@dataclass
class Frame:
    """One decoded frame.

    ``index`` counts every frame read from the source since the reader started (dropped ones
    included, across reconnects and file loops). ``media_s`` is the time base of the event rules:
    the position in the file for files (index / fps), the wall clock for live sources.
    """

    camera: str
    index: int
    image: np.ndarray  # H x W x 3, uint8, BGR
    t_read: float  # time.monotonic() right after decoding (start of end-to-end latency)
    wall: float  # time.time() at the same moment
    media_s: float


class CameraReader:
    """Reads one camera in its own thread; ``take()`` returns the oldest queued frame or None."""

    STATES = ("starting", "running", "reconnecting", "ended", "failed", "stopped")

    def __init__(
        self,
        cam: CameraConfig,
        notify: Optional[threading.Event] = None,
        backpressure: Optional[bool] = None,
        opener: Opener = open_capture,
    ):
        self.cam = cam
        self.kind = resolve_kind(cam)
        # Files are read at the consumer's pace unless paced at their own fps.
        self.backpressure = (
            (self.kind == "file" and not cam.realtime) if backpressure is None else backpressure
        )
        self._notify = notify
        self._opener = opener
        self._cond = threading.Condition()
        # A backpressured file waits for its one frame to be taken; a live source drops the
        # oldest when full (memory: frame_queue decoded frames, 690 kB each at 640x360).
        self.capacity = 1 if self.backpressure else cam.frame_queue
        self._queue: Deque[Frame] = collections.deque()
        self._stop = threading.Event()
        self._gen = 0  # bumped to abandon a worker stuck in read()
        self._threads: Dict[int, threading.Thread] = {}
        self.state = "starting"
        self.last_error: Optional[str] = None
        self.info: Optional[SourceInfo] = None
        self.frames_in = 0
        self.dropped = 0
        self.reconnects = 0
        self._index = 0
        self._last_frame_t = time.monotonic()
        self._opened_once = False  # never given up after this

    # --- public API ------------------------------------------------------------------------

    def start(self) -> CameraReader:
        """Start the reader thread."""
        self._spawn()
        return self

    def take(self, newest: bool = False) -> Optional[Frame]:
        """The oldest queued frame, or None (never blocks).

        ``newest``: the newest instead, the older ones counted as dropped (a camera whose
        ``fps_limit`` thins its stream wants the latest picture, not the backlog).
        """
        with self._cond:
            if not self._queue:
                return None
            if newest:
                self.dropped += len(self._queue) - 1
                frame = self._queue.pop()
                self._queue.clear()
            else:
                frame = self._queue.popleft()
            self._cond.notify_all()  # a backpressured reader may go on
            return frame

    def queued(self) -> int:
        """Frames waiting to be taken."""
        return len(self._queue)

    def wait(self, timeout: float) -> Optional[Frame]:
        """Like ``take()`` but waits up to ``timeout`` s for a frame."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._queue and not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return self.take()

    @property
    def done(self) -> bool:
        """No frame will ever come again (file ended, permanent failure, or stopped)."""
        return self.state in ("ended", "failed", "stopped")

    def exhausted(self) -> bool:
        """Done and its last frame taken."""
        with self._cond:
            return self.done and not self._queue

    def frame_age(self) -> float:
        """Seconds since the last frame arrived (or since the source was opened)."""
        return time.monotonic() - self._last_frame_t

    def check_stall(self) -> bool:
        """Reopen a live source whose newest frame is older than ``stall_timeout_s``.

        Called periodically from outside the reader thread (the worker may be stuck in
        ``read()``). Returns True when a reopen was started.
        """
        if self.backpressure or self.done or self._stop.is_set():
            return False
        if self.state != "running" or self.frame_age() <= self.cam.stall_timeout_s:
            return False
        self.last_error = f"no frame for {self.frame_age():.1f} s"
        log.warning("camera %s: %s; reopening", self.cam.name, self.last_error)
        self.state = "reconnecting"  # before the count: whoever sees the count sees the state
        self.reconnects += 1
        self._spawn()  # the stuck worker sees the new generation and quits when read() returns
        return True

    def request_stop(self) -> None:
        """Tell the worker to finish, without waiting for it (``stop`` waits)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading and release the source; True when every worker thread has ended."""
        self.request_stop()
        deadline = time.monotonic() + timeout
        ok = True
        for t in list(self._threads.values()):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                ok = False
                log.warning("camera %s: reader thread still blocked in read(); abandoned",
                            self.cam.name)
        if self.state not in ("ended", "failed"):
            self.state = "stopped"
        with self._cond:
            self._cond.notify_all()
        return ok

    def stats(self) -> Dict[str, object]:
        """Counters and state for metrics."""
        return {
            "state": self.state,
            "frames_in": self.frames_in,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "frame_age_s": round(self.frame_age(), 3),
            "last_error": self.last_error,
        }

    # --- worker ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._gen += 1
        gen = self._gen
        self._last_frame_t = time.monotonic()
        t = threading.Thread(
            target=self._run, args=(gen,), name=f"capture-{self.cam.name}-{gen}", daemon=True
        )
        self._threads = {g: th for g, th in self._threads.items() if th.is_alive()}
        self._threads[gen] = t
        t.start()

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._stop.is_set()

    def _run(self, gen: int) -> None:
        cam = self.cam
        backoff = cam.reconnect.min_s
        ever_read = False
        while self._current(gen):
            try:
                cap, info = self._opener(cam)
            except Exception as exc:  # an OpenCV error must not kill the thread silently
                err = _open_error(cam, exc)
                self.last_error = err.args[0]
                # Only a source never opened may be given up, and only for what cannot pass
                # (a missing file, a bad pipeline); one that ran once is retried forever.
                if err.permanent and not self._opened_once:
                    log.error("%s", err)
                    self._finish(gen, "failed")
                    return
                log.warning("%s; retrying in %.1f s", err, backoff)
                self.state = "reconnecting"
                self._pause(backoff, err.shortage)
                backoff = min(backoff * 2, cam.reconnect.max_s)
                continue
            self._opened_once = True
            self.info = info
            if self._current(gen):
                self.state = "running"
                self._last_frame_t = time.monotonic()
            n_read = self._read_loop(gen, cap, info)
            cap.release()
            if not self._current(gen):
                return
            if n_read:
                ever_read = True
                backoff = cam.reconnect.min_s
            if self.kind == "file":
                if not n_read and not self._file_unread(gen, ever_read, backoff):
                    return
                if not n_read:
                    backoff = min(backoff * 2, cam.reconnect.max_s)
                    continue
                if cam.loop:
                    continue
                if info.frame_count and n_read < info.frame_count - 10:
                    # A truncated file ends early; say so rather than pretend it was complete.
                    self.last_error = (
                        f"camera {cam.name}: {cam.source} ended after {n_read} of "
                        f"{info.frame_count} frames (truncated or corrupt)"
                    )
                    log.warning("%s", self.last_error)
                log.info("camera %s: end of file after %d frames", cam.name, self.frames_in)
                self._finish(gen, "ended")
                return
            # A live source stopped delivering: reopen after a pause.
            self.state = "reconnecting"
            self.reconnects += 1
            self.last_error = "stream ended or read failed"
            log.warning("camera %s: %s; reconnecting in %.1f s", cam.name, self.last_error,
                        backoff)
            self._pause(backoff, bool(resources.usage().problems()))
            backoff = min(backoff * 2, cam.reconnect.max_s)

    def _file_unread(self, gen: int, ever_read: bool, backoff: float) -> bool:
        """A file opened but gave no frame: fail it when it never gave one and nothing is
        short (its content does not decode); else wait and return True to try again."""
        cam = self.cam
        short = resources.usage().problems()
        if not short and not ever_read:
            self.last_error = (f"camera {cam.name}: no frame could be decoded from {cam.source} "
                               "(corrupt or unsupported video)")
            log.error("%s", self.last_error)
            self._finish(gen, "failed")
            return False
        why = "; ".join(short) if short else "no frame could be decoded (corrupt now?)"
        self.last_error = f"camera {cam.name}: {cam.source}: {why}"
        self.state = "reconnecting"
        self.reconnects += 1
        log.warning("%s; retrying in %.1f s", self.last_error, backoff)
        self._pause(backoff, bool(short))
        return True

    def _pause(self, seconds: float, shortage: bool) -> None:
        """Wait before the next open; a shortage of descriptors or memory is watched, and the
        wait ends as soon as it has passed (the agent recovers on its own, not a backoff
        later)."""
        if not shortage:
            self._stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not self._stop.wait(min(_SHORTAGE_POLL_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or not resources.usage().problems():
                return

    def _read_loop(self, gen: int, cap: cv2.VideoCapture, info: SourceInfo) -> int:
        """Read until the source fails, the reader stops or this worker is superseded."""
        n = 0
        file_fps = info.fps if self.kind == "file" else 0.0
        pace_start = time.monotonic()
        first_index = self._index
        while self._current(gen):
            try:
                ok, img = cap.read()
            except Exception as exc:  # cv2.error from a backend: a failed read, not a dead thread
                log.warning("camera %s: read failed: %s", self.cam.name, redact(str(exc)))
                break
            if not self._current(gen):
                break
            if not ok or img is None:
                break
            now, wall = time.monotonic(), time.time()
            media_s = self._index / file_fps if file_fps > 0 else wall
            frame = Frame(self.cam.name, self._index, img, now, wall, media_s)
            self._index += 1
            n += 1
            self.frames_in += 1
            self._last_frame_t = now
            self._publish(frame)
            if self.cam.realtime and file_fps > 0:
                # Pace at the file's own rate, as a live camera would deliver it.
                due = pace_start + (self._index - first_index) / file_fps
                self._stop.wait(max(0.0, due - time.monotonic()))
        return n

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self.backpressure:
                while len(self._queue) >= self.capacity and not self._stop.is_set():
                    self._cond.wait(0.5)
                if len(self._queue) >= self.capacity:  # stopping: the queued frame is next
                    return
            while len(self._queue) >= self.capacity:
                self._queue.popleft()  # full: the oldest goes, the newest is what matters
                self.dropped += 1
            self._queue.append(frame)
            self._cond.notify_all()
        if self._notify is not None:
            self._notify.set()

    def _finish(self, gen: int, state: str) -> None:
        if gen == self._gen:
            self.state = state
        with self._cond:
            self._cond.notify_all()
        if self._notify is not None:
            self._notify.set()

