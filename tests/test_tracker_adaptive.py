"""Tracker: score thresholds that adapt to the detector's scale, and frame-rate awareness."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.tracking import PARAMS, Tracker
from edge_agent.tracking.motdata import load_dets, load_gt, read_seqinfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from tracker_metrics import hota  # noqa: E402

NONE = np.empty((0, 6))
STUB = Path(__file__).resolve().parent.parent / "edge_agent" / "tracking" / "_tracker.pyi"


def _rows(dets, **params):
    t = Tracker(**params)
    out = []
    for f, d in enumerate(dets, start=1):
        for r in t.update(d):
            out.append((f, r[4], r[0], r[1], r[2], r[3]))
    return np.array(out).reshape(-1, 6)


def _mapped(dets, fn):
    return [np.c_[d[:, :4], fn(d[:, 4]), d[:, 5]] for d in dets]


@pytest.fixture(scope="module")
def stadtmitte(mot_dir):
    seq = read_seqinfo(mot_dir / "TUD-Stadtmitte")
    return seq, load_dets(seq), load_gt(seq)[:, :6]


@pytest.mark.parametrize("name, fn", [
    ("x0.5", lambda s: 0.5 * s),
    ("ACF-like 0..140", lambda s: 140.0 * (s - 0.5)),
    ("YOLOX-like 0..1", lambda s: 0.1 + 0.8 * s),
    ("square", np.square),
])
def test_monotone_score_map_tracks_as_well(stadtmitte, name, fn):
    """The same detections with every score passed through a monotone map: HOTA within 0.5."""
    seq, dets, gt = stadtmitte
    base = hota(gt, _rows(dets, frame_rate=seq.frame_rate))
    mapped = hota(gt, _rows(_mapped(dets, fn), frame_rate=seq.frame_rate))
    assert base > 0.4  # tracking works at all (measured 0.485)
    assert abs(mapped - base) <= 0.005, (name, base, mapped)


def test_raw_thresholds_do_not_adapt(stadtmitte):
    """Control: with adaptive off, halving the scores drops most detections below the raw
    thresholds, so the test above could fail."""
    seq, dets, gt = stadtmitte
    params = dict(adaptive=False, high_thresh=0.65, new_track_thresh=0.85, low_thresh=0.2)
    base = hota(gt, _rows(dets, **params))
    halved = hota(gt, _rows(_mapped(dets, lambda s: 0.5 * s), **params))
    assert halved < base - 0.1


def test_each_class_has_its_own_score_scale():
    """Class 1 scores 0.2-0.3 (a weapon head), class 0 scores 0.8-0.95: both are tracked, each
    against its own class's range; with raw thresholds class 1 never starts a track."""
    rng = np.random.default_rng(0)

    def frames():
        for f in range(40):
            yield np.array([[100 + 2 * f, 100, 140 + 2 * f, 200, rng.uniform(0.8, 0.95), 0],
                            [400, 100 + f, 420, 130 + f, rng.uniform(0.2, 0.3), 1],
                            [700, 300, 740, 400, rng.uniform(0.8, 0.95), 0]])

    for adaptive, classes in ((True, {0, 1}), (False, {0})):
        t = Tracker(adaptive=adaptive)
        for d in frames():
            out = t.update(d)
        assert {int(c) for c in out[:, 6]} == classes


def _feed(t: Tracker, history: str) -> None:
    """One person walking, detected where history has 'x' and missed where it has '.'."""
    for f, c in enumerate(history):
        t.update(np.array([[10.0 + f, 10, 50 + f, 110, 0.9, 0]]) if c == "x" else NONE)


def _coasted_after(t: Tracker, history: str = "xxxxx") -> int:
    """Frames the person's box is still reported after it vanishes at the end of history."""
    _feed(t, history)
    n = 0
    while len(t.update(NONE)):
        n += 1
    return n


def _gap_after(history: str, frame_rate: float = 10.0, **params):
    """(frames coasted, frames then in lost()) once the person of history vanishes."""
    t = Tracker(probation_age=1, frame_rate=frame_rate, **params)
    _feed(t, history)
    assert history.endswith("x")
    coasted = lost = 0
    while True:
        out = t.update(NONE)
        if len(out):
            coasted += 1
        elif len(t.lost()):
            lost += 1
        else:
            return coasted, lost


def _lost_frames(frame_rate: float, **params) -> int:
    """Frames a confirmed track stays re-matchable after its object vanished (coasting off: the
    track is in lost() from its first miss)."""
    return _gap_after("x" * 5, frame_rate, **{"coast_s": 0.0, **params})[1]


@pytest.mark.parametrize("rate", [7.0, 10.0, 30.0])
def test_shadow_age_is_in_seconds(rate):
    assert _lost_frames(rate, max_shadow_s=1.0, shadow_min_frames=0) == round(rate)
    assert _lost_frames(rate, max_shadow_s=0.5, shadow_min_frames=0) == round(0.5 * rate)


@pytest.mark.parametrize("rate", [7.0, 10.0, 30.0])
def test_shadow_keeps_at_least_shadow_min_frames(rate):
    # 1 s is 7 frames at 7 fps, fewer detector attempts than the floor of 15; at 30 fps the
    # seconds are longer than the floor.
    assert _lost_frames(rate, max_shadow_s=1.0) == max(round(rate), 15)
    assert _lost_frames(rate, max_shadow_s=1.0, shadow_min_frames=20) == max(round(rate), 20)


