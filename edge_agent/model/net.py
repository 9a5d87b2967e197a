"""The multi-head detector: a YOLOX-nano backbone and PAFPN neck shared by one head per task.

The layer layout is YOLOX-nano's (depth 0.33, width 0.25, depthwise convs, SiLU), so the
tensors of ``../shared/weights/yolox_nano_coco.onnx`` load into it. That export has BatchNorm
folded into the convolutions, so every conv here has a bias and there is no BatchNorm: the
backbone's normalisation is frozen by construction in both training stages.

Each head (``weapon``, ``crowd``, ``plate``, ...) has its own stems and cls / reg / obj branches
at strides 8, 16, 32. A head returns raw maps; :func:`decode` turns them into boxes. A head's
design (:class:`HeadSpec`: width, convs per branch) is set per head; the COCO head is width 64
with two convs per branch, and a lighter head is what keeps three heads cheap.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
NECK_CHANNELS = (64, 128, 256)  # channels of the stride 8 / 16 / 32 features
HEAD_WIDTH = 64


@dataclass(frozen=True)
class HeadSpec:
    """One head's design: channels of its stems and branches, depthwise convs per branch.

    ``HeadSpec(64, 2)`` is the COCO YOLOX-nano head. Narrower or shallower heads load the COCO
    tensors cut to their shape (the first ``width`` channels, the first ``convs`` convs).
    """

    width: int = HEAD_WIDTH
    convs: int = 2
    adapter: int = 0  # channels of a trainable branch on the stride-8 features (0: none)

    def __post_init__(self):
        if not (isinstance(self.width, int) and 8 <= self.width <= HEAD_WIDTH):
            raise ValueError(f"head width must be an integer in 8..{HEAD_WIDTH}, "
                             f"got {self.width!r}")
        if not (isinstance(self.convs, int) and 0 <= self.convs <= 2):
            raise ValueError(f"head convs must be 0, 1 or 2, got {self.convs!r}")
        if not (isinstance(self.adapter, int) and 0 <= self.adapter <= 128):
            raise ValueError(f"head adapter must be an integer in 0..128, got {self.adapter!r}")


COCO_HEAD = HeadSpec(HEAD_WIDTH, 2)


class Conv(nn.Module):
    """Conv (BatchNorm folded in, so with bias) + SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv(x))


class DWConv(nn.Module):
    """Depthwise k x k conv then pointwise 1 x 1 conv."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.dconv = Conv(cin, cin, k, stride, groups=cin)
        self.pconv = Conv(cin, cout, 1)

    def forward(self, x):
        return self.pconv(self.dconv(x))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.conv1 = Conv(c, c, 1)
        self.conv2 = DWConv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.add else y


class CSPLayer(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True):
        super().__init__()
        hidden = cout // 2
        self.conv1 = Conv(cin, hidden, 1)
        self.conv2 = Conv(cin, hidden, 1)
        self.conv3 = Conv(2 * hidden, cout, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, shortcut) for _ in range(n)])

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv2(x)  # before m: YOLOX's order, which the ONNX conv order follows
        return self.conv3(torch.cat([self.m(a), b], 1))


class SPP(nn.Module):
    def __init__(self, cin: int, cout: int, kernels=(5, 9, 13)):
        super().__init__()
        hidden = cin // 2
        self.conv1 = Conv(cin, hidden, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernels])
        self.conv2 = Conv(hidden * (len(kernels) + 1), cout, 1)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Focus(nn.Module):
    """Space-to-depth (2 x 2 pixels into channels) then a 3 x 3 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = Conv(cin * 4, cout, 3)

    def forward(self, x):
        tl, tr = x[..., ::2, ::2], x[..., ::2, 1::2]
        bl, br = x[..., 1::2, ::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat([tl, bl, tr, br], 1))


