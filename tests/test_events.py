"""Event rules on scripted track arrays, zones, snapshots, sinks and the event JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edge_agent.config import CameraConfig, EventsConfig, ZoneConfig
from edge_agent.events.event import EngineInfo, EventFactory, FrameContext, iso_utc
from edge_agent.events.ocr import normalise, vote
from edge_agent.events.processor import CameraEvents
from edge_agent.events.rules import (
    CarrierGeometry,
    CrowdRule,
    HeadTracks,
    PlateRule,
    WeaponRule,
    carrier_track,
    crop_box,
)
from edge_agent.events.sinks import JsonlSink
from edge_agent.events.snapshots import SnapshotStore, encode_jpeg
from edge_agent.events.zones import Zone, anchor_points
from edge_agent.tracking.columns import AGE, BOX, CLASS_ID, SCORE, TRACK_COLS, TRACK_ID

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "edge_agent" / "schemas" / "event.schema.json")
    .read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
W, H = 1000, 500
FPS = 10.0


def factory() -> EventFactory:
    return EventFactory("dev-1", EngineInfo("m", "1.0", "ab" * 32))


def ctx(i: int, image=None) -> FrameContext:
    return FrameContext("cam1", i, i / FPS, 1_700_000_000 + i / FPS, W, H, image)


def track(tid, box, score=0.9, cls=0, age=0) -> list:
    row = [0.0] * TRACK_COLS
    row[BOX] = box
    row[TRACK_ID], row[SCORE], row[CLASS_ID], row[AGE] = tid, score, cls, age
    return row


def tracks(*rows, lost=()) -> HeadTracks:
    a = np.array(rows, dtype=np.float64).reshape(-1, TRACK_COLS)
    b = np.array(lost, dtype=np.float64).reshape(-1, TRACK_COLS)
    return HeadTracks(a, b, ["person"] if not rows or rows[0][CLASS_ID] == 0 else ["x", "y"])


def seal(events):
    """Give events a seq as the outbox would, then validate them against the schema."""
    for n, ev in enumerate(events, 1):
        ev["seq"] = n
        VALIDATOR.validate(ev)
    return events


# --- zones -----------------------------------------------------------------------------------


def test_zone_polygon_contains_and_whole_frame():
    tri = Zone("tri", np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    pts = np.array([[0.1, 0.1], [0.9, 0.9], [0.4, 0.4], [0.6, 0.6]])
    assert tri.contains(pts).tolist() == [True, False, True, False]
    assert Zone("all", None).contains(pts).all()
    concave = Zone("L", np.array([[0, 0], [1, 0], [1, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]],
                                 dtype=float))
    assert concave.contains(np.array([[0.25, 0.75], [0.75, 0.75], [0.75, 0.25]])).tolist() == [
        True, False, True]


def test_anchor_is_bottom_centre_normalised():
    pts = anchor_points(np.array([[100.0, 50, 300, 450]]), W, H)
    assert pts.tolist() == [[0.2, 0.9]]


# --- crowd -----------------------------------------------------------------------------------


def person_rows(n, x0=0):
    return [track(i + 1, (x0 + 60 * i, 100, x0 + 60 * i + 50, 300)) for i in range(n)]


def test_crowd_starts_after_hold_updates_throttled_and_ends_with_hysteresis():
    zone = Zone("z", None, min_count=3, hold_s=1.0, hysteresis=1, update_interval_s=2.0)
    rule = CrowdRule(factory(), [zone])
    out = []
    phases = []
    script = [3] * 9 + [3] + [4] * 10 + [5] * 30 + [2] * 5 + [1] * 3
    for i, n in enumerate(script):
        evs = rule.update(ctx(i), tracks(*person_rows(n)))
        out += [e.event for e in evs]
        phases += [(i, e.event["phase"], e.event["count"]) for e in evs]
    # start once >= 3 was held for 1.0 s (frame 10 = 1.0 s after frame 0)
    assert phases[0] == (10, "start", 4)
    # count 4 at frame 10 -> update only after 2 s since the start (frame 30); 5 at frame 30
    updates = [p for p in phases if p[1] == "update"]
    assert updates and updates[0][0] >= 30
    assert all(b[0] - a[0] >= 20 for a, b in zip(updates, updates[1:]))
    # 2 persons is not below 3 - 1 = 2: still on; 1 person ends it
    ends = [p for p in phases if p[1] == "end"]
    assert ends == [(len(script) - 3, "end", 1)]
    assert out[-1]["reason"] == "below_threshold" and out[-1]["peak_count"] == 5
    assert out[0]["track_ids"] == [1, 2, 3, 4] and out[0]["zone"] == "z"
    assert [p[0] for p in updates] == [30, 50]
    seal(out)


def test_crowd_short_burst_below_hold_does_not_start():
    zone = Zone("z", None, min_count=3, hold_s=1.0, hysteresis=0)
    rule = CrowdRule(factory(), [zone])
    script = [3] * 5 + [2] + [3] * 5 + [0] * 5
    evs = [e for i, n in enumerate(script) for e in rule.update(ctx(i), tracks(*person_rows(n)))]
    assert evs == []


def test_crowd_counts_shadow_tracks_and_only_inside_the_polygon():
    left = Zone("left", np.array([[0, 0], [0.5, 0], [0.5, 1], [0, 1]], float), min_count=2,
                hold_s=0)
    rule = CrowdRule(factory(), [left])
    inside = [track(1, (10, 10, 60, 200)), track(2, (100, 10, 150, 200))]
    outside = [track(3, (800, 10, 850, 200))]
    evs = rule.update(ctx(0), tracks(inside[0], *outside, lost=[inside[1]]))
    assert [e.event["phase"] for e in evs] == ["start"]
    assert evs[0].event["count"] == 2 and evs[0].event["track_ids"] == [1, 2]
    assert rule.last_counts == {"left": 2}


def test_crowd_close_sends_end():
    rule = CrowdRule(factory(), [Zone("z", None, min_count=1, hold_s=0)])
    assert len(rule.update(ctx(0), tracks(*person_rows(2)))) == 1
    ends = rule.close(ctx(5))
    assert [e.event["phase"] for e in ends] == ["end"]
    assert ends[0].event["reason"] == "agent_stop" and ends[0].event["duration_s"] == 0.5
    assert ends[0].event["count"] == 2 and ends[0].event["bbox"] is not None  # last frame seen
    assert rule.close(ctx(6)) == []  # nothing left open


# --- weapon ----------------------------------------------------------------------------------


def test_weapon_needs_median_over_window_then_updates_and_ends_on_track_end():
    rule = WeaponRule(factory(), threshold=0.5, window=5, update_interval_s=1.0)
    person = HeadTracks(np.array([track(7, (400, 100, 500, 400)), track(8, (0, 0, 50, 100))]))
    scores = [0.9, 0.2, 0.3, 0.9, 0.4,  # median 0.4 -> no
              0.8, 0.8, 0.7]  # window [0.3,0.9,0.4,0.8,0.8] -> median 0.8 at frame 6
    phases = []
    for i, s in enumerate(scores):
        w = HeadTracks(np.array([track(3, (420, 200, 460, 260), s, 0)]), classes=["knife"])
        phases += [(i, e.event) for e in rule.update(ctx(i), w, person)]
    assert [(i, e["phase"]) for i, e in phases] == [(6, "start")]
    ev = phases[0][1]
    assert ev["label"] == "knife" and ev["score"] == 0.8 and ev["top_score"] == 0.9
    assert ev["person_track_id"] == 7
    # predicted-only frames (age > 0) do not add scores; updates every >= 1 s
    evs = []
    for i in range(8, 30):
        w = HeadTracks(np.array([track(3, (420, 200, 460, 260), 0.1, 0, age=1)]),
                       classes=["knife"])
        evs += rule.update(ctx(i), w, person)
    assert [e.event["phase"] for e in evs] == ["update"] * 2
    assert all(e.event["score"] == 0.8 for e in evs)
    # the track is gone from active and lost -> end
    end = rule.update(ctx(30), HeadTracks(classes=["knife"]), person)
    assert [e.event["phase"] for e in end] == ["end"]
    assert end[0].event["reason"] == "track_ended" and end[0].event["duration_s"] == 2.4
    seal([ev] + [e.event for e in evs + end])


def test_weapon_shadow_track_is_not_ended():
    rule = WeaponRule(factory(), threshold=0.5, window=1, carrier=None)
    w = HeadTracks(np.array([track(3, (0, 0, 10, 10), 0.9)]), classes=["knife"])
    assert len(rule.update(ctx(0), w)) == 1
    shadow = HeadTracks(np.zeros((0, 8)), np.array([track(3, (0, 0, 10, 10), 0.9, age=3)]),
                        ["knife"])
    assert rule.update(ctx(1), shadow) == []
    assert [e.event["phase"] for e in rule.close(ctx(2))] == ["end"]


def test_carrier_geometry_next_to_a_person_and_not_larger_than_them():
    person = np.array([track(7, (400, 100, 500, 400)), track(8, (0, 0, 50, 100))])
    assert carrier_track((420, 200, 460, 260), person) == 7  # in the hand
    assert carrier_track((520, 200, 540, 220), person) == 7  # held out: within half a width
    assert carrier_track((570, 200, 590, 220), person) is None  # 80 px away: nobody's
    assert carrier_track((570, 200, 590, 220), person, CarrierGeometry(margin=1.0)) == 7
    assert carrier_track((380, 120, 720, 420), person) is None  # a car-sized box beside them
    assert carrier_track((420, 200, 460, 260), np.zeros((0, TRACK_COLS))) is None
    with pytest.raises(ValueError, match="margin"):
        CarrierGeometry(margin=-1)


def test_weapon_needs_a_carrier_and_waits_for_one():
    rule = WeaponRule(factory(), threshold=0.5, window=3)
    gun = HeadTracks(np.array([track(3, (700, 300, 740, 330), 0.9)]), classes=["gun"])
    nobody = tracks(track(8, (0, 0, 50, 100)))  # a person far away
    out = []
    for i in range(6):  # confident for 6 frames, but on asphalt
        out += rule.update(ctx(i), gun, nobody)
    assert out == []
    near = tracks(track(8, (0, 0, 50, 100)), track(9, (690, 200, 760, 420)))
    out = rule.update(ctx(6), gun, near)  # the person walks up: the event starts now
    assert [e.event["phase"] for e in out] == ["start"]
    assert out[0].event["person_track_id"] == 9 and out[0].event["track_id"] == 3
    # the carrier stays named after it leaves the frame, up to the end
    out = rule.update(ctx(30), gun, nobody)
    assert [e.event["phase"] for e in out] == ["update"] and out[0].event["person_track_id"] == 9
    end = rule.update(ctx(31), HeadTracks(classes=["gun"]), nobody)
    assert end[0].event["phase"] == "end" and end[0].event["person_track_id"] == 9
    seal([e.event for e in out + end])


def test_weapon_without_carrier_rule_starts_alone_and_config_sets_it():
    rule = WeaponRule(factory(), threshold=0.5, window=1, carrier=None)
    gun = HeadTracks(np.array([track(3, (700, 300, 740, 330), 0.9)]), classes=["gun"])
    out = rule.update(ctx(0), gun, tracks(track(8, (0, 0, 50, 100))))
    assert [e.event["phase"] for e in out] == ["start"]
    assert out[0].event["person_track_id"] == 8  # nearest person, as before the rule
    heads = {"weapon": ["gun"], "crowd": ["person"]}
    cam = CameraConfig(name="c", source="x.mp4")
    on = CameraEvents(cam, EventsConfig(), factory(), heads)
    assert on.weapon.carrier == CarrierGeometry(0.5, 1.0)
    off = CameraEvents(cam, EventsConfig.model_validate(
        {"weapon": {"require_carrier": False}}), factory(), heads)
    assert off.weapon.carrier is None
    wide = CameraEvents(cam, EventsConfig.model_validate(
        {"weapon": {"carrier_margin": 1.5, "carrier_max_size": 0.5}}), factory(), heads)
    assert wide.weapon.carrier == CarrierGeometry(1.5, 0.5)


# --- plate -----------------------------------------------------------------------------------


def test_plate_start_on_confirmation_end_with_best_shot_and_no_ocr_says_so():
    img = np.full((H, W, 3), 127, np.uint8)
    rule = PlateRule(factory(), reader=None, no_text_status="ocr_unavailable")
    out = []
    for i, s in enumerate([0.6, 0.9, 0.7]):
        out += rule.update(ctx(i, img), HeadTracks(
            np.array([track(5, (100 + i, 100, 200, 140), s)]), classes=["plate"]))
    out += rule.update(ctx(3, img), HeadTracks(classes=["plate"]))
    evs = [e.event for e in out]
    assert [e["phase"] for e in evs] == ["start", "end"]
    end = evs[1]
    assert end["text"] is None and end["text_status"] == "ocr_unavailable"
    assert end["score"] == 0.9 and end["best_frame"] == 1 and end["bbox"]["px"][0] == 101
    assert out[1].finish is None
    seal(evs)


def test_plate_ocr_runs_in_finish_and_votes():
    img = np.full((H, W, 3), 127, np.uint8)
    seen = []

    def reader(crops):
        seen.append(len(crops))
        return vote([("ab-12 3", 0.8), ("AB123", 0.9), ("A8123", 0.95)])

    rule = PlateRule(factory(), reader=reader, keep_crops=2)
    for i, s in enumerate([0.6, 0.9, 0.7, 0.5]):
        rule.update(ctx(i, img), HeadTracks(np.array([track(5, (100, 100, 200, 140), s)]),
                                            classes=["plate"]))
    (em,) = rule.close(ctx(4, img))
    assert em.event["text_status"] == "pending" and em.finish is not None
    em.finish()
    assert seen == [2]  # only the two best crops were kept
    assert em.event["text"] == "AB123" and em.event["text_score"] == pytest.approx(0.85)
    assert em.event["text_status"] == "read" and em.event["reason"] == "agent_stop"
    assert em.snapshot is not None and em.snapshot.shape[0] >= 40
    seal([em.event])


def test_ocr_vote_and_normalise():
    assert normalise(" ab-12 3\n") == "AB123"
    assert vote([]) == (None, None)
    assert vote([("x", 0.9)]) == (None, None)  # too short to be a plate
    assert vote([("14955A", 0.6), ("I4955A", 0.9), ("14955A", 0.5)])[0] == "14955A"


def test_crop_box_clips_to_the_frame():
    img = np.zeros((100, 100, 3), np.uint8)
    assert crop_box(img, (90, 90, 120, 120)).shape == (10, 10, 3)
    assert crop_box(img, (200, 200, 300, 300)) is None


# --- processor, snapshots, sinks, schema ----------------------------------------------------


def test_camera_events_builds_rules_from_heads_and_config():
    cam = CameraConfig(name="c", source="x.mp4",
                       zones=[ZoneConfig(name="door", min_count=1, hold_s=0)])
    ev = CameraEvents(cam, EventsConfig(), factory(), {"crowd": ["person"], "weapon": ["knife"]})
    assert ev.plate is None and ev.weapon is not None and [z.name for z in ev.zones] == ["door"]
    img = np.zeros((H, W, 3), np.uint8)
    out = ev.update(ctx(0, img), {"crowd": tracks(*person_rows(2))})
    assert [e.event["type"] for e in out] == ["crowd"]
    assert out[0].snapshot is not None and max(out[0].snapshot.shape[:2]) <= 1280
    assert ev.zone_counts() == {"door": 2}
    plate_off = EventsConfig.model_validate({"plate": {"ocr": False}})
    ev2 = CameraEvents(CameraConfig(name="c", source="x"), plate_off, factory(),
                       {"plate": ["plate"]})
    assert ev2.plate.no_text_status == "ocr_disabled" and ev2.crowd is None


def test_snapshot_ring_respects_cap_and_survives_restart(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)  # noise: large JPEGs
    one = len(encode_jpeg(img, 640, 85))
    store = SnapshotStore(tmp_path / "snaps", max_total_bytes=int(one * 3.5), max_dim=640)
    names = [store.save(f"{i:032x}", img)[0] for i in range(6)]
    files = sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg"))
    assert files == sorted(names[-3:])  # oldest removed first
    assert store.total_bytes <= one * 3.5 and store.removed == 3
    again = SnapshotStore(tmp_path / "snaps", max_total_bytes=one * 2, max_dim=640)
    assert len(again.files()) == 2
    with pytest.raises(ValueError, match="bad event_id"):
        store.save("../evil", img)
    with pytest.raises(ValueError, match="H x W x 3"):
        encode_jpeg(np.zeros((10, 10), np.uint8))


def test_snapshot_save_that_fails_leaves_no_temporary_file(tmp_path):
    store = SnapshotStore(tmp_path / "snaps", max_total_bytes=1 << 20, max_dim=640)
    (tmp_path / "snaps" / "abc.jpg").mkdir()  # the name is taken: os.replace() fails
    with pytest.raises(OSError):
        store.save("abc", np.zeros((48, 64, 3), np.uint8))
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["abc.jpg"]
    assert store.total_bytes == 0 and store.files() == []


def test_snapshot_jpeg_is_size_bounded():
    img = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    jpeg = encode_jpeg(img, max_dim=1280, quality=95, max_bytes=300_000)
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) <= 300_000 * 1.5


def test_jsonl_sink_appends_lines(tmp_path):
    sink = JsonlSink(tmp_path / "sub" / "ev.jsonl")
    sink.write({"a": 1})
    sink.write({"b": "ü"})
    sink.close()
    lines = (tmp_path / "sub" / "ev.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [{"a": 1}, {"b": "ü"}]
    with pytest.raises(RuntimeError, match="closed"):
        sink.write({})
    again = JsonlSink(tmp_path / "sub" / "ev.jsonl")  # the daemon appends across restarts
    again.write({"c": 3})
    again.close()
    assert len((tmp_path / "sub" / "ev.jsonl").read_text().splitlines()) == 3
    fresh = JsonlSink(tmp_path / "sub" / "ev.jsonl", truncate=True)  # one-shot `track`
    fresh.write({"d": 4})
    fresh.close()
    assert (tmp_path / "sub" / "ev.jsonl").read_text() == '{"d":4}\n'


def test_schema_rejects_broken_events():
    rule = CrowdRule(factory(), [Zone("z", None, min_count=1, hold_s=0)])
    (em,) = rule.update(ctx(0), tracks(*person_rows(1)))
    ev = seal([em.event])[0]
    for mutate in (
        lambda e: e.update(seq=None),  # never published without a seq
        lambda e: e.update(phase="begin"),
        lambda e: e.pop("zone"),
        lambda e: e.update(track_id=5),  # crowd events have no single track
        lambda e: e["ts"].update(iso="yesterday"),
    ):
        bad = json.loads(json.dumps(ev))
        mutate(bad)
        assert not VALIDATOR.is_valid(bad)


def test_iso_utc():
    assert iso_utc(0.0016) == "1970-01-01T00:00:00.002Z"
    assert iso_utc(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
