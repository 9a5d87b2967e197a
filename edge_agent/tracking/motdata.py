"""MOTChallenge sequences for tracker benchmarks, and the seeded synthetic dense detections.

Reads a MOTChallenge-style folder (``../shared/data/mot``, see its SOURCES.md). Boxes come out as
x1, y1, x2, y2. Used by ``edge-agent bench tracker`` and by bench/mot_eval.py; not on any hot path.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import List, NamedTuple

import numpy as np


class Sequence(NamedTuple):
    name: str
    length: int
    frame_rate: float
    width: int
    height: int
    path: Path


def read_seqinfo(path: Path) -> Sequence:
    """Parse ``<seq>/seqinfo.ini``."""
    cfg = configparser.ConfigParser()
    if not cfg.read(path / "seqinfo.ini"):
        raise FileNotFoundError(f"{path / 'seqinfo.ini'} not found")
    s = cfg["Sequence"]
    return Sequence(path.name, int(s["seqLength"]), float(s.get("frameRate", "30")),
                    int(s.get("imWidth", "0")), int(s.get("imHeight", "0")), path)


def mot15_sequences(mot_dir: Path) -> List[Sequence]:
    """Every sequence in ``mot_dir`` that has SORT's detections (``det/det.txt``)."""
    return [read_seqinfo(p) for p in sorted(Path(mot_dir).iterdir())
            if (p / "det" / "det.txt").is_file() and (p / "seqinfo.ini").is_file()]


def load_dets(seq: Sequence, name: str = "det.txt") -> List[np.ndarray]:
    """Per frame (index 0 = frame 1) float64 (N, 6): x1, y1, x2, y2, score, class_id (0)."""
    raw = np.loadtxt(seq.path / "det" / name, delimiter=",", ndmin=2)
    frames = raw[:, 0].astype(int)
    out = [np.zeros((0, 6)) for _ in range(seq.length)]
    for f in np.unique(frames):
        if 1 <= f <= seq.length:
            r = raw[frames == f]
            out[f - 1] = np.c_[r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5], r[:, 6],
                               np.zeros(len(r))]
    return out


def load_gt(seq: Sequence, mot17_style: bool = False) -> np.ndarray:
    """Scored ground-truth rows: frame, id, x1, y1, x2, y2, visibility.

    MOT15: rows with confidence 0 are ignore rows and dropped. MOT17/20 (``mot17_style``):
    only class 1 (pedestrian) with consider-flag 1.
    """
    raw = np.loadtxt(seq.path / "gt" / "gt.txt", delimiter=",", ndmin=2)
    keep = raw[:, 6] != 0
    if mot17_style:
        keep &= raw[:, 7] == 1
    r = raw[keep]
    vis = r[:, 8] if (mot17_style and r.shape[1] > 8) else np.ones(len(r))
    return np.c_[r[:, 0], r[:, 1], r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5], vis]


# Synthetic dense detections: the noise model (documented in docs/tracker.md).
NOISE_MODEL = {
    "miss_base": 0.03,        # P(miss) for a fully visible person ...
    "miss_occluded": 0.15,    # ... plus this times (1 - visibility)
    "jitter": 0.04,           # box edge noise std, as a fraction of box width / height
    "score_mean": 0.55,       # score ~ N(score_mean + score_vis * visibility, score_std)
    "score_vis": 0.35,
    "score_std": 0.12,
    "fp_per_frame": 5.0,      # Poisson mean of false positives per frame
    "fp_score_max": 0.6,      # false-positive scores ~ U(0.05, fp_score_max)
}


def synthetic_dets(seq: Sequence, seed: int = 0) -> List[np.ndarray]:
    """Detections made from MOT17/MOT20 ground truth by the seeded :data:`NOISE_MODEL`.

    SYNTHETIC: for throughput at realistic density (and rough quality), not a real detector.
    """
    nm = NOISE_MODEL
    rng = np.random.default_rng(seed)
    gt = load_gt(seq, mot17_style=True)
    frames = gt[:, 0].astype(int)
    width = seq.width or float(gt[:, 4].max())
    height = seq.height or float(gt[:, 5].max())
    out: List[np.ndarray] = []
    for f in range(1, seq.length + 1):
        g = gt[frames == f]
        vis = np.clip(g[:, 6], 0, 1)
        keep = rng.random(len(g)) >= nm["miss_base"] + nm["miss_occluded"] * (1 - vis)
        g, vis = g[keep], vis[keep]
        w = (g[:, 4] - g[:, 2])[:, None]
        h = (g[:, 5] - g[:, 3])[:, None]
        scale = np.hstack([w, h, w, h])
        boxes = g[:, 2:6] + rng.normal(0, nm["jitter"], (len(g), 4)) * scale
        boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)
        boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
        scores = np.clip(rng.normal(nm["score_mean"] + nm["score_vis"] * vis, nm["score_std"]),
                         0.01, 1.0)
        n_fp = rng.poisson(nm["fp_per_frame"])
        if n_fp and len(g):
            idx = rng.integers(0, len(g), n_fp)
            fw, fh = w[idx, 0], h[idx, 0]
            x1 = rng.uniform(0, max(width - 1, 1), n_fp)
            y1 = rng.uniform(0, max(height - 1, 1), n_fp)
            fp = np.c_[x1, y1, x1 + fw, y1 + fh]
            boxes = np.vstack([boxes, fp])
            scores = np.r_[scores, rng.uniform(0.05, nm["fp_score_max"], n_fp)]
        out.append(np.c_[boxes, scores, np.zeros(len(boxes))])
    return out
