"""All cameras of a pipeline: their readers, one wake-up event and the stall watchdog."""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, List, Optional

from edge_agent.capture.reader import CameraReader, Frame
from edge_agent.capture.sources import check_sources
from edge_agent.config import CameraConfig

log = logging.getLogger(__name__)


class CaptureGroup:
    """Starts one ``CameraReader`` per camera and watches them for stalls.

    ``new_frame`` is set by any reader that has a frame, so the inference loop can sleep on it.
    ``start()`` raises ``CaptureError`` for configuration that can never work (e.g. a GStreamer
    pipeline on an OpenCV without GStreamer) before any thread starts.
    """

    def __init__(self, cams: List[CameraConfig], watch_interval_s: float = 0.5, **reader_kw):
        names = [c.name for c in cams]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        self.new_frame = threading.Event()
        self.readers: Dict[str, CameraReader] = {
            c.name: CameraReader(c, notify=self.new_frame, **reader_kw) for c in cams
        }
        self._cams = cams
        self._watch_interval = watch_interval_s
        self._stop = threading.Event()
        self._watchdog: Optional[threading.Thread] = None

    def start(self) -> CaptureGroup:
        check_sources(self._cams)
        for r in self.readers.values():
            r.start()
        self._watchdog = threading.Thread(target=self._watch, name="capture-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def take_all(self) -> List[Frame]:
        """The oldest queued frame of every camera that has one."""
        out = []
        for r in self.readers.values():
            f = r.take()
            if f is not None:
                out.append(f)
        return out

    def all_done(self) -> bool:
        """Every reader has ended or failed and its last frame was taken."""
        return all(r.exhausted() for r in self.readers.values())

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop all readers within one ``timeout`` in all; True when every thread ended."""
        self._stop.set()
        for r in self.readers.values():  # all at once: stuck readers must not add up their waits
            r.request_stop()
        deadline = time.monotonic() + timeout
        ok = all([r.stop(max(0.0, deadline - time.monotonic())) for r in self.readers.values()])
        if self._watchdog is not None:
            self._watchdog.join(max(0.0, deadline - time.monotonic()))
        self.new_frame.set()
        return ok

    def stats(self) -> Dict[str, Dict[str, object]]:
        return {name: r.stats() for name, r in self.readers.items()}

    def _watch(self) -> None:
        while not self._stop.wait(self._watch_interval):
            for r in self.readers.values():
                try:
                    r.check_stall()
                except Exception:  # the watchdog must outlive any one camera's trouble
                    log.exception("camera %s: stall check failed", r.cam.name)
