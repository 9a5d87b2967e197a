"""ONNX Runtime CPU latency of YOLOX-nano through our engine vs a bare `InferenceSession.run`.

    .venv/bin/python bench/infer_bench.py [--shared ../shared] [--frames 60] [--threads 0]

Both run in this process on the same decoded Retail02 frames, with the same thread setting and
alternating call by call (so load from other processes hits both alike). "bare run" is only
`session.run` on an already letterboxed input; "engine.infer" adds our letterbox, output
validation, decode, NMS and mapping back to frame pixels. The ratio is the price of all that.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.config import ModelConfig
from edge_agent.inference import open_engine
from edge_agent.inference.cli import bench_frames


def stats(ms) -> str:
    a = np.asarray(ms)
    return f"{np.percentile(a, 50):8.2f} {np.percentile(a, 99):8.2f} {a.mean():8.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--frames", type=int, default=60, help="frames timed (after 5 warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = ORT default)")
    args = ap.parse_args(argv)
    shared = Path(args.shared)
    model = shared / "weights" / "yolox_nano_coco.onnx"
    clip = shared / "data" / "video" / "nvidia_Retail02_short.mp4"
    frames = bench_frames(str(clip), args.frames + 5)

    eng = open_engine(ModelConfig(path=str(model), backend="onnxruntime", providers=["cpu"],
                                  max_batch=1, intra_op_threads=args.threads))
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
    bare = ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
    # The bare session gets exactly the input our engine feeds (letterboxed by our code once,
    # outside the timing), so both run the same network on the same numbers.
    inputs = [eng._pre([f])[0].copy() for f in frames]

    t_bare, t_eng, pre, inf, post = [], [], [], [], []
    for i, (frame, x) in enumerate(zip(frames, inputs)):
        t0 = time.perf_counter()
        bare.run(None, {"images": x})
        t1 = time.perf_counter()
        res = eng.infer([frame])
        t2 = time.perf_counter()
        if i < 5:
            continue
        t_bare.append((t1 - t0) * 1e3)
        t_eng.append((t2 - t1) * 1e3)
        pre.append(res.timing["pre_ms"])
        inf.append(res.timing["infer_ms"])
        post.append(res.timing["post_ms"])

    print(f"YOLOX-nano 416x416, ONNX Runtime {ort.__version__} CPU, "
          f"{args.threads or 'default'} threads, {len(t_eng)} Retail02 frames (1920x1080)")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    print(f"{'bare InferenceSession.run':34} {stats(t_bare)}")
    print(f"{'engine.infer (pre+run+post)':34} {stats(t_eng)}")
    print(f"{'  of which pre (letterbox)':34} {stats(pre)}")
    print(f"{'  of which run':34} {stats(inf)}")
    print(f"{'  of which post (decode+NMS)':34} {stats(post)}")
    ratio = np.median(t_eng) / np.median(t_bare)
    print(f"ratio engine.infer / bare run (p50): {ratio:.3f}  "
          f"(pre+post p50 {np.median(np.add(pre, post)):.2f} ms per frame)")
    eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