def _shadow_between_detections(frames_without: int):
    """(rows, lost IDs) per update(None) frame, then the IDs reported at the next detection
    frame, of a person (10 frames/s, kept lost 1 s) missed once and then not looked for by the
    detector (detect_every > 1) for ``frames_without`` frames, then detected where it stood."""
    t = Tracker(probation_age=1, frame_rate=10.0, max_shadow_s=1.0, shadow_min_frames=0,
                coast_s=0.0)
    box = np.array([[10.0, 10, 50, 110, 0.9, 0]])
    for _ in range(5):
        t.update(box)
    t.update(NONE)  # missed: lost, 1 frame since its last match
    between = []
    for _ in range(frames_without):
        rows = t.update(None)
        between.append((len(rows), [int(r[4]) for r in t.lost()]))
    return between, [int(r[4]) for r in t.update(box)]


def test_a_shadow_timed_out_between_detections_is_listed_until_the_next_detection_frame():
    # kept 10 frames: on 11 frames since its last match its time is up, on a frame without
    # detections; it stays in lost() (a crowd counts it) until the detector's next frame, which
    # drops it before the association, as if dropped when its time ran out: a new ID
    between, after = _shadow_between_detections(13)
    assert between == [(0, [1])] * 13
    assert after == [2]
    # the control: a detection within the 10 frames re-matches it
    between, after = _shadow_between_detections(8)
    assert between == [(0, [1])] * 8
    assert after == [1]


STEADY = "x" * 300
FLICKER = "xx." * 100 + "x"  # misses a third of the frames it could see the person in


def test_a_detector_that_misses_often_gets_more_patience():
    """A class whose tracks miss a third of their frames (s = 0.33 / 0.15 = 2.2) is kept lost
    for 15 x 2.2 = 33 frames instead of max(10, 15), and coasted for 1 x 2.2^3 = 11 frames
    instead of one; a steady detector keeps the stated durations, and miss_rate_ref 0 turns
    the scaling off."""
    s = (1 / 3) / 0.15
    c_steady, l_steady = _gap_after(STEADY)
    c_flicker, l_flicker = _gap_after(FLICKER)
    assert (c_steady, c_steady + l_steady) == (1, 15)
    assert c_flicker == int(1 * s ** 3) and c_flicker + l_flicker == int(15 * s)
    assert _gap_after(FLICKER, miss_rate_ref=0.0) == (c_steady, l_steady)


def test_objects_that_leave_do_not_count_as_misses():
    """Gaps that end a track (the person left) say nothing about the detector: many short
    steady tracks that each vanish for good leave the durations as stated."""
    t = Tracker(probation_age=1, frame_rate=10, coast_s=0.1)
    for k in range(40):  # 40 people, one after the other, each seen for 10 frames
        y = 10.0 + 200 * (k % 2)
        for f in range(10):
            t.update(np.array([[10.0 + 5 * f, y, 50 + 5 * f, y + 100, 0.9, 0]]))
        for _ in range(20):
            t.update(NONE)
    assert _coasted_after(t) == 1


def test_reset_forgets_the_miss_rate_and_set_frame_rate_keeps_it():
    t = Tracker(probation_age=1, frame_rate=10)
    _feed(t, FLICKER)
    t.set_frame_rate(10.0)
    assert _coasted_after(t, "") > 1
    t.reset()
    assert _coasted_after(t) == 1


def test_coasting_is_in_seconds():
    for rate in (10.0, 20.0):
        t = Tracker(probation_age=1, frame_rate=rate, coast_s=0.3)
        assert _coasted_after(t) == round(0.3 * rate)


def test_same_motion_at_10_and_30_fps_keeps_one_id():
    """A person walking 150 px/s, seen at 30 fps and at 10 fps (every third frame), missed for
    0.6 s: one ID at both rates (motion per frame and the time lost scale with the rate)."""
    for rate in (30.0, 10.0):
        step = 30 // int(rate)
        t = Tracker(frame_rate=rate)
        ids = set()
        for f in range(0, 90, step):
            x = 100 + 5.0 * f
            d = np.empty((0, 6)) if 40 <= f < 58 else np.array([[x, 100, x + 40, 200, 0.9, 0]])
            ids.update(int(i) for i in t.update(d)[:, 4])
        assert len(ids) == 1, (rate, ids)


def test_set_frame_rate_keeps_tracks():
    t = Tracker(probation_age=1, frame_rate=30.0, max_shadow_s=1.0)
    for f in range(3):
        out = t.update(np.array([[10.0 + f, 10, 50 + f, 110, 0.9, 0]]))
    tid = out[0, 4]
    t.set_frame_rate(5.0)
    assert t.params["frame_rate"] == 5.0 and t.num_tracks == 1
    for _ in range(5):  # 1 s at 5 fps: still re-matchable
        t.update(np.empty((0, 6)))
    assert len(t.lost()) == 1
    assert t.update(np.array([[13.0, 10, 53, 110, 0.9, 0]]))[0, 4] == tid
    with pytest.raises(ValueError, match="frame_rate must be in"):
        t.set_frame_rate(0.0)


def test_core_parameters_match_the_stub():
    """The wrapper's PARAMS, turned into the C core's keywords, are exactly the stub's."""
    from edge_agent.tracking import _core_params, check_params

    tree = ast.parse(STUB.read_text())
    core = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Core")
    init = next(n for n in core.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    stub = [a.arg for a in init.args.kwonlyargs]
    ours = list(_core_params(check_params({})))
    assert sorted(stub) == sorted(ours)
    assert "frame_rate" in PARAMS and "max_shadow_s" in PARAMS
