"""Build a TensorRT plan from an ONNX model on this device, and store it under its cache key.

``edge-agent engine build MODEL.onnx [--fp16] [--max-batch N] [--workspace-mb MB]``

* ONNX parser errors are reported with the failing node's index, name and operator.
* FP16 is a builder flag (TensorRT 8.5 .. 10.x; TensorRT 11 drops it for strongly typed networks,
  which this builder refuses with a clear message).
* The workspace memory pool is limited; the timing cache (one per GPU and TensorRT version) is
  read before and written after every build, so rebuilds take seconds instead of minutes.
* Progress goes to a callback, ``progress(BuildProgress(phase, step, total))``: TensorRT 10's
  ``IProgressMonitor`` reports every step of every phase; on 8.x only the start and the end of
  the one blocking build call. :class:`TerminalProgress` draws it (a bar per phase, or a spinner
  with the elapsed time); a remote update publishes it instead.
* The plan is stored by :class:`~edge_agent.inference.plans.PlanStore` under a key of ONNX sha256,
  TensorRT version, GPU name and compute capability, precision and max batch.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, TextIO, Union

from edge_agent.inference import manifest as mf
from edge_agent.inference.errors import ModelError
from edge_agent.inference.plans import PlanStore, write_atomic
from edge_agent.inference.trtenv import device_key, import_trt, make_logger, trt_major

log = logging.getLogger(__name__)


def _elapsed(t0: float) -> str:
    s = int(time.monotonic() - t0)
    return f"{s // 60:02d}:{s % 60:02d}"


class Spinner:
    """A one-line spinner with elapsed time, drawn from a thread while a blocking call runs."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, out: TextIO = sys.stderr, interval: float = 0.25):
        self.label, self.out, self.interval = label, out, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._draw, name="build-spinner", daemon=True)
        self._t0 = time.monotonic()

    def _draw(self) -> None:
        i = 0
        while not self._stop.wait(self.interval):
            self.out.write(f"\r{self.label} {self.FRAMES[i % 4]} {_elapsed(self._t0)}")
            self.out.flush()
            i += 1

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.out.write(f"\r{self.label} done in {_elapsed(self._t0)}\n")
        self.out.flush()


def progress_bar(phase: str, step: int, total: int, t0: float, width: int = 30) -> str:
    """Text of one progress line, e.g. ``Building engine [#####.....] 5/10 00:42``."""
    total = max(total, 1)
    done = min(max(step, 0), total)
    fill = int(width * done / total)
    return f"{phase[:40]:<40} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {_elapsed(t0)}"


@dataclass(frozen=True)
class BuildProgress:
    """One progress report of a build: ``step`` of ``total`` in ``phase`` (innermost first
    reported by TensorRT); ``done`` once the build call returned."""

    phase: str
    step: int
    total: int
    done: bool = False

    @property
    def fraction(self) -> float:
        return min(1.0, max(0, self.step) / max(self.total, 1))


ProgressFn = Callable[[BuildProgress], None]


class TerminalProgress:
    """A :data:`ProgressFn` that draws on a terminal: the innermost phase as a bar, or (without
    step reports, TensorRT 8.x) a spinner with the elapsed time."""

    def __init__(self, label: str, out: TextIO = sys.stderr):
        self.label, self.out = label, out
        self.t0 = time.monotonic()
        self._spinner: Optional[Spinner] = None
        self._stepped = False

    def __call__(self, p: BuildProgress) -> None:
        if p.done:
            if self._spinner is not None:
                self._spinner.__exit__(None, None, None)
            elif self._stepped:
                self.out.write("\n")
            return
        if p.total <= 1 and not self._stepped:  # only start/end known: spin meanwhile
            if self._spinner is None:
                self._spinner = Spinner(self.label, self.out).__enter__()
            return
        self._stepped = True
        self.out.write("\r" + progress_bar(p.phase, p.step, p.total, self.t0))
        self.out.flush()


def make_progress_monitor(trt, progress: ProgressFn):
    """A TensorRT 10 ``IProgressMonitor`` reporting the innermost phase to ``progress``."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases: Dict[str, List[int]] = {}  # name -> [step, total]
            self.order: List[str] = []
            self.cancelled = False

        def _report(self) -> None:
            if self.order:
                name = self.order[-1]
                step, total = self.phases[name]
                progress(BuildProgress(name, step, total))

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.phases[phase_name] = [0, int(num_steps)]
            self.order.append(phase_name)
            self._report()

        def step_complete(self, phase_name, step):
            if phase_name in self.phases:
                self.phases[phase_name][0] = int(step) + 1
            self._report()
            return not self.cancelled  # False asks TensorRT to stop the build

        def phase_finish(self, phase_name):
            self.phases.pop(phase_name, None)
            if phase_name in self.order:
                self.order.remove(phase_name)
            self._report()

    return _Monitor()


def _progress_fn(progress: Union[bool, ProgressFn, None], label: str,
                 out: TextIO) -> Optional[ProgressFn]:
    if progress is True:
        return TerminalProgress(label, out)
    return progress or None


def _node_names(onnx_path: Path) -> List[str]:
    """'name (op)' of every graph node, when the onnx package is here (for parser errors)."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:  # the parser already said what is wrong with the file
        return []
    return [f"{n.name or '<unnamed>'} ({n.op_type})" for n in graph.node]


