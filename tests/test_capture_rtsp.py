"""RTSP capture against a real RTSP server (GStreamer's gst-rtsp-server, run as a subprocess).

The server is stopped and restarted on the same port mid-run (reconnect), and frozen with
SIGSTOP so the TCP connection stays open but no frame arrives (stall detection by frame age).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest
from conftest import free_port, wait_for

from edge_agent.capture import CameraReader
from edge_agent.config import CameraConfig

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"  # the Debian python3 that has gi (python3-gi)


def _server_usable() -> Optional[str]:
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import GstRtspServer"],
        capture_output=True, text=True,
    )
    if probe.returncode:
        return probe.stderr.strip().splitlines()[-1] if probe.stderr else "gi probe failed"
    return None


class RtspServer:
    """tests/rtsp_server.py in a subprocess on a fixed port, so it can be restarted."""

    def __init__(self, port: int, file: Optional[Path] = None):
        self.port = port
        self.file = file  # an H.264 MP4 served as is; default: a live test pattern
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 15.0) -> RtspServer:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.port)]
            + (["--file", str(self.file)] if self.file else []),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()  # blocks until READY or exit
        if not line.startswith("READY") or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case it was frozen
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    kill = stop


def require_rtsp_server() -> None:
    """Fail (not skip) where the server cannot run: `make test` installs what it needs."""
    reason = _server_usable()
    if reason:
        pytest.fail(f"GStreamer RTSP server unavailable ({reason}); `make system-deps` installs "
                    "python3-gi and gir1.2-gst-rtsp-server-1.0", pytrace=False)


@pytest.fixture
def rtsp_server():
    require_rtsp_server()
    srv = RtspServer(free_port()).start()
    yield srv
    srv.stop()


def _consume_until(reader: CameraReader, n: int, timeout: float) -> int:
    got = 0
    deadline = time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        if reader.wait(0.2) is not None:
            got += 1
    return got


@pytest.mark.slow
def test_rtsp_server_restarted_reader_reconnects_and_continues(rtsp_server):
    cam = CameraConfig(name="door", source=rtsp_server.url, stall_timeout_s=3.0,
                       reconnect={"min_s": 0.3, "max_s": 2.0})
    r = CameraReader(cam).start()
    try:
        assert _consume_until(r, 10, 20) == 10, r.stats()
        assert r.state == "running" and r.info.kind == "rtsp"
        assert r.info.width == 320 and r.info.height == 240
        before = r.frames_in

        rtsp_server.stop()
        assert wait_for(lambda: r.reconnects >= 1, 15), r.stats()
        assert r.state == "reconnecting"
        stalled_at = r.frames_in

        rtsp_server.start()  # same port
        assert wait_for(lambda: r.frames_in > stalled_at + 10, 30), r.stats()
        assert r.state == "running"
        assert _consume_until(r, 5, 10) == 5
        assert r.frames_in > before
    finally:
        assert r.stop(5) is True  # no hung thread


@pytest.mark.slow
def test_rtsp_frozen_server_detected_by_frame_age(rtsp_server):
    # SIGSTOP keeps the TCP connection open but sends nothing: read() just waits. The watchdog
    # notices the frame age, abandons the blocked reader and reopens.
    from edge_agent.capture import CaptureGroup

    cam = CameraConfig(name="frozen", source=rtsp_server.url, stall_timeout_s=1.5,
                       reconnect={"min_s": 0.3, "max_s": 1.0})
    g = CaptureGroup([cam], watch_interval_s=0.2).start()
    r = g.readers["frozen"]
    try:
        assert _consume_until(r, 5, 20) == 5, r.stats()
        rtsp_server.proc.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: r.reconnects >= 1, 15), r.stats()
        assert "no frame for" in (r.last_error or "") or r.state == "reconnecting"
        n = r.frames_in
        rtsp_server.proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: r.frames_in > n + 5 and r.state == "running", 30), r.stats()
    finally:
        rtsp_server.proc.send_signal(signal.SIGCONT)
        assert g.stop(8) is True
