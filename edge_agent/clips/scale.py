"""Boxes found on a camera's detect stream, in the pixels of its record stream.

A camera with ``record:`` is detected on its substream (e.g. 640x360) and recorded from its
main stream (e.g. 1920x1080): its events give ``bbox.px`` in the record stream's pixels, the
picture the clip shows, and say so in ``bbox.frame`` ([width, height] that ``px`` refers to).
``bbox.norm`` is the same in both.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from edge_agent.events import Emission


def scale_bbox(bbox: Dict[str, Any], detect: Tuple[int, int],
               record: Optional[Tuple[int, int]]) -> None:
    """Rewrite ``bbox`` (``{px, norm}`` of a ``detect`` sized frame) for ``record``; while the
    record stream's size is not known yet (None) ``px`` stays the detect frame's and
    ``frame`` says so. ``px`` gets a new list: others may hold the old one."""
    if "frame" in bbox:
        return  # already done (an event passes here once, but be sure)
    target = record or detect
    sx, sy = target[0] / max(detect[0], 1), target[1] / max(detect[1], 1)
    x1, y1, x2, y2 = bbox["px"]
    bbox["px"] = [round(x1 * sx, 1), round(y1 * sy, 1), round(x2 * sx, 1), round(y2 * sy, 1)]
    bbox["frame"] = [int(target[0]), int(target[1])]


def to_record(emissions: Sequence[Emission], detect: Tuple[int, int],
              record: Optional[Tuple[int, int]]) -> None:
    """:func:`scale_bbox` on the box of every event in ``emissions`` that has one."""
    for em in emissions:
        bbox = em.event.get("bbox")
        if bbox is not None:
            scale_bbox(bbox, detect, record)  # type: ignore[arg-type]
