"""SORT (Bewley et al. 2016) re-implemented from the paper and abewley/sort's documented defaults.

A clean re-implementation for benchmarking only, clearly labelled as such in every table: the
original sort.py is GPL-3.0 and not on PyPI, so it is not vendored. Same model and defaults:
state (u, v, s, r, du, dv, ds) with s = area and r = aspect ratio, the same noise scaling,
max_age=1, min_hits=3, IoU threshold 0.3, Hungarian assignment (SciPy), the same output rule
(tracks matched this frame with a hit streak >= min_hits, or any during the first min_hits frames).
"""

from __future__ import annotations

from typing import List

import numpy as np
from scipy.optimize import linear_sum_assignment
from tracker_metrics import iou_matrix  # bench/ is on sys.path (mot_eval.py)


def _to_z(b: np.ndarray) -> np.ndarray:
    w, h = b[2] - b[0], b[3] - b[1]
    return np.array([b[0] + w / 2, b[1] + h / 2, w * h, w / h])


def _to_box(x: np.ndarray) -> np.ndarray:
    w = np.sqrt(x[2] * x[3])
    h = x[2] / w
    return np.array([x[0] - w / 2, x[1] - h / 2, x[0] + w / 2, x[1] + h / 2])


class _Track:
    F = np.eye(7) + np.eye(7, k=4)
    H = np.eye(4, 7)
    R = np.diag([1.0, 1.0, 10.0, 10.0])
    Q = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.0001])

    def __init__(self, box: np.ndarray, tid: int):
        self.x = np.r_[_to_z(box), 0.0, 0.0, 0.0]
        self.P = np.diag([10.0, 10.0, 10.0, 10.0, 10000.0, 10000.0, 10000.0])
        self.id = tid
        self.time_since_update = 0
        self.hit_streak = 0

    def predict(self) -> np.ndarray:
        if self.x[6] + self.x[2] <= 0:
            self.x[6] = 0.0
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + self.Q
        if self.time_since_update > 0:
            self.hit_streak = 0
        self.time_since_update += 1
        return _to_box(self.x)

    def update(self, box: np.ndarray) -> None:
        self.time_since_update = 0
        self.hit_streak += 1
        y = _to_z(box) - self.H @ self.x
        S = self.H @ self.P @ self.H.T + self.R
        K = self.P @ self.H.T @ np.linalg.inv(S)
        self.x = self.x + K @ y
        ikh = np.eye(7) - K @ self.H
        self.P = ikh @ self.P @ ikh.T + K @ self.R @ K.T  # Joseph form


class SortReference:
    """``update(dets (N, >=5) x1, y1, x2, y2, score)`` -> (M, 5) x1, y1, x2, y2, id."""

    def __init__(self, max_age: int = 1, min_hits: int = 3, iou_threshold: float = 0.3):
        self.max_age, self.min_hits, self.iou_threshold = max_age, min_hits, iou_threshold
        self.tracks: List[_Track] = []
        self.frame_count = 0
        self.next_id = 1

    def update(self, dets: np.ndarray) -> np.ndarray:
        self.frame_count += 1
        preds = [t.predict() for t in self.tracks]
        keep = [i for i, p in enumerate(preds) if np.all(np.isfinite(p))]
        self.tracks = [self.tracks[i] for i in keep]
        trks = np.array([preds[i] for i in keep]).reshape(-1, 4)
        boxes = dets[:, :4]
        matched_d, matched_t = set(), set()
        if len(boxes) and len(trks):
            iou = iou_matrix(boxes, trks)
            a = (iou > self.iou_threshold).astype(int)
            if a.sum(1).max() == 1 and a.sum(0).max() == 1:
                pairs = np.argwhere(a)
            else:
                r, c = linear_sum_assignment(-iou)
                pairs = np.c_[r, c]
            for d, t in pairs:
                if iou[d, t] >= self.iou_threshold:
                    self.tracks[t].update(boxes[d])
                    matched_d.add(int(d))
                    matched_t.add(int(t))
        for d in range(len(boxes)):
            if d not in matched_d:
                self.tracks.append(_Track(boxes[d], self.next_id))
                self.next_id += 1
        out = []
        alive = []
        for t in self.tracks:
            if t.time_since_update < 1 and (t.hit_streak >= self.min_hits
                                            or self.frame_count <= self.min_hits):
                out.append([*_to_box(t.x), t.id])
            if t.time_since_update <= self.max_age:
                alive.append(t)
        self.tracks = alive
        return np.array(out, dtype=float).reshape(-1, 5)