class Body(nn.Module):
    """Backbone (depthwise CSPDarknet) and PAFPN neck: image -> features at strides 8/16/32."""

    def __init__(self):
        super().__init__()
        self.stem = Focus(3, 16)
        self.dark2 = nn.Sequential(DWConv(16, 32, 3, 2), CSPLayer(32, 32, 1))
        self.dark3 = nn.Sequential(DWConv(32, 64, 3, 2), CSPLayer(64, 64, 3))
        self.dark4 = nn.Sequential(DWConv(64, 128, 3, 2), CSPLayer(128, 128, 3))
        self.dark5 = nn.Sequential(DWConv(128, 256, 3, 2), SPP(256, 256),
                                   CSPLayer(256, 256, 1, shortcut=False))
        self.lateral_conv0 = Conv(256, 128, 1)
        self.C3_p4 = CSPLayer(256, 128, 1, False)
        self.reduce_conv1 = Conv(128, 64, 1)
        self.C3_p3 = CSPLayer(128, 64, 1, False)
        self.bu_conv2 = DWConv(64, 64, 3, 2)
        self.C3_n3 = CSPLayer(128, 128, 1, False)
        self.bu_conv1 = DWConv(128, 128, 3, 2)
        self.C3_n4 = CSPLayer(256, 256, 1, False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        c3 = self.dark3(x)
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        fpn0 = self.lateral_conv0(c5)
        f = self.C3_p4(torch.cat([self.up(fpn0), c4], 1))
        fpn1 = self.reduce_conv1(f)
        p3 = self.C3_p3(torch.cat([self.up(fpn1), c3], 1))
        p4 = self.C3_n3(torch.cat([self.bu_conv2(p3), fpn1], 1))
        p5 = self.C3_n4(torch.cat([self.bu_conv1(p4), fpn0], 1))
        return p3, p4, p5


class Adapter(nn.Module):
    """A head's own trainable branch on the shared stride-8 features, added to them.

    The frozen COCO neck's stride-8 map was made for COCO objects; a 10-px gun needs features
    of its own. 1 x 1 in, a depthwise 3 x 3 and 1 x 1, then a 1 x 1 out that starts at zero, so
    an untrained adapter leaves the head exactly as it was.
    """

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.inp = Conv(channels, width, 1)
        self.mid = DWConv(width, width, 3)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        return x + self.out(self.mid(self.inp(x)))


class Head(nn.Module):
    """One decoupled YOLOX head: per stride a stem, then cls and reg/obj branches.

    Returns per level a raw ``N x (4 + 1 + C) x H x W`` map: reg (x, y offsets, log w, log h),
    objectness logit, class logits.
    """

    def __init__(self, num_classes: int, spec: HeadSpec = COCO_HEAD):
        super().__init__()
        self.num_classes = num_classes
        self.spec = spec
        width, n = spec.width, spec.convs
        self.stems = nn.ModuleList([Conv(c, width, 1) for c in NECK_CHANNELS])
        self.cls_convs = nn.ModuleList(
            [nn.Sequential(*[DWConv(width, width) for _ in range(n)]) for _ in STRIDES])
        self.reg_convs = nn.ModuleList(
            [nn.Sequential(*[DWConv(width, width) for _ in range(n)]) for _ in STRIDES])
        self.cls_preds = nn.ModuleList([nn.Conv2d(width, num_classes, 1) for _ in STRIDES])
        self.reg_preds = nn.ModuleList([nn.Conv2d(width, 4, 1) for _ in STRIDES])
        self.obj_preds = nn.ModuleList([nn.Conv2d(width, 1, 1) for _ in STRIDES])
        self.adapter = Adapter(NECK_CHANNELS[0], spec.adapter) if spec.adapter else None

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for k, x in enumerate(feats):
            if k == 0 and self.adapter is not None:
                x = self.adapter(x)
            x = self.stems[k](x)
            cls = self.cls_preds[k](self.cls_convs[k](x))  # YOLOX's order (matters for loading)
            reg_feat = self.reg_convs[k](x)
            reg = self.reg_preds[k](reg_feat)
            obj = self.obj_preds[k](reg_feat)
            out.append(torch.cat([reg, obj, cls], 1))
        return out


class MultiHeadNet(nn.Module):
    """Shared body plus one :class:`Head` per task; ``forward`` returns raw maps by head.

    ``specs[name]`` is that head's design; heads not listed get the COCO head's.
    """

    def __init__(self, heads: Dict[str, Sequence[str]],
                 specs: Optional[Dict[str, HeadSpec]] = None):
        super().__init__()
        if not heads:
            raise ValueError("at least one head is needed")
        specs = dict(specs or {})
        unknown = sorted(set(specs) - set(heads))
        if unknown:
            raise ValueError(f"head designs for unknown heads {unknown}; heads are {list(heads)}")
        self.head_classes = {name: list(classes) for name, classes in heads.items()}
        self.body = Body()
        self.heads = nn.ModuleDict({name: Head(len(c), specs.get(name, COCO_HEAD))
                                    for name, c in self.head_classes.items()})

    def forward(self, x) -> Dict[str, List[torch.Tensor]]:
        feats = self.body(x)
        return {name: head(feats) for name, head in self.heads.items()}


def grid(h: int, w: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (A, 2) in cell units and their strides (A,) for an h x w input."""
    pts, steps = [], []
    for s in STRIDES:
        ys, xs = torch.meshgrid(torch.arange(h // s, device=device),
                                torch.arange(w // s, device=device), indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1))
        steps.append(torch.full(((h // s) * (w // s),), float(s), device=device))
    return torch.cat(pts).float(), torch.cat(steps)


def flatten(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level ``N x D x H x W`` maps -> ``N x A x D`` rows (levels in stride order)."""
    return torch.cat([m.flatten(2) for m in maps], 2).permute(0, 2, 1)


def decode(rows: torch.Tensor, pts: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Raw rows ``N x A x (5+C)`` -> x1, y1, x2, y2 (input pixels), sigmoid obj, sigmoid cls."""
    st = steps[None, :, None]
    xy = (rows[..., :2] + pts[None]) * st
    wh = torch.exp(rows[..., 2:4].clamp(max=10.0)) * st
    box = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    return torch.cat([box, torch.sigmoid(rows[..., 4:])], -1)


class Exported(nn.Module):
    """What goes into the ONNX file: decoded boxes, one output per head (``decode: boxes``)."""

    def __init__(self, net: MultiHeadNet, height: int, width: int):
        super().__init__()
        self.net = net
        pts, steps = grid(height, width)
        self.register_buffer("pts", pts, persistent=False)
        self.register_buffer("steps", steps, persistent=False)

    def forward(self, x):
        maps = self.net(x)
        return tuple(decode(flatten(maps[name]), self.pts, self.steps) for name in maps)


# --- loading the COCO YOLOX-nano tensors --------------------------------------------------------


@dataclass
class LoadReport:
    """Which tensors came from the ONNX file."""

    loaded: List[str]
    missing: List[str]  # parameters of ours that got nothing
    unused: List[str]  # ONNX initialisers not used

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors from the COCO YOLOX-nano; "
                f"{len(self.missing)} not loaded ({', '.join(self.missing) or 'none'}); "
                f"{len(self.unused)} ONNX initialisers unused ({', '.join(self.unused) or 'none'})")


def _onnx_convs(path: Path) -> List[Tuple[str, object, object]]:
    """(conv node name, weight, bias) of every Conv in the ONNX file, in graph order."""
    import onnx

    return _convs_of(onnx.load(str(path)))


def _convs_of(model) -> List[Tuple[str, object, object]]:
    """:func:`_onnx_convs` of a loaded ``onnx.ModelProto``."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # the exporter writes a tensor equal to another once, the other through an Identity
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def tensor(name):
        while name not in inits and name in alias:
            name = alias[name]
        return inits.get(name)

    convs = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            b = tensor(node.input[2]) if len(node.input) > 2 else None
            convs.append((node.input[1], tensor(node.input[1]), b))
    return convs


def _copy_in_forward_order(root: nn.Module, run, convs, path: Path, what: str) -> None:
    """Copy ``convs`` (graph order) into ``root``'s Conv2d modules in the order ``run()`` calls
    them: ONNX export traces the forward pass, so both orders are the same."""
    order: List[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in root.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    if len(order) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, {what} has {len(order)}")
    with torch.no_grad():
        for mod, (name, w, b) in zip(order, convs):
            if w is None or tuple(w.shape) != tuple(mod.weight.shape):
                raise ValueError(f"{path}: tensor {name} has shape "
                                 f"{None if w is None else list(w.shape)}, expected "
                                 f"{list(mod.weight.shape)}")
            mod.weight.copy_(torch.from_numpy(w.copy()))
            mod.bias.copy_(torch.from_numpy(b.copy()) if b is not None else 0)


def coco_reference(path: Path) -> nn.Module:
    """A :class:`Body` plus an 80-class :class:`Head` holding the COCO tensors (the teacher)."""
    ref = nn.Module()
    ref.body = Body()
    ref.head = Head(80)
    _copy_in_forward_order(ref, lambda: ref.head(ref.body(torch.zeros(1, 3, 64, 64))),
                           _onnx_convs(path), path, "the YOLOX-nano layout (not a YOLOX-nano "
                           "export?)")
    return ref


def _cut(t: torch.Tensor, shape) -> torch.Tensor:
    """The leading ``shape`` block of ``t`` (a narrower head keeps COCO's first channels)."""
    return t[tuple(slice(0, d) for d in shape)].clone()


def load_coco(net: MultiHeadNet, path: Path, init_from: Dict[str, Sequence[int]]) -> LoadReport:
    """Load the COCO YOLOX-nano into ``net``: the body, and every head's stems and branches.

    ``init_from[head]`` lists the COCO class ids whose classifier rows start that head's classes
    (e.g. ``{"crowd": [0]}``: person); heads not listed start their classifier from a low prior
    (sigmoid ~0.01) and everything else from the COCO head. A lighter head (see
    :class:`HeadSpec`) takes the COCO tensors cut to its shape: its first ``width`` channels and
    its first ``convs`` convs per branch, so a one-conv branch starts from COCO's first conv.
    """
    ref = coco_reference(Path(path))
    loaded, missing = [], []
    ours = net.state_dict()
    new = dict(ours)
    for k, v in ref.body.state_dict().items():
        new[f"body.{k}"] = v
        loaded.append(f"body.{k}")
    ref_head = ref.head.state_dict()
    for hname, head in net.heads.items():
        ids = list(init_from.get(hname, []))
        for k, v in ref_head.items():
            key = f"heads.{hname}.{k}"
            if key not in ours:
                continue  # a conv this (shallower) head does not have
            if k.startswith("cls_preds."):
                if len(ids) == head.num_classes:
                    new[key] = _cut(v[ids], ours[key].shape)
                    loaded.append(key)
                else:
                    missing.append(key)
                    new[key] = (torch.full_like(ours[key], -4.6) if k.endswith("bias")
                                else torch.randn_like(ours[key]) * 0.01)
            else:
                new[key] = _cut(v, ours[key].shape)
                loaded.append(key)
    net.load_state_dict(new)
    report = LoadReport(loaded, missing, [])
    log.info(report.summary())
    return report


# --- loading one of our own exported models ----------------------------------------------------


def exported_net(path: Path) -> MultiHeadNet:
    """One of our exported models (:func:`~edge_agent.model.export.to_onnx`) back in PyTorch.

    Each head's design and class count are read off its conv shapes, and the tensors go in by
    graph order (as for the COCO model): initialiser names are not reliable, since the exporter
    keeps one copy of tensors that are equal (e.g. two heads still at their COCO start).
    """
    import onnx

    try:
        model = onnx.load(str(path))
        heads, convs = [o.name for o in model.graph.output], _convs_of(model)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ValueError(f"{path}: cannot read the ONNX file: {exc}") from None
    n_body = sum(isinstance(m, nn.Conv2d) for m in Body().modules())
    specs, classes, i = {}, {}, n_body
    adapters = _adapter_widths(model)
    try:
        for h in heads:
            a = adapters.get(h, 0)
            i += 4 if a else 0  # the adapter's convs run before the stride-8 stem
            width, n = convs[i][1].shape[0], 0
            while convs[i + 1 + 2 * n][1].shape[1] == 1:  # depthwise, then pointwise: one conv
                n += 1
            classes[h] = [f"class{k}" for k in range(convs[i + 1 + 2 * n][1].shape[0])]
            specs[h] = HeadSpec(int(width), n, a)
            i += len(STRIDES) * (1 + 4 * n + 3)  # stem, cls and reg convs, three predictors
        net = MultiHeadNet(classes, specs)
    except (IndexError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: not a multi-head model exported by edge-agent ({exc})") from None
    _copy_in_forward_order(net, lambda: net(torch.zeros(1, 3, 64, 64)), convs, path,
                           f"a multi-head model with heads {specs}")
    return net


def _adapter_widths(model) -> Dict[str, int]:
    """Per head, the width of its :class:`Adapter` in an exported graph (from the node names,
    which the exporter takes from the module path: ``/net/<head>/adapter/inp/conv/Conv``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        m = re.search(r"/([^/]+)/adapter/inp/", node.name) if node.op_type == "Conv" else None
        if m and node.input[1] in inits:
            out[m.group(1)] = int(numpy_helper.to_array(inits[node.input[1]]).shape[0])
    return out


def load_heads(net: MultiHeadNet, path: Path, heads: Sequence[str]) -> List[str]:
    """Copy the named heads' tensors from our exported ``path`` into ``net``; returns the keys.

    Each head must have the same design (shapes) in both; a mismatch names the tensor. A head
    that has an :class:`Adapter` here but none there keeps its adapter's (identity) start.
    """
    src = exported_net(Path(path)).state_dict()
    state = net.state_dict()
    loaded = []
    for h in heads:
        if h not in net.heads:
            raise ValueError(f"heads_from: {h!r} is not a head of this model ({list(net.heads)})")
        keys = [k for k in state if k.startswith(f"heads.{h}.")]
        for k in keys:
            if k not in src and f"heads.{h}.adapter." in k:
                continue
            if k not in src or tuple(src[k].shape) != tuple(state[k].shape):
                got = list(src[k].shape) if k in src else "no such tensor"
                raise ValueError(f"{path}: {k} is {got}, this model's head_design needs "
                                 f"{list(state[k].shape)} (a head of another design?)")
            state[k] = src[k]
            loaded.append(k)
    net.load_state_dict(state)
    return loaded


def exported_heads(path: Path, names: Sequence[str], body: nn.Module) -> Dict[str, Head]:
    """Heads ``names`` of our exported ``path``, frozen, to run on features of ``body``.

    Used as distillation teachers on the student's own features, which is exact only when the
    export's body is ``body``'s (both the frozen COCO body): checked, tensor by tensor.
    """
    src = exported_net(Path(path))
    for name in names:
        if name not in src.heads:
            raise ValueError(f"{path}: no head {name!r} (its heads: {list(src.heads)})")
    theirs = src.body.state_dict()
    for k, v in body.state_dict().items():
        if not torch.equal(theirs[k], v):
            raise ValueError(f"{path}: its body differs from ours at body.{k}; a head teacher "
                             f"runs on our features, so both bodies must be the same")
    heads = {name: src.heads[name].eval() for name in names}
    for head in heads.values():
        for p in head.parameters():
            p.requires_grad_(False)
    return heads
