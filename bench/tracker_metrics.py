"""A small CLEAR-MOT / IDF1 scorer (NumPy + SciPy), for tests and quick runs.

Matches the MOTChallenge definitions at IoU >= 0.5: per frame, correspondences from the previous
frame are kept while still valid, the rest are assigned by minimum (1 - IoU) (Hungarian); an
identity switch is a ground-truth object matched to a different track than at its last match.
IDF1 uses the global one-to-one gt/track matching that maximises frames matched at IoU >= 0.5.
The benchmark table itself is scored with TrackEval (bench/mot_eval.py); this one agrees with it
on MOTA/IDF1 to within rounding of the edge cases (distractor handling is MOT15-only here).
"""

from __future__ import annotations

from typing import Dict, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment


class Scores(NamedTuple):
    mota: float
    idf1: float
    idsw: int
    fp: int
    fn: int
    num_gt: int


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), x1, y1, x2, y2; 0 where
    both boxes have no area."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0],
                 b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1],
                 b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def score(gt: np.ndarray, hyp: np.ndarray, thresh: float = 0.5) -> Scores:
    """gt, hyp: rows frame, id, x1, y1, x2, y2."""
    frames = np.union1d(gt[:, 0], hyp[:, 0]) if len(hyp) else np.unique(gt[:, 0])
    gt_by = {f: gt[gt[:, 0] == f] for f in np.unique(gt[:, 0])}
    hy_by = {f: hyp[hyp[:, 0] == f] for f in np.unique(hyp[:, 0])} if len(hyp) else {}
    empty = np.zeros((0, 6))
    last: Dict[int, int] = {}  # gt id -> hyp id at its last match
    fp = fn = idsw = 0
    pair_counts: Dict[tuple, int] = {}
    for f in frames:
        g, h = gt_by.get(f, empty), hy_by.get(f, empty)
        if len(g) and len(h):
            iou = iou_matrix(g[:, 2:6], h[:, 2:6])
        else:
            iou = np.zeros((len(g), len(h)))
        valid = iou >= thresh - 1e-9
        gi, hi = np.nonzero(valid)
        for a, b in zip(gi, hi):
            key = (int(g[a, 1]), int(h[b, 1]))
            pair_counts[key] = pair_counts.get(key, 0) + 1
        # CLEAR-MOT: keep last frame's correspondences where still valid.
        pairs = []
        used_h = set()
        hid_index = {int(h[b, 1]): b for b in range(len(h))}
        for a in range(len(g)):
            prev = last.get(int(g[a, 1]))
            b = hid_index.get(prev) if prev is not None else None
            if b is not None and valid[a, b] and b not in used_h:
                pairs.append((a, b))
                used_h.add(b)
        used_g = {a for a, _ in pairs}
        rest_g = [a for a in range(len(g)) if a not in used_g]
        rest_h = [b for b in range(len(h)) if b not in used_h]
        if rest_g and rest_h:
            sub = iou[np.ix_(rest_g, rest_h)]
            cost = np.where(sub >= thresh - 1e-9, 1 - sub, 1e6)
            r, c = linear_sum_assignment(cost)
            for i, j in zip(r, c):
                if cost[i, j] < 1e6:
                    a, b = rest_g[i], rest_h[j]
                    gid, hid = int(g[a, 1]), int(h[b, 1])
                    if gid in last and last[gid] != hid:
                        idsw += 1
                    pairs.append((a, b))
        for a, b in pairs:
            last[int(g[a, 1])] = int(h[b, 1])
        matched_g = {a for a, _ in pairs}
        matched_h = {b for _, b in pairs}
        fn += len(g) - len(matched_g)
        fp += len(h) - len(matched_h)
    num_gt = len(gt)
    mota = 1.0 - (fn + fp + idsw) / max(num_gt, 1)
    gids = sorted({k[0] for k in pair_counts})
    hids = sorted({k[1] for k in pair_counts})
    idtp = 0
    if gids and hids:
        gi = {v: i for i, v in enumerate(gids)}
        hi = {v: i for i, v in enumerate(hids)}
        m = np.zeros((len(gids), len(hids)))
        for (a, b), n in pair_counts.items():
            m[gi[a], hi[b]] = n
        r, c = linear_sum_assignment(-m)
        idtp = int(m[r, c].sum())
    idf1 = 2 * idtp / max(num_gt + len(hyp), 1)
    return Scores(mota, idf1, idsw, fp, fn, num_gt)


def hota(gt: np.ndarray, hyp: np.ndarray) -> float:
    """HOTA (Luiten et al. 2021) averaged over IoU thresholds 0.05..0.95, following TrackEval's
    algorithm: a global alignment score per (gt id, track id) pair weights each frame's
    matching, then detection and association accuracy per threshold. gt, hyp: rows frame, id,
    x1, y1, x2, y2. Returns 0..1."""
    alphas = np.arange(0.05, 0.99, 0.05)
    gids, g_idx = np.unique(gt[:, 1], return_inverse=True)
    hids, h_idx = (np.unique(hyp[:, 1], return_inverse=True) if len(hyp)
                   else (np.zeros(0), np.zeros(0, int)))
    frames = np.unique(gt[:, 0]) if not len(hyp) else np.union1d(gt[:, 0], hyp[:, 0])
    per_frame = []
    potential = np.zeros((len(gids), len(hids)))
    g_count, h_count = np.zeros(len(gids)), np.zeros(len(hids))
    for f in frames:
        gm, hm = gt[:, 0] == f, (hyp[:, 0] == f) if len(hyp) else np.zeros(0, bool)
        gi, hi = g_idx[gm], h_idx[hm]
        sim = iou_matrix(gt[gm, 2:6], hyp[hm, 2:6]) if len(gi) and len(hi) else \
            np.zeros((len(gi), len(hi)))
        denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
        sim_iou = np.where(denom > 1e-10, sim / np.where(denom > 1e-10, denom, 1), 0)
        potential[gi[:, None], hi[None, :]] += sim_iou
        g_count[gi] += 1
        h_count[hi] += 1
        per_frame.append((gi, hi, sim))
    align = potential / np.maximum(g_count[:, None] + h_count[None, :] - potential, 1e-10)
    tp, fn, fp = np.zeros(len(alphas)), np.zeros(len(alphas)), np.zeros(len(alphas))
    matches = np.zeros((len(alphas), len(gids), len(hids)))
    for gi, hi, sim in per_frame:
        if not len(hi) or not len(gi):
            fn += len(gi)
            fp += len(hi)
            continue
        r, c = linear_sum_assignment(-(align[gi[:, None], hi[None, :]] * sim))
        for a, alpha in enumerate(alphas):
            ok = sim[r, c] >= alpha - np.finfo(float).eps
            n = int(ok.sum())
            tp[a] += n
            fn[a] += len(gi) - n
            fp[a] += len(hi) - n
            matches[a, gi[r[ok]], hi[c[ok]]] += 1
    scores = []
    for a in range(len(alphas)):
        m = matches[a]
        ass = m / np.maximum(1, g_count[:, None] + h_count[None, :] - m)
        ass_a = (m * ass).sum() / max(1.0, tp[a])
        det_a = tp[a] / max(1.0, tp[a] + fn[a] + fp[a])
        scores.append(np.sqrt(det_a * ass_a))
    return float(np.mean(scores))
