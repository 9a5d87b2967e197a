"""``edge-agent export CKPT -o model.onnx``: one ONNX file plus its manifest, with checks.

The graph (opset 17, dynamic batch) decodes boxes itself and has one output per head, named
after the head: ``N x A x (4 + 1 + C)`` rows of x1, y1, x2, y2 (input pixels), objectness and
class scores in 0..1 (the ``decode: boxes`` contract of ``edge_agent/inference/manifest.py``).

Checks, written into the manifest: ONNX Runtime against PyTorch (max abs diff), and an FP16 check
(validation AP again with weights and every layer's output rounded to FP16, which is what an
FP16 TensorRT build stores; overflow to inf is counted).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_MISSING_EXTRA, EXIT_OK, fail
from edge_agent.model import checks
from edge_agent.model.trainconfig import TrainConfigError

OPSET = 17


def load_checkpoint(path: Path, config: Optional[Path] = None):
    """(model in eval mode, TrainConfig, checkpoint dict) from a ``.pt`` written by train.

    The config is the one saved in the checkpoint unless ``config`` (a training YAML) is given.
    """
    import torch

    from edge_agent.model.train import TrainConfig, build_net

    ck = torch.load(path, map_location="cpu", weights_only=False)
    if config is not None:
        cfg = TrainConfig.load(config)
    else:
        cfg = TrainConfig.from_mapping(ck["config"], f"{path} (its saved config)")
    model = build_net(cfg, load_weights=False)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, cfg, ck


def to_onnx(model, height: int, width: int, out: Path) -> None:
    """Write the decoding graph (opset 17, dynamic batch, one output per head)."""
    import torch

    from edge_agent.model.net import Exported

    wrapper = Exported(model, height, width).eval()
    names = list(model.heads)
    x = torch.zeros(1, 3, height, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still the one for
        warnings.simplefilter("ignore", DeprecationWarning)  # opset <= 17 without onnxscript
        torch.onnx.export(wrapper, (x,), str(out), opset_version=OPSET, input_names=["images"],
                          output_names=names,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          do_constant_folding=True, dynamo=False)


def ort_vs_torch(model, onnx_path: Path, imgs: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Max abs difference per head between ONNX Runtime and PyTorch on the same batch:
    box corners (input pixels; exp() of the size offsets magnifies float error) and scores."""
    import onnxruntime as ort
    import torch

    from edge_agent.model.net import Exported

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": imgs})
    with torch.no_grad():
        ref = Exported(model, imgs.shape[2], imgs.shape[3]).eval()(torch.from_numpy(imgs))
    out = {}
    for h, g, r in zip(model.heads, got, ref):
        d = np.abs(g - r.numpy())
        out[h] = {"boxes_px": float(d[..., :4].max()), "scores": float(d[..., 4:].max())}
    return out


class Fp16Rounding:
    """Context: round weights and every leaf module's output to FP16 (counts inf overflows)."""

    def __init__(self, model):
        self.model = model
        self.overflows = 0
        self._hooks: List[Any] = []
        self._saved: Dict[str, Any] = {}

    def _hook(self, module, inputs, output):
        import torch

        if isinstance(output, torch.Tensor) and output.is_floating_point():
            h = output.half()
            self.overflows += int(torch.isinf(h).sum()) - int(torch.isinf(output).sum())
            return h.float()
        return output

    def __enter__(self):
        import torch

        self._saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(p.half().float())
        for m in self.model.modules():
            if len(list(m.children())) == 0:
                self._hooks.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self.model.load_state_dict(self._saved)


def write_manifest(onnx_path: Path, cfg, extra: Dict[str, Any]) -> Path:
    """The manifest beside the model (``MODEL.json``), validated by the daemon's parser."""
    from edge_agent.inference import manifest as mf

    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    h, w = cfg.hw
    data = {
        "format": mf.FORMAT, "name": cfg.name, "version": str(cfg.version), "sha256": sha,
        **extra,
        "input": {"name": "images", "batch": None, "height": h, "width": w, "layout": "NCHW",
                  "color": "BGR", "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1],
                  "pad_value": 114, "align": "top-left"},
        "outputs": [{"name": n, "decode": "boxes", "classes": list(c)}
                    for n, c in cfg.heads.items()],
        "heads": {n: {"output": n, "classes": list(c)} for n, c in cfg.heads.items()},
    }
    mf.parse(data, str(onnx_path))  # fail here, not in the daemon
    out = onnx_path.with_suffix(".json")
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return out


