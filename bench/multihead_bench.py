"""One backbone for three heads vs three single-head models vs the COCO YOLOX-nano (CPU, ORT).

    .venv/bin/python bench/multihead_bench.py [--model engines/models/edge_multihead.onnx]
        [--shared ../shared] [--runs 40] [--threads 1]

The single-head models are cut out of the multi-head ONNX file itself (``onnx.utils.Extractor``
from the input to one head's output), so each is exactly the same backbone, neck and head at the
same input: what a DeepStream-style chain of a primary and two secondary detectors would run.
"three together" is the sum of the three single-head latencies. All sessions run in this
process, interleaved call by call, on the same letterboxed Retail02 frame, so load from other
processes hits them alike. Ratios are what the result is: multi / three, multi / COCO.
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
from edge_agent.inference.commands import bench_frames
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


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="engines/models/edge_multihead.onnx")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--runs", type=int, default=40, help="timed calls per model (after 3 warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--json", help="write the numbers here too")
    a = ap.parse_args(argv)
    model = Path(a.model)
    man = mf.resolve(model)
    coco = Path(a.shared) / "weights" / "yolox_nano_coco.onnx"
    coco_man = mf.resolve(coco)
    frame = bench_frames(str(Path(a.shared) / "data/video/nvidia_Retail02_short.mp4"), 1)[0]
    x = Preprocessor(man.input)([frame])[0].copy()
    xc = Preprocessor(coco_man.input)([frame])[0].copy()
    with tempfile.TemporaryDirectory() as tmp:
        singles = single_head_models(model, list(man.heads), Path(tmp))
        sess = {"multi-head": (session(model, a.threads), x)}
        for h, p in singles.items():
            sess[f"single {h}"] = (session(p, a.threads), x)
        sess["COCO YOLOX-nano"] = (session(coco, a.threads), xc)
        times: Dict[str, list] = {k: [] for k in sess}
        for i in range(a.runs + 3):
            for name, (s, inp) in sess.items():
                t0 = time.perf_counter()
                s.run(None, {"images": inp})
                if i >= 3:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
    three = sum(v for k, v in p50.items() if k.startswith("single "))
    res = {"input": f"{man.input.height}x{man.input.width}",
           "coco_input": f"{coco_man.input.height}x{coco_man.input.width}",
           "threads": a.threads, "runs": a.runs, "p50_ms": p50, "three_single_ms": three,
           "multi_over_three": p50["multi-head"] / three,
           "multi_over_coco": p50["multi-head"] / p50["COCO YOLOX-nano"]}
    print(f"input {res['input']} (COCO {res['coco_input']}), {a.threads} thread(s), "
          f"p50 of {a.runs} interleaved calls")
    for k, v in p50.items():
        print(f"  {k:18s} {v:8.2f} ms")
    print(f"  {'three together':18s} {three:8.2f} ms")
    print(f"multi-head / three single-head = {res['multi_over_three']:.3f} (goal <= 0.45)")
    print(f"multi-head / COCO YOLOX-nano   = {res['multi_over_coco']:.3f} (goal <= 1.3)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
