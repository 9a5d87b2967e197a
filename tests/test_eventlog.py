"""The SQLite outbox on its own: seq assignment and persistence, bounds and drop policy, errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from mqtt_helpers import event

from edge_agent.outbox.eventlog import Outbox


def test_seq_is_assigned_in_order_and_written_into_the_event(tmp_path):
    with Outbox(tmp_path / "ob.sqlite", commit_interval_ms=0) as ob:
        evs = [event(i) for i in range(5)]
        seqs = [ob.append(e) for e in evs]
        assert seqs == [1, 2, 3, 4, 5]
        assert [e["seq"] for e in evs] == seqs
        rows = ob.peek(0, 10)
        assert [r.seq for r in rows] == seqs
        assert json.loads(rows[2].payload)["event_id"] == "r-2"
        assert json.loads(rows[2].payload)["seq"] == 3
        assert [r.seq for r in ob.peek(3, 10)] == [4, 5]


def test_seq_survives_reopen_even_when_every_row_was_acked(tmp_path):
    path = tmp_path / "ob.sqlite"
    with Outbox(path) as ob:
        for i in range(10):
            ob.append(event(i))
        ob.sync()
        assert ob.ack(r.seq for r in ob.peek(0, 100)) == 10
        assert len(ob) == 0
    with Outbox(path) as ob:
        assert ob.last_seq == 10
        assert ob.append(event(10)) == 11  # never reused although the table was empty


def test_unacked_rows_are_replayed_in_order_after_reopen(tmp_path):
    path = tmp_path / "ob.sqlite"
    with Outbox(path) as ob:
        for i in range(6):
            ob.append(event(i))
        ob.sync()
        ob.ack([2, 4])
    with Outbox(path) as ob:
        assert [r.seq for r in ob.peek(0, 100)] == [1, 3, 5, 6]
        assert len(ob) == 4


def test_rows_become_visible_only_after_the_batched_fsync(tmp_path):
    with Outbox(tmp_path / "ob.sqlite", commit_interval_ms=60_000) as ob:
        ob.sync()  # the first sync happens at once; the next waits a full interval
        ob.append(event(0))
        ob.sync()
        ob.append(event(1))
        assert [r.seq for r in ob.peek(0, 10)] == [1]  # seq 2 is not fsynced yet
        ob.sync()
        assert [r.seq for r in ob.peek(0, 10)] == [1, 2]


def test_batched_fsync_thread_publishes_soon_and_wakes_listeners(tmp_path):
    woke = []
    with Outbox(tmp_path / "ob.sqlite", commit_interval_ms=20) as ob:
        ob.add_listener(lambda: woke.append(1))
        ob.append(event(0))
        assert ob.wait(0, timeout=5)
        assert woke


def test_drop_policy_keeps_weapons_and_drops_oldest_lowest_priority(tmp_path):
    path = tmp_path / "ob.sqlite"
    with Outbox(path, max_rows=5, commit_interval_ms=0) as ob:
        ob.append(event(0, "weapon"))
        ob.append(event(1, "crowd"))
        ob.append(event(2, "plate"))
        ob.append(event(3, "crowd"))
        ob.append(event(4, "weapon"))
        ob.append(event(5, "plate"))  # full: the oldest crowd (seq 2) goes
        assert [r.seq for r in ob.peek(0, 10)] == [1, 3, 4, 5, 6]
        ob.append(event(6, "weapon"))  # the other crowd (seq 4)
        ob.append(event(7, "weapon"))  # then the oldest plate (seq 3)
        assert [r.seq for r in ob.peek(0, 10)] == [1, 5, 6, 7, 8]
        ob.append(event(8, "crowd"))  # the new crowd event is itself the lowest priority
        assert [r.type for r in ob.peek(0, 10)] == ["weapon", "weapon", "plate", "weapon", "weapon"]
        st = ob.stats()
        assert st["dropped"] == {"crowd": 3, "plate": 1}
        assert st["rows"] == 5
    with Outbox(path, max_rows=5) as ob:  # counters are persisted
        assert ob.stats()["dropped"] == {"crowd": 3, "plate": 1}
        assert ob.last_seq == 9


def test_byte_bound_is_enforced(tmp_path):
    big = "x" * 1000
    with Outbox(tmp_path / "ob.sqlite", max_bytes=5000, commit_interval_ms=0) as ob:
        for i in range(20):
            e = event(i)
            e["blob"] = big
            ob.append(e)
        st = ob.stats()
        assert st["bytes"] <= 5000
        assert st["rows"] == 4
        assert st["dropped"]["crowd"] == 16
        assert [r.seq for r in ob.peek(0, 100)] == [17, 18, 19, 20]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not a dict", "must be a dict"),
        ({"type": "crowd"}, "event_id"),
        ({"event_id": "", "type": "crowd"}, "event_id"),
        ({"event_id": "a", "type": "bad/type"}, "event type"),
        ({"event_id": "a", "type": "crowd", "score": float("nan")}, "not serialisable"),
        ({"event_id": "a", "type": "crowd", "x": object()}, "not serialisable"),
        ({"event_id": "a", "type": "crowd", "blob": "y" * 5000}, "larger than the whole outbox"),
    ],
)
def test_bad_events_raise_value_error_and_consume_no_seq(tmp_path, bad, message):
    with Outbox(tmp_path / "ob.sqlite", max_bytes=4096) as ob:
        with pytest.raises(ValueError, match=message):
            ob.append(bad)
        if isinstance(bad, dict):
            assert "seq" not in bad
        assert ob.append(event(0)) == 1


def test_constructor_rejects_bad_arguments_and_a_corrupt_file(tmp_path):
    with pytest.raises(ValueError, match="max_rows"):
        Outbox(tmp_path / "a.sqlite", max_rows=0)
    with pytest.raises(ValueError, match="commit_interval_ms"):
        Outbox(tmp_path / "a.sqlite", commit_interval_ms=-1)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="cannot open the outbox"):
        Outbox(junk)


def test_appends_survive_sigkill_of_the_writer(tmp_path):
    """Every append that returned is on disk after SIGKILL; seq continues after it."""
    path = tmp_path / "ob.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from edge_agent.outbox.eventlog import Outbox
        ob = Outbox({str(path)!r}, commit_interval_ms=1000)
        for i in range(300):
            ob.append({{"event_id": f"k-{{i}}", "type": "crowd"}})
        print(ob.last_seq, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9
    assert proc.stdout.strip() == "300"
    db = sqlite3.connect(str(path))
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 300
    db.close()
    with Outbox(path) as ob:
        assert len(ob.peek(0, 1000)) == 300  # replayable at once after the restart
        assert ob.append(event(0)) == 301


def test_from_config_puts_a_relative_path_under_the_state_dir(tmp_path):
    from edge_agent.config import OutboxConfig

    ob = Outbox.from_config(OutboxConfig(max_rows=7, max_mb=1.5, commit_interval_ms=0), tmp_path)
    assert ob.path == tmp_path / "outbox.sqlite" and ob.path.exists()
    assert (ob.max_rows, ob.max_bytes, ob.interval_s) == (7, 1572864, 0)
    ob.close()


def test_storage_failure_is_a_clear_error_and_the_outbox_recovers(tmp_path):
    """A real I/O failure: SQLite refuses to grow the file past max_page_count (like a full
    disk)."""
    from edge_agent.outbox.eventlog import OutboxError

    with Outbox(tmp_path / "ob.sqlite", commit_interval_ms=0) as ob:
        ob._db.execute("PRAGMA max_page_count = 20")
        big = "z" * 3000
        with pytest.raises(OutboxError, match="cannot store event .*full"):
            for i in range(100):
                e = event(i)
                e["blob"] = big
                ob.append(e)
        stored = ob.last_seq
        ob.ack(r.seq for r in ob.peek(0, 100))  # space freed: appending works again
        assert ob.append(event(999)) == stored + 1


def test_a_snapshot_reference_travels_with_its_row_and_goes_with_it(tmp_path):
    # The JPEG of an event waits in the outbox with the event (it is published from there),
    # and leaves with it: acknowledged, evicted, or kept across a reopen.
    path = tmp_path / "ob.sqlite"
    with Outbox(path, max_rows=3, commit_interval_ms=0) as ob:
        plain = ob.append(event(0))
        with_snap = ob.append({**event(1), "snapshot": "r-1.jpg"})
        rows = {r.seq: r for r in ob.peek(0, 10)}
        assert rows[plain].snapshot is None and rows[with_snap].snapshot == ("r-1", "r-1.jpg")
    with Outbox(path, max_rows=3, commit_interval_ms=0) as ob:
        assert [r.snapshot for r in ob.peek(0, 10)] == [None, ("r-1", "r-1.jpg")]
        for i in range(2, 5):  # two more than fit: the two oldest crowd rows are dropped
            ob.append({**event(i), "snapshot": f"r-{i}.jpg"})
        assert [r.snapshot for r in ob.peek(0, 10)] == [("r-2", "r-2.jpg"), ("r-3", "r-3.jpg"),
                                                          ("r-4", "r-4.jpg")]
        ob.ack([3, 4])
        assert [r.snapshot for r in ob.peek(0, 10)] == [("r-4", "r-4.jpg")]
        left = ob._db.execute("SELECT seq FROM snapshots").fetchall()
        assert left == [(5,)]  # no reference outlives its event
