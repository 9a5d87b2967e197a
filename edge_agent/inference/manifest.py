"""Model manifest: the JSON file that travels with every ONNX model.

A manifest says how to feed the model and how to read its outputs::

    {
      "format": 1,
      "name": "yolox_nano_coco", "version": "0.1.1rc0",
      "sha256": "<sha256 of the ONNX file>",
      "input": {"name": "images", "batch": 1, "height": 416, "width": 416, "layout": "NCHW",
                "color": "BGR", "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1],
                "pad_value": 114, "align": "top-left"},
      "outputs": [{"name": "output", "decode": "yolox_grid", "strides": [8, 16, 32],
                   "classes": ["person", "bicycle", ...]}],
      "heads": {"crowd": {"output": "output", "classes": ["person"]},
                "weapon": {"output": "output", "classes": ["knife"]}}
    }

* ``input.batch``: a fixed batch size, or ``null`` when the model's batch axis is dynamic.
  A pixel ``p`` (0..255, in ``color`` order) is fed as ``(p * scale - mean) / std``. The frame is
  letterboxed (aspect kept, bilinear) into height x width, at the ``top-left`` or ``center``,
  the rest filled with ``pad_value``.
* ``outputs[].decode``: ``boxes`` (our multi-head export: ``N x K x (4+1+C)``, x1, y1, x2, y2 in
  input pixels, objectness, class scores, all scores already in 0..1) or ``yolox_grid`` (raw YOLOX
  rows ``N x A x (4+1+C)`` at the given strides, objectness and class scores already in 0..1).
* ``heads``: head name -> the output it reads and which of that output's classes it keeps (default:
  all). Each output row gets its best class among all the output's classes; the row goes to the head
  that lists that class. A detection's ``class_id`` indexes the head's own class list.

A model without a manifest beside it (``MODEL.json`` or ``MODEL.manifest.json``) is matched by its
sha256 against the manifests shipped in ``engines/manifests/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from edge_agent.common.files import sha256_file
from edge_agent.config import shipped
from edge_agent.inference.errors import ModelError

FORMAT = 1
DECODERS = ("boxes", "yolox_grid")
# The shipped manifests (installed package data, or the checkout's engines/manifests).
SHIPPED_DIR = shipped.path("engines/manifests")


@dataclass(frozen=True)
class InputSpec:
    """The image input of a model."""

    name: str
    height: int
    width: int
    batch: Optional[int] = None  # None: dynamic batch axis
    layout: str = "NCHW"
    color: str = "BGR"
    scale: float = 1.0
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: float = 114.0
    align: str = "top-left"


@dataclass(frozen=True)
class OutputSpec:
    """One detector output tensor and how to decode it."""

    name: str
    decode: str
    classes: Tuple[str, ...]
    strides: Tuple[int, ...] = ()

    def expected_rows(self, height: int, width: int) -> Optional[int]:
        """Rows per image for ``yolox_grid`` outputs (None for ``boxes``: any K)."""
        if self.decode != "yolox_grid":
            return None
        return sum((height // s) * (width // s) for s in self.strides)


@dataclass(frozen=True)
class HeadSpec:
    """A detection head: which output it reads and which classes (by index there) it keeps."""

    name: str
    output: str
    classes: Tuple[str, ...]
    class_ids: Tuple[int, ...]  # index of each head class in the output's class list


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest. ``heads`` maps head name -> class names."""

    name: str
    version: str
    sha256: str
    input: InputSpec
    outputs: Tuple[OutputSpec, ...]
    head_specs: Tuple[HeadSpec, ...]
    source: str = ""  # where it was loaded from (for messages)
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def heads(self) -> Dict[str, List[str]]:
        return {h.name: list(h.classes) for h in self.head_specs}

    def output(self, name: str) -> OutputSpec:
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (what :func:`parse` reads)."""
        i = self.input
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            **self.extra,
            "input": {
                "name": i.name, "batch": i.batch, "height": i.height, "width": i.width,
                "layout": i.layout, "color": i.color, "scale": i.scale, "mean": list(i.mean),
                "std": list(i.std), "pad_value": i.pad_value, "align": i.align,
            },
            "outputs": [
                {"name": o.name, "decode": o.decode, "classes": list(o.classes),
                 **({"strides": list(o.strides)} if o.strides else {})}
                for o in self.outputs
            ],
            "heads": {h.name: {"output": h.output, "classes": list(h.classes)}
                      for h in self.head_specs},
        }


# --- parsing -----------------------------------------------------------------------------------


class _Reader:
    """Typed access to a JSON object with errors naming the file and key path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, msg: str) -> ModelError:
        return ModelError(f"manifest {self.source}: {path}: {msg}")

    def get(self, obj: Dict[str, Any], key: str, path: str, kind, default: Any = ...) -> Any:
        if key not in obj:
            if default is ...:
                raise self.fail(f"{path}{key}", "missing")
            return default
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is None and default is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            name = getattr(kind, "__name__", str(kind))
            raise self.fail(f"{path}{key}", f"expected {name}, got {value!r}")
        return value

    def floats3(self, obj: Dict[str, Any], key: str, path: str, default) -> Tuple[float, ...]:
        value = obj.get(key, default)
        ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            raise self.fail(f"{path}{key}", f"expected 3 numbers, got {value!r}")
        return tuple(float(v) for v in value)


