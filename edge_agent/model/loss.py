"""Masked per-head YOLOX losses with SimOTA label assignment.

For head k: ``loss_k = sum_i m[i,k] * L_k(i) / max(sum_i m[i,k] * fg_k(i), 1)`` where m[i,k] says
image i labels head k (its boxes, possibly none: a verified negative). An image that does not
label a head contributes nothing to that head, not even objectness: its gradient there is zero.
Ignore boxes (teacher's uncertain band) remove objectness loss at the anchor points inside them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from edge_agent.model.net import decode, flatten

CENTER_RADIUS = 2.5
TOPK_IOU = 10
IOU_WEIGHT = 5.0


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (n, 4) and (m, 4) x1y1x2y2 boxes."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


@torch.no_grad()
def simota(gt: torch.Tensor, pred_box: torch.Tensor, pred_score: torch.Tensor,
           centers: torch.Tensor, steps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assign anchor points to ground-truth boxes. Returns (fg mask (A,), gt index per fg point).

    ``gt`` (n, 5) x1y1x2y2 + class, ``pred_score`` (A, C) = sqrt(obj * cls) probabilities.
    """
    a = centers.shape[0]
    gc = (gt[:, :2] + gt[:, 2:4]) / 2
    in_box = ((centers[None] > gt[:, None, :2]) & (centers[None] < gt[:, None, 2:4])).all(-1)
    r = CENTER_RADIUS * steps[None, :, None]
    in_ctr = ((centers[None] - gc[:, None]).abs() < r).all(-1)
    cand = (in_box | in_ctr).any(0)
    fg = torch.zeros(a, dtype=torch.bool)
    match = torch.zeros(a, dtype=torch.long)
    if not cand.any():
        return fg, match
    ci = torch.nonzero(cand).squeeze(1)
    ious = box_iou(gt[:, :4], pred_box[ci])
    onehot = F.one_hot(gt[:, 4].long(), pred_score.shape[1]).float()
    p = pred_score[ci].clamp(1e-6, 1 - 1e-6)
    cls_cost = F.binary_cross_entropy(p[None].expand(len(gt), -1, -1),
                                      onehot[:, None].expand(-1, len(ci), -1),
                                      reduction="none").sum(-1)
    both = in_box[:, ci] & in_ctr[:, ci]
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).float()
    k = min(TOPK_IOU, len(ci))
    dyn = ious.topk(k, 1).values.sum(1).int().clamp(min=1)
    assign = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(len(gt)):
        idx = cost[g].topk(int(min(dyn[g], len(ci))), largest=False).indices
        assign[g, idx] = True
    multi = assign.sum(0) > 1
    if multi.any():
        best = cost[:, multi].argmin(0)
        assign[:, multi] = False
        assign[best, torch.nonzero(multi).squeeze(1)] = True
    has = assign.any(0)
    fg[ci[has]] = True
    match[ci[has]] = assign[:, has].float().argmax(0)
    return fg, match


def head_loss(maps: Sequence[torch.Tensor], boxes: Sequence[Optional[torch.Tensor]],
              ignore: Sequence[torch.Tensor], pts: torch.Tensor, steps: torch.Tensor
              ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """One head's masked loss over a batch; ``boxes[i] is None`` means image i does not label it."""
    rows = flatten(maps)  # N x A x (5 + C)
    labelled = [i for i, b in enumerate(boxes) if b is not None]
    zero = rows.sum() * 0.0
    if not labelled:
        return zero, {"fg": 0.0, "iou": 0.0, "obj": 0.0, "cls": 0.0}
    idx = torch.tensor(labelled)
    rows = rows[idx]  # only labelled images enter the graph below
    dec = decode(rows, pts, steps)
    centers = (pts + 0.5) * steps[:, None]
    obj_t = torch.zeros(rows.shape[:2])
    obj_w = torch.ones(rows.shape[:2])
    cls_terms, iou_terms, nfg = [], [], 0
    for j, i in enumerate(labelled):
        gt = boxes[i]
        ig = ignore[i]
        if ig is not None and len(ig):
            inside = ((centers[None] > ig[:, None, :2]) & (centers[None] < ig[:, None, 2:4]))
            obj_w[j, inside.all(-1).any(0)] = 0.0
        if gt is None or len(gt) == 0:
            continue
        score = torch.sqrt(dec[j, :, 4:5] * dec[j, :, 5:]).detach()
        fg, match = simota(gt, dec[j, :, :4].detach(), score, centers, steps)
        if not fg.any():
            continue
        g = gt[match[fg]]
        pb = dec[j, fg, :4]
        iou = torch.diag(box_iou(pb, g[:, :4]))
        iou_terms.append((1 - iou ** 2).sum())
        cls_t = F.one_hot(g[:, 4].long(), rows.shape[2] - 5).float() * iou.detach()[:, None]
        cls_terms.append(F.binary_cross_entropy_with_logits(rows[j, fg, 5:], cls_t,
                                                            reduction="sum"))
        obj_t[j, fg] = 1.0
        obj_w[j, fg] = 1.0
        nfg += int(fg.sum())
    norm = max(nfg, 1)
    obj = (F.binary_cross_entropy_with_logits(rows[..., 4], obj_t, reduction="none")
           * obj_w).sum() / norm
    cls = torch.stack(cls_terms).sum() / norm if cls_terms else zero
    iou_l = torch.stack(iou_terms).sum() / norm if iou_terms else zero
    total = IOU_WEIGHT * iou_l + obj + cls
    return total, {"fg": float(nfg), "iou": iou_l.item(), "obj": obj.item(), "cls": cls.item()}


def distill_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                 min_score: float = 0.05) -> torch.Tensor:
    """Keep a head close to its frozen starting point (the teacher's maps, same input).

    BCE of objectness and class logits towards the teacher's probabilities at every point, and
    L1 on the box offsets where the teacher scores at least ``min_score``; normalised by the
    number of such points.
    """
    s, t = flatten(student), flatten(teacher).detach()
    tp = torch.sigmoid(t[..., 4:])
    bce = F.binary_cross_entropy_with_logits(s[..., 4:], tp, reduction="sum")
    pos = (tp[..., :1] * tp[..., 1:]).amax(-1) >= min_score
    n = max(int(pos.sum()), 1)
    reg = (s[..., :4] - t[..., :4]).abs().sum(-1)[pos].sum()
    return (bce + reg) / n


def to_tensors(boxes: Dict[str, List], ignore: Dict[str, List]):
    """numpy batch targets -> torch (None stays None)."""
    tb = {h: [None if b is None else torch.from_numpy(b) for b in v] for h, v in boxes.items()}
    ti = {h: [torch.from_numpy(b) for b in v] for h, v in ignore.items()}
    return tb, ti
