"""Issue 23, finding 1: 1,000 idle connections to the metrics port of a real agent run under a
real ``ulimit -n 1024`` (systemd's default) must not starve the cameras.

Before the fix each connection was a descriptor and a thread for as long as the client liked:
/healthz timed out, writes failed with EMFILE, and a looping file camera that failed to reopen
was called "corrupt" and stayed at 0 fps until a restart.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml
from agent_procs import stop_agent
from conftest import free_port, wait_for
from test_exporter import get, sample

REPO = Path(__file__).resolve().parent.parent
CAMS = {"car": "intel_car-detection.mp4", "door": "intel_one-by-one-person-detection.mp4"}
# More than the 1,000 of the issue: this agent holds only ~15 descriptors of its own, so 1,000
# left the old server a few to spare here; 1,100 ran it out (checked on the code before the fix:
# /healthz timed out throughout, the car camera was called "corrupt" and stayed at 0 fps).
IDLE = 1100
FPS = 4.0


def _processed(port: int) -> Dict[str, float]:
    code, text = get(port, "/metrics")
    assert code == 200, text
    return {c: sample(text, "edge_agent_frames_processed_total", camera=c) for c in CAMS}


def _fps(port: int, seconds: float) -> Dict[str, float]:
    t0, a = time.monotonic(), _processed(port)
    time.sleep(seconds)
    b = _processed(port)
    dt = time.monotonic() - t0
    return {c: (b[c] - a[c]) / dt for c in CAMS}


def _healthz(port: int) -> tuple:
    code, body = get(port, "/healthz")
    return code, (json.loads(body) if code in (200, 503) else body)


def _ahead_of_others() -> None:
    """What is measured is the flood's effect, not the other tests that share this machine's
    cores: the agent runs a little ahead of them where that is allowed (it wants ~10 % of a
    core at FPS)."""
    try:
        os.nice(-5)
    except OSError:
        pass


@pytest.fixture
def more_descriptors():
    """This test process holds the 1,000 client ends: lift its own soft limit for that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE + 512
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard RLIMIT_NOFILE here is {hard}: cannot hold {IDLE} client sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_idle_connections_under_ulimit_1024_never_starve_the_cameras(tmp_path, video_dir,
                                                                       yolox_nano,
                                                                       more_descriptors):
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "flood",
        "state_dir": str(tmp_path / "state"),
        "log": {"format": "human", "level": "info"},
        "model": {"path": str(yolox_nano), "intra_op_threads": 1},
        # fps_limit: a frame rate the agent keeps even on a loaded test machine, so what the
        # flood changes shows (the detector would set it otherwise; ~12 ms a frame here idle)
        "cameras": [{"name": c, "source": str(video_dir / f), "loop": True, "realtime": True,
                     "fps_limit": FPS} for c, f in CAMS.items()],
        "events": {"sinks": {"jsonl": "events.jsonl"}, "snapshots": {"enabled": False}},
        "mqtt": {"enabled": False},
        "metrics": {"port": port, "max_frame_age_s": 3.0},
    }))
    log = tmp_path / "agent.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", 'ulimit -n 1024 && exec "$0" -m edge_agent.cli run --config "$1"',
             sys.executable, str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), preexec_fn=_ahead_of_others)
    try:
        assert wait_for(lambda: _healthz(port)[0] == 200, 120), log.read_text()
        limit = _healthz(port)[1]["resources"]["fds_limit"]
        assert limit == 1024  # the agent really runs under the limit
        time.sleep(2.0)  # past the start-up burst
        for _attempt in range(2):  # a second try only when other tests' load blurred the first
            before = _fps(port, 8.0)
            assert all(v > FPS / 4 for v in before.values()), before
            during, answers, peak_fds = _flood(port)
            print(f"fps before {before} during {during}; peak fds {peak_fds} of {limit}")
            if all(during[c] >= 0.8 * before[c] for c in CAMS):
                break
        assert all(c in (200, 503) for c in answers), answers  # /healthz kept answering
        for cam in CAMS:
            assert during[cam] >= 0.8 * before[cam], (before, during)
        assert peak_fds < limit - 64, peak_fds  # the endpoint never came near the limit
        # every camera processing again (they never stopped) within 10 s of the close
        t_close, base = time.monotonic(), _processed(port)
        assert wait_for(lambda: all(v > base[c] for c, v in _processed(port).items()), 10)
        assert wait_for(lambda: _healthz(port)[0] == 200, 10 - (time.monotonic() - t_close))
        text = log.read_text()
        assert "Too many open files" not in text and "corrupt" not in text, text[-3000:]
        assert proc.poll() is None
    finally:
        rc = stop_agent(proc)
    assert rc == 0


def _flood(port: int, seconds: float = 8.0) -> tuple:
    """Hold IDLE idle connections for ``seconds`` while polling /healthz; (fps per camera,
    /healthz codes, the most descriptors the agent had open), connections closed on return."""
    socks: List[socket.socket] = []
    try:
        for _ in range(IDLE):  # connect and say nothing, as the probe did
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        answers, peak_fds = [], 0
        t0, processed0 = time.monotonic(), _processed(port)
        while time.monotonic() - t0 < seconds:
            code, doc = _healthz(port)
            answers.append(code)
            if code in (200, 503):
                peak_fds = max(peak_fds, doc["resources"]["fds_open"])
            time.sleep(0.5)
        during = {c: (n - processed0[c]) / (time.monotonic() - t0)
                  for c, n in _processed(port).items()}
        return during, answers, peak_fds
    finally:
        for s in socks:
            s.close()
