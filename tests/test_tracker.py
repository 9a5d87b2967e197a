"""Tracker: Kalman step, LAPJV, lifecycle, class separation, input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment

from edge_agent.tracking import COLUMNS, PARAMS, Tracker, _tracker

# --- Kalman filter against a plain NumPy float64 8x8 reference -------------------------------


class RefKalman:
    """ByteTrack-style constant-velocity filter over (cx, cy, a, h), written with full matrices."""

    def __init__(self, z, wp, wv, wm):
        self.wp, self.wv, self.wm = wp, wv, wm
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)
        self.H = np.eye(4, 8)
        h = z[3]
        std = [2 * wp * h, 2 * wp * h, 1e-2, 2 * wp * h, 10 * wv * h, 10 * wv * h, 1e-5,
               10 * wv * h]
        self.x = np.r_[z, np.zeros(4)]
        self.P = np.diag(np.square(std))

    def predict(self):
        h = self.x[3]
        std = [self.wp * h, self.wp * h, 1e-2, self.wp * h, self.wv * h, self.wv * h, 1e-5,
               self.wv * h]
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + np.diag(np.square(std))

    def update(self, z):
        h = self.x[3]
        R = np.diag(np.square([self.wm * h, self.wm * h, 1e-1, self.wm * h]))
        S = self.H @ self.P @ self.H.T + R
        K = self.P @ self.H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - self.H @ self.x)
        self.P = (np.eye(8) - K @ self.H) @ self.P

    def box(self):
        cx, cy, a, h = self.x[:4]
        w = a * h
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _z(box):
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w / h, h])


def test_kalman_steps_match_numpy_reference():
    rng = np.random.default_rng(7)
    wp, wv, wm = 0.05, 0.01, 0.07  # distinct, so a swapped weight would show
    tracker = Tracker(probation_age=1, std_weight_position=wp,
                      std_weight_velocity=wv, std_weight_measurement=wm)
    box = np.array([100.0, 50.0, 140.0, 150.0])
    ref = None
    for frame in range(40):
        box = box + np.array([3.0, 1.0, 3.5, 1.2]) + rng.normal(0, 1.5, 4)
        det = np.array([[*box, 0.9, 0.0]])
        out = tracker.update(det)
        if ref is None:
            ref = RefKalman(_z(box), wp, wv, wm)
        else:
            ref.predict()
            ref.update(_z(box))
        assert out.shape == (1, 8)
        np.testing.assert_allclose(out[0, :4], ref.box(), rtol=1e-9, atol=1e-7,
                                   err_msg=f"frame {frame}")
    # Predict-only frames follow the reference prediction.
    for _ in range(3):
        out = tracker.update(None)
        ref.predict()
        np.testing.assert_allclose(out[0, :4], ref.box(), rtol=1e-9, atol=1e-7)
    assert out[0, 7] == 3


# --- LAPJV against scipy ---------------------------------------------------------------------


def _check_lap(cost):
    rows = _tracker.lap(np.ascontiguousarray(cost, dtype=np.float64))
    n, m = cost.shape
    assert len(rows) == n
    assigned = [(i, j) for i, j in enumerate(rows) if j >= 0]
    assert len(assigned) == min(n, m)
    cols = [j for _, j in assigned]
    assert len(set(cols)) == len(cols) and all(0 <= j < m for j in cols)
    r, c = linear_sum_assignment(cost)
    ours = sum(cost[i, j] for i, j in assigned)
    assert ours == pytest.approx(cost[r, c].sum(), rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                  elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)))
def test_lap_matches_scipy_random(cost):
    _check_lap(cost)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=10),
                  elements=st.sampled_from([0.0, 1.0, 2.0])))
def test_lap_matches_scipy_degenerate_ties(cost):
    _check_lap(cost)


@pytest.mark.parametrize("cost", [
    np.zeros((5, 5)), np.ones((4, 7)), np.full((7, 3), 1e6), np.eye(6), 1 - np.eye(6),
    np.arange(36.0).reshape(6, 6), np.add.outer(np.arange(8.0), np.arange(8.0)),
    np.array([[5.0]]), np.random.default_rng(1).random((60, 40)),
])
def test_lap_matches_scipy_fixed(cost):
    _check_lap(cost)


def test_lap_empty_and_bad():
    assert _tracker.lap(np.zeros((0, 3))) == []
    with pytest.raises(ValueError, match="not finite"):
        _tracker.lap(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="2-D float64"):
        _tracker.lap(np.zeros(3))


# --- lifecycle ---------------------------------------------------------------------------------


def _det(x, y, w=40.0, h=100.0, score=0.9, cls=0.0):
    return [x, y, x + w, y + h, score, cls]


def test_ids_persist_through_scripted_occlusion():
    """Two people walk towards each other; B is hidden behind A while they cross, then reappears
    on the other side: both keep their IDs."""
    t = Tracker()
    ids_a, ids_b = set(), set()
    for f in range(80):
        ax, bx = 100 + 4 * f, 500 - 4 * f
        dets = [_det(ax, 100)]
        hidden = 44 <= f < 56
        if not hidden:
            dets.append(_det(bx, 110))
        out = t.update(np.array(dets))
        for row in out:
            if row[7] != 0:
                continue
            cx = (row[0] + row[2]) / 2
            if abs(cx - (ax + 20)) < 15:
                ids_a.add(int(row[4]))
            elif abs(cx - (bx + 20)) < 15:
                ids_b.add(int(row[4]))
        if hidden and f > 45:
            # shadow track kept: listed as lost, or (coasting, the first coast_s) reported
            kept = np.vstack([t.lost(), out[out[:, 7] > 0]])
            assert len(kept) == 1 and int(kept[0, 4]) in ids_b
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_class_separation():
    t = Tracker(probation_age=1, coast_s=0.0)  # (coasting would report the vanished one)
    for _ in range(5):
        out = t.update(np.array([_det(100, 100, cls=0), _det(102, 101, cls=1)]))
    assert len(out) == 2
    by_class = {int(r[6]): int(r[4]) for r in out}
    assert set(by_class) == {0, 1}
    # The class-1 object vanishes; a class-0 det at its place must not take its ID.
    out = t.update(np.array([_det(100, 100, cls=0)]))
    assert [int(r[4]) for r in out] == [by_class[0]]
    out = t.update(np.array([_det(100, 100, cls=0), _det(103, 101, cls=1)]))
    assert {int(r[6]): int(r[4]) for r in out} == by_class


def test_probation_early_termination_and_shadow_expiry():
    t = Tracker(probation_age=3, frame_rate=10, max_shadow_s=0.5,
                shadow_min_frames=0,
                coast_s=0.0)  # lost tracks go straight to lost() (tests/test_tracker_coast.py)
    t.update(np.empty((0, 6)))  # frame 1 confirms immediately; start later
    assert len(t.update(np.array([_det(10, 10)]))) == 0
    assert len(t.update(np.array([_det(11, 10)]))) == 0
    out = t.update(np.array([_det(12, 10)]))
    assert len(out) == 1 and out[0, 4] == 1 and out[0, 7] == 0
    # A single-hit tentative track dies on its first miss and never gets an ID.
    t.update(np.array([_det(13, 10), _det(300, 10)]))
    t.update(np.array([_det(14, 10)]))
    for _ in range(5):
        assert len(t.update(np.empty((0, 6)))) == 0
        assert len(t.lost()) == 1
    t.update(np.empty((0, 6)))
    assert len(t.lost()) == 0 and t.num_tracks == 0
    out = t.update(np.array([_det(500, 10)]))
    out = t.update(np.array([_det(501, 10)]))
    out = t.update(np.array([_det(502, 10)]))
    assert out[0, 4] == 2  # IDs are dense over confirmed tracks and never reused


def test_low_score_detections_extend_but_do_not_start_tracks():
    t = Tracker(probation_age=2, low_thresh=0.2, high_thresh=0.6, adaptive=False)
    assert len(t.update(np.array([_det(10, 10, score=0.3)]))) == 0
    assert t.num_tracks == 0
    t.update(np.array([_det(10, 10, score=0.9)]))
    out = t.update(np.array([_det(10, 10, score=0.9)]))
    assert len(out) == 1  # confirmed after probation_age=2 hits
    for f in range(5):
        out = t.update(np.array([_det(11 + f, 10, score=0.3)]))
        assert len(out) == 1 and out[0, 7] == 0 and out[0, 5] == pytest.approx(0.3)


def test_reset_frame_count_and_ids_not_reused():
    t = Tracker(probation_age=1)
    out = t.update(np.array([_det(10, 10)]))
    assert t.frame_count == 1 and out[0, 4] == 1
    t.update(None)
    assert t.frame_count == 2
    t.reset()
    assert t.frame_count == 0 and t.num_tracks == 0 and len(t.lost()) == 0
    out = t.update(np.array([_det(10, 10)]))
    assert out[0, 4] == 2


def test_output_format():
    t = Tracker(coast_s=0.0)
    out = t.update(np.array([_det(10, 20, score=0.9, cls=3)], dtype=np.float32))
    assert out.dtype == np.float64 and out.shape == (1, len(COLUMNS))
    assert out[0, 4] >= 1 and out[0, 5] == pytest.approx(0.9) and out[0, 6] == 3
    np.testing.assert_allclose(out[0, :4], [10, 20, 50, 120])
    out[0, 0] = -1  # writable, and does not alias tracker state
    assert t.update(None)[0, 0] != -1
    assert t.update(np.empty((0, 6), np.float32)).shape == (0, 8)


def test_crowded_frame_many_components():
    rng = np.random.default_rng(3)
    base = np.stack([rng.uniform(0, 1800, 300), rng.uniform(0, 1000, 300)], 1)
    cls = rng.integers(0, 3, 300)
    t = Tracker(probation_age=1)
    for f in range(10):
        xy = base + f * 2 + rng.normal(0, 1, base.shape)
        dets = np.c_[xy, xy + [30, 80], np.full(300, 0.9), cls]
        out = t.update(dets)
    assert len(out) == 300 and len(np.unique(out[:, 4])) == 300
    assert out[:, 4].max() <= 300 + 5  # almost no ID churn on near-static scene


# --- bad input and parameters ------------------------------------------------------------------


@pytest.mark.parametrize("dets, match", [
    (np.zeros((3, 5)), r"shape \(N, 6\)"),
    (np.zeros(6), r"shape \(N, 6\)"),
    (np.zeros((2, 6), dtype=np.int64), "float32 or float64, got int64"),
    ([[0, 0, 1, 1, 0.5, 0]], "NumPy float32/float64 array"),
    (np.array([[0, 0, 1, np.nan, 0.5, 0]]), "row 0: y2 is not finite"),
    (np.array([[0, 0, 1, 1, 0.5, 0], [0, 0, 1, 1, np.inf, 0]]), "row 1: score is not finite"),
    (np.array([[5, 0, 1, 1, 0.5, 0]]), r"row 0: x2 < x1 \(1 < 5\)"),
    (np.array([[0, 5, 1, 1, 0.5, 0]]), "row 0: y2 < y1"),
    (np.array([[0, 0, 1, 1, -0.1, 0]]), "row 0: score is negative"),
    (np.array([[0, 0, 1, 1, 0.5, 0], [0, 0, 2e7, 1, 0.5, 0]]), r"row 1: x2 is out of range"),
])
def test_bad_dets_raise_and_leave_state_alone(dets, match):
    t = Tracker(probation_age=1)
    before = t.update(np.array([_det(10, 10)]))
    with pytest.raises(ValueError, match=match):
        t.update(dets)
    assert t.frame_count == 1
    after = t.update(np.array([_det(10, 10)]))
    assert after[0, 4] == before[0, 4]


def test_core_validates_buffers_itself():
    core = Tracker()._core
    with pytest.raises(ValueError, match="native float32 or float64"):
        core.update(np.zeros((1, 6), dtype=">f8"))
    with pytest.raises(ValueError, match="got list"):
        core.update([1, 2])
    with pytest.raises(ValueError, match=r"got \(1, 4\)"):
        core.update(np.zeros((1, 4)))


def test_non_contiguous_dets_are_read_correctly():
    dets = np.array([_det(10, 10), _det(200, 50, score=0.7, cls=2)])
    wide = np.zeros((2, 12))
    wide[:, ::2] = dets
    variants = [dets, np.asfortranarray(dets), wide[:, ::2], dets[::-1][::-1],
                np.asfortranarray(dets, dtype=np.float32)]
    results = []
    for v in variants:
        t = Tracker(probation_age=1)
        t.update(v)
        results.append(t.update(v))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-6)
    assert not variants[2].flags.c_contiguous


def test_params_unknown_and_out_of_range():
    with pytest.raises(TypeError, match="unknown parameter.*bogus"):
        Tracker(bogus=1)
    with pytest.raises(ValueError, match=r"probation_age must be in \[1, "):
        Tracker(probation_age=0)
    with pytest.raises(ValueError, match="probation_age must be an integer"):
        Tracker(probation_age=2.5)
    with pytest.raises(ValueError, match="match_thresh must be in"):
        Tracker(match_thresh=float("nan"))
    with pytest.raises(ValueError, match="fuse_score must be true or false"):
        Tracker(fuse_score=1)
    with pytest.raises(ValueError, match="low_thresh .* must not exceed high_thresh"):
        Tracker(low_thresh=0.7, high_thresh=0.5)
    with pytest.raises(ValueError, match="high_thresh is on the normalised range"):
        Tracker(high_thresh=2.0)
    assert Tracker(high_thresh=2.0, new_track_thresh=3.0, adaptive=False).params["high_thresh"] == 2
    t = Tracker(max_shadow_s=10.0)
    assert t.params["max_shadow_s"] == 10 and set(t.params) == set(PARAMS)
    assert "max_shadow_s=10.0" in repr(t)


def test_coast_frames_report_predictions_then_shadow():
    t = Tracker(probation_age=1, frame_rate=10, coast_s=0.2, max_shadow_s=1.0)
    for f in range(5):
        t.update(np.array([_det(10 + 5 * f, 10)]))
    for miss in (1, 2):
        out = t.update(np.empty((0, 6)))
        assert len(out) == 1 and out[0, 7] == miss
        assert out[0, 0] > 10 + 5 * 4  # keeps moving with the predicted velocity
    assert len(t.update(np.empty((0, 6)))) == 0 and len(t.lost()) == 1


def test_update_none_predicts_without_lifecycle_changes():
    t = Tracker(probation_age=2)
    t.update(np.empty((0, 6)))
    t.update(np.array([_det(10, 10)]))
    for _ in range(3):  # a tentative track is not terminated by detection-less frames
        assert len(t.update(None)) == 0
    out = t.update(np.array([_det(10, 10)]))
    assert len(out) == 1 and out[0, 4] == 1


def test_iou_buffer_bridges_a_jump():
    """A box that jumps past its own width (low frame rate) is lost by plain IoU; an enlarged
    (C-BIoU) box keeps the ID."""
    def ids(**params):
        t = Tracker(probation_age=1, recovery_thresh=0.0, direction_weight=0.0, **params)
        seen = set()
        for x in (100, 100, 100, 145, 145):
            seen.update(int(i) for i in t.update(np.array([_det(x, 10)]))[:, 4])
        return seen
    assert len(ids()) == 2
    assert len(ids(iou_buffer=0.5)) == 1


@pytest.mark.parametrize("weight, ahead", [(0.0, False), (1.0, True)])
def test_direction_consistency_prefers_the_continuing_detection(weight, ahead):
    """A track moving right, missed for one frame, is offered a detection slightly behind (better
    IoU with the prediction) and one ahead of its last observation: IoU alone takes the one
    behind, the OC-SORT direction term the one that continues the motion."""
    t = Tracker(probation_age=1, direction_weight=weight, direction_delta=2, fuse_score=False,
                recovery_thresh=0.0)
    for x in (100, 110, 120, 130):
        out = t.update(np.array([_det(x, 10)]))
    tid = out[0, 4]
    t.update(None)
    out = t.update(np.array([_det(128, 10), _det(141, 10)]))  # prediction: x1 ~ 133.7
    match = out[out[:, 4] == tid]
    assert len(match) == 1
    assert (match[0, 0] > 130) == ahead


@pytest.mark.parametrize("name", ["observation_centric", "active_first", "shadow_buffer",
                                  "max_tentative_misses"])
def test_removed_options_are_named_as_removed(name):
    with pytest.raises(ValueError, match=f"{name} was removed"):
        Tracker(**{name: 0})
