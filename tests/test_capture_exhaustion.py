"""A camera never stays dead: its source failing to reopen for want of descriptors (a real
``ulimit -n``), or a file briefly unreadable, is retried and reported as what it is, and frames
flow again as soon as the cause has passed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.capture import CameraReader
from edge_agent.config import CameraConfig

REPO = Path(__file__).resolve().parent.parent


def _clip(path: Path, frames: int = 20) -> Path:
    """A small real MPEG-4 clip (a few KB) that loops quickly."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (160, 120))
    for i in range(frames):
        img = np.full((120, 160, 3), (i * 12) % 255, np.uint8)
        cv2.putText(img, str(i), (20, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        w.write(img)
    w.release()
    assert path.stat().st_size > 0
    return path


# Run under `ulimit -n 128`: a looping file camera reads; its file goes away for a moment (so
# the camera holds no descriptor of its own), every descriptor is taken (as the idle connections
# of the issue took them), the file comes back, and later the descriptors too.
_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from edge_agent.capture import CameraReader
    from edge_agent.config import CameraConfig

    clip = sys.argv[1]
    cam = CameraConfig(name="loop", source=clip, loop=True,
                       reconnect={"min_s": 0.2, "max_s": 30})
    r = CameraReader(cam).start()
    out = {}

    def frames_for(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if r.wait(0.2) is not None:
                n += 1
        return n

    def wait_until(cond, seconds):
        end = time.monotonic() + seconds
        while not cond() and time.monotonic() < end:
            r.wait(0.05)
        return cond()

    out["before"] = frames_for(1.0)
    os.rename(clip, clip + ".away")
    out["gone"] = wait_until(lambda: r.state == "reconnecting", 20)
    hoard = []
    try:
        while True:
            hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        out["hoard_errno"] = exc.errno
    os.rename(clip + ".away", clip)
    out["short"] = wait_until(lambda: "not found" not in (r.last_error or ""), 20)
    time.sleep(2.0)  # a few retries while short
    out["error_short"] = r.last_error
    out["state_short"] = r.state
    for fd in hoard:
        os.close(fd)
    t0 = time.monotonic()
    while r.wait(0.05) is None and time.monotonic() - t0 < 30:
        pass
    out["recovered_s"] = round(time.monotonic() - t0, 2)
    out["after"] = frames_for(1.0)
    out["state_after"] = r.state
    r.stop(2)
    print(json.dumps(out))
""")


def test_a_looping_file_survives_running_out_of_descriptors(tmp_path):
    clip = _clip(tmp_path / "loop.mp4")
    proc = subprocess.run(["bash", "-c", 'ulimit -n 128 && exec "$0" -c "$1" "$2"',
                           sys.executable, _SCRIPT, str(clip)],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hoard_errno"] == 24  # EMFILE: the table really was full
    assert out["before"] > 10 and out["gone"] and out["short"], out
    # reported as what it is, never as a broken file, and never given up
    err = out["error_short"]
    assert "corrupt" not in err, out
    assert "Too many open files" in err or "file descriptors" in err, out
    assert out["state_short"] == "reconnecting"
    # back as soon as the descriptors are: the shortage is watched, not waited out
    assert out["recovered_s"] < 10, out
    assert out["after"] > 10 and out["state_after"] == "running", out


def test_a_file_briefly_unreadable_is_retried_not_given_up(tmp_path):
    if os.geteuid() == 0:  # root reads a mode 000 file anyway: hide it by renaming instead
        hide = lambda p: p.rename(p.with_suffix(".away"))  # noqa: E731
        show = lambda p: p.with_suffix(".away").rename(p)  # noqa: E731
    else:
        hide = lambda p: p.chmod(0)  # noqa: E731
        show = lambda p: p.chmod(0o644)  # noqa: E731
    clip = _clip(tmp_path / "loop.mp4")
    cam = CameraConfig(name="loop", source=str(clip), loop=True,
                       reconnect={"min_s": 0.1, "max_s": 0.5})
    r = CameraReader(cam).start()
    try:
        assert r.wait(5) is not None
        hide(clip)
        deadline = time.monotonic() + 20
        while r.state != "reconnecting" and time.monotonic() < deadline:
            r.wait(0.1)
        assert r.state == "reconnecting"
        assert "corrupt" not in r.last_error
        assert "not found" in r.last_error or "Permission denied" in r.last_error
        time.sleep(1.0)
        assert r.state == "reconnecting"  # still trying, not "failed"
        show(clip)
        deadline = time.monotonic() + 10
        while r.wait(0.2) is None and time.monotonic() < deadline:
            pass
        assert r.state == "running"
    finally:
        r.stop(2)
