"""One backbone for three heads vs three single-head models vs the COCO YOLOX-nano (CPU, ORT).

    .venv/bin/python bench/multihead_bench.py [--model engines/models/edge_multihead.onnx]
        [--model OTHER.onnx ...] [--shared ../shared] [--runs 40] [--repeat 1] [--threads 1]

The single-head models are cut out of the multi-head ONNX file itself (``onnx.utils.Extractor``
from the input to one head's output), so each is exactly the same backbone, neck and head at the
same input: what a DeepStream-style chain of a primary and two secondary detectors would run.
"three together" is the sum of the three single-head latencies. All sessions run in this
process, interleaved call by call, on the same letterboxed Retail02 frame, so load from other
processes hits them alike. Ratios are what the result is: multi / three, multi / COCO.
Several ``--model`` files (e.g. untrained head designs, to choose one before training) are
interleaved in the same loop; ``--repeat N`` runs the whole measurement N times and reports the
ratios of each repeat and their median.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import onnxruntime as ort

from edge_agent.inference import manifest as mf
from edge_agent.inference.cli import bench_frames
from edge_agent.inference.preprocess import Preprocessor


def single_head_models(model: Path, heads, out_dir: Path) -> Dict[str, Path]:
    """One ONNX per head: the subgraph from ``images`` to that head's output."""
    m = onnx.load(str(model))
    ex = onnx.utils.Extractor(m)
    paths = {}
    for h in heads:
        sub = ex.extract_model(["images"], [h])
        p = out_dir / f"single_{h}.onnx"
        onnx.save(sub, str(p))
        paths[h] = p
    return paths


def conv_macs(model: Path) -> int:
    """Multiply-accumulates of every Conv for one image (shapes inferred at the model's input):
    the load-independent part of the cost, for a machine too busy to time."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in weights or n.output[0] not in shapes:
            continue
        cout, cin_per_group, kh, kw = weights[n.input[1]]
        _, _, h, w = shapes[n.output[0]]
        total += cout * h * w * cin_per_group * kh * kw
    return total


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def bench_once(models, sess_in, runs: int) -> Dict[str, Dict[str, float]]:
    """One interleaved measurement: p50 latencies and the two ratios for every model."""
    names = [k for k in sess_in]
    times: Dict[str, list] = {k: [] for k in names}
    for i in range(runs + 3):
        for name in names:
            s, inp = sess_in[name]
            t0 = time.perf_counter()
            s.run(None, {"images": inp})
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1e3)
    p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
    res = {}
    for m, heads in models.items():
        three = sum(p50[f"{m}: single {h}"] for h in heads)
        res[m] = {"multi_ms": p50[f"{m}: multi-head"], "three_single_ms": three,
                  "coco_ms": p50["COCO YOLOX-nano"],
                  "single_ms": {h: p50[f"{m}: single {h}"] for h in heads},
                  "multi_over_three": p50[f"{m}: multi-head"] / three,
                  "multi_over_coco": p50[f"{m}: multi-head"] / p50["COCO YOLOX-nano"]}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append",
                    help="multi-head ONNX with its manifest (repeatable; default "
                         "engines/models/edge_multihead.onnx)")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--runs", type=int, default=40, help="timed calls per model (after 3 warm-up)")
    ap.add_argument("--repeat", type=int, default=1, help="whole measurements, reported each")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--json", help="write the numbers here too")
    a = ap.parse_args(argv)
    paths = [Path(p) for p in (a.model or ["engines/models/edge_multihead.onnx"])]
    coco = Path(a.shared) / "weights" / "yolox_nano_coco.onnx"
    coco_man = mf.resolve(coco)
    frame = bench_frames(str(Path(a.shared) / "data/video/nvidia_Retail02_short.mp4"), 1)[0]
    xc = Preprocessor(coco_man.input)([frame])[0].copy()
    sess: Dict[str, tuple] = {"COCO YOLOX-nano": (session(coco, a.threads), xc)}
    models: Dict[str, list] = {}
    inputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, model in enumerate(paths):
            man = mf.resolve(model)
            x = Preprocessor(man.input)([frame])[0].copy()
            m = str(model)
            models[m] = list(man.heads)
            inputs[m] = f"{man.input.height}x{man.input.width}"
            sess[f"{m}: multi-head"] = (session(model, a.threads), x)
            sub = Path(tmp) / str(k)
            sub.mkdir()
            for h, p in single_head_models(model, list(man.heads), sub).items():
                sess[f"{m}: single {h}"] = (session(p, a.threads), x)
        reps = [bench_once(models, sess, a.runs) for _ in range(a.repeat)]
    print(f"{a.threads} thread(s), p50 of {a.runs} interleaved calls, {a.repeat} repeat(s); "
          f"COCO input {coco_man.input.height}x{coco_man.input.width}")
    out = {"threads": a.threads, "runs": a.runs, "repeat": a.repeat,
           "coco_input": f"{coco_man.input.height}x{coco_man.input.width}", "models": {}}
    for m in models:
        r_three = [r[m]["multi_over_three"] for r in reps]
        r_coco = [r[m]["multi_over_coco"] for r in reps]
        last = reps[-1][m]
        print(f"{m} (input {inputs[m]})")
        print(f"  multi-head {last['multi_ms']:.2f} ms, "
              + ", ".join(f"single {h} {v:.2f}" for h, v in last["single_ms"].items())
              + f", three together {last['three_single_ms']:.2f}, COCO {last['coco_ms']:.2f} ms"
              + (" (last repeat)" if a.repeat > 1 else ""))
        print(f"  multi-head / three single-head = {np.median(r_three):.3f} (goal <= 0.45)"
              + (f"  repeats {', '.join(f'{v:.3f}' for v in r_three)}" if a.repeat > 1 else ""))
        print(f"  multi-head / COCO YOLOX-nano   = {np.median(r_coco):.3f} (goal <= 1.3)"
              + (f"  repeats {', '.join(f'{v:.3f}' for v in r_coco)}" if a.repeat > 1 else ""))
        macs = conv_macs(Path(m)) / conv_macs(coco)
        print(f"  conv multiply-accumulates, multi-head / COCO YOLOX-nano = {macs:.3f}")
        out["models"][m] = {"input": inputs[m], "repeats": [r[m] for r in reps],
                            "multi_over_three": float(np.median(r_three)),
                            "multi_over_coco": float(np.median(r_coco)),
                            "macs_over_coco": macs}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
