"""Raw detector outputs -> per frame, per head ``(K, 6)`` float32 arrays in frame pixels.

Columns: x1, y1, x2, y2, score, class_id (class_id indexes the head's class list). Rows are sorted
by score, highest first. Shared by every backend; vectorised (the only Python loops run over
frames and heads, never over boxes).

Steps per output: validate (shape, finite) -> best class per row -> score = objectness x class
score -> threshold -> decode boxes of the surviving rows only (float64) -> route rows to heads by
class -> per-class greedy NMS per frame -> undo the letterbox, clip to the frame.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from edge_agent.inference.errors import DetectorOutputError
from edge_agent.inference.manifest import Manifest, OutputSpec
from edge_agent.inference.preprocess import Letterbox
from edge_agent.tracking.columns import BOX, DET_CLASS, DET_COLS, DET_SCORE

EMPTY = np.zeros((0, DET_COLS), np.float32)


def yolox_grid(height: int, width: int, strides) -> Tuple[np.ndarray, np.ndarray]:
    """Grid points (A, 2) and strides (A,) of YOLOX rows: strides in order, each row-major."""
    cells, steps = [], []
    for s in strides:
        gh, gw = height // s, width // s
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        steps.append(np.full(gh * gw, s))
    return np.concatenate(cells).astype(np.float64), np.concatenate(steps).astype(np.float64)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (K, 4) x1, y1, x2, y2 boxes."""
    x1, y1, x2, y2 = boxes.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    iw = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    inter = iw * ih
    union = area[:, None] + area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS within each group; returns kept indices, highest score first.

    Same result as the textbook loop (take the best box, drop what overlaps it by more than
    ``iou``, repeat), computed on the IoU matrix: a box survives when no surviving higher-scored
    box of its group overlaps it. That is solved by fixed-point iteration, which needs as many
    rounds as the longest suppression chain (a handful), not one per box.
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    b, g = boxes[order], groups[order]
    over = (iou_matrix(b) > iou) & (g[:, None] == g[None, :])
    over = np.triu(over, 1)  # row i may suppress column j only when i scores higher (i < j)
    keep = np.ones(len(order), bool)
    for _ in range(len(order)):
        new = ~(over & keep[:, None]).any(0)
        if np.array_equal(new, keep):
            break
        keep = new
    return order[keep]


class Postprocessor:
    """Decode every output of a manifest and split detections into heads."""

    def __init__(self, manifest: Manifest, score_threshold: float, nms_iou: float,
                 max_candidates: int = 1000):
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must be in 0..1, got {score_threshold}")
        if not 0 < nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        self.manifest = manifest
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_candidates = int(max_candidates)  # per frame and output, bounds the NMS matrix
        spec = manifest.input
        self._grids: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        # Per output: class index -> (head number, class id in that head) or -1.
        self._route: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for out in manifest.outputs:
            if out.decode == "yolox_grid":
                self._grids[out.name] = yolox_grid(spec.height, spec.width, out.strides)
            head_of = np.full(len(out.classes), -1, np.int64)
            cid_of = np.full(len(out.classes), -1, np.int64)
            for hn, h in enumerate(manifest.head_specs):
                if h.output == out.name:
                    head_of[list(h.class_ids)] = hn
                    cid_of[list(h.class_ids)] = np.arange(len(h.class_ids))
            self._route[out.name] = (head_of, cid_of)

    def check_output(self, out: OutputSpec, raw: np.ndarray, n: int) -> np.ndarray:
        """Validate one raw output for a batch of ``n``; raises :class:`DetectorOutputError`."""
        cols = 5 + len(out.classes)
        if not isinstance(raw, np.ndarray) or raw.ndim != 3 or raw.shape[0] != n \
                or raw.shape[2] != cols:
            shape = getattr(raw, "shape", type(raw).__name__)
            raise DetectorOutputError(
                f"output {out.name!r}: shape {shape}, expected ({n}, K, {cols})")
        rows = out.expected_rows(self.manifest.input.height, self.manifest.input.width)
        if rows is not None and raw.shape[1] != rows:
            raise DetectorOutputError(
                f"output {out.name!r}: {raw.shape[1]} rows, strides {list(out.strides)} "
                f"need {rows}")
        if not np.isfinite(raw).all():
            bad = int(np.count_nonzero(~np.isfinite(raw)))
            raise DetectorOutputError(f"output {out.name!r}: {bad} NaN/inf values")
        return raw

    def _candidates(self, out: OutputSpec, raw: np.ndarray):
        """Rows over the threshold: frame index, row index, score, class, boxes (input px)."""
        obj = raw[..., 4]
        cls = raw[..., 5:]
        best = cls.argmax(-1)  # objectness > 0 scales all classes alike: same argmax
        best_p = np.take_along_axis(cls, best[..., None], -1)[..., 0]
        # A float32 pre-filter with a little slack; the exact test is redone in float64.
        fi, ri = np.nonzero(obj * best_p >= np.float32(self.score_threshold) - 1e-6)
        rows = raw[fi, ri].astype(np.float64)
        score = rows[:, 4] * rows[:, 5:][np.arange(len(ri)), best[fi, ri]]
        ok = score >= self.score_threshold
        fi, ri, rows, score = fi[ok], ri[ok], rows[ok], score[ok]
        cls_idx = best[fi, ri]
        if out.decode == "yolox_grid":
            grid, stride = self._grids[out.name]
            g, s = grid[ri], stride[ri][:, None]
            cxy = (rows[:, :2] + g) * s
            half = np.exp(rows[:, 2:4]) * s / 2
            boxes = np.concatenate([cxy - half, cxy + half], 1)
        else:
            boxes = rows[:, :4]
        return fi, score, cls_idx, boxes

    def __call__(self, outputs: Dict[str, np.ndarray],
                 geo: Letterbox) -> List[Dict[str, np.ndarray]]:
        """Per frame, per head detections (every head present, EMPTY when nothing)."""
        n = len(geo.scale)
        heads = self.manifest.head_specs
        result: List[Dict[str, np.ndarray]] = [{h.name: EMPTY for h in heads} for _ in range(n)]
        for out in self.manifest.outputs:
            raw = self.check_output(out, outputs.get(out.name), n)
            fi, score, cls_idx, boxes = self._candidates(out, raw)
            head_of, cid_of = self._route[out.name]
            hn = head_of[cls_idx]
            mapped = hn >= 0
            fi, score, cls_idx, boxes, hn = fi[mapped], score[mapped], cls_idx[mapped], \
                boxes[mapped], hn[mapped]
            cid = cid_of[cls_idx]
            for f in range(n):  # per frame (NMS groups are per class within a frame)
                sel = np.flatnonzero(fi == f)
                if len(sel) == 0:
                    continue
                if len(sel) > self.max_candidates:
                    sel = sel[np.argsort(-score[sel], kind="stable")[:self.max_candidates]]
                keep = sel[nms(boxes[sel], score[sel], cls_idx[sel], self.nms_iou)]
                b = (boxes[keep] - np.tile(geo.offset[f], 2)) / geo.scale[f]
                w, h = geo.frame_size[f]
                np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
                np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
                det = np.empty((len(keep), DET_COLS), np.float32)
                det[:, BOX], det[:, DET_SCORE], det[:, DET_CLASS] = b, score[keep], cid[keep]
                for h_i in np.unique(hn[keep]):
                    result[f][heads[h_i].name] = det[hn[keep] == h_i]
        return result
