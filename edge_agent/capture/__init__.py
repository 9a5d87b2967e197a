"""Capture stage: frame sources (file, RTSP, USB/V4L2, GStreamer) read by one thread each."""

from edge_agent.capture.group import CaptureGroup
from edge_agent.capture.reader import CameraReader, Frame
from edge_agent.capture.sources import (
    CaptureError,
    SourceInfo,
    check_sources,
    open_capture,
    opencv_has_gstreamer,
    resolve_kind,
)

__all__ = [
    "CameraReader",
    "CaptureError",
    "CaptureGroup",
    "Frame",
    "SourceInfo",
    "check_sources",
    "open_capture",
    "opencv_has_gstreamer",
    "resolve_kind",
]
