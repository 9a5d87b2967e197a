"""The Agent's start steps and teardown, the typed seams, and the event type against its schema.

Real parts throughout: a real engine (YOLOX-nano on ONNX Runtime), a real SQLite outbox, a real
clip. The steps are only instrumented (their order is recorded), never replaced.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from edge_agent import config as cfgmod
from edge_agent.common import interfaces
from edge_agent.daemon.agent import EXIT_BAD_INPUT, EXIT_OK, Agent
from edge_agent.daemon.sdnotify import Notifier
from edge_agent.daemon.supervise import Supervisor
from edge_agent.events import ConsoleSink, JsonlSink
from edge_agent.events.event import Event
from edge_agent.inference import open_engine
from edge_agent.outbox.eventlog import MemoryLog, Outbox

REPO = Path(__file__).resolve().parent.parent
STEPS = ["state_dir", "event_log", "engine", "cameras", "delivery", "pipeline", "reload", "mqtt",
         "update", "mqtt_connect", "update_recovery", "exporter", "open_events", "notifier"]


def _config(tmp_path: Path, model: Path, source: Path, **extra: Any) -> cfgmod.Config:
    data: Dict[str, Any] = {
        "device_id": "agent-test", "state_dir": str(tmp_path / "state"),
        "model": {"path": str(model)},
        "cameras": [{"name": "lot", "source": str(source)}],
        "events": {"sinks": {"jsonl": "events.jsonl"}},
        "mqtt": {"enabled": False},
        "metrics": {"port": 0},  # any free port: tests run beside each other
    }
    data.update(extra)
    return cfgmod.Config.model_validate(data)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, video_dir) -> Path:
    """The first 20 frames of the car clip as a file of their own (a full run in seconds)."""
    out = tmp_path_factory.mktemp("clip") / "car20.mp4"
    cap = cv2.VideoCapture(str(video_dir / "intel_car-detection.mp4"))
    writer = None
    for _ in range(20):
        ok, frame = cap.read()
        assert ok
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 12.5, (w, h))
        writer.write(frame)
    writer.release()
    cap.release()
    return out


def _instrument(agent: Agent) -> List[Tuple[str, str]]:
    """Record every step's start and every undo's run, in order, in the returned list."""
    seen: List[Tuple[str, str]] = []

    def wrap(name, step):
        def run():
            seen.append(("start", name))
            undo = step()
            if undo is None:
                return None

            def undo_logged():
                seen.append(("stop", name))
                undo()
            return undo_logged
        return run

    agent.steps = [(n, wrap(n, s)) for n, s in agent.steps]
    return seen


def test_steps_run_in_order_and_a_full_run_stops_them_in_reverse(tmp_path, short_clip,
                                                                   yolox_nano):
    agent = Agent(_config(tmp_path, yolox_nano, short_clip))
    assert [n for n, _ in agent.steps] == STEPS
    seen = _instrument(agent)
    assert agent.run() == EXIT_OK  # the file ends: every camera done, a clean stop
    started = [n for what, n in seen if what == "start"]
    stopped = [n for what, n in seen if what == "stop"]
    assert started == STEPS
    # mqtt (built, not connected; here disabled), mqtt_connect (disabled), update_recovery,
    # reload, cameras and open_events (a sink) have nothing to undo; the state_dir step
    # releases the directory's lock
    assert stopped == ["notifier", "exporter", "update", "pipeline", "delivery", "engine",
                       "event_log", "state_dir"]
    assert agent.event_log._closed and agent.delivery._closed
    assert agent.pipeline.finished.is_set() and agent.pipeline.cams["lot"].processed == 20
    agent.stop()  # idempotent: nothing left to undo


def test_a_failed_step_undoes_only_what_started_newest_first(tmp_path, video_dir, yolox_nano):
    cfg = _config(tmp_path, yolox_nano, video_dir / "intel_car-detection.mp4",
                  mqtt={"tls": {"ca_file": str(tmp_path / "no-such-ca.pem")}})
    agent = Agent(cfg)
    seen = _instrument(agent)
    assert agent.run() == EXIT_BAD_INPUT
    assert [n for what, n in seen if what == "start"] == STEPS[:STEPS.index("mqtt") + 1]
    assert [n for what, n in seen if what == "stop"] == ["pipeline", "delivery", "engine",
                                                         "event_log", "state_dir"]
    assert agent.event_log._closed and agent.delivery._closed
    assert not agent.pipeline.finished.is_set()  # it never ran
    with pytest.raises(RuntimeError, match="closed"):
        agent.engine.infer([np.zeros((64, 64, 3), np.uint8)])


def test_a_bad_model_stops_at_the_engine_step(tmp_path, video_dir):
    cfg = _config(tmp_path, tmp_path / "missing.onnx", video_dir / "intel_car-detection.mp4")
    agent = Agent(cfg)
    seen = _instrument(agent)
    assert agent.run() == EXIT_BAD_INPUT
    assert seen == [("start", "state_dir"), ("start", "event_log"), ("start", "engine"),
                    ("stop", "event_log"), ("stop", "state_dir")]
    assert agent.pipeline is None and agent.event_log._closed


def test_shipped_parts_satisfy_the_protocols(tmp_path, yolox_nano):
    engine = open_engine(cfgmod.ModelConfig(path=str(yolox_nano)))
    try:
        assert isinstance(engine, interfaces.Engine)
    finally:
        engine.close()
    with Outbox(tmp_path / "ob.sqlite") as ob:
        assert isinstance(ob, interfaces.EventLog)
    assert isinstance(MemoryLog(), interfaces.EventLog)
    sink = JsonlSink(tmp_path / "e.jsonl")
    assert isinstance(sink, interfaces.Sink) and isinstance(ConsoleSink(), interfaces.Sink)
    sink.close()
    assert isinstance(Notifier(environ={}), interfaces.Notifier)
    assert isinstance(Supervisor(Notifier(environ={})), interfaces.Notifier)
    assert not isinstance(object(), interfaces.EventLog)


def test_event_type_has_the_fields_of_the_json_schema():
    schema = json.loads((REPO / "edge_agent" / "schemas" / "event.schema.json").read_text())
    every = set(schema["properties"])
    for rule in schema["allOf"]:
        every |= set(rule["then"].get("properties", {}))
        every |= set(rule["then"].get("required", []))
    assert Event.__required_keys__ == set(schema["required"])
    assert Event.__required_keys__ | Event.__optional_keys__ == every


def test_track_columns_match_the_tracker_and_its_stub():
    from edge_agent import tracking
    from edge_agent.tracking import columns

    assert columns.TRACK_NAMES == tracking.COLUMNS
    assert len(columns.TRACK_NAMES) == columns.TRACK_COLS
    t = tracking.Tracker(probation_age=1)
    det = np.zeros((1, columns.DET_COLS))
    det[0, columns.BOX], det[0, columns.DET_SCORE], det[0, columns.DET_CLASS] = (10, 20, 50, 90), \
        0.95, 2
    out = t.update(det)
    assert out.shape == (1, columns.TRACK_COLS)
    assert out[0, columns.CLASS_ID] == 2 and out[0, columns.AGE] == 0
    assert out[0, columns.TRACK_ID] >= 1 and abs(out[0, columns.SCORE] - 0.95) < 1e-6


def test_a_bug_in_a_step_still_undoes_what_started(tmp_path, short_clip, yolox_nano):
    agent = Agent(_config(tmp_path, yolox_nano, short_clip))

    def broken():
        raise RuntimeError("a bug, not bad input")

    at = [n for n, _ in agent.steps].index("pipeline")
    agent.steps.insert(at, ("broken", broken))
    seen = _instrument(agent)
    with pytest.raises(RuntimeError, match="a bug"):
        agent.run()
    assert [n for what, n in seen if what == "stop"] == ["delivery", "engine", "event_log",
                                                         "state_dir"]
    assert agent.event_log._closed and agent.delivery._closed


def test_sigterm_during_start_up_stops_cleanly_before_the_next_step(tmp_path, short_clip,
                                                                     yolox_nano):
    """The open_events step may publish at once; a SIGTERM then used to kill the process."""
    agent = Agent(_config(tmp_path, yolox_nano, short_clip))

    def terminate():
        os.kill(os.getpid(), signal.SIGTERM)  # handled on this (the main) thread, at once

    at = [n for n, _ in agent.steps].index("notifier")
    agent.steps.insert(at, ("sigterm", terminate))
    seen = _instrument(agent)
    before = signal.getsignal(signal.SIGTERM)
    assert agent.run() == EXIT_OK
    started = [n for what, n in seen if what == "start"]
    assert started[-1] == "sigterm" and "notifier" not in started
    assert agent.pipeline.cams["lot"].processed == 0  # the loop never ran
    assert agent.event_log._closed and agent.delivery._closed
    assert signal.getsignal(signal.SIGTERM) is before



def test_stop_from_another_thread_waits_for_the_pipeline_before_undoing(tmp_path, short_clip,
                                                                         yolox_nano, caplog):
    """An embedding program (or a test) calls stop() off the main thread while frames flow: the
    engine and the outbox must not be undone under the inference loop."""
    cfg = _config(tmp_path, yolox_nano, short_clip)
    cfg.cameras[0].loop = True  # frames keep coming until stopped
    agent = Agent(cfg)
    seen = _instrument(agent)

    def stop_while_processing() -> None:
        deadline = time.monotonic() + 60
        while agent.pipeline is None or agent.pipeline.cams["lot"].processed < 3:
            if time.monotonic() > deadline:
                break  # the assertions below say what went wrong
            time.sleep(0.02)
        agent.stop()

    stopper = threading.Thread(target=stop_while_processing)
    stopper.start()
    with caplog.at_level(logging.ERROR):
        assert agent.run() == EXIT_OK
    stopper.join(30)
    assert not stopper.is_alive()
    stopped = [n for what, n in seen if what == "stop"]
    assert stopped == ["notifier", "exporter", "update", "pipeline", "delivery", "engine",
                       "event_log", "state_dir"]  # each once, newest first
    assert agent.pipeline.cams["lot"].processed >= 3
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
