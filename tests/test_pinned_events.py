"""Pins the demo's events on ``nvidia_Retail02_short.mp4`` (issue 10: restructure, behaviour
unchanged): the same types, phases, frames, track IDs, zones, counts and reasons as recorded
before the restructuring (``event_id``, ``seq`` and ``ts`` aside).

Two runs of the same clip with YOLOX-nano on ONNX Runtime:

* ``demo``: exactly what ``make demo`` runs (``edge-agent track`` with the default config);
* ``zones``: the same pipeline with three crowd zones that fire often, plus every frame's active
  person track IDs, so a change in batching, tracking or rule order shows up.

A change that is meant to change behaviour (e.g. new tracker defaults) re-records the fixture::

    EDGE_AGENT_REPIN=1 .venv/bin/python -m pytest tests/test_pinned_events.py

and says why in its commit message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

from edge_agent import cli
from edge_agent import config as cfgmod
from edge_agent.delivery import EventDelivery
from edge_agent.eventlog import MemoryLog
from edge_agent.inference import open_engine
from edge_agent.pipeline import Pipeline
from edge_agent.tracking.columns import TRACK_ID

FIXTURE = Path(__file__).resolve().parent / "data" / "pinned_retail02.json"
RETAIL = "nvidia_Retail02_short.mp4"
KEYS = ("type", "phase", "frame", "camera", "track_id", "label", "zone", "count", "track_ids",
        "min_count", "peak_count", "reason", "person_track_id")
ZONES = [
    {"name": "all", "min_count": 3, "hold_s": 0.3, "hysteresis": 1, "update_interval_s": 1.0},
    {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "min_count": 2,
     "hold_s": 0.2, "hysteresis": 0, "update_interval_s": 2.0},
    {"name": "busy", "min_count": 6, "hold_s": 0.5, "update_interval_s": 0.5},
]


def essence(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """What must not change: the fields of KEYS each event has (ids and clocks aside)."""
    return [{k: e[k] for k in KEYS if k in e} for e in events]


def _demo(tmp_path: Path, clip: Path, model: Path) -> Dict[str, Any]:
    events = tmp_path / "demo-events.jsonl"
    rc = cli.main(["track", "-i", str(clip), "--model", str(model), "--events", str(events),
                   "--no-progress"])
    assert rc == 0
    return {"events": essence([json.loads(x) for x in events.read_text().splitlines()])}


class _ListSink:
    name = "list"

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []

    def write(self, event: Dict[str, Any]) -> None:
        self.events.append(json.loads(json.dumps(event)))

    def close(self) -> None:
        pass


def _zones(clip: Path, model: Path) -> Dict[str, Any]:
    cfg = cfgmod.Config.model_validate({
        "device_id": "pin", "model": {"path": str(model)},
        "cameras": [{"name": "shop", "source": str(clip), "zones": ZONES}],
        "mqtt": {"enabled": False}, "events": {"snapshots": {"enabled": False}},
    })
    engine = open_engine(cfg.model)
    sink = _ListSink()
    ids: List[List[int]] = []

    def hook(f, tracks, st):
        ids.append(sorted(int(t) for t in tracks["crowd"].active[:, TRACK_ID]))

    try:
        Pipeline(cfg, engine, EventDelivery(MemoryLog(), [sink]), on_frame=hook).run()
    finally:
        engine.close()
    return {"events": essence(sink.events), "person_ids_per_frame": ids}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, video_dir, yolox_nano) -> Dict[str, Any]:
    clip = video_dir / RETAIL
    got = {"demo": _demo(tmp_path_factory.mktemp("demo"), clip, yolox_nano),
           "zones": _zones(clip, yolox_nano)}
    if os.environ.get("EDGE_AGENT_REPIN"):
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(got, indent=None, separators=(",", ":")) + "\n")
    return got


@pytest.fixture(scope="module")
def pinned() -> Dict[str, Any]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.slow
def test_demo_events_unchanged(runs, pinned):
    assert runs["demo"]["events"], "the demo produced no events"
    assert runs["demo"]["events"] == pinned["demo"]["events"]


@pytest.mark.slow
def test_zone_events_unchanged(runs, pinned):
    got, want = runs["zones"]["events"], pinned["zones"]["events"]
    assert len({e["phase"] for e in want}) == 3 and len({e.get("zone") for e in want}) == 3
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"event {i} differs"
    assert len(got) == len(want)


@pytest.mark.slow
def test_person_track_ids_per_frame_unchanged(runs, pinned):
    got, want = runs["zones"]["person_ids_per_frame"], pinned["zones"]["person_ids_per_frame"]
    assert len(got) == len(want) == 603
    diff = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    first = diff[0] if diff else None
    assert not diff, f"{len(diff)} frames differ, first {first}"