def parse(data: Any, source: str = "<manifest>") -> Manifest:
    """Validate a manifest's JSON object; raises :class:`ModelError` naming the bad key."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise r.fail("(top)", "expected a JSON object")
    fmt = r.get(data, "format", "", int, FORMAT)
    if fmt != FORMAT:
        raise r.fail("format", f"unsupported format {fmt} (this version reads {FORMAT})")
    name = r.get(data, "name", "", str)
    version = str(r.get(data, "version", "", (str, int, float)))
    sha = r.get(data, "sha256", "", str).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise r.fail("sha256", f"expected 64 hex digits, got {sha!r}")

    i = r.get(data, "input", "", dict)
    batch = r.get(i, "batch", "input.", int, None)
    spec = InputSpec(
        name=r.get(i, "name", "input.", str),
        height=r.get(i, "height", "input.", int),
        width=r.get(i, "width", "input.", int),
        batch=batch,
        layout=r.get(i, "layout", "input.", str, "NCHW"),
        color=r.get(i, "color", "input.", str, "BGR"),
        scale=r.get(i, "scale", "input.", float, 1.0),
        mean=r.floats3(i, "mean", "input.", [0, 0, 0]),
        std=r.floats3(i, "std", "input.", [1, 1, 1]),
        pad_value=r.get(i, "pad_value", "input.", float, 114.0),
        align=r.get(i, "align", "input.", str, "top-left"),
    )
    if spec.layout != "NCHW":
        raise r.fail("input.layout", f"only NCHW is supported, got {spec.layout!r}")
    if spec.color not in ("BGR", "RGB"):
        raise r.fail("input.color", f"expected BGR or RGB, got {spec.color!r}")
    if spec.align not in ("top-left", "center"):
        raise r.fail("input.align", f"expected top-left or center, got {spec.align!r}")
    if not (16 <= spec.height <= 8192 and 16 <= spec.width <= 8192):
        raise r.fail("input", f"size {spec.height}x{spec.width} outside 16..8192")
    if batch is not None and batch < 1:
        raise r.fail("input.batch", f"must be >= 1 or null, got {batch}")
    if any(s == 0 for s in spec.std):
        raise r.fail("input.std", "must not contain 0")

    outputs: List[OutputSpec] = []
    raw_outputs = r.get(data, "outputs", "", list)
    if not raw_outputs:
        raise r.fail("outputs", "at least one output is needed")
    for n, o in enumerate(raw_outputs):
        path = f"outputs[{n}]."
        if not isinstance(o, dict):
            raise r.fail(f"outputs[{n}]", "expected an object")
        decode = r.get(o, "decode", path, str)
        if decode not in DECODERS:
            raise r.fail(f"{path}decode", f"expected one of {', '.join(DECODERS)}, got {decode!r}")
        classes = r.get(o, "classes", path, list)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise r.fail(f"{path}classes", "expected a non-empty list of class names")
        if len(set(classes)) != len(classes):
            raise r.fail(f"{path}classes", "class names must be unique")
        strides: Tuple[int, ...] = ()
        if decode == "yolox_grid":
            strides = tuple(r.get(o, "strides", path, list))
            if not strides or not all(isinstance(s, int) and s > 0 for s in strides):
                raise r.fail(f"{path}strides", f"expected positive integers, got {list(strides)}")
            for s in strides:
                if spec.height % s or spec.width % s:
                    raise r.fail(f"{path}strides", f"input size not divisible by stride {s}")
        outputs.append(OutputSpec(r.get(o, "name", path, str), decode, tuple(classes), strides))
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise r.fail("outputs", "output names must be unique")

    heads: List[HeadSpec] = []
    for hname, h in r.get(data, "heads", "", dict).items():
        path = f"heads.{hname}."
        if not isinstance(h, dict):
            raise r.fail(f"heads.{hname}", "expected an object")
        oname = r.get(h, "output", path, str, hname)
        if oname not in names:
            raise r.fail(f"{path}output", f"no output named {oname!r} (outputs: {names})")
        out = outputs[names.index(oname)]
        classes = r.get(h, "classes", path, list, list(out.classes))
        unknown = [c for c in classes if c not in out.classes]
        if unknown or not classes:
            raise r.fail(f"{path}classes", f"not classes of output {oname!r}: {unknown}")
        heads.append(HeadSpec(hname, oname, tuple(classes),
                              tuple(out.classes.index(c) for c in classes)))
    if not heads:
        raise r.fail("heads", "at least one head is needed")
    for out in outputs:
        owned = [c for h in heads if h.output == out.name for c in h.classes]
        if len(owned) != len(set(owned)):
            raise r.fail("heads", f"a class of output {out.name!r} is mapped to two heads")

    known = {"format", "name", "version", "sha256", "input", "outputs", "heads"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Manifest(name, version, sha, spec, tuple(outputs), tuple(heads), source, extra)


def load(path: os.PathLike) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"manifest {p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"manifest {p}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    return parse(data, str(p))


# --- finding a model's manifest -------------------------------------------------------------------

_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: os.PathLike) -> str:
    """sha256 of a file (cached by path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


def check_model_file(model: os.PathLike) -> Path:
    """The model path if it is a readable, non-empty file; else :class:`ModelError`."""
    p = Path(model)
    if not p.exists():
        raise ModelError(f"model {p}: no such file")
    if not p.is_file():
        raise ModelError(f"model {p}: not a regular file")
    if p.stat().st_size == 0:
        raise ModelError(f"model {p}: the file is empty")
    return p


def beside(model: os.PathLike) -> List[Path]:
    """Where a model's own manifest may sit: ``MODEL.json`` or ``MODEL.manifest.json``."""
    p = Path(model)
    return [p.with_suffix(".json"), p.with_suffix(".manifest.json")]


def search_dirs(engine_dir: Optional[os.PathLike] = None) -> List[Path]:
    """Directories searched (in order) for a manifest matching a model's sha256."""
    dirs = []
    if engine_dir is not None:
        dirs.append(Path(engine_dir) / "manifests")
    dirs.append(SHIPPED_DIR)
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def find_by_sha(sha: str, dirs: Iterable[Path]) -> Optional[Manifest]:
    """The first manifest in ``dirs`` whose sha256 is ``sha`` (unparsable files are skipped)."""
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and str(data.get("sha256", "")).lower() == sha:
                return parse(data, str(f))
    return None


def resolve(model: os.PathLike, manifest: Optional[os.PathLike] = None,
            engine_dir: Optional[os.PathLike] = None, verify_sha: bool = True) -> Manifest:
    """The manifest of ``model``: the given file, else one beside it, else one matched by sha256.

    Raises :class:`ModelError` when the model file is missing or empty, no manifest is found, or
    the manifest's sha256 is not the model file's.
    """
    p = check_model_file(model)
    sha = file_sha256(p)
    if manifest is None:
        for cand in beside(p):
            if cand.is_file():
                manifest = cand
                break
    if manifest is not None:
        m = load(manifest)
        if verify_sha and m.sha256 != sha:
            raise ModelError(
                f"model {p}: sha256 {sha} does not match manifest {m.source} (expects {m.sha256});"
                " the file is not the model the manifest describes (truncated or replaced?)")
        return m
    dirs = search_dirs(engine_dir)
    found = find_by_sha(sha, dirs)
    if found is None:
        where = ", ".join(str(d) for d in dirs)
        raise ModelError(
            f"model {p}: no manifest (looked for {beside(p)[0].name} beside it and for sha256 "
            f"{sha} in {where}); write one or pass --manifest FILE")
    return found


# --- checking a graph's I/O against the manifest --------------------------------------------------

Dim = Any  # int for a fixed axis, a str/None for a dynamic one


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints or names/None for dynamic axes) and element type of a graph tensor."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str  # "float32", "float16", ...


