"""Drawing tracks and zone counts on a frame (the `track` command's output video)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import cv2
import numpy as np

from edge_agent.events.rules import HeadTracks
from edge_agent.events.zones import Zone
from edge_agent.tracking.columns import BOX, CLASS_ID, TRACK_ID

# BGR per head; unknown heads get white.
HEAD_COLORS = {"crowd": (60, 200, 60), "weapon": (40, 40, 255), "plate": (0, 200, 255)}
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw(image: np.ndarray, tracks: Dict[str, HeadTracks], zones: Sequence[Zone],
         counts: Dict[str, int], footer: str = "") -> np.ndarray:
    """Draw boxes with class and track ID, zone outlines and per-zone counts onto ``image``
    (in place, returned for chaining). Shadow tracks are not drawn: they are guesses."""
    h, w = image.shape[:2]
    scale = max(0.4, h / 1080.0)
    thick = max(1, int(round(2 * scale)))
    for z in zones:
        if z.polygon is not None:
            cv2.polylines(image, [z.pixel_polygon(w, h)], True, (255, 160, 0), thick)
    for head, tr in tracks.items():
        color = HEAD_COLORS.get(head, (255, 255, 255))
        for row in tr.active:
            x1, y1, x2, y2 = (int(round(v)) for v in row[BOX])
            cv2.rectangle(image, (x1, y1), (x2, y2), color, thick)
            label = f"{tr.label(row[CLASS_ID])} #{int(row[TRACK_ID])}"
            cv2.putText(image, label, (x1, max(int(14 * scale), y1 - 4)), _FONT, 0.6 * scale,
                        color, thick, cv2.LINE_AA)
    lines: List[str] = [f"{name}: {n}" for name, n in counts.items()]
    if footer:
        lines.append(footer)
    y = int(34 * scale)
    for text in lines:
        cv2.putText(image, text, (10, y), _FONT, 1.0 * scale, (0, 0, 0), thick + 3, cv2.LINE_AA)
        cv2.putText(image, text, (10, y), _FONT, 1.0 * scale, (255, 255, 255), thick, cv2.LINE_AA)
        y += int(36 * scale)
    return image
