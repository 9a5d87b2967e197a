"""HEALTH_CHECK: the new engine drives the pipeline for N batches while the old one stays open.

:class:`HealthProbe` stands in for an engine (same ``infer``/``manifest``/``max_batch``) on the
inference thread. On every batch it runs the new engine, then the old one on the same frames, and
records: did the new one fail (an exception, NaN/inf outputs), how long each took, and how many
objects each found. The pipeline gets the new engine's detections, or the old one's for a batch
where the new one failed, so frames keep flowing and tracks keep their IDs either way.

Verdict after N batches: no failures, the new engine's median latency at most ``factor`` x the
old one's (+ a small slack for timer noise on sub-millisecond models), and, when asked, not empty
on every frame where the old engine found objects.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# Timer noise: a model that runs in 0.3 ms must not fail a 3x bound by scheduling jitter.
LATENCY_SLACK_MS = 5.0


@dataclass(frozen=True)
class HealthPolicy:
    batches: int = 20
    latency_factor: float = 3.0
    timeout_s: float = 120.0
    require_detections: bool = True


@dataclass
class HealthReport:
    batches: int = 0
    errors: int = 0
    first_error: str = ""
    new_ms: List[float] = field(default_factory=list)
    old_ms: List[float] = field(default_factory=list)
    frames_old_found: int = 0  # frames where the old engine found at least one object
    frames_new_found_there: int = 0  # ... and the new one did too

    def summary(self) -> Dict[str, Any]:
        med = lambda xs: round(float(np.median(xs)), 3) if xs else None  # noqa: E731
        return {"batches": self.batches, "errors": self.errors, "first_error": self.first_error,
                "new_p50_ms": med(self.new_ms), "old_p50_ms": med(self.old_ms),
                "frames_old_found": self.frames_old_found,
                "frames_new_found_there": self.frames_new_found_there}


def _count(dets: Dict[str, np.ndarray]) -> int:
    return sum(len(v) for v in dets.values())


def _finite(dets: Sequence[Dict[str, np.ndarray]]) -> bool:
    return all(np.isfinite(v).all() for d in dets for v in d.values())


class HealthProbe:
    """An engine stand-in for the health check (runs only on the inference thread)."""

    def __init__(self, new: Any, old: Any, policy: HealthPolicy):
        self.new, self.old, self.policy = new, old, policy
        self.manifest = new.manifest
        self.max_batch = min(new.max_batch, old.max_batch)
        self.native_batch = getattr(new, "native_batch", None)
        self.backend_name = getattr(new, "backend_name", "?")
        self.parallel_calls = 1  # both engines in turn, one batch at a time
        self.report = HealthReport()
        self.done = threading.Event()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close both engines (only when the agent stops in the middle of a health check)."""
        self.new.close()
        self.old.close()

    def infer(self, frames):
        """The new engine's result (the old one's for a batch where the new one failed)."""
        if self.done.is_set():  # verdict reached; the updater swaps us out next
            try:
                return self.new.infer(frames)
            except Exception:
                return self.old.infer(frames)
        # Which engine runs first alternates: the second one finds warm caches.
        if self.report.batches % 2:
            old_res, old_ms = self._run_old(frames)
            new_res, error, new_ms = self._run_new(frames)
        else:
            new_res, error, new_ms = self._run_new(frames)
            old_res, old_ms = self._run_old(frames)
        self._record(new_res, old_res, error, new_ms, old_ms)
        if new_res is not None:
            return new_res
        if old_res is not None:
            return old_res
        raise ValueError(f"both engines failed on this batch: {error}")

    def _run_new(self, frames):
        t0 = time.perf_counter()
        try:
            res = self.new.infer(frames)
            if not _finite(res.detections):
                raise ValueError("non-finite detections")
            return res, None, (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # any failure of the candidate counts; frames must go on
            return None, exc, (time.perf_counter() - t0) * 1e3

    def _run_old(self, frames):
        t0 = time.perf_counter()
        try:
            res = self.old.infer(frames)
        except Exception:
            res = None
        return res, (time.perf_counter() - t0) * 1e3

    def _record(self, new_res, old_res, error, new_ms: float, old_ms: float) -> None:
        with self._lock:
            r = self.report
            r.batches += 1
            if error is not None:
                r.errors += 1
                r.first_error = r.first_error or f"{type(error).__name__}: {str(error)[:200]}"
            else:
                r.new_ms.append(new_ms)
            if old_res is not None:
                r.old_ms.append(old_ms)
                for j, d in enumerate(old_res.detections):
                    if _count(d):
                        r.frames_old_found += 1
                        if new_res is not None and _count(new_res.detections[j]):
                            r.frames_new_found_there += 1
            if r.batches >= self.policy.batches:
                self.done.set()

    def verdict(self) -> Optional[str]:
        """None when healthy, else why not (call after :attr:`done`, or on timeout)."""
        with self._lock:
            r = self.report
            if r.errors:
                return (f"{r.errors} of {r.batches} batches failed on the new engine "
                        f"(first: {r.first_error})")
            # Before the batch count: a model too slow to finish the check in time is too slow.
            slow = self._too_slow(r)
            if slow:
                return slow
            if r.batches < self.policy.batches:
                return (f"only {r.batches} of {self.policy.batches} batches within "
                        f"{self.policy.timeout_s:g} s (no frames?)")
            if self.policy.require_detections and r.frames_old_found \
                    and r.frames_new_found_there == 0:
                return (f"the new engine found nothing on the {r.frames_old_found} frame(s) where "
                        "the old one found objects")
            return None

    def _too_slow(self, r: HealthReport) -> Optional[str]:
        if not (r.new_ms and r.old_ms):
            return None
        new, old = float(np.median(r.new_ms)), float(np.median(r.old_ms))
        bound = self.policy.latency_factor * old + LATENCY_SLACK_MS
        if new <= bound:
            return None
        return (f"too slow: median {new:.1f} ms per batch vs {old:.1f} ms for the old engine "
                f"(bound {self.policy.latency_factor:g}x + {LATENCY_SLACK_MS:g} ms = "
                f"{bound:.1f} ms)")
