"""The frame queues of live readers as the inference loop drains them: one frame per camera a
pass, round-robin, at most ``max_batch`` detections a pass, no frame lost without a count."""

from __future__ import annotations

import collections
import threading
from typing import Dict, List

import numpy as np

from edge_agent import config as cfgmod
from edge_agent.inference import open_engine
from edge_agent.outbox.delivery import EventDelivery
from edge_agent.outbox.eventlog import MemoryLog
from edge_agent.pipeline import Pipeline

CAR = "intel_car-detection.mp4"  # 768x432, 12.5 fps


def test_cameras_share_passes_fairly_and_detections_fit_the_batch(video_dir):
    # Three live-like cameras (the car clip paced at its own 12.5 fps), a batch of one detection:
    # each pass takes a frame of every camera, but only one of them may go to the detector.
    cfg = cfgmod.Config.model_validate({
        "model": {"max_batch": 1},
        "cameras": [{"name": f"c{i}", "source": str(video_dir / CAR), "realtime": True,
                     "detect_every": 2, "frame_queue": 8} for i in range(3)],
        "mqtt": {"enabled": False},
    })
    engine = open_engine(cfg.model)
    for _ in range(3):  # ONNX Runtime's first runs allocate and tune
        engine.infer([np.zeros((432, 768, 3), np.uint8)])
    seen: Dict[str, List[int]] = collections.defaultdict(list)
    pipe = Pipeline(cfg, engine, EventDelivery(MemoryLog(), []),
                    on_frame=lambda f, tracks, st: seen[f.camera].append(f.index))
    timer = threading.Timer(4.0, pipe.stop)
    timer.start()
    pipe.run()
    engine.close()
    assert pipe.batch_sizes and max(pipe.batch_sizes) == 1  # never two detections in one call
    stats = pipe.stats()["cameras"]
    for name, st in stats.items():
        # every frame read was processed (in order) or counted as dropped: none vanished
        assert st["processed"] + st["dropped"] == st["frames_in"], (name, st)
        assert seen[name] == sorted(seen[name]) and len(seen[name]) == st["processed"]
        # its first frame, then every 2nd on its phase: camera i of 3 is i * 2 // 3 frames
        # out of step (c0, c1: frames 0, 2, 4, ...; c2: frames 0, 1, 3, 5, ...)
        shift = int(name[1:]) * 2 // 3
        assert st["detected"] == sum(1 for p in range(st["processed"])
                                     if p == 0 or (p + shift) % 2 == 0), (name, st)
        # it did run (on a loaded box a detection may take 100 ms: no rate is asserted here)
        assert st["processed"] >= 10, (name, st)
