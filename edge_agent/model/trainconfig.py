"""The training YAML (``edge-agent train --config``) as typed dataclasses.

:meth:`TrainConfig.load` reads a file (``base: other.yaml`` first, each top-level key here
replacing the base's), and :meth:`TrainConfig.from_mapping` a mapping (a checkpoint's saved
config). Every problem is a :class:`TrainConfigError` naming the file and the key path, e.g.
``configs/train.yaml: eval.nms_iou: expected a number, got 'high'``. The data sources under
``train`` and ``val`` stay mappings: their keys depend on their ``format`` and are checked by
:mod:`edge_agent.model.sources` when the sources are read.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import yaml

# A new head's default design: 32 channels, one depthwise conv per branch (COCO: 64, two).
# bench/multihead_bench.py measured it cheapest among designs that keep a 3x3 branch conv.
DEFAULT_HEAD = {"width": 32, "convs": 1}


class TrainConfigError(ValueError):
    """A training config that cannot be used: ``source`` (the file), ``key`` (dotted path, '' for
    the whole file) and what is wrong."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key + ': ' if key else ''}{message}")
        self.source, self.key, self.message = source, key, message


@dataclass
class Stage:
    """One training stage: ``epochs`` of ``iters`` batches at ``lr``, with the modules whose
    names start with a ``freeze`` prefix (e.g. ``body``, ``heads.crowd``) frozen."""

    epochs: int = 1
    iters: int = 100
    lr: float = 2e-3
    freeze: List[str] = field(default_factory=list)


@dataclass
class InputSize:
    """The network's input in pixels (the letterboxed frame)."""

    height: int = 288
    width: int = 512


@dataclass
class HeadsFrom:
    """Heads copied from an earlier export of ours (e.g. kept frozen while another trains)."""

    model: str
    heads: List[str]


@dataclass
class InitConfig:
    """Where the weights start: the COCO ONNX (``weights``), COCO class ids a head's classifier
    starts from (``classes``, e.g. ``{crowd: [0]}``), heads of an earlier export, and a training
    checkpoint of ours (``checkpoint``, a ``.pt``) whose weights replace all of these."""

    weights: Optional[str] = None
    classes: Dict[str, List[int]] = field(default_factory=dict)
    heads_from: Optional[HeadsFrom] = None
    checkpoint: Optional[str] = None


@dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher is and how its scores split into positives / ignore / background."""

    model: str = "../shared/weights/yolox_nano_coco.onnx"
    head: str = "crowd"  # the student head the teacher labels
    teacher_head: str = "crowd"  # the teacher manifest's head holding the class
    positive: float = 0.5
    ignore: float = 0.2
    nms_iou: float = 0.45


@dataclass(frozen=True)
class Augment:
    """Cheap augmentation: random scale/translate (one affine warp), flip, HSV jitter."""

    scale: Tuple[float, float] = (0.6, 1.4)
    translate: float = 0.15
    flip: float = 0.5
    hsv: Tuple[float, float, float] = (0.015, 0.5, 0.3)


@dataclass
class EvalConfig:
    """Validation after each epoch and how ``best.pt`` is chosen."""

    epoch_limit: Optional[int] = None  # images per validation source after each epoch
    score_threshold: float = 0.01
    nms_iou: float = 0.6
    select: Optional[List[str]] = None  # heads whose AP chooses best.pt (None: all)
    groups: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)  # also reported
    select_sources: Dict[str, List[str]] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Keep ``head``'s maps close to a teacher's, run on the same batch: the starting (COCO)
    model while the body trains, or ``teacher`` (an export of ours with the same body) in every
    stage; ``sources``: the sources whose images count (None: all)."""

    head: Union[str, List[str]]
    weight: float = 1.0
    teacher: Optional[str] = None
    sources: Optional[List[str]] = None

    def heads(self) -> List[str]:
        """``head`` as a list."""
        return [self.head] if isinstance(self.head, str) else list(self.head)


@dataclass
class HeadDesign:
    """A head's design; a field left None takes the head's default
    (:meth:`TrainConfig.head_specs`)."""

    width: Optional[int] = None  # 8..64 channels of its stems and branches
    convs: Optional[int] = None  # 0..2 depthwise 3x3 convs per branch
    adapter: int = 0  # 0..128: a weapon-head adapter on the stride-8 features
    fine: int = 0  # 0..128: a trainable path from the stride-4 features (net.FinePath)


