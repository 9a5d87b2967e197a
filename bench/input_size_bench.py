"""The shipped model at 416x416 and at smaller 16:9 inputs (``model.input_size``) on Retail02.

    .venv/bin/python bench/input_size_bench.py [--shared ../shared] [--sizes 416x256,448x256]
                                               [--frames 200] [--threads 0]

Each size runs the same frames (Retail02, 1080p, every 3rd frame) through the shipped model on
ONNX Runtime CPU. It prints per size the detection time (median and p90 of ``infer``: letterbox,
model, decode) and the person boxes found, and, against the 416x416 run of the same model, the
person recall (its boxes matched at IoU >= 0.5 by the smaller input's) and the extra boxes. A
16:9 frame is scaled by its width into 416x416 and 416x256 alike, so 416x256 sees the same
pixels; 448x256 scales it by its height (0.237 instead of 0.217), a different picture.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

from edge_agent.config import ModelConfig
from edge_agent.inference import open_engine
from edge_agent.inference.postprocess import iou_matrix

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "engines" / "models" / "edge_multihead.onnx"


def matched(ref: np.ndarray, got: np.ndarray, iou: float = 0.5) -> int:
    """How many of ``ref``'s boxes a distinct box of ``got`` overlaps by ``iou`` or more
    (greedy, best overlap first)."""
    if len(ref) == 0 or len(got) == 0:
        return 0
    m = iou_matrix(np.concatenate([ref[:, :4], got[:, :4]]).astype(np.float64))
    m = m[:len(ref), len(ref):]
    n = 0
    while True:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < iou:
            return n
        n += 1
        m[i, :] = -1
        m[:, j] = -1


def run(size, frames: List[np.ndarray], threads: int) -> Dict[str, object]:
    eng = open_engine(ModelConfig(path=str(MODEL), backend="onnxruntime", providers=["cpu"],
                                  max_batch=1, intra_op_threads=threads, input_size=size))
    times, people = [], []
    for f in frames:
        t0 = time.perf_counter()
        res = eng.infer([f])
        times.append(time.perf_counter() - t0)
        people.append(res.detections[0]["crowd"])
    eng.close()
    return {"ms": np.array(times) * 1e3, "people": people}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--sizes", default="416x256,448x256")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads; 0 = default")
    args = ap.parse_args()
    clip = args.shared / "data" / "video" / "nvidia_Retail02_short.mp4"
    cap = cv2.VideoCapture(str(clip))
    frames = []
    i = 0
    while len(frames) < args.frames:
        ok, f = cap.read()
        if not ok:
            break
        if i % 3 == 0:
            frames.append(f)
        i += 1
    if not frames:
        sys.exit(f"cannot read {clip}")
    sizes = [None] + [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    runs = {s: run(s, frames, args.threads) for s in sizes}
    ref = runs[None]["people"]
    total = sum(len(r) for r in ref)
    print(f"{len(frames)} frames of {clip.name}, threads {args.threads or 'default'}")
    print(f"{'input':>9} {'ms p50':>7} {'ms p90':>7} {'persons':>8} {'recall vs 416x416':>18} "
          f"{'extra boxes':>11}")
    for s, r in runs.items():
        name = "416x416" if s is None else f"{s[0]}x{s[1]}"
        hit = sum(matched(a, b) for a, b in zip(ref, r["people"]))
        found = sum(len(b) for b in r["people"])
        print(f"{name:>9} {np.median(r['ms']):7.1f} {np.percentile(r['ms'], 90):7.1f} "
              f"{found:8d} {hit / total if total else 0:12.3f} ({hit}/{total}) "
              f"{found - hit:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
