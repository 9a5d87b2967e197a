"""``edge-agent train --config train.yaml``: train the multi-head detector.

Stage A trains the new heads with the backbone, neck and the listed heads frozen (frozen modules
in eval mode); stage B unfreezes everything at a low learning rate. Each epoch ends with a
checkpoint (``last.pt``, and ``best.pt`` when the validation score improved) and per-head
validation AP; ``--resume`` continues from ``last.pt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_MISSING_EXTRA, EXIT_OK, fail
from edge_agent.model.trainconfig import (
    DistillConfig,
    HeadDesign,
    HeadsFrom,
    Stage,
    TrainConfig,
    TrainConfigError,
)

__all__ = ["DistillConfig", "HeadDesign", "HeadsFrom", "Stage", "TrainConfig", "TrainConfigError",
           "build_net", "distill_mask", "distill_teacher", "main", "run", "smoke"]

log = logging.getLogger(__name__)


def _limit(samples, specs):
    """Apply each source's optional ``limit`` (first N samples)."""
    out = []
    for spec in specs:
        mine = [s for s in samples if s.source == spec["name"]]
        lim = spec.get("limit")
        out.extend(mine[:lim] if lim else mine)
    return out


def build_data(cfg: TrainConfig):
    """Train and validation samples, with teacher pseudo-labels added."""
    from edge_agent.model import sources, teacher

    out = Path(cfg.out_dir)
    tr = _limit(sources.build(cfg.train, cfg.heads, cache=out.parent / "frames"), cfg.train)
    va = _limit(sources.build(cfg.val, cfg.heads, cache=out.parent / "frames"), cfg.val)
    if cfg.teacher is not None:
        tc = cfg.teacher
        # a head frozen in every stage learns nothing from pseudo-labels: only validation needs them
        stages = [s for s in (cfg.stage_a, cfg.stage_b) if s.epochs]
        learns = any(f"heads.{tc.head}" not in s.freeze for s in stages)
        n = teacher.label(tr + va if learns else va, tc, out.parent / "teacher.json")
        log.info("teacher: %d new images labelled", n)
    return tr, va


def build_net(cfg: TrainConfig, load_weights: bool = True):
    from edge_agent.model import net as N
    from edge_agent.model import onnxweights as W

    model = N.MultiHeadNet(cfg.heads, cfg.head_specs())
    if load_weights and cfg.init.weights:
        rep = W.load_coco(model, Path(cfg.init.weights), cfg.init.classes)
        print(rep.summary(), file=sys.stderr)
    hf = cfg.init.heads_from
    if load_weights and hf:  # heads of an earlier export, e.g. kept frozen while another trains
        keys = W.load_heads(model, Path(hf.model), hf.heads)
        print(f"heads {hf.heads}: {len(keys)} tensors from {hf.model}", file=sys.stderr)
    if load_weights and cfg.init.checkpoint:  # an earlier run's weights, trained further here
        _load_checkpoint(model, Path(cfg.init.checkpoint))
    return model


