"""Zones: named polygons in normalised 0..1 frame coordinates (None = the whole frame)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from edge_agent.config import ZoneConfig


@dataclass
class Zone:
    """A crowd zone and its thresholds; ``polygon`` is (K, 2) normalised x, y or None."""

    name: str
    polygon: Optional[np.ndarray]
    min_count: int = 5
    hold_s: float = 2.0
    hysteresis: int = 1
    update_interval_s: float = 5.0

    @classmethod
    def from_config(cls, z: ZoneConfig) -> Zone:
        poly = None if z.polygon is None else np.asarray(z.polygon, dtype=np.float64)
        return cls(z.name, poly, z.min_count, z.hold_s, z.hysteresis, z.update_interval_s)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of which normalised (N, 2) points lie inside (even-odd ray casting)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if self.polygon is None:
            return np.ones(len(points), dtype=bool)
        x, y = points[:, 0:1], points[:, 1:2]  # (N, 1) against the (K,) edges below
        px, py = self.polygon[:, 0], self.polygon[:, 1]
        qx, qy = np.roll(px, -1), np.roll(py, -1)
        crosses = (py > y) != (qy > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = px + (y - py) * (qx - px) / (qy - py)
        inside = crosses & (x < x_at)
        return (inside.sum(axis=1) % 2) == 1

    def pixel_polygon(self, width: int, height: int) -> np.ndarray:
        """The polygon in pixels as int32 (K, 2), for drawing; the frame corners when None."""
        if self.polygon is None:
            poly = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
        else:
            poly = self.polygon
        return np.round(poly * [width - 1, height - 1]).astype(np.int32)


def anchor_points(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised bottom-centre points of (N, >=4) x1, y1, x2, y2 pixel boxes.

    A person stands where their feet are, so the bottom centre decides which floor zone they are
    in (the box centre would put a tall person into the zone behind them).
    """
    if len(boxes) == 0:
        return np.zeros((0, 2))
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0 / max(width, 1)
    by = boxes[:, 3] / max(height, 1)
    return np.stack([np.clip(cx, 0, 1), np.clip(by, 0, 1)], axis=1)


def zones_for_camera(zones: Sequence[ZoneConfig], default_zone: bool) -> List[Zone]:
    """The camera's zones; a whole-frame zone named ``all`` when it has none and that is on."""
    if zones:
        return [Zone.from_config(z) for z in zones]
    if default_zone:
        return [Zone.from_config(ZoneConfig(name="all"))]
    return []

