"""The high-water mark of ``seq``, kept apart from the outbox so that ``seq`` never goes back.

The outbox holds the last ``seq`` it handed out, but an outbox can be lost: deleted, emptied to
0 bytes, corrupt and recreated, or restored from an old copy. Starting again at 1 would make
subscribers (who dedupe and detect gaps by ``(device_id, seq)``) drop new events as duplicates.

So a small file beside the outbox (``<outbox>.seq``) records a *reservation*: before any ``seq``
above ``reserved`` is handed out, ``reserved`` moves ``BLOCK`` ahead and is fsynced (one small
write per ``BLOCK`` events). While the outbox is intact its last seq ``L`` lies in
``[reserved - BLOCK, reserved]``; after a clean stop the file also holds ``L`` exactly. On open,
:meth:`SeqMark.resume` trusts the outbox when it agrees with that, and otherwise continues after
the exact last seq of a clean stop, or after ``reserved`` following a crash (the jump is a gap
for subscribers, never a number used twice).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Tuple, Union

log = logging.getLogger(__name__)

BLOCK = 1000


class SeqMark:
    """``resume(last_in_outbox) -> last seq to continue from``, ``reserve(seq)`` before handing
    out ``seq``, ``close(last)`` at a clean stop. Not thread-safe: the outbox calls it under its
    own lock."""

    def __init__(self, path: Union[str, Path], block: int = BLOCK):
        self.path = Path(path)
        self.block = int(block)
        self.reserved, self._clean_last = self._read()

    def _read(self) -> Tuple[int, Optional[int]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            reserved = int(data["reserved"])
            last = data.get("last")
            return max(reserved, 0), (int(last) if last is not None else None)
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable: the outbox alone decides, which is what happened before this file.
            log.error("seq mark %s is unreadable (%s); trusting the outbox's last seq",
                      self.path, exc)
            return 0, None

    def resume(self, last_in_outbox: int, outbox: str = "the outbox") -> int:
        """The seq to continue after, given the last seq the outbox holds; logs an error when
        the outbox lost seqs it had handed out."""
        lost = (last_in_outbox < self.reserved - self.block
                or (self._clean_last is not None and last_in_outbox < self._clean_last))
        if lost:
            # After a clean stop the exact last seq is known; after a crash only the reservation.
            last = self._clean_last if self._clean_last is not None else self.reserved
            log.error("%s holds seq up to %d but seq up to %d was handed out: it was recreated, "
                      "emptied or restored from an old copy; continuing at seq %d (events it "
                      "held and had not published are lost)", outbox, last_in_outbox, last,
                      last + 1)
        else:
            last = max(last_in_outbox, 0)
        self._write(max(self.reserved, last), None)  # running: no exact last until close()
        return last

    def reserve(self, seq: int) -> None:
        """Make sure ``seq`` is covered by the durable reservation (call before using it)."""
        if seq > self.reserved:
            self._write(seq + self.block, None)

    def close(self, last: int) -> None:
        """Record the exact last seq at a clean stop."""
        self._write(max(self.reserved, last), last)

    def _write(self, reserved: int, last: Optional[int]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"reserved": reserved, "last": last}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself must survive a power loss
        finally:
            os.close(dfd)
        self.reserved, self._clean_last = reserved, last
