"""How many cameras one box holds: detect on a 640x360 substream, record a 1080p main stream.

    .venv/bin/python bench/cameras_bench.py [--shared ../shared] [--counts 2,4,6,8,10,12]
                                            [--seconds 60] [--input-size 416x256|model]
                                            [--threads 1] [--parallel CORES]

For each N, the test RTSP server (tests/rtsp_server.py, GStreamer, run by the system python3)
serves N cameras, each as two streams cut from Retail02: a 640x360 H.264 substream the agent
decodes and detects on (``detect_every: 6``, the shipped model on ONNX Runtime CPU at
``model.input_size`` 416x256, the stream's own scale, unless ``--input-size model``; ``--threads``
and ``--parallel`` set ``model.intra_op_threads`` and ``model.parallel_batches``) and a
1920x1080 H.264 main stream it only keeps as packets for clips (``record:``). ``edge-agent run``
runs for ``--seconds`` after a warm-up; from its /metrics the bench reads frames read and
dropped per camera over that window and the detector's time per batch, and from /proc the
agent's resident memory, its CPU time and the box's load average. It prints a row per N and the
largest N with under 1 % dropped frames. The RTSP servers run on the same box
and take their share of the CPU, as a second box would not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

import av

REPO = Path(__file__).resolve().parent.parent
WARMUP_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(src: Path, dst: Path, size: Tuple[int, int], seconds: float) -> None:
    """``src`` looped to ``seconds`` at 30 frames/s, scaled to ``size``, H.264, key frame 1 s."""
    frames = []
    with av.open(str(src)) as inp:
        for frame in inp.decode(video=0):
            frames.append(frame.reformat(width=size[0], height=size[1], format="yuv420p"))
            if len(frames) >= 300:
                break
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = 30
        stream.codec_context.options = {"preset": "ultrafast", "crf": "30"}
        for i in range(int(seconds * 30)):
            f = frames[i % len(frames)]
            f.pts, f.time_base = i, Fraction(1, 30)
            for pkt in stream.encode(f):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)


def serve(video: Path) -> Tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"),
                             "--port", str(port), "--file", str(video)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        sys.exit(f"RTSP server did not start: {line!r}")
    return proc, line.split()[1]


class Row(NamedTuple):
    """What one N measured over the window."""

    dropped_pct: float
    rss_mb: float
    cpu_pct: float  # the agent's CPU time over the window, % of one core
    infer_ms: float  # detector time per batch (mean over the window)
    load: float  # the box's 1-minute load average at the end of the window
    servers_cpu_pct: float  # the RTSP servers' CPU time over the window, % of one core


def scrape(port: int) -> Dict[str, Dict[str, float]]:
    """Frames in / dropped per camera, and the detector's time (``_infer``: sum, count)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Dict[str, Dict[str, float]] = {}
    for m in re.finditer(r'^edge_agent_frames_(in|dropped)_total\{camera="([^"]+)"\} (\S+)$',
                         text, re.M):
        out.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    for m in re.finditer(r"^edge_agent_inference_seconds_(sum|count)(?:\{[^}]*\})? (\S+)$",
                         text, re.M):
        out.setdefault("_infer", {})[m.group(1)] = float(m.group(2))
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(n: int, sub: Path, main: Path, seconds: float, work: Path,
        model: Dict[str, object], frame_queue: int = 4) -> Row:
    """What the agent with ``n`` cameras did over ``seconds``."""
    servers: List[subprocess.Popen] = []
    cams = []
    try:
        for i in range(n):
            p1, detect = serve(sub)
            p2, record = serve(main)
            servers += [p1, p2]
            cams.append({"name": f"cam{i}", "source": detect, "record": record,
                         "detect_every": 6, "frame_queue": frame_queue})
        port = free_port()
        conf = work / f"agent-{n}.yaml"
        conf.write_text(json.dumps({
            "device_id": "bench", "state_dir": str(work / f"state-{n}"), "cameras": cams,
            "model": model,
            "mqtt": {"enabled": False}, "update": {"enabled": False},
            "metrics": {"port": port}, "log": {"level": "warning"}}))
        log = open(work / f"agent-{n}.log", "wb")
        agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config",
                                  str(conf)], stderr=log)
        try:
            deadline = time.monotonic() + 180
            while True:  # start-up (model load, N RTSP opens) is not measured
                try:
                    scrape(port)
                    break
                except OSError:
                    if agent.poll() is not None or time.monotonic() > deadline:
                        log.close()
                        sys.exit(f"agent did not start:\n"
                                 f"{(work / f'agent-{n}.log').read_text()[-3000:]}")
                    time.sleep(1)
            time.sleep(WARMUP_S)
            before, cpu0, t0 = scrape(port), cpu_s(agent.pid), time.monotonic()
            srv0 = sum(cpu_s(p.pid) for p in servers)
            time.sleep(seconds)
            after, cpu1, t1 = scrape(port), cpu_s(agent.pid), time.monotonic()
            srv1 = sum(cpu_s(p.pid) for p in servers)
            rss = rss_mb(agent.pid)
            load = os.getloadavg()[0]
        finally:
            agent.terminate()
            agent.wait(60)
            log.close()
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            p.wait(10)
    infer, infer0 = after.pop("_infer", {}), before.pop("_infer", {})
    got = sum(after[c]["in"] - before[c]["in"] for c in after)
    dropped = sum(after[c]["dropped"] - before[c]["dropped"] for c in after)
    batches = infer.get("count", 0.0) - infer0.get("count", 0.0)
    spent = infer.get("sum", 0.0) - infer0.get("sum", 0.0)
    return Row(100.0 * dropped / got if got else 100.0, rss, 100.0 * (cpu1 - cpu0) / (t1 - t0),
               1000.0 * spent / batches if batches else 0.0, load,
               100.0 * (srv1 - srv0) / (t1 - t0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--counts", default="1,4,8,10,12",
                    help="camera counts to try, ascending; 1 first gives the per-camera RSS")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--frame-queue", type=int, default=4,
                    help="cameras[].frame_queue: decoded frames a camera queues while it waits "
                         "for its detection (690 kB each at 640x360)")
    ap.add_argument("--input-size", default="416x256",
                    help="model.input_size WxH (the 640x360 stream's own scale at 416 wide); "
                         "'model' for the model's own 416x416")
    ap.add_argument("--threads", type=int, default=1,
                    help="model.intra_op_threads (0: ONNX Runtime's default, a thread per core)")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                    help="model.parallel_batches: batches detected at once (default: one per "
                         "core, each on one thread: docs/inference.md, 'Batches at once')")
    args = ap.parse_args()
    retail = args.shared / "data" / "video" / "nvidia_Retail02_short.mp4"
    if not retail.exists():
        sys.exit(f"needs {retail}")
    model: Dict[str, object] = {"intra_op_threads": args.threads,
                                "parallel_batches": args.parallel}
    if args.input_size != "model":
        model["input_size"] = [int(v) for v in args.input_size.split("x")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        length = WARMUP_S + args.seconds + 20
        sub, main_ = work / "sub.mp4", work / "main.mp4"
        encode(retail, sub, (640, 360), length)
        encode(retail, main_, (1920, 1080), length)
        # 2 cores: a load above 2 means other work takes CPU the agent would use
        print(f"load average before: {os.getloadavg()[0]:.2f}; model: {model or 'defaults'}")
        print(f"{'cameras':>7} {'dropped %':>9} {'RSS MB':>7} {'MB/camera beyond the first':>27} "
              f"{'agent CPU %':>11} {'infer ms/batch':>14} {'load':>5} {'servers CPU %':>13}")
        best, first_rss = 0, None
        for n in (int(x) for x in args.counts.split(",")):
            row = run(n, sub, main_, args.seconds, work, model, args.frame_queue)
            rss = row.rss_mb
            if n == 1:
                first_rss = rss
            per = (rss - first_rss) / (n - 1) if first_rss is not None and n > 1 else rss / n
            print(f"{n:7d} {row.dropped_pct:9.2f} {rss:7.0f} {per:27.1f} {row.cpu_pct:11.0f} "
                  f"{row.infer_ms:14.1f} {row.load:5.2f} {row.servers_cpu_pct:13.0f}", flush=True)
            if row.dropped_pct < 1.0:
                best = n
        print(f"largest N under 1 % dropped: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
