"""The detector on its own thread: other cameras' frames are tracked while a batch is in it,
each camera's frames are still processed in order, and calls on the engine wait for it."""

from __future__ import annotations

import collections
import threading
from typing import Dict, List

import numpy as np
import pytest

from edge_agent import config as cfgmod
from edge_agent.inference import open_engine
from edge_agent.outbox.delivery import EventDelivery
from edge_agent.outbox.eventlog import MemoryLog
from edge_agent.pipeline import Pipeline

RETAIL = "nvidia_Retail02_short.mp4"
CAR = "intel_car-detection.mp4"


def test_tracking_goes_on_while_the_detector_runs_and_order_holds(video_dir, yolox_nano):
    # a: a detection every frame; b: only its first frame, then tracking alone
    cams = [{"name": "a", "source": str(video_dir / RETAIL)},
            {"name": "b", "source": str(video_dir / CAR), "detect_every": 10000}]
    cfg = cfgmod.Config.model_validate({"model": {"path": str(yolox_nano), "max_batch": 2},
                                        "cameras": cams, "mqtt": {"enabled": False}})
    engine = open_engine(cfg.model)
    seen: Dict[str, List[int]] = collections.defaultdict(list)
    overlapped = collections.Counter()
    loop_threads = set()
    pipe = None
    infer_threads = set()
    inside, together = [0], []
    infer = engine.infer

    def recording_infer(frames):
        infer_threads.add(threading.current_thread().name)
        inside[0] += 1
        together.append(inside[0])
        try:
            return infer(frames)
        finally:
            inside[0] -= 1

    engine.infer = recording_infer

    def hook(f, tracks, st):
        seen[f.camera].append(f.index)
        loop_threads.add(threading.current_thread().name)
        # b's frame is processed while a's detection is still in the detector
        overlapped[f.camera] += f.camera in pipe.detector.waiting() or pipe.detector.busy()
        if len(seen["a"]) >= 40 and len(seen["b"]) >= 40:
            pipe.stop()

    pipe = Pipeline(cfg, engine, EventDelivery(MemoryLog(), []), on_frame=hook)
    calls = []
    pipe.run_in_loop(lambda p: calls.append(p.detector.busy()))  # runs between batches
    pipe.run()
    engine.close()
    for cam in ("a", "b"):  # in order, none skipped (files are read at the loop's pace)
        assert seen[cam] == list(range(len(seen[cam]))), cam
    assert overlapped["b"] >= 10, overlapped
    assert calls == [False]  # a call on the engine never runs beside a batch in flight
    # detections run on the detector thread (the drain at stop: on the loop's, once it is idle)
    assert any(t.startswith("detector") for t in infer_threads), infer_threads
    assert max(together) == 1  # never two calls on the engine at once
    assert not any(t.startswith("detector") for t in loop_threads)
    assert not pipe.counters.get("frame_errors") and not pipe.counters.get("inference_errors")


def test_cameras_detect_out_of_step(video_dir, yolox_nano):
    # three cameras, detect_every 6: each detects its first frame, then on its own phase
    cams = [{"name": f"c{i}", "source": str(video_dir / CAR), "detect_every": 6}
            for i in range(3)]
    cfg = cfgmod.Config.model_validate({"model": {"path": str(yolox_nano)}, "cameras": cams,
                                        "mqtt": {"enabled": False}})
    engine = open_engine(cfg.model)
    detected: Dict[str, List[int]] = collections.defaultdict(list)
    last: Dict[str, int] = collections.defaultdict(int)
    pipe = None

    def hook(f, tracks, st):
        if st.detected > last[f.camera]:  # this frame went to the detector
            detected[f.camera].append(st.processed - 1)
        last[f.camera] = st.detected
        if all(st.processed >= 20 for st in pipe.cams.values()):
            pipe.stop()

    pipe = Pipeline(cfg, engine, EventDelivery(MemoryLog(), []), on_frame=hook)
    pipe.run()
    engine.close()
    assert detected["c0"][:4] == [0, 6, 12, 18]
    assert detected["c1"][:4] == [0, 4, 10, 16]  # 6 // 3 = 2 frames out of step
    assert detected["c2"][:4] == [0, 2, 8, 14]  # 2 * 6 // 3 = 4


def test_up_to_depth_batches_queue_in_the_detector_and_finish_in_order(video_dir, yolox_nano):
    cfg = cfgmod.Config.model_validate({
        "model": {"path": str(yolox_nano), "max_batch": 1},
        "cameras": [{"name": f"c{i}", "source": str(video_dir / CAR)} for i in range(3)],
        "mqtt": {"enabled": False}})
    engine = open_engine(cfg.model)
    pipe = Pipeline(cfg, engine, EventDelivery(MemoryLog(), []))
    det = pipe.detector
    assert det.depth == 2
    pipe.capture.start()
    try:
        frames = []
        for name in ("c0", "c1", "c2"):
            while (f := pipe.capture.readers[name].take()) is None:
                pipe.capture.new_frame.wait(0.1)
            frames.append(f)
        det.submit(engine, frames[:1])
        assert not det.full()
        det.submit(engine, frames[1:2])
        assert det.full() and det.waiting() == {"c0", "c1"}
        with pytest.raises(RuntimeError, match="2 batches"):
            det.submit(engine, frames[2:])
        got = [det.take()[0][0].camera for _ in range(2)]
        assert got == ["c0", "c1"] and not det.busy()
    finally:
        pipe.capture.stop()
        det.close()
        engine.close()


def test_parallel_batches_run_at_once_and_each_camera_stays_in_order(video_dir, yolox_nano):
    # model.parallel_batches 2: a second batch enters the engine while the first is in it; the
    # boxes are those of the frame alone (per-thread input buffers) and frames stay in order
    cams = [{"name": f"c{i}", "source": str(video_dir / RETAIL)} for i in range(3)]
    cfg = cfgmod.Config.model_validate({
        "model": {"path": str(yolox_nano), "max_batch": 1, "parallel_batches": 2,
                  "intra_op_threads": 1},
        "cameras": cams, "mqtt": {"enabled": False}})
    engine = open_engine(cfg.model)
    assert engine.parallel_calls == 2
    infer = engine.infer
    second_in = threading.Event()
    inside, together, checked = [0], [], []
    lock = threading.Lock()

    def recording_infer(frames):
        with lock:
            inside[0] += 1
            together.append(inside[0])
            if inside[0] >= 2:
                second_in.set()
        try:
            if len(together) == 1:  # the first call waits until another batch enters
                assert second_in.wait(20), "no second batch entered the engine"
            res = infer(frames)
        finally:
            with lock:
                inside[0] -= 1
        checked.append((frames[0].copy(), res.detections[0]))
        return res

    engine.infer = recording_infer
    seen: Dict[str, List[int]] = collections.defaultdict(list)
    pipe = None

    def hook(f, tracks, st):
        seen[f.camera].append(f.index)
        if all(len(seen[c["name"]]) >= 8 for c in cams):
            pipe.stop()

    pipe = Pipeline(cfg, engine, EventDelivery(MemoryLog(), []), on_frame=hook)
    assert pipe.detector.workers == 2 and pipe.detector.depth == 3
    pipe.run()
    for cam in seen:
        assert seen[cam] == list(range(len(seen[cam]))), cam
    assert max(together) == 2
    for frame, dets in checked[:6]:  # the same boxes as the frame run alone
        alone = infer([frame]).detections[0]
        for head, boxes in alone.items():
            np.testing.assert_allclose(dets[head], boxes, atol=1e-4)
    engine.close()
    assert not pipe.counters.get("inference_errors")