def _metrics_table(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Per head AP@0.5 / AP@0.5:0.95 and per source AP@0.5, rounded (for the manifest)."""
    out = {}
    for h, m in metrics.items():
        out[h] = {"ap50": round(m["ap50"], 4), "ap50_95": round(m["ap50_95"], 4),
                  "per_source": {s: {"ap50": None if np.isnan(v["ap50"]) else round(v["ap50"], 4),
                                     "ap50_95": None if np.isnan(v["ap50_95"])
                                     else round(v["ap50_95"], 4), "images": v["images"],
                                     "boxes": v["boxes"]}
                                 for s, v in m["per_source"].items()}}
    return out


def export(ckpt: Path, out: Path, check: bool = True, val_limit: Optional[int] = None,
           config: Optional[Path] = None) -> Dict[str, Any]:
    """Export a checkpoint; returns the manifest's ``checks`` and ``metrics`` sections."""
    import torch

    from edge_agent.model.data import CombinedDataset, collate
    from edge_agent.model.train import _limit, build_data, validate

    model, cfg, ck = load_checkpoint(ckpt, config)
    torch.set_num_threads(cfg.threads)  # as in training: 2 threads on 2 busy cores crawl
    h, w = cfg.hw
    to_onnx(model, h, w, out)
    report: Dict[str, Any] = {"opset": OPSET, "checkpoint_epoch": int(ck["epoch"]) + 1}
    extra: Dict[str, Any] = {"description": cfg.description.strip(), "licence": cfg.licence}
    data_summary = Path(cfg.out_dir) / "data_summary.json"
    if data_summary.is_file():
        extra["training_data"] = json.loads(data_summary.read_text())
    if check:
        _, va = build_data(cfg)
        if val_limit:
            va = _limit(va, [{**s, "limit": val_limit} for s in cfg.val])
        ds = CombinedDataset(va, list(cfg.heads), cfg.hw)
        imgs, _, _ = collate(ds[i] for i in range(min(4, len(ds))))
        diff = ort_vs_torch(model, out, imgs.astype(np.float32))
        report["ort_vs_torch_max_abs_diff"] = diff
        print(f"ONNX Runtime vs PyTorch, max abs diff per head: {diff}", file=sys.stderr)
        fp32 = validate(model, va, cfg)
        with Fp16Rounding(model) as r:
            fp16 = validate(model, va, cfg)
        drop = {hd: round(fp32[hd]["ap50"] - fp16[hd]["ap50"], 4) for hd in fp32}
        drop95 = {hd: round(fp32[hd]["ap50_95"] - fp16[hd]["ap50_95"], 4) for hd in fp32}
        report["fp16"] = {"method": "weights and every layer output rounded to FP16",
                          "ap50_drop": drop, "ap50_95_drop": drop95,
                          "overflows": r.overflows}
        print(f"FP16: AP@0.5 drop {drop}, AP@0.5:0.95 drop {drop95}, "
              f"{r.overflows} values overflowed", file=sys.stderr)
        extra["metrics"] = _metrics_table(fp32)
        extra["metrics_fp16"] = _metrics_table(fp16)
    extra["checks"] = report
    man = write_manifest(out, cfg, extra)
    if check and "crowd" in cfg.heads and Path(checks.RETAIL).is_file():
        res = checks.person_recall(str(out))  # through the daemon's engine, so after the manifest
        report["persons_vs_coco"] = {k: v for k, v in res.items() if k != "per_frame"}
        report["persons_vs_coco"]["per_frame"] = [[r["teacher"], r["model"], r["matched"]]
                                                  for r in res["per_frame"]]
        print(f"persons on Retail02: recall of the COCO model's boxes {res['recall']:.3f} "
              f"({res['matched']}/{res['teacher_boxes']})", file=sys.stderr)
        man = write_manifest(out, cfg, extra)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {man}", file=sys.stderr)
    return extra


def main(args: argparse.Namespace) -> int:
    """CLI handler of ``edge-agent export``."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return fail("export", "PyTorch is not installed (pip install 'edge-agent[train]')",
                    EXIT_MISSING_EXTRA)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        return fail("export", f"{ckpt}: no such checkpoint", EXIT_BAD_INPUT)
    cfg = Path(args.config) if args.config else None
    try:
        export(ckpt, Path(args.output), check=not args.no_check,
               val_limit=args.val_limit or None, config=cfg)
    except TrainConfigError as exc:
        return fail("export", exc, EXIT_BAD_INPUT)
    return EXIT_OK


def markdown_tables(manifest: Dict[str, Any]) -> str:
    """Per-head and per-source AP tables (FP32 and FP16) from a manifest, as Markdown."""
    m32, m16 = manifest.get("metrics", {}), manifest.get("metrics_fp16", {})
    lines = ["| head | AP@0.5 | AP@0.5:0.95 | FP16 AP@0.5 | FP16 AP@0.5:0.95 |",
             "|---|---|---|---|---|"]
    for h, m in m32.items():
        f = m16.get(h, {})
        lines.append(f"| {h} | {m['ap50']:.3f} | {m['ap50_95']:.3f} | "
                     f"{f.get('ap50', float('nan')):.3f} | {f.get('ap50_95', float('nan')):.3f} |")
    lines += ["", "| head | validation source | images | boxes | AP@0.5 | AP@0.5:0.95 |",
              "|---|---|---|---|---|---|"]
    for h, m in m32.items():
        for s, v in m["per_source"].items():
            if v["ap50"] is None:
                continue
            lines.append(f"| {h} | {s} | {v['images']} | {v['boxes']} | {v['ap50']:.3f} | "
                         f"{v['ap50_95']:.3f} |")
    return "\n".join(lines)