def _load_checkpoint(model, path: Path) -> None:
    """The weights of our training checkpoint ``path`` into ``model`` (same design)."""
    import torch

    if not path.is_file():
        raise ValueError(f"init.checkpoint {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"init.checkpoint {path}: not a training checkpoint of ours "
                         f"(no 'model' weights)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # torch names the tensors that do not fit
        raise ValueError(f"init.checkpoint {path}: another head design: "
                         f"{str(exc).splitlines()[0]}") from exc
    print(f"weights from {path} (epoch {state.get('epoch', -1) + 1})", file=sys.stderr)


# --- prediction and evaluation ------------------------------------------------------------------


def predict(model, imgs: np.ndarray, score_thr: float, nms_iou: float, half: bool = False):
    """Per image, per head (K, 6) detections in input pixels (torch forward, numpy NMS)."""
    import torch

    from edge_agent.inference.postprocess import nms
    from edge_agent.model import net as N

    x = torch.from_numpy(imgs)
    pts, steps = N.grid(imgs.shape[2], imgs.shape[3])
    with torch.no_grad():
        maps = model(x.half() if half else x)
    res: List[Dict[str, np.ndarray]] = [{} for _ in range(len(imgs))]
    for h, m in maps.items():
        dec = N.decode(N.flatten([t.float() for t in m]), pts, steps).numpy()
        for i in range(len(imgs)):
            res[i][h] = postprocess_rows(dec[i], score_thr, nms_iou, nms)
    return res


def postprocess_rows(d: np.ndarray, score_thr: float, nms_iou: float, nms) -> np.ndarray:
    """Decoded rows (A, 5+C) -> (K, 6) x1, y1, x2, y2, score, class after threshold and NMS."""
    cls = d[:, 5:].argmax(1)
    score = d[:, 4] * d[np.arange(len(d)), 5 + cls]
    ok = score >= score_thr
    if ok.sum() > 1000:
        ok[np.argsort(-score)[1000:]] = False
    boxes, score, cls = d[ok, :4].astype(np.float64), score[ok], cls[ok]
    keep = nms(boxes, score, cls, nms_iou)
    return np.concatenate([boxes[keep], score[keep, None], cls[keep, None]], 1).astype(np.float32)


def validate(model, samples, cfg: TrainConfig, half: bool = False) -> Dict[str, Any]:
    """Per head (and per source for each head): AP@0.5, AP@0.5:0.95 on samples labelling it."""
    from edge_agent.model.data import CombinedDataset, collate
    from edge_agent.model.evaluate import evaluate

    ds = CombinedDataset(samples, list(cfg.heads), cfg.hw)
    thr, iou = cfg.eval.score_threshold, cfg.eval.nms_iou
    dets: List[Dict[str, np.ndarray]] = []
    gts: List[Dict[str, Optional[np.ndarray]]] = []
    bs = 8
    model.eval()
    for s in range(0, len(ds), bs):
        imgs, boxes, _ = collate(ds[i] for i in range(s, min(s + bs, len(ds))))
        dets.extend(predict(model.half() if half else model, imgs.astype(np.float32), thr, iou,
                            half))
        for j in range(len(imgs)):
            gts.append({h: boxes[h][j] for h in cfg.heads})
    for i, smp in enumerate(samples):
        if smp.tiles > 1:
            dets[i] = predict_tiled(model, ds.load(i), smp.tiles, cfg, dets[i], half)
    if half:
        model.float()
    out: Dict[str, Any] = {}
    for h, classes in cfg.heads.items():
        idx = [i for i, g in enumerate(gts) if g[h] is not None]
        if not idx:
            continue
        res = evaluate([dets[i][h] for i in idx], [gts[i][h] for i in idx], len(classes))
        per = {}
        for src in sorted({samples[i].source for i in idx}):
            sidx = [i for i in idx if samples[i].source == src]
            per[src] = evaluate([dets[i][h] for i in sidx], [gts[i][h] for i in sidx],
                                len(classes))
        for gname, members in cfg.eval.groups.get(h, {}).items():
            gidx = [i for i in idx if samples[i].source in members]
            if gidx:
                per[gname] = evaluate([dets[i][h] for i in gidx], [gts[i][h] for i in gidx],
                                      len(classes))
        res["per_source"] = per
        out[h] = res
    return out


def predict_tiled(model, img: np.ndarray, grid: int, cfg: TrainConfig,
                  whole_dets: Dict[str, np.ndarray], half: bool = False,
                  tile_heads: Sequence[str] = ("weapon",)) -> Dict[str, np.ndarray]:
    """As the daemon's ``cameras[].tiles`` (default ``tile_heads``): the heads ``tile_heads``
    get ``whole_dets`` (the whole frame's, in its letterboxed input pixels) merged with the
    boxes of ``grid`` x ``grid`` tiles of ``img``, the other heads ``whole_dets`` as they are."""
    import cv2

    from edge_agent.inference import tiles as T
    from edge_agent.model.data import letterbox_matrix

    H, W = cfg.hw
    parts, ms = [], []
    tiles = T.tile_grid(img.shape[1], img.shape[0], grid)
    for t in tiles:
        m = letterbox_matrix((t.w, t.h), cfg.hw)
        out = cv2.warpAffine(np.ascontiguousarray(T.crop(img, t)), m, (W, H),
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(114,) * 3)
        parts.append(out.transpose(2, 0, 1))
        ms.append(m[0, 0])
    net = model.half() if half else model
    res = predict(net, np.stack(parts).astype(np.float32), cfg.eval.score_threshold,
                  cfg.eval.nms_iou, half)
    whole = letterbox_matrix((img.shape[1], img.shape[0]), cfg.hw)[0, 0]
    per = [_scaled(whole_dets, 1 / whole)] + [_scaled(r, 1 / k) for r, k in zip(res, ms)]
    merged = _scaled(T.merge_heads(per, [T.Tile(0, 0, img.shape[1], img.shape[0])] + tiles,
                                   tile_heads, cfg.eval.nms_iou), whole)  # frame -> input px
    return {h: merged[h] if h in tile_heads else whole_dets[h] for h in whole_dets}


def _scaled(dets: Dict[str, np.ndarray], k: float) -> Dict[str, np.ndarray]:
    """Per head detections with their boxes times ``k``."""
    out = {}
    for h, d in dets.items():
        d = np.array(d, np.float32, copy=True)
        d[:, :4] *= k
        out[h] = d
    return out


def score_of(metrics: Dict[str, Any], cfg: TrainConfig) -> float:
    """One number for picking best.pt: mean AP@0.5 over the heads in ``eval.select``."""
    heads = cfg.eval.select if cfg.eval.select is not None else list(cfg.heads)
    vals = []
    for h in heads:
        m = metrics.get(h, {})
        srcs = cfg.eval.select_sources.get(h)
        if srcs:
            vals.extend(m.get("per_source", {}).get(s, {}).get("ap50", 0.0) for s in srcs)
        else:
            vals.append(m.get("ap50", 0.0))
    vals = [0.0 if (v is None or math.isnan(v)) else v for v in vals]
    return float(np.mean(vals)) if vals else 0.0


# --- training -------------------------------------------------------------------------------------


def set_frozen(model, prefixes: Sequence[str]) -> None:
    """Freeze modules whose name starts with a prefix (no grad, eval mode); train the rest."""
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(x) for x in prefixes))
    for name, m in model.named_modules():
        if name and any(name == x or name.startswith(x + ".") for x in prefixes):
            m.eval()


