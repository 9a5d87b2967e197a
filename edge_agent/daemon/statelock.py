"""One agent per state directory: an exclusive ``flock`` on ``<state_dir>/agent.lock``.

Two agents on one state directory share the outbox (and hand out the same ``seq`` twice), the
open-event record and the MQTT client id (each connect throws the other off the broker). The
lock is held for the life of the process; the kernel drops it when the process dies, however it
dies, so a stale lock file never blocks a restart. The file holds the holder's PID for the
message the second agent prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional, Union

LOCK_NAME = "agent.lock"


class StateDirLocked(Exception):
    """Another process holds the state directory; ``pid`` is its PID when it could be read."""

    def __init__(self, path: Path, pid: Optional[int]):
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"state_dir {path.parent} is in use by another edge-agent ({holder}, lock {path}); "
            "stop it first, or give this agent its own state_dir")
        self.path = path
        self.pid = pid


class StateLock:
    """``acquire()`` the lock of ``state_dir`` (raises :class:`StateDirLocked`), ``release()``."""

    def __init__(self, state_dir: Union[str, Path]):
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> StateLock:
        """Take the lock without waiting and write our PID into the file (OSError when the
        directory cannot be created or written)."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StateDirLocked(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; it is only ever read under the lock's protection)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    # The holder writes its PID right after locking: a reader racing that sees an empty file.
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
