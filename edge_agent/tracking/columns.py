"""Column indices of the detection and track arrays: the one place they are written down.

Detections (inference -> tracker): float32 ``(K, DET_COLS)``, boxes in frame pixels::

    x1, y1, x2, y2, score, class_id

Tracks (tracker -> rules, overlay): float64 ``(M, TRACK_COLS)`` from ``Tracker.update`` and
``Tracker.lost``; the same order as ``edge_agent.tracking.COLUMNS`` (a test checks it)::

    x1, y1, x2, y2, track_id, score, class_id, frames_since_update
"""

from __future__ import annotations

BOX = slice(0, 4)  # x1, y1, x2, y2 in both arrays

DET_SCORE, DET_CLASS = 4, 5
DET_COLS = 6

X1, Y1, X2, Y2, TRACK_ID, SCORE, CLASS_ID, AGE = range(8)
TRACK_COLS = 8
TRACK_NAMES = ("x1", "y1", "x2", "y2", "track_id", "score", "class_id", "frames_since_update")
