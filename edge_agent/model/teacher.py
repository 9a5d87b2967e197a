"""Person pseudo-labels from the COCO YOLOX-nano, run through our own ONNX Runtime engine.

Per image: teacher scores >= ``positive`` become boxes, scores in [``ignore``, ``positive``)
become ignore regions (no objectness loss), everything else is background. Results are cached
in a JSON file keyed by image path, so a resumed run does not label again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np

from edge_agent.model.data import DataError, Sample
from edge_agent.model.trainconfig import TeacherConfig

log = logging.getLogger(__name__)


def open_teacher(cfg: TeacherConfig, threads: int = 2):
    """The teacher as an :class:`edge_agent.inference.engine.Engine` on ONNX Runtime CPU."""
    from edge_agent.config import ModelConfig
    from edge_agent.inference.engine import open_engine

    mc = ModelConfig(path=cfg.model, backend="onnxruntime", providers=["cpu"], max_batch=1,
                     intra_op_threads=threads, score_threshold=cfg.ignore, nms_iou=cfg.nms_iou)
    return open_engine(mc)


def teacher_boxes(engine, image: np.ndarray, head: str) -> np.ndarray:
    """(K, 5) x1, y1, x2, y2, score of the teacher's ``head`` detections in image pixels."""
    det = engine.infer([image]).detections[0].get(head)
    if det is None or len(det) == 0:
        return np.zeros((0, 5), np.float32)
    return det[:, :5].astype(np.float32)


def label(samples: Sequence[Sample], cfg: TeacherConfig, cache: Path) -> int:
    """Add the teacher's boxes and ignore regions to every sample that does not label its head.

    Returns how many images the teacher ran on (cache misses).
    """
    cache = Path(cache)
    store: Dict[str, List[List[float]]] = {}
    if cache.is_file():
        store = json.loads(cache.read_text(encoding="utf-8"))
    todo = [s for s in samples if cfg.head not in s.boxes and str(s.image) not in store]
    if todo:
        engine = open_teacher(cfg, threads=1)  # one thread: the machine's cores are shared
        try:
            for s in todo:
                img = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
                if img is None:
                    raise DataError(f"{s.image}: image does not decode")
                store[str(s.image)] = teacher_boxes(engine, img, cfg.teacher_head).round(2).tolist()
        finally:
            engine.close()
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.is_file():  # another run (NC=1 beside the default) may have added images
            store = {**json.loads(cache.read_text(encoding="utf-8")), **store}
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(store), encoding="utf-8")
        tmp.replace(cache)  # atomic: a parallel run never reads half a file
        log.info("teacher labelled %d images (%s)", len(todo), cache)
    for s in samples:
        if cfg.head in s.boxes:
            continue
        det = np.array(store[str(s.image)], np.float32).reshape(-1, 5)
        pos = det[det[:, 4] >= cfg.positive]
        band = det[(det[:, 4] >= cfg.ignore) & (det[:, 4] < cfg.positive)]
        s.boxes[cfg.head] = np.concatenate([pos[:, :4], np.zeros((len(pos), 1), np.float32)], 1)
        s.ignore[cfg.head] = band[:, :4].copy()
    return len(todo)
