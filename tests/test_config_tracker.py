"""The config's per-head `tracker:` section: derived from the tracker's PARAMS, checked at load."""

from __future__ import annotations

import pytest
from config_helpers import assert_validate_refuses

from edge_agent import config as cfgmod
from edge_agent.tracking import CAMERA_PARAMS, PARAMS, Tracker


def test_fields_are_the_tracker_params():
    fields = set(cfgmod.TrackerParams.model_fields)
    assert fields == set(PARAMS) - set(CAMERA_PARAMS)  # the daemon takes those from the camera
    assert set(CAMERA_PARAMS) == {"frame_rate", "frame_width", "frame_height"}
    for name in fields:
        assert cfgmod.TrackerParams.model_fields[name].description == PARAMS[name].doc


def test_per_head_merge_order():
    cfg = cfgmod.load_text(
        "tracker:\n"
        "  default: {high_thresh: 0.3, max_shadow_s: 1.5}\n"
        "  weapon: {high_thresh: 0.1}\n", environ={})
    weapon = cfg.tracker.params_for("weapon")
    # head section > default section > the head's built-in defaults > PARAMS
    assert weapon["high_thresh"] == 0.1 and weapon["max_shadow_s"] == 1.5
    assert weapon["probation_age"] == cfgmod.HEAD_TRACKER_DEFAULTS["weapon"]["probation_age"]
    crowd = cfg.tracker.params_for("crowd")
    assert crowd == {"high_thresh": 0.3, "max_shadow_s": 1.5}
    assert cfg.tracker.params_for("some_other_head") == crowd
    assert Tracker(**weapon).params["high_thresh"] == 0.1


def test_shipped_defaults_build_trackers_for_every_head():
    cfg = cfgmod.load_text("", environ={})
    for head in ("crowd", "weapon", "plate", "unknown"):
        Tracker(frame_rate=12.5, **cfg.tracker.params_for(head))


BAD = {
    "typo": ("tracker:\n  weapon:\n    max_shadow_ages: 3\n", 3,
             "tracker.weapon.max_shadow_ages: unknown key"),
    "flat_section": ("tracker:\n  high_thresh: 0.3\n", 2, "tracker.high_thresh: unknown key"),
    "unknown_head": ("tracker:\n  wepon: {}\n", 2, "tracker.wepon: unknown key"),
    "range": ("tracker:\n  default:\n    probation_age: 0\n", 3,
              "tracker.default.probation_age: Input should be greater than or equal to 1"),
    "bool": ("tracker:\n  plate:\n    fuse_score: 1\n", 3,
             "tracker.plate.fuse_score: Input should be a valid boolean"),
    "int": ("tracker:\n  crowd:\n    probation_age: 2.5\n", 3,
            "tracker.crowd.probation_age: Input should be a valid integer"),
    "cross_field": ("tracker:\n  weapon: {low_thresh: 0.5, high_thresh: 0.2}\n", 1,
                    "tracker: weapon: low_thresh (0.5) must not exceed high_thresh (0.2)"),
    "rank_range": ("tracker:\n  default: {new_track_thresh: 40}\n", 1,
                   "new_track_thresh is on the normalised range [0, 1]"),
    "frame_rate_is_the_cameras": ("tracker:\n  default: {frame_rate: 10}\n", 2,
                                  "tracker.default.frame_rate: unknown key"),
    "removed_option": ("tracker:\n  weapon:\n    observation_centric: false\n", 2,
                       "observation_centric was removed"),
    "frame_size_is_the_cameras": ("tracker:\n  weapon: {frame_width: 640}\n", 2,
                                  "tracker.weapon.frame_width: unknown key"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tracker_section_is_a_config_error(case, tmp_path, capsys):
    text, line, fragment = BAD[case]
    assert_validate_refuses(tmp_path / f"{case}.yaml", "device_id: a\n" + text, line + 1,
                            fragment, capsys)
