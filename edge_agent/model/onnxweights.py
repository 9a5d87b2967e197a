"""Weights from ONNX files into :mod:`edge_agent.model.net`'s modules: the COCO YOLOX-nano
tensors (:func:`load_coco`), a model of ours exported earlier (:func:`exported_net`), and some of
its heads (:func:`load_heads`, :func:`exported_heads`).

The exports have BatchNorm folded into the convolutions and no names that match ours, so
tensors are matched by running both graphs and pairing the convolutions in forward order.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from edge_agent.model.net import STRIDES, Body, Head, HeadSpec, MultiHeadNet

log = logging.getLogger(__name__)


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
    adapters, fines = _branch_widths(model, "adapter"), _branch_widths(model, "fine")
    try:
        for h in heads:
            a, f = adapters.get(h, 0), fines.get(h, 0)
            i += 5 if f else 0  # the fine path's convs run first,
            i += 4 if a else 0  # then the adapter's, before the stride-8 stem
            width, n = convs[i][1].shape[0], 0
            while convs[i + 1 + 2 * n][1].shape[1] == 1:  # depthwise, then pointwise: one conv
                n += 1
            classes[h] = [f"class{k}" for k in range(convs[i + 1 + 2 * n][1].shape[0])]
            specs[h] = HeadSpec(int(width), n, a, f)
            i += len(STRIDES) * (1 + 4 * n + 3)  # stem, cls and reg convs, three predictors
        net = MultiHeadNet(classes, specs)
    except (IndexError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: not a multi-head model exported by edge-agent ({exc})") from None
    _copy_in_forward_order(net, lambda: net(torch.zeros(1, 3, 64, 64)), convs, path,
                           f"a multi-head model with heads {specs}")
    return net


def _branch_widths(model, branch: str) -> Dict[str, int]:
    """Per head, the width of its ``branch`` (``adapter``: :class:`Adapter`, ``fine``:
    :class:`FinePath`) in an exported graph, from the node names, which the exporter takes from
    the module path (``/net/<head>/adapter/inp/conv/Conv``, ``/net/<head>/fine/down/pconv/...``)."""
    from onnx import numpy_helper

    first = {"adapter": "inp/", "fine": "down/pconv/"}[branch]
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        m = (re.search(rf"/([^/]+)/{branch}/{first}", node.name) if node.op_type == "Conv"
             else None)
        if m and node.input[1] in inits:
            out[m.group(1)] = int(numpy_helper.to_array(inits[node.input[1]]).shape[0])
    return out


def load_heads(net: MultiHeadNet, path: Path, heads: Sequence[str]) -> List[str]:
    """Copy the named heads' tensors from our exported ``path`` into ``net``; returns the keys.

    Each head must have the same design (shapes) in both; a mismatch names the tensor. A head
    that has an :class:`Adapter` or :class:`FinePath` here but none there keeps its (identity)
    start.
    """
    src = exported_net(Path(path)).state_dict()
    state = net.state_dict()
    loaded = []
    for h in heads:
        if h not in net.heads:
            raise ValueError(f"heads_from: {h!r} is not a head of this model ({list(net.heads)})")
        keys = [k for k in state if k.startswith(f"heads.{h}.")]
        for k in keys:
            if k not in src and (f"heads.{h}.adapter." in k or f"heads.{h}.fine." in k):
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
