"""Visual tracking speed: ms per update() with a frame, on one core, at 640x480 and ~20 tracks.

Two inputs:
* SYNTHETIC: 20 textured objects (36 x 90 px) bouncing over a textured 640x480 background,
  one exact detection per object per frame (seeded; no data needed).
* TUD-Campus (when ``../shared/data/mot/TUD-Campus/video`` is there): the real 640x480 video
  with SORT's Faster R-CNN detections (few people: 5-8 tracks).

For each it prints ms per call (CPU time of the calling thread: the extension is single-threaded
and other load on the machine stays out) of ``update(dets)`` (boxes only), ``update(dets,
frame)`` (detections on every frame) and, with detections every 6th frame, ``update(dets,
frame)`` on the keyframes and ``update(None, frame)`` between. Frames are decoded beforehand.

    .venv/bin/python bench/tracker_visual_bench.py [--frames 300] [--mot-dir ../shared/data/mot]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.tracking import Tracker  # noqa: E402

Clip = Tuple[List[np.ndarray], List[np.ndarray], float]  # frames, dets per frame, frame rate


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 3)


def synthetic(frames: int, objects: int = 20, seed: int = 0) -> Clip:
    """Textured objects bouncing over a textured background, exact boxes."""
    rng = np.random.default_rng(seed)
    h, w, oh, ow = 480, 640, 90, 36
    bg = _texture(h, w, rng)
    looks = [_texture(oh, ow, rng) for _ in range(objects)]
    pos = np.c_[rng.uniform(0, w - ow, objects), rng.uniform(0, h - oh, objects)]
    vel = rng.uniform(-2, 2, (objects, 2))
    pics, dets = [], []
    for _ in range(frames):
        pic = bg.copy()
        xy = np.round(pos).astype(int)
        for (x, y), look in zip(xy, looks):
            pic[y:y + oh, x:x + ow] = look
        pics.append(pic)
        dets.append(np.c_[xy, xy + [ow, oh], np.full(objects, 0.9), np.zeros(objects)])
        pos += vel
        for k, hi in ((0, w - ow - 1), (1, h - oh - 1)):
            out = (pos[:, k] < 0) | (pos[:, k] > hi)
            vel[out, k] *= -1
            pos[:, k] = np.clip(pos[:, k], 0, hi)
    return pics, dets, 30.0


def tud_campus(mot_dir: Path) -> Optional[Clip]:
    """TUD-Campus's video and SORT's detections, or None when the data is not there."""
    from edge_agent.tracking.motdata import load_dets, read_seqinfo

    seq_dir = mot_dir / "TUD-Campus"
    video = seq_dir / "video" / "TUD-Campus.avi"
    if not video.exists():
        return None
    seq = read_seqinfo(seq_dir)
    cap = cv2.VideoCapture(str(video))
    pics = []
    while len(pics) < seq.length:
        ok, pic = cap.read()
        if not ok:
            break
        pics.append(pic)
    cap.release()
    dets = load_dets(seq)[:len(pics)]
    return pics, dets, seq.frame_rate


def time_run(clip: Clip, mode: str, every: int = 6) -> Dict[str, float]:
    """ms per call for each kind of call the mode makes."""
    pics, dets, rate = clip
    t = Tracker(frame_rate=rate)
    spent: Dict[str, List[float]] = {}
    for k, (pic, d) in enumerate(zip(pics, dets)):
        if mode == "boxes":
            kind, args = "update(dets)", (d,)
        elif mode == "frame":
            kind, args = "update(dets, frame)", (d, pic)
        elif k % every == 0:
            kind, args = "update(dets, frame)", (d, pic)
        else:
            kind, args = "update(None, frame)", (None, pic)
        t0 = time.thread_time()
        t.update(*args)
        spent.setdefault(kind, []).append(time.thread_time() - t0)
    return {k: 1000.0 * float(np.mean(v)) for k, v in spent.items()}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="synthetic frames")
    ap.add_argument("--mot-dir", default=str(REPO.parent / "shared" / "data" / "mot"))
    args = ap.parse_args(argv)
    clips = {"SYNTHETIC 640x480, 20 objects": synthetic(args.frames)}
    real = tud_campus(Path(args.mot_dir))
    if real is not None:
        clips["TUD-Campus 640x480, SORT det.txt"] = real
    print("ms per call, CPU time of the calling thread (best of 3 runs)\n")
    print("| clip | detections | call | ms | x boxes only |")
    print("|---|---|---|---:|---:|")
    for name, clip in clips.items():
        best: Dict[Tuple[str, str], float] = {}
        for _ in range(3):
            for mode in ("boxes", "frame", "every6"):
                for kind, ms in time_run(clip, mode).items():
                    best[(mode, kind)] = min(ms, best.get((mode, kind), np.inf))
        base = best[("boxes", "update(dets)")]
        labels = {"boxes": "every frame, no picture", "frame": "every frame",
                  "every6": "every 6th frame"}
        for (mode, kind), ms in best.items():
            print(f"| {name} | {labels[mode]} | `{kind}` | {ms:.3f} | {ms / base:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
