"""Overlapping tiles of a frame, for cameras that look from far (``cameras[].tiles``).

A frame cut into ``grid`` x ``grid`` overlapping tiles, each letterboxed into the model's input
like a whole frame, shows every object about ``grid`` times larger: a 10-px gun of a ceiling
camera becomes a 20-px one, the scale the weapon head was trained for (MODEL_CARD.md,
"Surveillance"). The boxes of all tiles are mapped back to frame pixels and merged by NMS, per
class. Pure numpy, so training and the daemon share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from edge_agent.common.interfaces import Engine
from edge_agent.inference.engine import InferResult
from edge_agent.inference.postprocess import nms

# Each tile reaches this fraction of its own size into its neighbours, so an object cut by one
# tile's edge lies whole in the next one when it is smaller than the overlap.
DEFAULT_OVERLAP = 0.15


@dataclass(frozen=True)
class Tile:
    """A crop of the frame: top-left corner and size in frame pixels."""

    x: int
    y: int
    w: int
    h: int


def tile_grid(width: int, height: int, grid: int, overlap: float = DEFAULT_OVERLAP) -> List[Tile]:
    """``grid`` x ``grid`` tiles covering a ``width`` x ``height`` frame, each overlapping its
    neighbours by ``overlap`` of its size; ``grid`` 1 is the whole frame."""
    if grid < 1:
        raise ValueError(f"tiles: grid must be >= 1, got {grid}")
    if not 0.0 <= overlap < 0.5:
        raise ValueError(f"tiles: overlap must be in [0, 0.5), got {overlap}")
    if grid == 1:
        return [Tile(0, 0, width, height)]
    tw = int(np.ceil(width / (grid - (grid - 1) * overlap)))
    th = int(np.ceil(height / (grid - (grid - 1) * overlap)))
    xs = np.linspace(0, width - tw, grid).round().astype(int)
    ys = np.linspace(0, height - th, grid).round().astype(int)
    return [Tile(int(x), int(y), tw, th) for y in ys for x in xs]


def crop(frame: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's pixels (a view, no copy)."""
    return frame[tile.y:tile.y + tile.h, tile.x:tile.x + tile.w]


def merge(per_tile: Sequence[np.ndarray], tiles: Sequence[Tile], nms_iou: float) -> np.ndarray:
    """Detections (K, 6: x1, y1, x2, y2, score, class) in each tile's pixels -> one set in frame
    pixels, NMS per class across tiles."""
    parts = []
    for d, t in zip(per_tile, tiles):
        if len(d):
            d = np.array(d, np.float32, copy=True)
            d[:, [0, 2]] += t.x
            d[:, [1, 3]] += t.y
            parts.append(d)
    if not parts:
        return np.zeros((0, 6), np.float32)
    allb = np.concatenate(parts)
    keep = nms(allb[:, :4].astype(np.float64), allb[:, 4], allb[:, 5].astype(np.int64), nms_iou)
    return allb[keep]


def merge_heads(per_tile: Sequence[Dict[str, np.ndarray]], tiles: Sequence[Tile],
                heads: Sequence[str], nms_iou: float) -> Dict[str, np.ndarray]:
    """One frame's detections per head from its whole frame's (``per_tile[0]``, ``tiles[0]`` at
    the origin) and its tiles': the heads ``heads`` merged across all of them, the others the
    whole frame's only (a person cut by a tile's edge would count twice)."""
    dets = dict(per_tile[0])
    if len(per_tile) > 1:
        for head in heads:
            if head in dets:
                dets[head] = merge([d[head] for d in per_tile], tiles, nms_iou)
    return dets


def infer_tiled(engine: Engine, frames: Sequence[np.ndarray], grids: Sequence[int],
                tile_heads: Sequence[Sequence[str]], nms_iou: float) -> InferResult:
    """Detections of ``frames`` where frame i with ``grids[i]`` > 1 is also run as that many
    tiles per side: its heads ``tile_heads[i]`` get the whole frame's boxes and the tiles'
    merged, its other heads the whole frame's only (a person cut by a tile's edge would count
    twice).

    Calls the engine in chunks of ``engine.max_batch``; the result's timing is summed.
    """
    jobs: List[Tuple[int, Tile, np.ndarray]] = []
    for i, (frame, grid) in enumerate(zip(frames, grids)):
        h, w = frame.shape[:2]
        jobs.append((i, Tile(0, 0, w, h), frame))
        if grid > 1:
            jobs += [(i, t, np.ascontiguousarray(crop(frame, t))) for t in tile_grid(w, h, grid)]
    found: List[Dict[str, np.ndarray]] = []
    timing: Dict[str, float] = {}
    for s in range(0, len(jobs), engine.max_batch):
        res = engine.infer([img for _, _, img in jobs[s:s + engine.max_batch]])
        found += res.detections
        for k, v in res.timing.items():
            timing[k] = timing.get(k, 0.0) + v
    out: List[Dict[str, np.ndarray]] = []
    for i in range(len(frames)):
        mine = [(t, d) for (j, t, _), d in zip(jobs, found) if j == i]
        out.append(merge_heads([d for _, d in mine], [t for t, _ in mine], tile_heads[i],
                               nms_iou))
    return InferResult(out, timing)
