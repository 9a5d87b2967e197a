"""The multi-head detector: a YOLOX-nano backbone and PAFPN neck shared by one head per task.

The layer layout is YOLOX-nano's (depth 0.33, width 0.25, depthwise convs, SiLU), so the
tensors of ``../shared/weights/yolox_nano_coco.onnx`` load into it. That export has BatchNorm
folded into the convolutions, so every conv here has a bias and there is no BatchNorm: the
backbone's normalisation is frozen by construction in both training stages.

Each head (``weapon``, ``crowd``, ``plate``, ...) has its own stems and cls / reg / obj branches
at strides 8, 16, 32. A head returns raw maps; :func:`decode` turns them into boxes. A head's
design (:class:`HeadSpec`: width, convs per branch) is set per head; the COCO head is width 64
with two convs per branch, and a lighter head is what keeps three heads cheap.

The architecture only: reading weights from ONNX files is :mod:`edge_agent.model.onnxweights`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
NECK_CHANNELS = (64, 128, 256)  # channels of the stride 8 / 16 / 32 features
STRIDE4_CHANNELS = 32  # channels of the body's stride-4 map (dark2)
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
    fine: int = 0  # channels of a trainable path from the stride-4 features (0: none)

    def __post_init__(self):
        if not (isinstance(self.width, int) and 8 <= self.width <= HEAD_WIDTH):
            raise ValueError(f"head width must be an integer in 8..{HEAD_WIDTH}, "
                             f"got {self.width!r}")
        if not (isinstance(self.convs, int) and 0 <= self.convs <= 2):
            raise ValueError(f"head convs must be 0, 1 or 2, got {self.convs!r}")
        if not (isinstance(self.adapter, int) and 0 <= self.adapter <= 128):
            raise ValueError(f"head adapter must be an integer in 0..128, got {self.adapter!r}")
        if not (isinstance(self.fine, int) and 0 <= self.fine <= 128):
            raise ValueError(f"head fine must be an integer in 0..128, got {self.fine!r}")


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

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(stride-4 features, then the neck's stride 8, 16, 32 maps)."""
        c2 = self.dark2(self.stem(x))
        c3 = self.dark3(c2)
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        fpn0 = self.lateral_conv0(c5)
        f = self.C3_p4(torch.cat([self.up(fpn0), c4], 1))
        fpn1 = self.reduce_conv1(f)
        p3 = self.C3_p3(torch.cat([self.up(fpn1), c3], 1))
        p4 = self.C3_n3(torch.cat([self.bu_conv2(p3), fpn1], 1))
        p5 = self.C3_n4(torch.cat([self.bu_conv1(p4), fpn0], 1))
        return c2, p3, p4, p5


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


class FinePath(nn.Module):
    """A head's own trainable path from the body's stride-4 features to its stride-8 level.

    The shared stride-8 map is frozen COCO features, in which a gun of a few pixels hardly shows;
    the stride-4 map still has its edges. Two depthwise-separable convs (the first one stride 2)
    and a 1 x 1 out that starts at zero, added to the stride-8 map: untrained, the head is
    exactly as it was.
    """

    def __init__(self, cin: int, width: int, cout: int):
        super().__init__()
        self.down = DWConv(cin, width, 3, 2)
        self.mid = DWConv(width, width, 3)
        self.out = nn.Conv2d(width, cout, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, c2):
        return self.out(self.mid(self.down(c2)))


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
        self.fine = FinePath(STRIDE4_CHANNELS, spec.fine, NECK_CHANNELS[0]) if spec.fine else None

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``feats``: the body's (stride-4, stride-8, 16, 32) maps."""
        c2, levels = feats[0], feats[1:]
        fine = self.fine(c2) if self.fine is not None else None
        out = []
        for k, x in enumerate(levels):
            if k == 0 and fine is not None:
                x = x + fine
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
