"""Dense benchmark (SYNTHETIC detections): update() speed and rough quality at ~45 boxes/frame.

MOT17-04 and MOT20-01 ground truth (class 1, flag 1) turned into detections by the seeded noise
model ``edge_agent.tracking.motdata.NOISE_MODEL`` (misses growing with occlusion, box jitter,
Gaussian scores tied to visibility, Poisson false positives). The detections are synthetic: the
quality columns (our CLEAR-MOT/IDF1 scorer, bench/tracker_metrics.py) show only that the tracker
stays sane in crowds, not how it does on a real detector.

    .venv-bench/bin/python bench/tracker_dense.py [--only ours,bytetrack] [--seed 0]
(peers need the peers venv; ``--only ours`` also runs in the project venv)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from mot_eval import TRACKERS  # noqa: E402
from tracker_metrics import score  # noqa: E402

from edge_agent.tracking.motdata import load_gt, read_seqinfo, synthetic_dets  # noqa: E402

SEQUENCES = ("MOT17-04-FRCNN", "MOT20-01")

def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mot-dir", default=str(REPO.parent / "shared" / "data" / "mot"))
    ap.add_argument("--only", default=",".join(TRACKERS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    print(f"SYNTHETIC dense detections (seed {args.seed}; noise model in "
          "edge_agent/tracking/motdata.py); frames/s = update() calls only, CPU time of the "
          "calling thread.\n")
    print("| sequence (synthetic) | boxes/frame | tracker | MOTA | IDF1 | ID sw | frames/s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for seq_name in SEQUENCES:
        seq = read_seqinfo(Path(args.mot_dir) / seq_name)
        dets = synthetic_dets(seq, seed=args.seed)
        gt = load_gt(seq, mot17_style=True)[:, :6]
        boxes = np.mean([len(d) for d in dets])
        for name in names:
            try:
                runner = TRACKERS[name][1](seq)
            except ImportError as exc:
                print(f"skip {name}: {exc}", file=sys.stderr)
                continue
            inputs = [runner.prepare(d) for d in dets]
            rows, elapsed = [], 0.0
            for f, native in enumerate(inputs, start=1):
                t0 = time.thread_time()  # CPU time: the shared machine's load stays out
                out = runner.step(native)
                elapsed += time.thread_time() - t0
                for r in runner.rows(out):
                    rows.append((f, r[4], r[0], r[1], r[2], r[3]))
            s = score(gt, np.array(rows).reshape(-1, 6))
            print(f"| {seq_name} | {boxes:.1f} | {TRACKERS[name][0]} | {100 * s.mota:.1f} | "
                  f"{100 * s.idf1:.1f} | {s.idsw} | {len(dets) / elapsed:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
