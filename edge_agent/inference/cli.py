"""`edge-agent engine inspect|build|bench`.

Exit status: 0 ok, 1 cannot run here (e.g. no TensorRT for `build`), 2 bad model or manifest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail
from edge_agent.inference import manifest as mf
from edge_agent.inference.errors import BackendUnavailableError, ModelError


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def describe(m: mf.Manifest) -> List[str]:
    """Human-readable lines for a manifest."""
    i = m.input
    lines = [
        f"name      {m.name} {m.version}",
        f"sha256    {m.sha256}",
        f"input     {i.name}: batch {i.batch or 'dynamic'} x 3 x {i.height} x {i.width} "
        f"{i.layout}, {i.color}, (pixel * {i.scale:g} - mean {list(i.mean)}) / std "
        f"{list(i.std)}, letterbox {i.align} pad {i.pad_value:g}",
    ]
    for o in m.outputs:
        extra = f", strides {list(o.strides)}" if o.strides else ""
        lines.append(f"output    {o.name}: decode {o.decode}{extra}, {len(o.classes)} classes")
    for h in m.head_specs:
        lines.append(f"head      {h.name} <- {h.output}: {', '.join(h.classes)}")
    return lines


def check_graph(model: Path, m: mf.Manifest) -> List[str]:
    """Check an ONNX file (onnx.checker when installed, then its I/O against the manifest)."""
    lines = []
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            onnx.checker.check_model(str(model))
        except Exception as exc:  # onnx raises ValidationError, DecodeError, ...
            raise ModelError(f"model {model}: onnx.checker: {str(exc).strip()[:500]}") from exc
        lines.append("checker   onnx.checker: OK")
    from edge_agent.inference.onnxrt import load_session, tensor_infos

    sess = load_session(model, ["CPUExecutionProvider"])
    ins, outs = tensor_infos(sess.get_inputs()), tensor_infos(sess.get_outputs())
    notes = mf.check_io(m, ins, outs, f"model {model}")
    for t in ins:
        lines.append(f"graph in  {t.name} {_fmt_shape(t.shape)} {t.dtype}")
    for t in outs:
        used = "" if any(o.name == t.name for o in m.outputs) else " (unused)"
        lines.append(f"graph out {t.name} {_fmt_shape(t.shape)} {t.dtype}{used}")
    lines.append("graph     matches the manifest" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    from edge_agent.inference.plans import PlanStore

    model = mf.check_model_file(args.model)
    m = mf.resolve(model, args.manifest, args.engine_dir)
    print(f"model     {model} ({model.stat().st_size} bytes)")
    print(f"manifest  {m.source}")
    for line in describe(m) + check_graph(model, m):
        print(line)
    for side in PlanStore(args.engine_dir).plans_for(m.sha256):
        k = side["key"]
        print(f"plan      {side['plan']}: TensorRT {k['trt_version']}, {k['gpu_name']} "
              f"sm {k['compute_capability']}, {k['precision']}, max batch {k['max_batch']}")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from edge_agent.inference.engine import tensorrt_usable

    model = mf.check_model_file(args.model)
    m = mf.resolve(model, args.manifest, args.engine_dir)
    if args.max_batch < 1:
        raise ModelError(f"--max-batch must be >= 1, got {args.max_batch}")
    why = tensorrt_usable()
    if why:
        return fail("engine build", f"cannot build here: {why}. A TensorRT plan is built on "
                    "the device that runs it (Jetson: JetPack's TensorRT and pycuda); elsewhere "
                    "the model runs on ONNX Runtime.", EXIT_FAILED)
    from edge_agent.inference.provision import ensure_plan
    from edge_agent.inference.trtenv import plan_batch

    batch = plan_batch(m, args.max_batch)
    if batch != args.max_batch:
        print(f"note: {m.name} has a fixed batch of {batch}; building for that", file=sys.stderr)
    path = ensure_plan(m, model, engine_dir=args.engine_dir, rebuild=True,
                       precision="fp16" if args.fp16 else "fp32", max_batch=batch,
                       workspace_mb=args.workspace_mb,
                       progress=not getattr(args, "no_progress", False))
    print(f"plan      {path}")
    return EXIT_OK


def bench_frames(video: str, n: int) -> List[np.ndarray]:
    """``n`` frames from a video, or deterministic 1080p noise when no video is given."""
    if not video:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(n)]
    import cv2

    cap = cv2.VideoCapture(video)
    frames = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    if not frames:
        raise ValueError(f"no frames could be read from {video}")
    return [frames[i % len(frames)] for i in range(n)]


def bench_engine(eng, frames: Sequence[np.ndarray], batch: int, iterations: int,
                 warmup: int = 3) -> Dict[str, float]:
    """Latency of ``eng.infer`` on batches of ``batch`` frames: p50/p99 ms, stage means, fps."""
    batches = [list(frames[(i * batch) % len(frames):][:batch]) for i in range(iterations)]
    batches = [b if len(b) == batch else list(frames[:batch]) for b in batches]
    for b in batches[:warmup]:
        eng.infer(b)
    lat, stages = [], {"pre_ms": [], "infer_ms": [], "post_ms": []}
    for b in batches:
        t0 = time.perf_counter()
        res = eng.infer(b)
        lat.append((time.perf_counter() - t0) * 1e3)
        for k in stages:
            stages[k].append(res.timing[k])
    lat_a = np.array(lat)
    out = {"batch": batch, "p50_ms": float(np.percentile(lat_a, 50)),
           "p99_ms": float(np.percentile(lat_a, 99)), "fps": batch * 1e3 / float(lat_a.mean())}
    out.update({k: float(np.mean(v)) for k, v in stages.items()})
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.config import ModelConfig
    from edge_agent.inference.engine import open_engine

    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    cfg = ModelConfig(path=args.model, manifest=args.manifest, backend=args.backend,
                      max_batch=args.max_batch, engine_dir=args.engine_dir,
                      intra_op_threads=args.threads)
    with open_engine(cfg) as eng:
        m = eng.manifest
        frames = bench_frames(args.video, max(eng.max_batch, 8))
        print(f"model     {m.name} {m.version} ({args.model})")
        native = eng.native_batch or "dynamic"
        print(f"backend   {eng.backend_name}   max batch {eng.max_batch} (model batch {native})")
        print(f"frames    {frames[0].shape[1]}x{frames[0].shape[0]} "
              f"{'from ' + args.video if args.video else 'random noise'}, "
              f"{args.iterations} iterations per batch size")
        print(f"{'batch':>5} {'p50 ms':>8} {'p99 ms':>8} {'pre ms':>7} {'infer ms':>9} "
              f"{'post ms':>8} {'frames/s':>9}")
        for batch in sorted({1, eng.max_batch}):
            r = bench_engine(eng, frames, batch, args.iterations)
            print(f"{batch:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['pre_ms']:>7.2f} "
                  f"{r['infer_ms']:>9.2f} {r['post_ms']:>8.2f} {r['fps']:>9.1f}")
    return EXIT_OK


COMMANDS = {"inspect": cmd_inspect, "build": cmd_build, "bench": cmd_bench}


def main(args: argparse.Namespace) -> int:
    """Handler of `edge-agent engine ...`."""
    if not hasattr(args, "engine_dir"):
        args.engine_dir = "engines"
    try:
        return COMMANDS[args.engine_cmd](args)
    except BackendUnavailableError as exc:
        return fail(f"engine {args.engine_cmd}", f"cannot run here: {exc}", EXIT_FAILED)
    except ModelError as exc:
        return fail(f"engine {args.engine_cmd}", exc, EXIT_BAD_INPUT)
    except ValueError as exc:
        return fail(f"engine {args.engine_cmd}", exc, EXIT_BAD_INPUT)
