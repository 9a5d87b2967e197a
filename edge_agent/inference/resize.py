"""Run a model exported at one input size at another (``model.input_size``), without a re-export.

A YOLOX-style graph is convolutional up to its decode; what ties it to the exported size is the
input's fixed height and width and, where the decode is in the graph, constant grid tensors of
shape (1, A, 2) (cell x, y) and (1, A, 1) (stride per row), A being the anchors at the exported
size (3549 at 416 x 416). This module rewrites those in memory: the input dims become the new
size and each grid constant is regenerated for it, after checking that it really is the grid it
looks like (so another constant of the same shape is never overwritten). The file on disk is not
touched; the session loads the rewritten bytes.

A 16:9 stream letterboxed into 416 x 256 is scaled exactly as into 416 x 416 (the width limits
both), so the network sees the same pixels with less padding below: the same boxes for fewer
operations (docs/inference.md, "Input size").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Tuple

import numpy as np

from edge_agent.inference import manifest as mf
from edge_agent.inference.errors import ModelError
from edge_agent.inference.postprocess import yolox_grid

# YOLOX strides; a size must be a multiple of the largest so every level has whole cells.
MAX_STRIDE = 32


def check_size(width: int, height: int) -> None:
    """Raise ``ValueError`` unless both sides are positive multiples of :data:`MAX_STRIDE`."""
    for side, v in (("width", width), ("height", height)):
        if v < MAX_STRIDE or v % MAX_STRIDE:
            raise ValueError(f"input_size {side} {v} must be a multiple of {MAX_STRIDE} "
                             f"(the model's largest stride), at least {MAX_STRIDE}")


def _import_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ModelError("model.input_size other than the model's own needs the `onnx` package "
                         "(pip install onnx)") from exc
    return onnx, numpy_helper


def resized(model_path: Path, manifest: mf.Manifest, width: int,
            height: int) -> Tuple[bytes, mf.Manifest]:
    """The model's bytes and manifest for an input of ``width`` x ``height``.

    Raises :class:`ModelError` when the graph has a grid constant that is not a YOLOX grid of
    the manifest's size, or when the input is not N x 3 x H x W. Whether everything else in the
    graph follows the new size is found out by the session's warm-up, which runs it.
    """
    check_size(width, height)
    onnx, numpy_helper = _import_onnx()
    model = onnx.load(str(model_path))
    graph = model.graph
    where = f"model {model_path}"
    spec = manifest.input
    inp = [i for i in graph.input if i.name == spec.name]
    if len(inp) != 1 or len(inp[0].type.tensor_type.shape.dim) != 4:
        raise ModelError(f"{where}: input {spec.name!r} is not an N x 3 x H x W tensor")
    dims = inp[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_value = height
    dims[3].Clear()
    dims[3].dim_value = width
    old_h, old_w = spec.height, spec.width
    rewritten = 0
    tensors = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
               if a.name == "value"] + list(graph.initializer)
    for t in tensors:
        shape = tuple(t.dims)
        if len(shape) != 3 or shape[0] != 1 or shape[2] not in (1, 2):
            continue
        a = numpy_helper.to_array(t)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        strides = _yolox_strides(old_h, old_w, shape[1])
        if strides is None:
            continue
        cells, steps = yolox_grid(old_h, old_w, strides)
        expect = steps[:, None] if shape[2] == 1 else cells
        if not np.array_equal(a[0], expect.astype(a.dtype)):
            raise ModelError(f"{where}: constant {t.name or '(node value)'} of shape "
                             f"{list(shape)} is not a YOLOX grid of {old_w}x{old_h}: the model "
                             f"cannot be rewritten for input_size {width}x{height}")
        cells, steps = yolox_grid(height, width, strides)
        new = (steps[:, None] if shape[2] == 1 else cells)[None].astype(a.dtype)
        t.CopyFrom(numpy_helper.from_array(new, t.name))
        rewritten += 1
    # inferred shapes of the old size would contradict the new input
    del graph.value_info[:]
    for o in graph.output:
        for d in o.type.tensor_type.shape.dim[1:]:
            d.Clear()
    if any(o.decode == "boxes" for o in manifest.outputs) and rewritten == 0:
        raise ModelError(f"{where}: its outputs are decoded in the graph, but no grid constant "
                         f"of {old_w}x{old_h} was found to rewrite for {width}x{height}")
    new_spec = dataclasses.replace(spec, width=width, height=height)
    return model.SerializeToString(), dataclasses.replace(manifest, input=new_spec)


def _yolox_strides(height: int, width: int, anchors: int):
    """The usual stride sets whose anchor count at ``height`` x ``width`` is ``anchors``."""
    for strides in ((8, 16, 32), (8, 16, 32, 64), (16, 32, 64)):
        if sum((height // s) * (width // s) for s in strides) == anchors:
            return strides
    return None
