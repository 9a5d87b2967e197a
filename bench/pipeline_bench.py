"""End-to-end speed of the pipeline against what its parts allow, and batching across cameras.

    .venv/bin/python bench/pipeline_bench.py [--shared ../shared] [--frames 150] [--threads 0]

1. ``edge-agent track`` frames/s on CPU (a subprocess, as a user runs it; events to a file, no
   output video) against the limit measured in the same run on the same clip, model and input
   size: 1 / (decode time per frame + bare ONNX Runtime ``session.run`` time per frame), each
   measured alone. Ratio >= 0.9 is the goal; decoding in the reader thread overlaps inference,
   so the ratio may go above 1.
2. Four cameras (four readers of the same clip) through one ``Pipeline``: batched (max_batch 4)
   vs one frame per inference call (max_batch 1). Frames/s over all cameras.

Other processes on the machine slow every variant; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import onnxruntime as ort

from edge_agent import config as cfgmod
from edge_agent.inference import open_engine
from edge_agent.inference.preprocess import Preprocessor
from edge_agent.outbox.delivery import EventDelivery
from edge_agent.outbox.eventlog import MemoryLog
from edge_agent.pipeline import Pipeline

CLIP = ("data", "video", "nvidia_Retail02_short.mp4")
MODEL = ("weights", "yolox_nano_coco.onnx")


def decode_ms(clip: Path, n: int) -> tuple:
    """Mean ms to decode one frame (alone), and the frames."""
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    frames: List[np.ndarray] = []
    t0 = time.perf_counter()
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    dt = time.perf_counter() - t0
    cap.release()
    return dt * 1000.0 / len(frames), frames


def bare_ort_ms(model: Path, manifest_input, frames: List[np.ndarray], threads: int) -> float:
    """Mean ms of ``session.run`` on already letterboxed single-frame inputs (alone)."""
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pre = Preprocessor(manifest_input)
    inputs = [pre([f])[0].copy() for f in frames]
    for x in inputs[:5]:  # warm-up
        sess.run(None, {name: x})
    t0 = time.perf_counter()
    for x in inputs:
        sess.run(None, {name: x})
    return (time.perf_counter() - t0) * 1000.0 / len(inputs)


def track_fps(clip: Path, model: Path, n: int, threads: int) -> float:
    """Frames/s that `edge-agent track` reports for the first ``n`` frames of ``clip``."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "c.yaml"
        conf.write_text(f"model: {{intra_op_threads: {threads}}}\n")
        cmd = [sys.executable, "-m", "edge_agent.cli", "track", "-i", str(clip), "--model",
               str(model), "--max-frames", str(n), "--events", str(Path(tmp) / "ev.jsonl"),
               "--no-progress", "-C", str(conf)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) frames in ([\d.]+) s \(([\d.]+) fps\)", out.stderr)
    if not m:
        raise RuntimeError(f"unexpected track output: {out.stderr[-500:]}")
    return float(m.group(3))