def train_step(model, imgs, boxes, ignore, frozen_body: bool, teacher=None,
               distill: Optional[DistillConfig] = None, dmask: Optional[np.ndarray] = None):
    """Forward + masked per-head losses (+ distillation); returns (total, {name: loss value}).

    ``dmask`` (N bools): the images distillation counts on (all when None), e.g. not the pasted
    small guns that the teacher never learnt to see.
    """
    import torch

    from edge_agent.model import loss as L
    from edge_agent.model import net as N

    x = torch.from_numpy(imgs)
    pts, steps = N.grid(imgs.shape[2], imgs.shape[3])
    tb, ti = L.to_tensors(boxes, ignore)
    if frozen_body:
        with torch.no_grad():
            feats = model.body(x)
    else:
        feats = model.body(x)
    total = None
    parts: Dict[str, float] = {}
    dheads = distill.heads() if distill is not None else []
    for h, head in model.heads.items():
        if not any(p.requires_grad for p in head.parameters()):
            continue
        maps = head(feats)
        lh, _ = L.head_loss(maps, tb[h], ti[h], pts, steps)
        parts[h] = lh.item()
        # a head teacher (distill.teacher) works in every stage, the starting model while the
        # body trains
        if teacher is not None and distill is not None and h in dheads \
                and (not frozen_body or distill.teacher) \
                and (dmask is None or dmask.any()):
            with torch.no_grad():
                ref = teacher(x, feats, h)
            if dmask is not None and not dmask.all():
                keep = torch.from_numpy(np.asarray(dmask, bool))
                maps_d, ref = [m[keep] for m in maps], [r[keep] for r in ref]
            else:
                maps_d = maps
            ld = distill.weight * L.distill_loss(maps_d, ref)
            key = "distill" if len(dheads) == 1 else f"distill_{h}"
            parts[key] = ld.item()
            lh = lh + ld
        total = lh if total is None else total + lh
    return total, parts