@dataclass
class TrainConfig:
    """The training YAML (see ``configs/train.yaml``); paths are relative to the working dir."""

    name: str
    version: str
    heads: Dict[str, List[str]]
    train: List[Dict[str, Any]]
    val: List[Dict[str, Any]]
    input: InputSize = field(default_factory=InputSize)
    init: InitConfig = field(default_factory=InitConfig)
    teacher: Optional[TeacherConfig] = None
    out_dir: str = "out/model/default"
    threads: int = 2
    batch: int = 8
    seed: int = 0
    weight_decay: float = 5e-4
    source_weights: Dict[str, float] = field(default_factory=dict)
    augment: Augment = field(default_factory=Augment)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stage_a: Stage = field(default_factory=Stage)
    stage_b: Stage = field(default_factory=lambda: Stage(epochs=0, lr=2e-4))
    distill: Optional[DistillConfig] = None
    description: str = ""
    licence: str = ""
    head_design: Dict[str, HeadDesign] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read and check the YAML at ``path`` (TrainConfigError naming file and key)."""
        return cls.from_mapping(_read_with_base(Path(path), ()), str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> TrainConfig:
        """Check ``data`` (``source`` names it in errors) and build the config."""
        cfg = _build(cls, data, source, "")
        problem = cfg._head_design_problem()
        if problem:
            key, message = problem
            raise TrainConfigError(source, key, message)
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (what a checkpoint saves; :meth:`from_mapping` reads it back)."""
        return dataclasses.asdict(self)

    def _head_design_problem(self) -> Optional[Tuple[str, str]]:
        for name, d in self.head_design.items():
            key = f"head_design.{name}"
            if name not in self.heads:
                return "head_design", f"{name!r} is not a head (heads: {list(self.heads)})"
            if d.width is not None and not 8 <= d.width <= 64:
                return f"{key}.width", f"must be an integer in 8..64, got {d.width!r}"
            if d.convs is not None and not 0 <= d.convs <= 2:
                return f"{key}.convs", f"must be 0, 1 or 2, got {d.convs!r}"
            if not 0 <= d.adapter <= 128:
                return f"{key}.adapter", f"must be an integer in 0..128, got {d.adapter!r}"
            if not 0 <= d.fine <= 128:
                return f"{key}.fine", f"must be an integer in 0..128, got {d.fine!r}"
        return None

    def head_specs(self) -> Dict[str, Any]:
        """Each head's :class:`~edge_agent.model.net.HeadSpec`.

        A head listed in ``head_design`` gets what it says. Otherwise a head whose classifier
        starts from COCO classes (``init.classes``, e.g. crowd) keeps the full COCO head
        (width 64, two convs per branch), and a new head gets the light one (``DEFAULT_HEAD``);
        a field missing from a listed head's entry comes from that same default.
        """
        from edge_agent.model.net import COCO_HEAD, HeadSpec

        coco = set(self.init.classes)
        out = {}
        for name in self.heads:
            base = ({"width": COCO_HEAD.width, "convs": COCO_HEAD.convs} if name in coco
                    else DEFAULT_HEAD)
            d = self.head_design.get(name, HeadDesign())
            out[name] = HeadSpec(base["width"] if d.width is None else d.width,
                                 base["convs"] if d.convs is None else d.convs, d.adapter,
                                 d.fine)
        return out

    @property
    def hw(self) -> Tuple[int, int]:
        return self.input.height, self.input.width


# --- reading -----------------------------------------------------------------------------------


def _read_with_base(path: Path, seen: Tuple[Path, ...]) -> Dict[str, Any]:
    """The YAML mapping at ``path``; with ``base: other.yaml`` (relative to this file) the
    other file's keys first, each top-level key here replacing the base's."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TrainConfigError(str(path), "", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(str(path), "", "expected a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise TrainConfigError(str(path), "base", f"expected a file name, got {base!r}")
    bpath = (path.parent / base).resolve()
    if bpath in seen or bpath == path.resolve():
        raise TrainConfigError(str(path), "base", f"{base} includes itself")
    return {**_read_with_base(bpath, seen + (path.resolve(),)), **data}


def _build(cls: type, data: Any, source: str, key: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping, every value checked against its type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TrainConfigError(source, key, f"expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise TrainConfigError(source, where, f"unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        where = f"{key}.{name}" if key else name
        if name in data:
            kwargs[name] = _value(hints[name], data[name], source, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TrainConfigError(source, where, "missing (required)")
    return cls(**kwargs)


def _value(tp: Any, value: Any, source: str, key: str) -> Any:
    """``value`` checked (and converted: list -> tuple, int -> float) against type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for i, a in enumerate(options):
            try:
                return _value(a, value, source, key)
            except TrainConfigError:
                if i == len(options) - 1:
                    raise
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    if origin in (list, List):
        if not isinstance(value, list):
            raise TrainConfigError(source, key, f"expected a list, got {_show(value)}")
        return [_value(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TrainConfigError(source, key, f"expected a list of {len(args)}, "
                                                f"got {_show(value)}")
        return tuple(_value(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args,
                                                                                       value)))
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise TrainConfigError(source, key, f"expected a mapping, got {_show(value)}")
        return {str(k): _value(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(source, key, f"expected a number, got {_show(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(source, key, f"expected an integer, got {_show(value)}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `version: 1` in YAML is a number; it names a version
        if not isinstance(value, str):
            raise TrainConfigError(source, key, f"expected a string, got {_show(value)}")
        return value
    raise TypeError(f"{key}: no check for the type {tp!r}")  # a field type added without one


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