def _fixed(d: Dim) -> bool:
    return isinstance(d, int) and d > 0


def check_io(m: Manifest, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
             where: str) -> List[str]:
    """Compare a graph's inputs/outputs with the manifest.

    Returns notes (e.g. "batch axis is dynamic"); raises :class:`ModelError` listing every mismatch.
    """
    problems: List[str] = []
    notes: List[str] = []
    by_in = {t.name: t for t in inputs}
    spec = m.input
    t = by_in.get(spec.name)
    if t is None:
        problems.append(f"input {spec.name!r} not in the graph (inputs: {sorted(by_in)})")
    else:
        if len(inputs) != 1:
            problems.append(f"expected exactly one input, the graph has {sorted(by_in)}")
        if t.dtype not in ("float32", "float16"):
            problems.append(f"input {t.name!r} has type {t.dtype}, expected float32 or float16")
        if len(t.shape) != 4:
            problems.append(f"input {t.name!r} has shape {list(t.shape)}, expected N x 3 x H x W")
        else:
            n, c, h, w = t.shape
            want = (spec.batch, 3, spec.height, spec.width)
            for axis, got, exp in zip("NCHW", (n, c, h, w), want):
                if exp is None:
                    if _fixed(got):
                        problems.append(f"input {t.name!r} axis {axis} is fixed at {got}, "
                                        "the manifest says dynamic (batch: null)")
                elif _fixed(got) and got != exp:
                    problems.append(f"input {t.name!r} has shape {list(t.shape)}, the manifest "
                                    f"expects [{', '.join(str(x) for x in want)}] "
                                    f"(axis {axis}: {got} != {exp})")
                elif not _fixed(got) and axis != "N":
                    problems.append(f"input {t.name!r} axis {axis} is dynamic, expected {exp}")
            if not _fixed(n):
                notes.append("batch axis is dynamic")
    by_out = {o.name: o for o in outputs}
    for o in m.outputs:
        t = by_out.get(o.name)
        if t is None:
            problems.append(f"output {o.name!r} not in the graph (outputs: {sorted(by_out)})")
            continue
        cols = 5 + len(o.classes)
        if len(t.shape) != 3:
            problems.append(f"output {o.name!r} has shape {list(t.shape)}, expected N x K x {cols}")
            continue
        if _fixed(t.shape[2]) and t.shape[2] != cols:
            problems.append(f"output {o.name!r} has {t.shape[2]} columns, the manifest's "
                            f"{len(o.classes)} classes need 4+1+{len(o.classes)} = {cols}")
        rows = o.expected_rows(spec.height, spec.width)
        if rows is not None and _fixed(t.shape[1]) and t.shape[1] != rows:
            problems.append(f"output {o.name!r} has {t.shape[1]} rows, strides "
                            f"{list(o.strides)} at {spec.height}x{spec.width} give {rows}")
    if problems:
        raise ModelError(f"{where} does not match manifest {m.source or m.name}:\n  "
                         + "\n  ".join(problems))
    return notes
