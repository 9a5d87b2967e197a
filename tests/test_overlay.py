"""The annotated video's drawing (sizes follow the frame, filled labels, alerts, plate text) and
event boxes clipped to the frame. Drawn on real frames of the sample clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.cli.track_cmd import _PlateReads
from edge_agent.events.event import bbox_fields
from edge_agent.events.overlay import (
    ALERT_COLOR,
    HEAD_COLORS,
    PlateRead,
    Style,
    draw,
    hidden_counts,
    label,
)
from edge_agent.events.rules import HeadTracks
from edge_agent.events.zones import Zone

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "retail02_12s.mp4"


@pytest.fixture(scope="module")
def frame_1080() -> np.ndarray:
    cap = cv2.VideoCapture(str(SAMPLE))
    ok, image = cap.read()
    cap.release()
    assert ok and image.shape == (1080, 1920, 3)
    return image


def _rows(*boxes, tid=1, score=0.9, age=0) -> np.ndarray:
    return np.array([[*b, tid + i, score, 0, age] for i, b in enumerate(boxes)], np.float64)


def _count(image: np.ndarray, color, region=(slice(None), slice(None))) -> int:
    return int(np.count_nonzero(np.all(image[region] == np.array(color, np.uint8), axis=2)))


def test_event_boxes_are_clipped_to_the_frame():
    f = bbox_fields([-12.0, -3.0, 1930.5, 1085.0], 1920, 1080)
    assert f == {"px": [0.0, 0.0, 1920.0, 1080.0], "norm": [0.0, 0.0, 1.0, 1.0]}
    inside = bbox_fields([192.0, 108.0, 960.0, 540.0], 1920, 1080)
    assert inside == {"px": [192.0, 108.0, 960.0, 540.0], "norm": [0.1, 0.1, 0.5, 0.5]}
    assert bbox_fields(None, 1920, 1080) is None


@pytest.mark.parametrize("size", [(768, 432), (1280, 720), (1920, 1080), (3840, 2160)])
def test_text_height_follows_the_frame(size):
    w, h = size
    style = Style.for_frame(w, h)
    (_, th), _ = cv2.getTextSize("ZONE 0", cv2.FONT_HERSHEY_SIMPLEX, style.font, style.thick)
    assert th >= 13  # readable on the smallest frames
    assert abs(th - max(14.0, h / 40.0)) <= 0.15 * max(14.0, h / 40.0)


def test_labels_sit_on_a_filled_background_scaled_to_the_frame(frame_1080):
    small = cv2.resize(frame_1080, (768, 432))
    for image in (frame_1080.copy(), small):
        h, w = image.shape[:2]
        box = (0.3 * w, 0.4 * h, 0.5 * w, 0.9 * h)
        draw(image, {"crowd": HeadTracks(_rows(box), classes=["person"])}, [], {})
        style = Style.for_frame(w, h)
        above = (slice(int(box[1]) - 2 * style.pad, int(box[1]) - 2), slice(int(box[0]) + 2,
                                                                         int(box[0]) + 40))
        # The label's background is the head's colour, behind the text, above the box.
        assert _count(image, HEAD_COLORS["crowd"], above) > 0.6 * 40 * (2 * style.pad - 2)


def test_an_open_weapon_event_is_highlighted(frame_1080):
    plain, alert = frame_1080.copy(), frame_1080.copy()
    weapon = {"weapon": HeadTracks(_rows((400, 600, 500, 700), tid=7), classes=["gun"])}
    draw(plain, weapon, [], {})
    draw(alert, weapon, [], {}, alerts=[7])
    border = (slice(0, 4), slice(None))
    assert _count(alert, ALERT_COLOR, border) > 0.9 * 4 * 1920
    assert _count(plain, ALERT_COLOR, border) == 0
    # The alert's box is drawn thicker than a plain weapon track's.
    edge = (slice(610, 690), slice(396, 412))
    assert _count(alert, ALERT_COLOR, edge) > _count(plain, HEAD_COLORS["weapon"], edge)


def test_plate_text_is_shown_at_the_track_box(frame_1080):
    image = frame_1080.copy()
    read = PlateRead(3, "AB123CD", [800.0, 500.0, 900.0, 540.0])
    draw(image, {}, [], {}, plate_reads=[read])
    assert _count(image, HEAD_COLORS["plate"], (slice(440, 500), slice(800, 1100))) > 2000


def test_shadow_persons_in_the_count_are_reported_as_hidden():
    zones = [Zone("left", np.array([[0, 0], [0.5, 0], [0.5, 1], [0, 1]], np.float64)),
             Zone("all", None)]
    persons = HeadTracks(_rows((100, 100, 200, 400)),
                         lost=_rows((300, 100, 400, 400), (1500, 100, 1600, 400), tid=5, age=3),
                         classes=["person"])
    assert hidden_counts(persons, zones, 1920, 1080) == {"left": 1, "all": 2}
    assert hidden_counts(None, zones, 1920, 1080) == {"left": 0, "all": 0}


def test_plate_reads_are_kept_for_a_while_after_the_end_event():
    reads = _PlateReads(keep_frames=30)
    end = {"type": "plate", "phase": "end", "track_id": 4, "text": "XY99", "frame": 100,
           "bbox": {"px": [1.0, 2.0, 30.0, 12.0], "norm": [0, 0, 0, 0]}}
    reads.write(end)
    reads.write({**end, "track_id": 5, "text": None})  # unread plates have nothing to show
    reads.write({**end, "type": "weapon", "track_id": 6})
    assert reads.current(120) == [PlateRead(4, "XY99", [1.0, 2.0, 30.0, 12.0])]
    assert reads.current(131) == []


def test_labels_do_not_cover_each_other_or_the_legend(frame_1080):
    image = frame_1080.copy()
    style = Style.for_frame(1920, 1080)
    taken = [(0, 0, 600, 40)]  # a legend line
    for text in ("person #1 0.90", "person #2 0.80", "person #3 0.70"):
        label(image, text, 100, 30, HEAD_COLORS["crowd"], style, taken=taken)
    rects = taken
    assert len(rects) == 4
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
