"""Guns on CCTV frames from a training checkpoint: AP, recall and false boxes on frames without
a gun, whole frame and 2 x 2 tiles, per validation source of the checkpoint's config.

    .venv/bin/python bench/weapon_cctv_bench.py CKPT.pt [CKPT.pt ...]
        [--config configs/train-nc-cctv.yaml] [--sources cctv-dev cctv-dev-tiles] [--json R.json]

A source with ``tiles: 2`` in the config runs as the daemon's ``cameras[].tiles`` does (the
weapon head on the whole frame and the tiles, merged by NMS). Per source: AP@0.5, recall at IoU
0.5 among boxes of score >= 0.01 and >= 0.5, and of the frames without a gun how many show a
weapon box of score >= 0.1, 0.3, 0.5 (the event threshold is 0.5); a CCTV source of several
cameras also per camera. Name cctv-val only to report a finished run: choices are made on
cctv-dev.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

SCORES = (0.1, 0.3, 0.5)


def source_samples(cfg, names: Sequence[str]):
    """The config's validation samples of the named sources (each source's ``limit`` applied,
    as in training), in the config's order."""
    from edge_agent.model import sources
    from edge_agent.model.train import _limit

    specs = [s for s in cfg.val if s["name"] in names]
    missing = set(names) - {s["name"] for s in specs}
    if missing:
        raise SystemExit(f"not a validation source of the config: {sorted(missing)}")
    return _limit(sources.build(specs, cfg.heads), specs)


def weapon_dets(model, cfg, samples) -> List[np.ndarray]:
    """Per sample, its weapon boxes (K x 6) in letterboxed input pixels, tiled where it says."""
    from edge_agent.model.data import CombinedDataset, collate
    from edge_agent.model.train import predict, predict_tiled

    ds = CombinedDataset(samples, list(cfg.heads), cfg.hw)
    thr, iou = cfg.eval.score_threshold, cfg.eval.nms_iou
    out: List[np.ndarray] = []
    for s in range(0, len(ds), 8):
        ids = range(s, min(s + 8, len(ds)))
        imgs, _, _ = collate(ds[i] for i in ids)
        res = predict(model, imgs.astype(np.float32), thr, iou)
        for i, r in zip(ids, res):
            if samples[i].tiles > 1:
                r = predict_tiled(model, ds.load(i), samples[i].tiles, cfg, r)
            out.append(r["weapon"])
    return out


def gt_boxes(cfg, samples) -> List[np.ndarray]:
    """Per sample, its weapon boxes in letterboxed input pixels (as validation scales them)."""
    from edge_agent.model.data import letterbox_matrix, warp_boxes

    return [warp_boxes(s.boxes["weapon"], letterbox_matrix(s.size, cfg.hw), cfg.hw)
            for s in samples]


def source_report(dets: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> Dict[str, Any]:
    """AP@0.5, recall at two score floors, and no-gun frames with a box at each of SCORES."""
    from edge_agent.model.evaluate import evaluate

    res = evaluate(dets, gts, 1)
    for floor in (0.01, 0.5):
        kept = [d[d[:, 4] >= floor] for d in dets]
        res[f"recall50_at_{floor}"] = evaluate(kept, gts, 1)["recall50"]
    empty = [float(d[:, 4].max()) if len(d) else 0.0 for d, g in zip(dets, gts) if len(g) == 0]
    res["no_gun_frames"] = len(empty)
    res["no_gun_with_box"] = {str(t): int(sum(v >= t for v in empty)) for t in SCORES}
    return res


def bench(ckpt: Path, config: Path, names: Sequence[str]) -> Dict[str, Any]:
    """Per named source, :func:`source_report` of the checkpoint's weapon head."""
    import torch

    from edge_agent.model.export import load_checkpoint

    torch.set_num_threads(1)
    model, cfg, ck = load_checkpoint(ckpt, config)
    model.eval()
    out: Dict[str, Any] = {"checkpoint": str(ckpt), "epoch": int(ck["epoch"]) + 1}
    kept = {}
    for name in names:
        t0 = time.monotonic()
        samples = source_samples(cfg, [name])
        kept[name] = (weapon_dets(model, cfg, samples), gt_boxes(cfg, samples))
        out[name] = source_report(*kept[name])
        out[name]["seconds"] = round(time.monotonic() - t0, 1)
        cams = [s.image.name.split("-")[0] for s in samples]
        if len(set(cams)) > 1 and all(c.startswith("Cam") for c in cams):  # per CCTV camera
            for cam in sorted(set(cams)):
                idx = [i for i, c in enumerate(cams) if c == cam]
                out[f"{name}/{cam}"] = source_report([kept[name][0][i] for i in idx],
                                                     [kept[name][1][i] for i in idx])
    # the config's groups (e.g. ugr+openimages-val) whose members were all named
    for gname, members in cfg.eval.groups.get("weapon", {}).items():
        if all(m in kept for m in members):
            out[gname] = source_report([d for m in members for d in kept[m][0]],
                                       [g for m in members for g in kept[m][1]])
    return out


def line(name: str, r: Dict[str, Any]) -> str:
    ng = r["no_gun_with_box"]
    return (f"  {name:16s} AP50 {r['ap50']:.3f}  recall {r['recall50_at_0.01']:.3f} (score>=0.5: "
            f"{r['recall50_at_0.5']:.3f})  no-gun frames with a box >= 0.1/0.3/0.5: "
            f"{ng['0.1']}/{ng['0.3']}/{ng['0.5']} of {r['no_gun_frames']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="weapon_cctv_bench", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--config", type=Path, default=Path("configs/train-nc-cctv.yaml"))
    ap.add_argument("--sources", nargs="+", default=["cctv-dev", "cctv-dev-tiles"])
    ap.add_argument("--json", type=Path, help="write the results here too")
    a = ap.parse_args(argv)
    rows = []
    for ck in a.checkpoints:
        r = bench(ck, a.config, a.sources)
        rows.append(r)
        print(f"{ck} (epoch {r['epoch']})")
        for name in [k for k in r if isinstance(r[k], dict)]:
            print(line(name, r[name]))
        sys.stdout.flush()
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
