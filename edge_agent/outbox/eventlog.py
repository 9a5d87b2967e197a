"""The event log: every event is appended here (and gets its ``seq``) before anything else sees it.

:class:`Outbox` is the daemon's durable log, an SQLite (WAL) queue between the event rules and
the MQTT publisher, used with or without MQTT (it owns the persisted per-device ``seq``);
:class:`MemoryLog` is the same contract in memory for one-shot runs (``edge-agent track``).

Interface (used by the pipeline's event delivery; stable)::

    ob = Outbox(path, max_rows=100_000, max_bytes=256 << 20, commit_interval_ms=50)
    ob = Outbox.from_config(cfg.mqtt.outbox, cfg.state_dir)   # the same from the config
    seq = ob.append(event)        # assigns event["seq"], stores the event, returns seq
    ob.close()

``append`` writes the event in its own SQLite transaction; its ``seq`` is the row key, and every
transaction that deletes rows also records the last seq handed out, so ``seq`` is persisted,
monotonic and never reused, even across crashes. The
transaction reaches the WAL file before ``append`` returns, so a crash (SIGKILL) of the process
loses nothing that was appended. Syncing the WAL to the disk (fsync) is batched: at most one fsync
per ``commit_interval_ms`` no matter how many events arrive, which bounds what a *power loss* can
take. The publisher only sees rows that are fsynced (``peek`` stops at the synced mark), so an
event reaches the broker only once it is on disk and a ``seq`` seen by a subscriber is never
handed out again. ``commit_interval_ms=0`` fsyncs every event (SQLite ``synchronous=FULL``).

Bounded size (``max_rows`` and ``max_bytes`` of payload). When a new event does not fit, rows are
dropped oldest-first from the lowest-priority type present (the new event included), see
``PRIORITY``: weapon events are kept longest. Drops are counted per type and persisted; a dropped
event leaves a gap in ``seq`` that subscribers can see.

Publisher side (used by the MQTT outbox publisher): ``peek(after_seq, limit)`` returns synced
rows in ``seq`` order (with their snapshot reference), ``ack(seqs)`` deletes rows once the broker
acknowledged them (PUBACK), ``ack_through(seq)`` deletes every row up to a consumer's end-to-end
acknowledgement (and persists it as ``acked_seq``), ``add_listener(fn)`` is called whenever new
rows become visible.

Thread-safety: one connection guarded by a lock; ``append`` (pipeline thread), ``peek``/``ack``
(publisher thread) and the fsync thread may run concurrently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from edge_agent.outbox.seqmark import SeqMark

log = logging.getLogger(__name__)

# Higher is kept longer. Types not listed get 0 (dropped first).
PRIORITY: Dict[str, int] = {"weapon": 30, "plate": 20, "crowd": 10}

_TYPE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # becomes a topic level: events/<type>

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY,
    type     TEXT    NOT NULL,
    priority INTEGER NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_drop_order ON events (priority, seq);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq      INTEGER PRIMARY KEY,
    event_id TEXT    NOT NULL,
    file     TEXT    NOT NULL
);
"""


class OutboxError(ValueError):
    """The event could not be stored (storage failure: disk full, I/O error). A ValueError so
    that a caller handling rejected events keeps running; the message says what failed."""


_INSERT = "INSERT INTO events (seq, type, priority, payload, created) VALUES (?,?,?,?,?)"
_INSERT_SNAPSHOT = "INSERT INTO snapshots (seq, event_id, file) VALUES (?,?,?)"


@dataclass(frozen=True)
class OutboxRow:
    """One stored event: ``payload`` is the UTF-8 JSON published on ``events/<type>``;
    ``snapshot`` is ``(event_id, file name)`` of its JPEG in the snapshot ring, or None."""

    seq: int
    type: str
    payload: bytes
    snapshot: Optional[Tuple[str, str]] = None


