"""The shipped default model (engines/models/edge_multihead.onnx): loads, matches its manifest.

No PyTorch here: this is what a fresh daemon install runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_agent.config import ModelConfig, load
from edge_agent.inference import manifest as mf
from edge_agent.inference.engine import open_engine

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "engines" / "models" / "edge_multihead.onnx"


def test_shipped_model_matches_its_manifest_and_size_limit():
    data = json.loads(MODEL.with_suffix(".json").read_text())
    assert data["sha256"] == mf.file_sha256(MODEL)
    assert MODEL.stat().st_size <= 10 * 1024 * 1024
    m = mf.resolve(MODEL)
    assert m.heads == {"weapon": ["gun"], "crowd": ["person"], "plate": ["plate"]}
    assert m.input.batch is None and all(o.decode == "boxes" for o in m.outputs)
    for head in m.heads:  # validation metrics travel with the model
        assert 0.0 <= data["metrics"][head]["ap50"] <= 1.0


def test_shipped_model_runs_through_open_engine_batched():
    mc = ModelConfig(path=str(MODEL), backend="onnxruntime", providers=["cpu"], max_batch=3)
    with open_engine(mc) as eng:
        frames = [np.full((720, 1280, 3), 114, np.uint8), np.zeros((360, 640, 3), np.uint8),
                  np.zeros((416, 416, 3), np.uint8)]
        res = eng.infer(frames)
    assert len(res.detections) == 3
    assert all(set(d) == {"weapon", "crowd", "plate"} for d in res.detections)


def test_default_config_points_at_the_shipped_model():
    cfg = load(REPO / "configs" / "edge-agent.yaml")
    assert (REPO / cfg.model.path).resolve() == MODEL.resolve()
