"""The state directory's small files: the agent lock, the seq mark, the open-event record."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from edge_agent.daemon.statelock import StateDirLocked, StateLock
from edge_agent.outbox.openevents import OpenEvents
from edge_agent.outbox.seqmark import SeqMark

HOLDER = """
import sys, time
from edge_agent.daemon.statelock import StateLock
lock = StateLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


# --- lock ------------------------------------------------------------------------------------


def _holder(state_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_naming_the_first_pid(tmp_path):
    proc = _holder(tmp_path / "state")
    try:
        with pytest.raises(StateDirLocked) as exc:
            StateLock(tmp_path / "state").acquire()
        assert exc.value.pid == proc.pid
        assert f"pid {proc.pid}" in str(exc.value) and str(tmp_path / "state") in str(exc.value)
    finally:
        proc.kill()
        proc.wait()
    # the kernel dropped the lock with the process (SIGKILL): a stale file does not block
    lock = StateLock(tmp_path / "state").acquire()
    assert (tmp_path / "state" / "agent.lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_lock_in_one_process_is_exclusive_and_released(tmp_path):
    a = StateLock(tmp_path).acquire()
    with pytest.raises(StateDirLocked) as exc:  # flock is per open file, even in one process
        StateLock(tmp_path).acquire()
    assert exc.value.pid == os.getpid()
    a.release()
    with StateLock(tmp_path) as b:
        assert b.held
    assert not b.held


def test_other_state_dirs_are_independent(tmp_path):
    with StateLock(tmp_path / "a"), StateLock(tmp_path / "b") as b:
        assert b.held


def test_lock_in_an_unwritable_place_is_an_oserror(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        StateLock(tmp_path / "file" / "state").acquire()


# --- seq mark --------------------------------------------------------------------------------


def test_mark_reserves_in_blocks_and_trusts_an_intact_outbox(tmp_path):
    m = SeqMark(tmp_path / "ob.seq", block=10)
    assert m.resume(0) == 0
    for s in range(1, 26):
        m.reserve(s)
    assert m.reserved == 33  # written at seq 1 (11), 12 (22) and 23 (33): 3 writes for 25 seqs
    m.close(25)
    assert SeqMark(tmp_path / "ob.seq", block=10).resume(25) == 25  # no gap, no error


@pytest.mark.parametrize("left_in_outbox", [0, 3, 24])
def test_mark_after_clean_stop_never_goes_back(tmp_path, left_in_outbox, caplog):
    m = SeqMark(tmp_path / "ob.seq", block=10)
    m.resume(0)
    for s in range(1, 26):
        m.reserve(s)
    m.close(25)
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox.seqmark"):
        last = SeqMark(tmp_path / "ob.seq", block=10).resume(left_in_outbox, "outbox X")
    assert last == 25  # continues right after the last seq handed out: no reuse, no gap
    assert "outbox X holds seq up to" in caplog.text and "continuing at seq 26" in caplog.text


@pytest.mark.parametrize("left_in_outbox, expect", [(0, 33), (5, 33), (22, 33), (23, 23),
                                                     (25, 25)])
def test_mark_after_crash_jumps_past_the_reservation_only_when_seqs_were_lost(
        tmp_path, left_in_outbox, expect):
    m = SeqMark(tmp_path / "ob.seq", block=10)
    m.resume(0)
    for s in range(1, 26):
        m.reserve(s)
    # no close(): a crash. 25 handed out, reserved 33: an intact outbox holds 23..33
    assert SeqMark(tmp_path / "ob.seq", block=10).resume(left_in_outbox) == expect


def test_mark_file_missing_or_garbage_trusts_the_outbox(tmp_path, caplog):
    assert SeqMark(tmp_path / "none.seq").resume(41) == 41  # an outbox from before the mark
    (tmp_path / "bad.seq").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox.seqmark"):
        assert SeqMark(tmp_path / "bad.seq").resume(7) == 7
    assert "unreadable" in caplog.text
    assert json.loads((tmp_path / "bad.seq").read_text())["reserved"] == 7


# --- open events -----------------------------------------------------------------------------


def _ev(type_, phase, camera="cam1", track_id=None, zone=None, ms=1_000_000, **kw):
    ev = {"event_id": os.urandom(16).hex(), "seq": 1, "type": type_, "phase": phase,
          "camera": camera, "track_id": track_id, "label": "x", "ts": {"iso": "", "epoch_ms": ms},
          "frame": 3, "snapshot": "s.jpg"}
    if zone is not None:
        ev["zone"] = zone
    ev.update(kw)
    return ev


def test_open_events_survive_a_crash_and_close_with_agent_restarted(tmp_path):
    rec = OpenEvents(tmp_path)
    assert rec.closing_events() == []
    rec.write(_ev("crowd", "start", zone="lobby", count=5, ms=1_000_000))
    rec.write(_ev("crowd", "update", zone="lobby", count=9, peak_count=9, ms=1_004_000))
    rec.write(_ev("weapon", "start", track_id=7, top_score=0.9, person_track_id=None))
    rec.write(_ev("weapon", "start", track_id=8))
    rec.write(_ev("weapon", "end", track_id=8))  # closed: not left open
    rec.write(_ev("plate", "start", track_id=3))
    rec.write(_ev("crowd", "start", camera="cam2", zone="lobby"))
    rec.write(_ev("crowd", "update", camera="cam2", zone="gate"))  # update of nothing open
    # no close(): the process dies here
    ends = OpenEvents(tmp_path).closing_events(now=1_010.0)
    by = {(e["type"], e["camera"], e["track_id"], e.get("zone")): e for e in ends}
    assert set(by) == {("crowd", "cam1", None, "lobby"), ("weapon", "cam1", 7, None),
                       ("plate", "cam1", 3, None), ("crowd", "cam2", None, "lobby")}
    for e in ends:
        assert e["phase"] == "end" and e["reason"] == "agent_restarted"
        assert e["seq"] is None and e["snapshot"] is None
        assert e["ts"]["epoch_ms"] == 1_010_000
    crowd = by[("crowd", "cam1", None, "lobby")]
    assert crowd["duration_s"] == 10.0 and crowd["peak_count"] == 9  # since start, latest
    assert crowd["count"] == 0 and crowd["track_ids"] == []  # nobody known to be there now
    assert by[("plate", "cam1", 3, None)]["text_status"] == "no_crop"
    assert len({e["event_id"] for e in ends}) == 4


def test_leftovers_are_forgotten_once_closed_and_a_clean_stop_leaves_none(tmp_path):
    rec = OpenEvents(tmp_path)
    rec.write(_ev("crowd", "start", zone="z"))
    again = OpenEvents(tmp_path)
    assert len(again.closing_events()) == 1
    again.forget_leftovers()
    assert OpenEvents(tmp_path).closing_events() == []
    again.write(_ev("weapon", "start", track_id=1))
    again.write(_ev("weapon", "end", track_id=1))
    again.close()
    assert OpenEvents(tmp_path).closing_events() == []


@pytest.mark.parametrize("content", ["", "{", "{}", "[1, 2]", '[{"event": {"type": "crowd"}}]'])
def test_a_damaged_record_never_stops_the_start(tmp_path, content):
    (tmp_path / "open-events.json").write_text(content)
    assert OpenEvents(tmp_path).closing_events() == []
