"""End-to-end acknowledgements (``mqtt.delivery: end_to_end``): which of a consumer's acks count.

The consumer that owns the events publishes, retained at QoS 1 on ``<prefix>/<device>/ack``, the
highest seq up to which it has stored every event (as decimal digits, e.g. ``1234``). The agent
keeps outbox rows until such an ack covers them. An ack is refused, counted and logged when it
cannot be right: larger than :data:`MAX_ACK_BYTES`, not a plain decimal number, above every seq
this agent has sent (``future``), or below an ack already taken (``backwards``); the same ack
again (the retained one after every reconnect) is simply nothing new.

:class:`AckTracker` is plain bookkeeping, used on the publisher thread only.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional

log = logging.getLogger(__name__)

MAX_ACK_BYTES = 32  # a seq is at most 20 digits; room for whitespace and a newline
MAX_DOUBLINGS = 4  # the ack timeout grows to at most 16x while no ack comes


class AckTracker:
    """The consumer's acknowledged seq (``mark``) and what this agent has sent (``sent_max``).

    ``counters`` is the MQTT stats dict: ``consumer_acks`` (taken), ``acks_refused_future``,
    ``acks_refused_backwards``, ``acks_refused_invalid``."""

    def __init__(self, mark: int, counters: Dict[str, int]):
        self.mark = int(mark)
        self.sent_max = self.mark
        self.counters = counters
        self.progress_at = time.monotonic()  # last ack progress, or the first send after idle
        self.timeouts = 0  # ack timeouts since the last progress (the next wait doubles)

    @property
    def outstanding(self) -> bool:
        """Events sent that the consumer has not acknowledged yet."""
        return self.sent_max > self.mark

    def sent(self, seq: int) -> None:
        """``seq`` was handed to the broker (again or for the first time)."""
        if not self.outstanding:
            self.progress_at = time.monotonic()  # the ack timeout starts with the first send
        if seq > self.sent_max:
            self.sent_max = seq

    def overdue(self, timeout_s: float, now: float) -> bool:
        """Outstanding events and no progress for ``timeout_s``, doubled per timeout in a row
        (up to 16x): a consumer that is away does not get the whole backlog every period."""
        wait = timeout_s * (1 << min(self.timeouts, MAX_DOUBLINGS))
        return self.outstanding and now - self.progress_at >= wait

    def timed_out(self, now: float) -> None:
        """Everything unacknowledged was sent again at ``now``."""
        self.timeouts += 1
        self.progress_at = now

    def offer(self, size: int, head: bytes) -> Optional[int]:
        """One ack message of ``size`` bytes (``head``: its first bytes). Returns the new mark
        when it moved forward, else None (refused, or nothing new)."""
        seq = _parse(size, head)
        if seq is None:
            self._refuse("invalid", f"{size} bytes, not a decimal seq of at most "
                                    f"{MAX_ACK_BYTES} bytes")
            return None
        if seq > self.sent_max:
            self._refuse("future", f"seq {seq}, but only up to {self.sent_max} was sent")
            return None
        if seq < self.mark:
            self._refuse("backwards", f"seq {seq}, below the acknowledged {self.mark}")
            return None
        if seq == self.mark:
            return None
        self.mark = seq
        self.progress_at = time.monotonic()
        self.timeouts = 0
        self.counters["consumer_acks"] += 1
        return seq

    def _refuse(self, why: str, what: str) -> None:
        key = f"acks_refused_{why}"
        self.counters[key] += 1
        n = self.counters[key]
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th ...: a flood of bad acks does not flood the log
            log.warning("mqtt: refused an end-to-end ack (%s): %s (%d refused so far)", why,
                        what, n)


def _parse(size: int, head: bytes) -> Optional[int]:
    if size > MAX_ACK_BYTES:
        return None
    text = head[:size].strip()
    if not text or not text.isdigit() or len(text) > 20:
        return None
    return int(text)
