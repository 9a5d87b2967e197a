"""What a camera's clip pre-roll costs, at 1080p30: CPU per second of video and memory.

    .venv/bin/python bench/clips_bench.py [--shared ../shared] [--seconds 20]

Two ways a camera keeps its last seconds (docs/events.md "Clips"):

1. **decoded frames** (file and USB sources): each processed frame scaled to 960 px and JPEG
   encoded into the ring. Measured on Retail02's 1080p frames: CPU ms per frame (on top of the
   decode the pipeline does anyway) and the ring's bytes once it holds pre_s + 5 s.
2. **packets** (RTSP sources and ``record:`` streams): the stream demuxed, never decoded. Retail02
   re-encoded to 1080p30 H.264 and served by the test RTSP server (tests/rtsp_server.py, run by
   the system python3 with GStreamer); this process's CPU time while a ``PacketRing`` follows it
   for ``--seconds``, and the ring's bytes. Beside it, what decoding the same stream costs
   (OpenCV, the pipeline's reader), so the ratio says what not decoding saves.

Other processes on the machine inflate every number; run it on an idle box.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2

from edge_agent.clips.packets import PacketRing
from edge_agent.clips.ring import FrameRing
from edge_agent.clips.service import CONFIRM_S

REPO = Path(__file__).resolve().parent.parent
PRE_S = 5.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def frames_of(path: Path, n: int) -> list:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        out.append(frame)
    cap.release()
    return out


def bench_frames(video: Path, fps: float = 30.0) -> None:
    frames = frames_of(video, 120)
    ring = FrameRing(PRE_S + CONFIRM_S, 32_000_000)
    n = int((PRE_S + CONFIRM_S) * fps) + 30
    t0 = cpu_s()
    for i in range(n):
        ring.push(i / fps, ring.encode(frames[i % len(frames)]))
    ms = (cpu_s() - t0) / n * 1000
    h, w = frames[0].shape[:2]
    print(f"decoded-frame ring, {w}x{h}: {ms:.2f} ms CPU per frame "
          f"({ms * fps / 10:.1f} % of one core at {fps:.0f} frames/s), "
          f"{ring.bytes / 1e6:.1f} MB for {len(ring)} frames ({PRE_S + CONFIRM_S:.0f} s)")


def h264_copy(src: Path, dst: Path, seconds: float) -> None:
    """``src`` re-encoded to H.264 at 30 frames/s (what a camera's main stream carries)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        vin = inp.streams.video[0]
        stream.width, stream.height = vin.codec_context.width, vin.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 30
        stream.codec_context.options = {"preset": "veryfast", "crf": "28"}
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= seconds * 30:
                break
            yuv = frame.reformat(format="yuv420p")
            yuv.pts, yuv.time_base = i, Fraction(1, 30)
            for pkt in stream.encode(yuv):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)


def serve(video: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"),
                             "--port", str(port), "--file", str(video)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        sys.exit(f"RTSP server did not start: {line!r}")
    return proc


def bench_packets(video: Path, seconds: float) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"rtsp://127.0.0.1:{port}/cam"
    server = serve(video, port)
    try:
        t0, w0 = cpu_s(), time.monotonic()
        ring = PacketRing("bench", url, PRE_S + CONFIRM_S, 64_000_000)
        if not ring.wait_ready(20):
            sys.exit(f"record stream did not open: {ring.error}")
        time.sleep(seconds)
        cpu, wall = cpu_s() - t0, time.monotonic() - w0
        held = ring.bytes
        ring.stop()
        print(f"packet ring ({ring.codec}, {url}): {cpu / wall * 100:.1f} % of one core, "
              f"{held / 1e6:.1f} MB held ({PRE_S + CONFIRM_S:.0f} s)")
        server.terminate()
        server.wait(10)
        server = serve(video, port)
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        t0, w0, n = cpu_s(), time.monotonic(), 0
        while time.monotonic() - w0 < seconds and cap.read()[0]:
            n += 1
        cpu, wall = cpu_s() - t0, time.monotonic() - w0
        cap.release()
        print(f"decoding the same stream (OpenCV, as the reader would): {cpu / wall * 100:.1f} % "
              f"of one core ({n / wall:.1f} frames/s decoded)")
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    retail = args.shared / "data" / "video" / "nvidia_Retail02_short.mp4"
    if not retail.exists():
        sys.exit(f"needs {retail}")
    bench_frames(retail)
    with tempfile.TemporaryDirectory() as tmp:
        h264 = Path(tmp) / "retail_1080p30.mp4"
        h264_copy(retail, h264, args.seconds + 5)
        bench_packets(h264, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
