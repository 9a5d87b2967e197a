"""Tracker: selective coasting (a lost track's predicted box reported for coast_s seconds while
it lies inside the image and off every active track), and the camera's frame size."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.tracking import Tracker
from edge_agent.tracking.motdata import load_dets, read_seqinfo

NONE = np.empty((0, 6))


def _walk(t: Tracker, x0: float, step: float, frames: int, y: float = 10.0) -> None:
    for f in range(frames):
        x = x0 + step * f
        t.update(np.array([[x, y, x + 40, y + 100, 0.9, 0]]))


def _coasted_frames(t: Tracker) -> int:
    n = 0
    while len(t.update(NONE)):
        n += 1
    return n


def test_coasted_box_stops_at_the_image_border():
    """A person walking right at 10 px/frame is lost 60 px before the right edge of a 300 px
    image: the prediction reaches the edge after 6 frames and stops being reported there,
    though coast_s allows 10; with the image size unknown all 10 are reported."""
    def run(**size):
        t = Tracker(probation_age=1, frame_rate=10, coast_s=1.0, max_shadow_s=2.0, **size)
        _walk(t, 100.0, 10.0, 11)  # last box 200..240
        return t
    t = run(frame_width=300, frame_height=200)
    reported = []
    while True:
        out = t.update(NONE)
        if not len(out):
            break
        reported.append(out[0])
    assert 4 <= len(reported) <= 7
    assert all(r[2] <= 300 for r in reported)
    assert len(t.lost()) == 1  # still re-matchable, just not reported
    assert _coasted_frames(run()) == 10


def test_coasted_box_is_not_reported_over_an_active_track():
    """Two people side by side; one is missed while its predicted box overlaps the other's by
    IoU 0.25: reported with coast_overlap 1 (off) and 0.3, not with the default 0.1."""
    def misses_reported(**params):
        t = Tracker(probation_age=1, frame_rate=10, coast_s=0.5, **params)
        a = [100, 10, 140, 110, 0.9, 0]
        b = [124, 10, 164, 110, 0.9, 0]  # IoU(a, b) = 16 / 64 = 0.25
        for _ in range(5):
            t.update(np.array([a, b], float))
        out = t.update(np.array([a], float))
        return sum(1 for r in out if r[7] > 0)
    assert misses_reported(coast_overlap=1.0) == 1
    assert misses_reported(coast_overlap=0.3) == 1
    assert misses_reported() == 0


def test_coasting_off_reports_nothing_lost():
    t = Tracker(probation_age=1, frame_rate=10, coast_s=0.0)
    _walk(t, 100.0, 5.0, 5)
    assert len(t.update(NONE)) == 0 and len(t.lost()) == 1


def test_coasted_tracks_are_not_also_listed_as_lost():
    t = Tracker(probation_age=1, frame_rate=10, coast_s=0.2)
    _walk(t, 100.0, 5.0, 5)
    for _ in range(2):
        assert len(t.update(NONE)) == 1 and len(t.lost()) == 0
    assert len(t.update(NONE)) == 0 and len(t.lost()) == 1


@pytest.fixture(scope="module")
def stadtmitte(mot_dir):
    seq = read_seqinfo(mot_dir / "TUD-Stadtmitte")
    return seq, load_dets(seq)


def test_coasting_only_adds_rows(stadtmitte):
    """Coasting is a reporting decision: on a real sequence the matched rows (IDs and boxes)
    are the same with and without it, and each added row is a lost track's prediction within
    coast_s of its last match, inside the image."""
    seq, dets = stadtmitte
    size = {"frame_rate": seq.frame_rate, "frame_width": seq.width, "frame_height": seq.height}
    # miss_rate_ref 0: coasting for exactly coast_s (the scaling is tested in
    # test_tracker_adaptive.py)
    plain = Tracker(coast_s=0.0, miss_rate_ref=0.0, **size)
    coast = Tracker(coast_s=0.3, miss_rate_ref=0.0, **size)
    limit = round(0.3 * seq.frame_rate)
    added = 0
    for d in dets:
        a, b = plain.update(d), coast.update(d)
        np.testing.assert_array_equal(a, b[b[:, 7] == 0])
        extra = b[b[:, 7] > 0]
        added += len(extra)
        assert np.all(extra[:, 7] <= limit)
        assert np.all((extra[:, 0] >= 0) & (extra[:, 1] >= 0) & (extra[:, 2] <= seq.width)
                      & (extra[:, 3] <= seq.height))
        lost_plain = plain.lost()
        lost_coast = coast.lost()
        # every lost track is either reported (coasted) or listed as lost, never both
        assert len(lost_plain) == len(lost_coast) + len(extra)
        assert not set(extra[:, 4]) & set(lost_coast[:, 4])
    assert added >= 10  # 20 on this sequence: the check above ran on real coasted rows


def test_set_frame_size_keeps_tracks_and_checks_values():
    t = Tracker(probation_age=1, coast_s=0.2)
    _walk(t, 100.0, 5.0, 3)
    t.set_frame_size(640, 480)
    assert t.params["frame_width"] == 640 and t.params["frame_height"] == 480
    assert len(t.update(np.array([[110.0, 10, 150, 110, 0.9, 0]]))) == 1
    with pytest.raises(ValueError, match="frame_width must be in"):
        t.set_frame_size(-1, 480)
    with pytest.raises(ValueError, match="frame_height must be a number"):
        t.set_frame_size(640, "480")
    assert t.params["frame_width"] == 640  # unchanged after a refused value
