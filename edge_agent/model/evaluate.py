"""Average precision (COCO style: 101-point interpolated) at IoU 0.5 and 0.5:0.95.

Pure numpy, so the daemon-side benchmarks can use it without torch. Detections are per image
(K, 6) x1, y1, x2, y2, score, class; ground truth per image (G, 5) x1, y1, x2, y2, class.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

IOUS = np.round(np.arange(0.5, 0.96, 0.05), 2)
RECALL_POINTS = np.linspace(0, 1, 101)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, (n, 4) x (m, 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:4] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:4] - b[:, :2], 0, None).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-12)


def match(dets: Sequence[np.ndarray], gts: Sequence[np.ndarray], cls: int, thr: float):
    """Scores, true-positive flags (sorted by score) and the number of gt boxes of one class."""
    scores, tps, n_gt = [], [], 0
    for d, g in zip(dets, gts):
        d = d[d[:, 5] == cls] if len(d) else d.reshape(0, 6)
        g = g[g[:, 4] == cls] if len(g) else g.reshape(0, 5)
        n_gt += len(g)
        d = d[np.argsort(-d[:, 4], kind="stable")]
        used = np.zeros(len(g), bool)
        m = iou(d[:, :4], g[:, :4])
        for k in range(len(d)):
            tp = False
            if len(g):
                cand = np.where(used, -1.0, m[k])
                j = int(np.argmax(cand))
                if cand[j] >= thr:
                    used[j] = True
                    tp = True
            scores.append(d[k, 4])
            tps.append(tp)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.asarray(scores)[order], np.asarray(tps, bool)[order], n_gt


def average_precision(tps: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP from true-positive flags sorted by score (COCO's method)."""
    if n_gt == 0:
        return float("nan")
    if len(tps) == 0:
        return 0.0
    tp = np.cumsum(tps)
    fp = np.cumsum(~tps)
    recall = tp / n_gt
    precision = tp / np.maximum(tp + fp, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    vals = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(vals.mean())


def evaluate(dets: Sequence[np.ndarray], gts: Sequence[np.ndarray], num_classes: int
             ) -> Dict[str, float]:
    """AP@0.5, AP@0.5:0.95 (mean over classes with gt) and recall@0.5 over a set of images."""
    ap50, ap, rec = [], [], []
    for c in range(num_classes):
        per = []
        for t in IOUS:
            _, tps, n_gt = match(dets, gts, c, float(t))
            per.append(average_precision(tps, n_gt))
            if t == 0.5:
                rec.append(tps.sum() / n_gt if n_gt else float("nan"))
        if not np.isnan(per[0]):
            ap50.append(per[0])
            ap.append(float(np.mean(per)))
    nan = float("nan")
    return {"ap50": float(np.mean(ap50)) if ap50 else nan,
            "ap50_95": float(np.mean(ap)) if ap else nan,
            "recall50": float(np.nanmean(rec)) if rec and not np.all(np.isnan(rec)) else nan,
            "images": len(gts), "boxes": int(sum(len(g) for g in gts))}


def recall_of(reference: Sequence[np.ndarray], dets: Sequence[np.ndarray], thr: float = 0.5
              ) -> List[int]:
    """Per image: how many reference boxes some detection matches at IoU >= thr (one-to-one)."""
    found = []
    for r, d in zip(reference, dets):
        g = np.concatenate([r[:, :4], np.zeros((len(r), 1))], 1) if len(r) else np.zeros((0, 5))
        dd = np.concatenate([d[:, :5], np.zeros((len(d), 1))], 1) if len(d) else np.zeros((0, 6))
        _, tps, _ = match([dd], [g], 0, thr)
        found.append(int(tps.sum()))
    return found