def distill_mask(distill: Optional[DistillConfig], samples) -> Optional[np.ndarray]:
    """``distill.sources``: the sources whose images distillation counts on (None: all)."""
    if distill is None or not distill.sources:
        return None
    allowed = set(distill.sources)
    return np.array([s.source in allowed for s in samples], bool)


def distill_teacher(cfg: TrainConfig, model):
    """``teacher(x, feats, head) -> maps`` of a distilled head, or None without ``distill``.

    With ``distill.teacher`` (an exported model of ours) it is that model's heads run on our
    own features; otherwise the starting model, frozen before any training.
    """
    from edge_agent.model import onnxweights as W

    if cfg.distill is None:
        return None
    if cfg.distill.teacher:
        src = Path(cfg.distill.teacher)
        heads = W.exported_heads(src, cfg.distill.heads(), model.body)
        for h, t in heads.items():
            print(f"distill: {h} head of {src} (width {t.spec.width}, convs {t.spec.convs})",
                  file=sys.stderr)
        return lambda x, feats, h: heads[h](feats)
    start = copy.deepcopy(model).eval()  # the starting weights, before any training
    for p in start.parameters():
        p.requires_grad_(False)
    return lambda x, feats, h: start.heads[h](start.body(x))


def _stages(cfg: TrainConfig):
    return [("A", cfg.stage_a)] * cfg.stage_a.epochs + [("B", cfg.stage_b)] * cfg.stage_b.epochs


def run(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train per the config; returns the last epoch's record (also in ``history.json``)."""
    import torch
    from tqdm import tqdm

    from edge_agent.model.data import (
        CombinedDataset,
        balanced_weights,
        collate,
        epoch_indices,
        summary,
    )

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr, va = build_data(cfg)
    model = build_net(cfg)
    teacher_net = distill_teacher(cfg, model)
    ds = CombinedDataset(tr, list(cfg.heads), cfg.hw, cfg.augment, seed=cfg.seed)
    weights = balanced_weights(tr, cfg.source_weights)
    plan = _stages(cfg)
    # per-epoch validation on at most eval.epoch_limit images per source (export uses them all);
    # a source with `epoch: false` is read at export only
    lim = cfg.eval.epoch_limit
    specs = [s for s in cfg.val if s.get("epoch", True)]
    va_epoch = _limit(va, [{**s, "limit": lim or s.get("limit")} for s in specs])
    history: List[Dict[str, Any]] = []
    start, best = 0, -1.0
    opt, opt_stage = None, None
    ck = out / "last.pt"
    state = None
    if resume and ck.is_file():
        state = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        start, best, history = state["epoch"] + 1, state["best"], state["history"]
        print(f"resumed from {ck} after epoch {state['epoch'] + 1}/{len(plan)}", file=sys.stderr)
    (out / "data_summary.json").write_text(json.dumps(
        {"train": summary(tr), "val": summary(va)}, indent=1))
    for epoch in range(start, len(plan)):
        sname, st = plan[epoch]
        if opt_stage != sname:
            set_frozen(model, st.freeze)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=st.lr, weight_decay=cfg.weight_decay)
            opt_stage = sname
            if state is not None and state.get("stage") == sname and "opt" in state:
                opt.load_state_dict(state["opt"])
        set_frozen(model, st.freeze)
        first = plan.index((sname, st))
        n_ep = sum(1 for s, _ in plan if s == sname)
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        idx = epoch_indices(weights, st.iters * cfg.batch, rng)
        bar = tqdm(range(st.iters), desc=f"epoch {epoch + 1}/{len(plan)} stage {sname}",
                   disable=not progress, file=sys.stderr, mininterval=2.0)
        sums: Dict[str, float] = {}
        t0 = time.time()
        for it in bar:
            frac = ((epoch - first) * st.iters + it) / max(n_ep * st.iters, 1)
            warm = min(1.0, (it + 1) / 20) if epoch == first else 1.0
            for g in opt.param_groups:
                g["lr"] = st.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            ids = idx[it * cfg.batch:(it + 1) * cfg.batch]
            batch = collate(ds[int(i)] for i in ids)
            total, parts = train_step(model, *batch, frozen_body="body" in st.freeze,
                                      teacher=teacher_net, distill=cfg.distill,
                                      dmask=distill_mask(cfg.distill, [tr[int(i)] for i in ids]))
            if total is None:
                raise TrainConfigError("training config", f"stage_{sname.lower()}.freeze",
                                       "freezes every head: nothing to train")
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (it + 1):.3f}" for k, v in sums.items()})
        bar.close()
        metrics = validate(model, va_epoch, cfg)
        score = score_of(metrics, cfg)
        rec = {"epoch": epoch + 1, "stage": sname, "train_s": round(time.time() - t0, 1),
               "loss": {k: v / st.iters for k, v in sums.items()}, "val": metrics,
               "score": score}
        history.append(rec)
        print(format_metrics(rec), file=sys.stderr)
        ckpt = {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                "stage": sname, "best": max(best, score), "history": history,
                "config": cfg.to_dict()}
        torch.save(ckpt, out / "last.pt.tmp")
        (out / "last.pt.tmp").replace(ck)
        torch.save(ckpt, out / f"epoch_{epoch + 1:02d}.pt")
        if score > best:
            best = score
            torch.save(ckpt, out / "best.pt")
        (out / "history.json").write_text(json.dumps(history, indent=1))
        state = None
    return history[-1] if history else {}


