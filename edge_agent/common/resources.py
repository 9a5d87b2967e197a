"""The process's file descriptors and the memory left to it, read from /proc and the cgroup.

Running out of either makes every part fail at once in ways that look like something else (a
video file that "cannot be opened", a database that "cannot be written"). :func:`check` says it
plainly, for ``/healthz``, the stats document and the cameras' error messages.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

# Below these the next open()/malloc of a camera reopen or an event write may fail. 64 fds
# covers a reopen of every camera plus the outbox, the sinks and a few metrics clients.
LOW_FD_FREE = 64
LOW_MEM_BYTES = 64 << 20

# OSError numbers that mean "the machine or the process is out of something", not "bad input".
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS,
                               errno.ENOSPC, errno.EAGAIN})

_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Usage:
    """One reading. ``fds_open`` equals ``fds_limit`` when the table is full (it could not
    even be listed); ``mem_available`` is None where neither /proc nor a cgroup says."""

    fds_open: int
    fds_limit: int
    mem_available: Optional[int]

    @property
    def fds_free(self) -> int:
        return max(0, self.fds_limit - self.fds_open)

    def problems(self) -> List[str]:
        """What is short now (empty: nothing)."""
        out = []
        if self.fds_free < LOW_FD_FREE:
            out.append(f"low on file descriptors: {self.fds_open} of {self.fds_limit} open "
                       "(LimitNOFILE)")
        if self.mem_available is not None and self.mem_available < LOW_MEM_BYTES:
            out.append(f"low on memory: {self.mem_available >> 20} MiB available")
        return out

    def doc(self) -> Dict[str, Any]:
        """The reading and its problems, as the stats document and /healthz show them."""
        return dict(asdict(self), fds_free=self.fds_free, problems=self.problems())


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE (what EMFILE is measured against)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def fds_open() -> int:
    """Open descriptors of this process (the limit when even listing them fails with EMFILE)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return fd_limit()
        raise


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_available() -> Optional[int]:
    """memory.max - memory.current of this process's cgroup (v2), None when unlimited."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    if not line.startswith("0::"):
        return None
    folder = _CGROUP_ROOT / line[3:].lstrip("/")
    limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
    if limit is None or used is None:
        return None
    return max(0, limit - used)


def memory_available() -> Optional[int]:
    """Bytes this process could still get: the smaller of MemAvailable and the cgroup's room."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    cg = _cgroup_available()
    if cg is not None:
        avail = cg if avail is None else min(avail, cg)
    return avail


def usage() -> Usage:
    """Read both now (a few small /proc reads; cheap enough for every scrape)."""
    try:
        opened = fds_open()
    except OSError:
        opened = 0  # /proc not mounted: nothing to report
    return Usage(opened, fd_limit(), memory_available())


def exhaustion(exc: BaseException) -> Optional[str]:
    """A short reason when ``exc`` is an OSError meaning "out of descriptors/memory/space"."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.errno in EXHAUSTION_ERRNOS:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return None
