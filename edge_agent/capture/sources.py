"""Opening frame sources with OpenCV: video file, RTSP (over TCP), USB/V4L2, GStreamer string.

``open_capture`` either returns an opened ``cv2.VideoCapture`` or raises ``CaptureError`` with a
message that names the camera, the source and what is wrong. Nothing here loops or retries; the
reader (``reader.py``) owns reconnection.

OpenCV says only "not opened", whatever the cause. So a file is first opened and read here (an
OSError names the cause: missing, no permission, too many open files), and when OpenCV still
fails the process's descriptors and memory are checked before the content is blamed: "corrupt"
is said only of a file that could be read and did not decode.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import cv2

from edge_agent.common import resources
from edge_agent.config import CameraConfig


class CaptureError(Exception):
    """A source cannot be opened or read; ``str()`` is the user-facing reason.

    ``permanent`` is True when retrying cannot help (a missing file, a GStreamer pipeline with an
    OpenCV that has no GStreamer); live sources that fail to open are retried with backoff.
    """

    def __init__(self, message: str, permanent: bool = False, shortage: bool = False):
        super().__init__(message)
        self.permanent = permanent
        self.shortage = shortage  # out of descriptors or memory: passes when they come back


@dataclass(frozen=True)
class SourceInfo:
    """What an opened source reports about itself."""

    kind: str  # file | rtsp | usb | gstreamer
    width: int
    height: int
    fps: float  # 0 when the source does not say
    frame_count: int  # files only; 0 when unknown or live


def resolve_kind(cam: CameraConfig) -> str:
    """The source kind: ``cam.type`` unless ``auto``, else guessed from the source string."""
    return cam.source_kind()


@functools.lru_cache(maxsize=None)  # the build never changes; checked on every GStreamer (re)open
def opencv_has_gstreamer() -> bool:
    """True when this OpenCV build has the GStreamer video I/O backend."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def check_sources(cams: List[CameraConfig]) -> None:
    """Start-up checks that do not need to open anything; raises ``CaptureError`` (permanent).

    A GStreamer pipeline given to an OpenCV built without GStreamer (the PyPI wheels) would open
    nothing and, on some versions, hang; say which OpenCV to use instead.
    """
    for cam in cams:
        if resolve_kind(cam) == "gstreamer" and not opencv_has_gstreamer():
            raise CaptureError(
                f"camera {cam.name}: source is a GStreamer pipeline, but this OpenCV "
                f"({cv2.__version__}) was built without GStreamer (the PyPI opencv-python wheels "
                "are). Use JetPack's OpenCV (apt python3-opencv; create the venv with "
                "--system-site-packages and uninstall opencv-python-headless from it) or an "
                "OpenCV built with -DWITH_GSTREAMER=ON; or use type: rtsp / usb / file instead.",
                permanent=True,
            )


def _rtsp_over_tcp() -> None:
    # FFmpeg's RTSP default is UDP, which loses packets (smeared frames) behind NAT and Wi-Fi.
    # The option string is process-wide and read at open time; keep what the user set.
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


def open_capture(cam: CameraConfig) -> Tuple[cv2.VideoCapture, SourceInfo]:
    """Open ``cam``'s source; returns the capture and its info or raises ``CaptureError``."""
    kind = resolve_kind(cam)
    src = cam.source.strip()
    timeout_ms = int(cam.stall_timeout_s * 1000)
    if kind == "file":
        path = Path(src)
        _probe_file(cam, path)
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            _raise_if_short(cam, f"cannot open video file {src}")
            raise CaptureError(
                f"camera {cam.name}: cannot open video file {src} (not a video, corrupt, or a "
                "codec this OpenCV cannot decode)",
                permanent=True,
            )
    elif kind == "rtsp":
        _rtsp_over_tcp()
        cap = cv2.VideoCapture(
            src,
            cv2.CAP_FFMPEG,
            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
             cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms],
        )
        if not cap.isOpened():
            cap.release()
            _raise_if_short(cam, f"cannot open RTSP stream {redact(src)}")
            raise CaptureError(f"camera {cam.name}: cannot open RTSP stream {redact(src)}")
    elif kind == "usb":
        dev = int(src) if src.isdigit() else src
        if isinstance(dev, str) and not os.path.exists(dev):
            raise CaptureError(f"camera {cam.name}: no such video device {dev}")
        cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            _raise_if_short(cam, f"cannot open video device {src}")
            raise CaptureError(
                f"camera {cam.name}: cannot open video device {src} (no such device, busy, or "
                "no permission: the user needs group 'video')"
            )
    elif kind == "gstreamer":
        check_sources([cam])
        cap = cv2.VideoCapture(src, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            _raise_if_short(cam, f"GStreamer pipeline did not start: {redact(src)}")
            raise CaptureError(
                f"camera {cam.name}: GStreamer pipeline did not start: {redact(src)}")
    else:  # pragma: no cover - the config's Literal rejects anything else
        raise CaptureError(f"camera {cam.name}: unknown source type {kind!r}", permanent=True)
    info = SourceInfo(
        kind=kind,
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        fps=_sane_fps(cap.get(cv2.CAP_PROP_FPS)),
        frame_count=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) if kind == "file" else 0,
    )
    return cap, info


def _probe_file(cam: CameraConfig, path: Path) -> None:
    """Open and read the file's first bytes ourselves, so that an OSError names the cause."""
    try:
        with open(path, "rb") as f:
            f.read(16)
    except FileNotFoundError:
        raise CaptureError(f"camera {cam.name}: video file not found: {path}",
                           permanent=True) from None
    except IsADirectoryError:
        raise CaptureError(f"camera {cam.name}: video file {path} is a directory",
                           permanent=True) from None
    except OSError as exc:
        short = resources.exhaustion(exc)
        if short:
            raise CaptureError(f"camera {cam.name}: cannot open video file {path}: {short}",
                               shortage=True) from None
        raise CaptureError(f"camera {cam.name}: cannot read video file {path}: "
                           f"{exc.strerror or exc}", permanent=True) from None


def _raise_if_short(cam: CameraConfig, what: str) -> None:
    """OpenCV failed to open: when the process is short of descriptors or memory, that is the
    likelier cause, and a passing one (raises a ``shortage`` CaptureError)."""
    problems = resources.usage().problems()
    if problems:
        raise CaptureError(f"camera {cam.name}: {what}: {'; '.join(problems)}", shortage=True)


def _sane_fps(fps: float) -> float:
    # Streams without timing info report 0, 1000 or 90000 (the RTP clock): treat as unknown.
    return float(fps) if 0 < fps <= 240 else 0.0


def redact(source: str) -> str:
    """``source`` with any ``user:password@`` of a URL in it removed, for logs and errors (also
    a GStreamer pipeline's ``location=rtsp://...``)."""
    return re.sub(r"//[^/@]*@", "//***@", source)