def format_metrics(rec: Dict[str, Any]) -> str:
    lines = [f"epoch {rec['epoch']} (stage {rec['stage']}, {rec['train_s']} s) "
             f"loss {', '.join(f'{k} {v:.3f}' for k, v in rec['loss'].items())}"]
    for h, m in rec["val"].items():
        per = "; ".join(f"{s} {v['ap50']:.3f}" for s, v in m["per_source"].items())
        lines.append(f"  {h:7s} AP50 {m['ap50']:.3f}  AP50:95 {m['ap50_95']:.3f}  ({per})")
    return "\n".join(lines)


def smoke(cfg: TrainConfig) -> TrainConfig:
    """The same config shrunk to a few steps on a few images of each source (``--smoke``)."""
    for spec in cfg.train + cfg.val:
        spec["limit"] = min(int(spec.get("limit") or 12), 12)
        if spec.get("format") == "paste":  # composites are made before the limit applies
            spec["recipe"] = {**(spec.get("recipe") or {}), "count": 12}
            spec["name"] = f"{spec['name']}-smoke"
    cfg.stage_a = Stage(1, 3, cfg.stage_a.lr, list(cfg.stage_a.freeze))
    cfg.stage_b = Stage(1 if cfg.stage_b.epochs else 0, 2, cfg.stage_b.lr,
                        list(cfg.stage_b.freeze))
    cfg.out_dir = cfg.out_dir.rstrip("/") + "-smoke"
    # a stage-2 config reads stage 1's export: read stage 1's smoke export instead
    hf = cfg.init.heads_from
    if hf is not None:
        hf.model = _smoke_name(hf.model)
    if cfg.distill is not None and cfg.distill.teacher:
        cfg.distill.teacher = _smoke_name(cfg.distill.teacher)
    return cfg


def _smoke_name(path: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-smoke{p.suffix}"))


def main(args: argparse.Namespace) -> int:
    """CLI handler of ``edge-agent train``."""
    if not args.config:
        return fail("train", "--config FILE is required", EXIT_BAD_INPUT)
    try:
        import torch  # noqa: F401
    except ImportError:
        return fail("train", "PyTorch is not installed (pip install 'edge-agent[train]')",
                    EXIT_MISSING_EXTRA)
    from edge_agent.model.data import DataError

    try:
        cfg = TrainConfig.load(Path(args.config))
    except TrainConfigError as exc:
        return fail("train", exc, EXIT_BAD_INPUT)
    if getattr(args, "smoke", False):
        cfg = smoke(cfg)
    try:
        run(cfg, resume=bool(getattr(args, "resume", False)),
            progress=not getattr(args, "no_progress", False))
    except DataError as exc:
        return fail("train", f"bad dataset: {exc}", EXIT_BAD_INPUT)
    except TrainConfigError as exc:
        return fail("train", exc, EXIT_BAD_INPUT)
    return EXIT_OK