def parser_errors(parser, onnx_path: Path) -> str:
    """All ONNX parser errors, each with the node index, name and operator."""
    names = None
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node()
        where = "graph"
        if node >= 0:
            name = err.node_name() if hasattr(err, "node_name") else ""  # TensorRT >= 8.6
            op = err.node_operator() if hasattr(err, "node_operator") else ""
            if not name:
                names = _node_names(onnx_path) if names is None else names
                name = names[node] if node < len(names) else ""
            where = f"node {node}" + (f" {name}" if name else "") + (f" [{op}]" if op else "")
        lines.append(f"{where}: {err.desc()}")
    return "\n  ".join(lines) or "no error recorded"


def build_plan(onnx_path: os.PathLike, manifest: mf.Manifest, *, fp16: bool, max_batch: int,
               workspace_mb: int = 1024, timing_cache: Optional[Path] = None,
               progress: Union[bool, ProgressFn, None] = True,
               out: TextIO = sys.stderr) -> bytes:
    """Parse ``onnx_path`` and build a serialised plan; raises :class:`ModelError` on failure.

    ``progress``: a :data:`ProgressFn`, True for a :class:`TerminalProgress` on ``out``, or
    False/None for none."""
    trt = import_trt()
    onnx_path = Path(onnx_path)
    if workspace_mb < 16:
        raise ValueError(f"workspace_mb must be >= 16, got {workspace_mb}")
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    major = trt_major(trt)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ModelError(f"model {onnx_path}: the TensorRT ONNX parser failed:\n  "
                         + parser_errors(parser, onnx_path))
    ins = [network.get_input(i) for i in range(network.num_inputs)]
    outs = [network.get_output(i) for i in range(network.num_outputs)]

    def info(t):
        return mf.TensorInfo(t.name, tuple(d if d >= 0 else None for d in t.shape),
                             str(trt.nptype(t.dtype).__name__))

    mf.check_io(manifest, [info(t) for t in ins], [info(t) for t in outs], f"model {onnx_path}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ModelError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly "
                             "typed networks only): export an FP16 ONNX and build without --fp16")
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16; building FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    spec = manifest.input
    inp = network.get_input(0)
    if inp.shape[0] < 0:  # dynamic batch: one profile from 1 to max_batch
        profile = builder.create_optimization_profile()
        c, h, w = 3, spec.height, spec.width
        profile.set_shape(inp.name, (1, c, h, w), (max_batch, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        try:
            cache = config.create_timing_cache(blob)
        except Exception as exc:  # TensorRT raises or returns None for a damaged cache
            log.warning("timing cache %s unreadable (%s)", timing_cache, exc)
            cache = None
        if cache is None and blob:  # start from an empty one; the build just takes longer
            log.warning("timing cache %s unusable; starting a new one", timing_cache)
            cache = config.create_timing_cache(b"")
        if cache is not None:
            config.set_timing_cache(cache, False)
    label = f"building {manifest.name} ({'fp16' if fp16 else 'fp32'}, batch {max_batch})"
    report = _progress_fn(progress, label, out)
    if report is not None and major >= 10 and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = make_progress_monitor(trt, report)
    t0 = time.monotonic()
    if report is not None:
        report(BuildProgress(label, 0, 1))
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if report is not None:
            report(BuildProgress(label, 1, 1, done=True))
    if plan is None:
        raise ModelError(f"model {onnx_path}: TensorRT build failed: "
                         + ("; ".join(logger.errors) or "no reason given"))
    log.info("built %s in %.1f s", label, time.monotonic() - t0)
    if timing_cache is not None and cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_and_store(model_path: os.PathLike, manifest: mf.Manifest, engine_dir: os.PathLike, *,
                    precision: str = "fp16", max_batch: int = 1, workspace_mb: int = 1024,
                    progress: Union[bool, ProgressFn, None] = True) -> Path:
    """Build this device's plan for a model and store it; returns the plan's path."""
    key = device_key(manifest.sha256, precision, max_batch)
    store = PlanStore(engine_dir)
    t0 = time.monotonic()
    plan = build_plan(model_path, manifest, fp16=precision == "fp16", max_batch=max_batch,
                      workspace_mb=workspace_mb, timing_cache=store.timing_cache_path(key),
                      progress=progress)
    return store.save(key, manifest.name, plan, info={
        "onnx": Path(model_path).name, "manifest": manifest.source,
        "workspace_mb": workspace_mb, "build_s": round(time.monotonic() - t0, 1)})