class Outbox:
    """SQLite-backed durable FIFO of events with per-device sequence numbers (see module doc)."""

    def __init__(
        self,
        path: Union[str, Path],
        max_rows: int = 100_000,
        max_bytes: int = 256 << 20,
        commit_interval_ms: int = 50,
    ):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if commit_interval_ms < 0:
            raise ValueError(f"commit_interval_ms must be >= 0, got {commit_interval_ms}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = int(max_rows)
        self.max_bytes = int(max_bytes)
        self.interval_s = commit_interval_ms / 1000.0
        self._lock = threading.RLock()
        self._synced = threading.Condition(self._lock)
        self._listeners: List[Callable[[], None]] = []
        try:
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=10
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync on every commit; NORMAL: commits reach the WAL file (crash-safe) and our
            # own thread fsyncs the WAL once per interval.
            sync = "FULL" if self.interval_s == 0 else "NORMAL"
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.executescript(_SCHEMA)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            # The newest row carries the last seq; meta keeps it once rows are deleted.
            newest = self._db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
            self._last_seq = max(int(meta.get("last_seq", 0)), int(newest))
            # seq never goes back, even when this file was lost: see edge_agent.outbox.seqmark
            self._mark = SeqMark(self.path.with_name(self.path.name + ".seq"))
            self._last_seq = self._mark.resume(self._last_seq, f"outbox {self.path}")
            rows, nbytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: cannot open the outbox database: {exc}") from None
        self._rows = int(rows)
        self._bytes = int(nbytes)
        self._acked = int(meta.get("acked", 0))
        self._dropped: Dict[str, int] = {
            k[len("dropped:"):]: int(v) for k, v in meta.items() if k.startswith("dropped:")
        }
        self._closed = False
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._wal_fd: Optional[int] = None
        # Rows left by an earlier run were committed, maybe not fsynced (it may have crashed):
        # sync them now, then they may be published.
        self._synced_seq = 0
        self.sync()
        self._syncer: Optional[threading.Thread] = None
        if self.interval_s > 0:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="outbox-fsync", daemon=True
            )
            self._syncer.start()

    @classmethod
    def from_config(cls, ocfg: Any, state_dir: Union[str, Path]) -> Outbox:
        """From ``cfg.mqtt.outbox`` (``OutboxConfig``); a relative path is under ``state_dir``."""
        path = Path(ocfg.path)
        if not path.is_absolute():
            path = Path(state_dir) / path
        return cls(path, max_rows=ocfg.max_rows, max_bytes=int(ocfg.max_mb * (1 << 20)),
                   commit_interval_ms=ocfg.commit_interval_ms)

    # --- producer side ----------------------------------------------------------------------

    def append(self, event: Dict[str, Any]) -> int:
        """Store ``event`` durably and return its ``seq`` (also written into ``event["seq"]``).

        Raises ``ValueError`` when the event is not a dict with a string ``event_id`` and a
        topic-safe ``type``, is not JSON-serialisable (NaN/inf included), or is larger than the
        outbox itself; ``OutboxError`` (a ValueError) when storage fails. Either way no seq is
        consumed and ``event`` is left as it was.
        """
        if not isinstance(event, dict):
            raise ValueError(f"an event must be a dict, got {type(event).__name__}")
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("event has no event_id (a non-empty string)")
        etype = event.get("type")
        if not isinstance(etype, str) or not _TYPE_RE.match(etype):
            raise ValueError(f"event type {etype!r} must match {_TYPE_RE.pattern}")
        priority = PRIORITY.get(etype, 0)
        with self._lock:
            if self._closed:
                raise ValueError("the outbox is closed")
            seq = self._last_seq + 1
            old_seq = event.get("seq", None)
            event["seq"] = seq
            try:
                payload = json.dumps(
                    event, separators=(",", ":"), allow_nan=False, ensure_ascii=False
                ).encode("utf-8")
            except (TypeError, ValueError) as exc:
                _restore(event, old_seq)
                raise ValueError(f"event {event_id}: not serialisable as JSON: {exc}") from None
            if len(payload) > self.max_bytes:
                _restore(event, old_seq)
                raise ValueError(
                    f"event {event_id}: {len(payload)} bytes is larger than the whole outbox "
                    f"({self.max_bytes} bytes)"
                )
            db = self._db
            row = (seq, etype, priority, payload, time.time())
            snap = event.get("snapshot")
            rows, nbytes = self._rows + 1, self._bytes + len(payload)
            dropped: Dict[str, int] = {}
            try:
                self._mark.reserve(seq)  # durable before the seq is (block-wise, ~1 write/1000)
                if rows <= self.max_rows and nbytes <= self.max_bytes and not snap:
                    # The common case: one statement is its own (autocommit) transaction.
                    db.execute(_INSERT, row)
                else:
                    with self._deleting(seq):
                        db.execute(_INSERT, row)
                        if isinstance(snap, str) and snap:  # published after the event's row
                            db.execute(_INSERT_SNAPSHOT, (seq, event_id, snap))
                        rows, nbytes, dropped = self._evict(rows, nbytes)
            except (sqlite3.Error, OSError) as exc:  # disk full, I/O error: the caller goes on
                _restore(event, old_seq)
                raise OutboxError(f"{self.path}: cannot store event {event_id}: {exc}") from None
            except BaseException:
                _restore(event, old_seq)
                raise
            self._last_seq = seq
            self._rows, self._bytes = rows, nbytes
            for t, n in dropped.items():
                self._dropped[t] = self._dropped.get(t, 0) + n
            if self.interval_s == 0:
                self._mark_synced(seq)
        if dropped:
            what = ", ".join(f"{n} {t}" for t, n in dropped.items())
            log.warning("outbox full: dropped %s", what)
        if self.interval_s > 0:
            self._dirty.set()
        return seq

    def _evict(self, rows: int, nbytes: int):
        """In the append transaction: drop lowest-priority oldest rows until both bounds hold."""
        dropped: Dict[str, int] = {}
        while rows > self.max_rows or nbytes > self.max_bytes:
            # Enough rows for the row bound in one go; for the byte bound one row at a time
            # (one is usually enough: the new event is about the size of the others).
            want = max(rows - self.max_rows, 1)
            victims = self._db.execute(
                "SELECT seq, type, LENGTH(payload) FROM events ORDER BY priority, seq LIMIT ?",
                (min(want, 1000),),
            ).fetchall()
            if not victims:
                break
            gone = [(v[0],) for v in victims]
            self._db.executemany("DELETE FROM events WHERE seq = ?", gone)
            self._db.executemany("DELETE FROM snapshots WHERE seq = ?", gone)
            for _, t, size in victims:
                rows -= 1
                nbytes -= size
                dropped[t] = dropped.get(t, 0) + 1
        for t, n in dropped.items():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (f"dropped:{t}", n),
            )
        return rows, nbytes, dropped

    @contextlib.contextmanager
    def _deleting(self, last_seq: int) -> Iterator[None]:
        """One transaction that may delete rows (under ``_lock``): committed with ``last_seq``
        persisted, rolled back on any error. The deleted rows may include the newest one, which
        is what remembers the last seq, so it is kept in ``meta`` (a plain append need not,
        which saves a page write per event)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)",
                       (last_seq,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _delete_rows(self, where: str, params: Iterable[Any]) -> Tuple[int, int]:
        """Delete the events (and their snapshot references) matching ``where``; returns how
        many rows and payload bytes went. Inside :meth:`_deleting`."""
        params = tuple(params)
        n, size = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events WHERE {where}",
            params).fetchone()
        self._db.execute(f"DELETE FROM events WHERE {where}", params)
        self._db.execute(f"DELETE FROM snapshots WHERE {where}", params)
        return int(n), int(size)

    # --- fsync batching ---------------------------------------------------------------------

    def _sync_loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            if not self._dirty.wait(0.5) or self._stop.is_set():
                continue
            # Group commit: at most one fsync per interval; a lone event is synced at once.
            delay = last + self.interval_s - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._dirty.clear()
            try:
                self.sync()
            except Exception:  # a failing disk must not kill the thread silently
                log.exception("outbox fsync failed; retrying")
                self._dirty.set()
                self._stop.wait(min(1.0, max(self.interval_s, 0.05)))
            last = time.monotonic()

    def sync(self) -> None:
        """fsync the WAL now; every event appended before this call becomes visible to ``peek``."""
        with self._lock:
            if self._closed:
                return
            target = self._last_seq
            if target <= self._synced_seq:
                return
            if self._wal_fd is None:
                wal = str(self.path) + "-wal"
                if os.path.exists(wal):
                    self._wal_fd = os.open(wal, os.O_RDONLY)
            fd = self._wal_fd
        if fd is not None:
            os.fsync(fd)  # fsync flushes the file's data whichever descriptor names it
        else:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(FULL)")
        with self._lock:
            self._mark_synced(target)

    def _mark_synced(self, seq: int) -> None:
        if seq > self._synced_seq:
            self._synced_seq = seq
            self._synced.notify_all()
            listeners = list(self._listeners)
        else:
            listeners = []
        for fn in listeners:
            fn()

    # --- publisher side ---------------------------------------------------------------------

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (quickly; from the syncing thread) whenever new rows become visible."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def peek(self, after_seq: int = 0, limit: int = 100) -> List[OutboxRow]:
        """Up to ``limit`` synced rows with ``seq > after_seq``, in ``seq`` order."""
        with self._lock:
            if self._closed:
                return []
            cur = self._db.execute(
                "SELECT seq, type, payload, event_id, file FROM events "
                "LEFT JOIN snapshots USING (seq) WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after_seq, self._synced_seq, int(limit)),
            )
            return [OutboxRow(int(s), t, bytes(p), None if f is None else (e, f))
                    for s, t, p, e, f in cur.fetchall()]

    def wait(self, after_seq: int, timeout: float) -> bool:
        """Block until a row with ``seq > after_seq`` may be visible (True) or ``timeout``."""
        with self._synced:
            return self._synced.wait_for(lambda: self._synced_seq > after_seq, timeout)

    def ack_through(self, seq: int) -> int:
        """Delete every row with ``seq`` at or below ``seq`` (a consumer acknowledged them all,
        ``mqtt.delivery: end_to_end``) and persist ``seq`` as :attr:`acked_seq`; returns how
        many rows were still there."""
        seq = int(seq)
        with self._lock:
            if self._closed:
                return 0
            with self._deleting(self._last_seq):
                n, size = self._delete_rows("seq <= ?", (seq,))
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('acked', ?)",
                                 (seq,))
            self._acked = max(self._acked, seq)
            self._rows -= n
            self._bytes -= size
            return n

    @property
    def acked_seq(self) -> int:
        """The highest seq a consumer acknowledged (:meth:`ack_through`; 0 before any)."""
        with self._lock:
            return self._acked

    def oldest(self) -> Optional[Tuple[int, float]]:
        """``(seq, created)`` (wall-clock seconds) of the oldest row, or None when empty."""
        with self._lock:
            if self._closed:
                return None
            row = self._db.execute(
                "SELECT seq, created FROM events ORDER BY seq LIMIT 1").fetchone()
            return None if row is None else (int(row[0]), float(row[1]))

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows; returns how many were still there."""
        seqs = [int(s) for s in seqs]
        if not seqs:
            return 0
        with self._lock:
            if self._closed:
                return 0
            removed = freed = 0
            with self._deleting(self._last_seq):
                for i in range(0, len(seqs), 500):  # SQLite's limit on bound parameters
                    chunk = seqs[i:i + 500]
                    n, size = self._delete_rows(f"seq IN ({','.join('?' * len(chunk))})", chunk)
                    removed += n
                    freed += size
            self._rows -= removed
            self._bytes -= freed
            return removed

    # --- introspection ----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last ``seq`` handed out (persisted)."""
        with self._lock:
            return self._last_seq

    def __len__(self) -> int:
        with self._lock:
            return self._rows

    def stats(self) -> Dict[str, Any]:
        """Counters for the ``stats`` message."""
        with self._lock:
            return {
                "rows": self._rows,
                "bytes": self._bytes,
                "last_seq": self._last_seq,
                "synced_seq": self._synced_seq,
                "dropped": dict(self._dropped),
                "dropped_total": sum(self._dropped.values()),
            }

    def close(self) -> None:
        """fsync what is pending and close the database. Idempotent."""
        self._stop.set()
        self._dirty.set()  # wake the fsync thread so it sees the stop at once
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        try:
            self.sync()
        except Exception:
            log.exception("outbox: final fsync failed")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self._db.close()
            try:
                self._mark.close(self._last_seq)
            except OSError as exc:  # the next start then trusts the reservation, still no reuse
                log.error("outbox: cannot record the last seq in %s: %s", self._mark.path, exc)
            self._synced.notify_all()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _restore(event: Dict[str, Any], old_seq: Any) -> None:
    if old_seq is None:
        event.pop("seq", None)
    else:
        event["seq"] = old_seq


class MemoryLog:
    """In-memory ``seq`` for one-shot runs (``track``) that have no state directory.

    Same ``append(event) -> seq`` contract as :class:`Outbox`; nothing is stored or persisted.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._lock = threading.Lock()

    def append(self, event: Dict[str, Any]) -> int:
        """Number ``event`` (``event["seq"]``) and return its seq."""
        with self._lock:
            self._seq += 1
            event["seq"] = self._seq
            return self._seq

    def ack(self, seqs: Iterable[int]) -> int:
        """Nothing is kept, so nothing is removed."""
        return 0

    def stats(self) -> Dict[str, Any]:
        """Counters in the shape of :meth:`Outbox.stats`."""
        with self._lock:
            return {"rows": 0, "bytes": 0, "last_seq": self._seq, "synced_seq": self._seq,
                    "dropped": {}, "dropped_total": 0}

    def close(self) -> None:
        """Nothing to release."""
