"""Helpers for the inference tests: a small multi-head ONNX model built with the onnx helper API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference import manifest as mf

WEAPON_ROWS = [  # x1, y1, x2, y2 (input px), objectness (added to by the image mean), 3 classes
    [4, 4, 20, 20, 0, 0.05, 0.05, 0.9],
    [5, 5, 21, 21, 0, 0.05, 0.05, 0.8],  # overlaps row 0, same class: NMS drops it
    [30, 30, 60, 60, 0, 0.7, 0.1, 0.1],
]
CROWD_ROWS = [[10, 10, 50, 60, 0, 0.95], [0, 0, 1, 1, 0, 0.1]]


def make_multihead(path: Path, height=64, width=64, fixed_batch=None, poison=False) -> dict:
    """A multi-head ONNX: rows are constants, objectness = mean pixel / 255 of each image.

    ``poison``: objectness = mean / mean instead: an all-black image makes every value of its
    rows NaN (0 / 0, and NaN x 0 is NaN)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outputs = [], [], []
    nodes.append(helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3],
                                  keepdims=1))  # (N, 1, 1, 1)
    nodes.append(helper.make_node("Reshape", ["mean4", "shape3"], ["mean"]))  # (N, 1, 1)
    nodes.append(helper.make_node("Div", ["mean", "mean" if poison else "c255"], ["obj"]))
    inits.append(numpy_helper.from_array(np.array(255, np.float32), "c255"))
    inits.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"))
    batch = fixed_batch if fixed_batch else "N"
    for name, rows in (("weapon", WEAPON_ROWS), ("crowd", CROWD_ROWS)):
        base = np.array(rows, np.float32)[None]
        mask = np.zeros_like(base)
        mask[..., 4] = 1
        inits += [numpy_helper.from_array(base, f"{name}_base"),
                  numpy_helper.from_array(mask, f"{name}_mask")]
        nodes.append(helper.make_node("Mul", ["obj", f"{name}_mask"], [f"{name}_obj"]))
        nodes.append(helper.make_node("Add", [f"{name}_obj", f"{name}_base"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                     [batch, len(rows), len(rows[0])]))
    graph = helper.make_graph(
        nodes, "multihead",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    manifest = {
        "format": 1, "name": "multihead-test", "version": "1", "sha256": mf.file_sha256(path),
        "input": {"name": "images", "batch": fixed_batch, "height": height, "width": width,
                  "color": "BGR", "scale": 1.0, "pad_value": 0},
        "outputs": [
            {"name": "weapon", "decode": "boxes", "classes": ["pistol", "rifle", "knife"]},
            {"name": "crowd", "decode": "boxes", "classes": ["person"]},
        ],
        "heads": {"weapon": {"output": "weapon"}, "crowd": {"output": "crowd"}},
    }
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return manifest