def dynamic_batch_copy(model: Path, manifest: dict, out_dir: Path) -> tuple:
    """A copy of a fixed-batch-1 YOLOX ONNX with a dynamic batch axis, and its manifest.

    The YOLOX export computes its reshapes from the input's shape, so only the declared input
    and output batch dims need to change. Returns (model path, manifest path) or None without
    the ``onnx`` package.
    """
    try:
        import onnx
    except ImportError:
        return None
    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for o in m.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.value_info[:]  # stale batch-1 shapes of intermediate tensors
    path = out_dir / "model_dynamic.onnx"
    onnx.save(m, str(path))
    data = json.loads(json.dumps(manifest))
    data["input"]["batch"] = None
    data["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    mpath = out_dir / "model_dynamic.json"
    mpath.write_text(json.dumps(data))
    return path, mpath


def cameras_fps(clip: Path, model: Path, n: int, max_batch: int, threads: int,
                manifest: Optional[Path] = None) -> tuple:
    """Total processed frames/s of 4 file cameras in one Pipeline; and the mean batch size."""
    cams = [{"name": f"cam{i}", "source": str(clip)} for i in range(4)]
    cfg = cfgmod.Config.model_validate({
        "model": {"path": str(model), "max_batch": max_batch, "intra_op_threads": threads,
                  "manifest": None if manifest is None else str(manifest)},
        "cameras": cams, "mqtt": {"enabled": False},
    })
    engine = open_engine(cfg.model)
    total = [0]
    pipe = None

    def hook(f, tracks, st):
        total[0] += 1
        if total[0] >= 4 * n:
            pipe.stop()

    pipe = Pipeline(cfg, engine, EventDelivery(MemoryLog(), []), on_frame=hook)
    t0 = time.perf_counter()
    pipe.run()
    dt = time.perf_counter() - t0
    engine.close()
    return total[0] / dt, pipe.stats()["inference"]["mean_batch"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--frames", type=int, default=150, help="frames per measurement")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = default)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the 4-camera runs")
    ap.add_argument("--model", help="ONNX model (default: the COCO YOLOX-nano in --shared)")
    args = ap.parse_args(argv)
    shared = Path(args.shared)
    clip = shared.joinpath(*CLIP)
    model = Path(args.model) if args.model else shared.joinpath(*MODEL)
    for p in (clip, model):
        if not p.exists():
            print(f"missing {p}", file=sys.stderr)
            return 2
    eng = open_engine(cfgmod.ModelConfig(path=str(model)))
    spec, backend = eng.manifest.input, eng.backend_name
    manifest = eng.manifest.to_dict()
    eng.close()
    print(f"clip {clip.name}, model {model.name} ({spec.width}x{spec.height}), {backend}, "
          f"{os.cpu_count()} CPUs, {args.frames} frames")

    dec, frames = decode_ms(clip, args.frames)
    inf = bare_ort_ms(model, spec, frames, args.threads)
    limit = 1000.0 / (dec + inf)
    e2e = track_fps(clip, model, len(frames), args.threads)
    print()
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'decode alone (ms/frame)':<44}{dec:>12.2f}")
    print(f"{'bare ORT session.run alone (ms/frame)':<44}{inf:>12.2f}")
    print(f"{'limit 1/(decode+infer) (fps)':<44}{limit:>12.1f}")
    print(f"{'edge-agent track end to end (fps)':<44}{e2e:>12.1f}")
    print(f"{'ratio track / limit (goal >= 0.9)':<44}{e2e / limit:>12.2f}")

    n4 = max(10, args.frames // 2)
    with tempfile.TemporaryDirectory() as tmp:
        dyn = dynamic_batch_copy(model, manifest, Path(tmp))
        variants = [("batched (max_batch 4)", model, 4, None),
                    ("one at a time (max_batch 1)", model, 1, None)]
        if dyn is not None:
            # The shipped model has a fixed batch of 1, so "batched" runs it frame by frame; a
            # copy with a dynamic batch axis takes all four frames in one session.run.
            variants.append(("batched, dynamic-batch copy of the model", dyn[0], 4, dyn[1]))
        # Alternate the variants over rounds and keep the median: load from other processes
        # then hits all of them alike instead of whichever ran during a busy spell.
        runs: dict = {name: [] for name, *_ in variants}
        for _ in range(args.rounds):
            for name, mpath, mb, man in variants:
                runs[name].append(cameras_fps(clip, mpath, n4, mb, args.threads, man))
    print()
    print(f"4 cameras x {n4} frames, median of {args.rounds}{'':<10}{'fps (all)':>12}"
          f"{'mean batch':>12}")
    med = {}
    for name, vals in runs.items():
        med[name] = float(np.median([v[0] for v in vals]))
        print(f"{name:<44}{med[name]:>12.1f}{vals[0][1]:>12.2f}")
    one = med["one at a time (max_batch 1)"]
    print(f"{'ratio batched / one at a time':<44}{med['batched (max_batch 4)'] / one:>12.2f}")
    if dyn is not None:
        ratio = med["batched, dynamic-batch copy of the model"] / one
        print(f"{'ratio dynamic batched / one at a time':<44}{ratio:>12.2f}")
    else:
        print("(no `onnx` package: the dynamic-batch variant was skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
