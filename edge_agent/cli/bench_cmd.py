"""`edge-agent bench tracker`: update() throughput of the tracker on real and dense data.

Real: every MOT15 sequence with SORT's detections under ``--mot-dir``. Dense (SYNTHETIC):
MOT17-04 and MOT20-01 ground truth turned into detections by the seeded noise model in
:mod:`edge_agent.tracking.motdata` (~45 boxes per frame). Quality scoring and the peer trackers
live in bench/mot_eval.py (a separate venv); this command needs only the package itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np

from edge_agent.tracking import Tracker
from edge_agent.tracking.motdata import load_dets, mot15_sequences, read_seqinfo, synthetic_dets

DENSE_SEQUENCES = ("MOT17-04-FRCNN", "MOT20-01")


def time_updates(frames: List[np.ndarray], repeat: int = 3) -> Tuple[float, float]:
    """Best-of-``repeat`` update() frames/s over ``frames`` with a fresh default Tracker, and
    the mean number of boxes per frame."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = Tracker()
        update = t.update
        t0 = time.perf_counter()
        for d in frames:
            update(d)
        best = min(best, time.perf_counter() - t0)
    boxes = float(np.mean([len(d) for d in frames])) if frames else 0.0
    return len(frames) / best if best > 0 else float("inf"), boxes


def _default_mot_dir() -> Path:
    return Path("..") / "shared" / "data" / "mot"


def main(args: argparse.Namespace) -> int:
    """Handler of `edge-agent bench tracker`; prints a table, returns the exit status."""
    mot_dir = Path(args.mot_dir or _default_mot_dir())
    limit = args.frames
    repeat = args.repeat or 3
    if not mot_dir.is_dir():
        print(f"edge-agent bench tracker: MOT data folder {mot_dir} not found "
              "(pass --mot-dir)", file=sys.stderr)
        return 2
    if limit < 0:
        print("edge-agent bench tracker: --frames must be >= 0", file=sys.stderr)
        return 2
    rows = []
    seqs = mot15_sequences(mot_dir)
    if seqs:
        all_frames: List[np.ndarray] = []
        for s in seqs:
            d = load_dets(s)
            all_frames.extend(d[:limit] if limit else d)
        fps, boxes = time_updates(all_frames, repeat)
        rows.append((f"MOT15 real, SORT det.txt ({len(seqs)} seqs)", len(all_frames), boxes, fps))
    for name in DENSE_SEQUENCES:
        path = mot_dir / name
        if not (path / "gt" / "gt.txt").is_file():
            continue
        frames = synthetic_dets(read_seqinfo(path), seed=0)
        frames = frames[:limit] if limit else frames
        fps, boxes = time_updates(frames, repeat)
        rows.append((f"{name} SYNTHETIC dense (seed 0)", len(frames), boxes, fps))
    if not rows:
        print(f"edge-agent bench tracker: no MOT15 det/det.txt or MOT17/20 gt under {mot_dir}",
              file=sys.stderr)
        return 2
    print(f"Tracker update() throughput, default parameters, best of {repeat} "
          "(single thread; other load on the machine lowers it)")
    print("| data | frames | boxes/frame | update() frames/s |")
    print("|---|---:|---:|---:|")
    for name, n, boxes, fps in rows:
        print(f"| {name} | {n} | {boxes:.1f} | {fps:,.0f} |")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mot-dir")
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    sys.exit(main(ap.parse_args()))
