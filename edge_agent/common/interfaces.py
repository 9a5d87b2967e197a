"""The typed seams between the daemon's parts: what the agent and the pipeline need of each.

Each is a structural :class:`typing.Protocol`: a part satisfies it by having the methods, with no
import of this module. The shipped implementations:

============  ==========================================================================
protocol      implementations
============  ==========================================================================
Engine        ``inference.engine.Engine`` subclasses (ONNX Runtime, TensorRT)
EventLog      ``eventlog.Outbox`` (durable, the daemon), ``eventlog.MemoryLog`` (``track``)
Sink          ``events.sinks.JsonlSink``, ``events.sinks.ConsoleSink``, the MQTT HA bridge
Notifier      ``supervise.Supervisor`` (the daemon), ``sdnotify.Notifier`` (systemd)
Publisher     ``mqtt.client.AgentMqtt`` (snapshots, state changes, update progress)
Observer      ``daemon.exporter.Observations`` (latency histograms, last frame per camera)
============  ==========================================================================
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """A detector: frames in, per-head detections out (see ``edge_agent.inference``)."""

    manifest: Any  # inference.manifest.Manifest: name, version, sha256, heads, input
    max_batch: int
    backend_name: str
    parallel_calls: int  # infer calls that may run at once on different threads

    def infer(self, frames: Sequence[np.ndarray]) -> Any:
        """An ``InferResult``: ``detections[i][head]`` is a (K, 6) float32 array."""

    def close(self) -> None:
        """Release the backend (idempotent)."""


@runtime_checkable
class EventLog(Protocol):
    """Numbers events (``seq``) and keeps them until they are delivered."""

    def append(self, event: Dict[str, Any]) -> int:
        """Store ``event``, set ``event["seq"]`` and return it; ValueError when rejected."""

    def ack(self, seqs: Iterable[int]) -> int:
        """Forget delivered events; returns how many were still kept."""

    def stats(self) -> Dict[str, Any]:
        """Counters (rows, bytes, last_seq, dropped ...) for the stats document."""

    def close(self) -> None:
        """Flush and release (idempotent)."""


@runtime_checkable
class Sink(Protocol):
    """Receives every event once it has its ``seq`` (a file, the console, Home Assistant)."""

    name: str

    def write(self, event: Dict[str, Any]) -> None:
        """Deliver one event; an exception is counted and logged, the pipeline goes on."""

    def close(self) -> None:
        """Flush and release (called once, after the last event)."""


@runtime_checkable
class Notifier(Protocol):
    """The service manager as the pipeline and the agent see it: liveness and stopping."""

    def watchdog(self, now: Optional[float] = None) -> Any:
        """The inference loop is alive (called every pass; rate-limited by the implementation)."""

    def stopping(self) -> Any:
        """Shutdown has begun."""


@runtime_checkable
class Publisher(Protocol):
    """What the pipeline's side publishes outside the event log (MQTT)."""

    def publish_snapshot(self, event_id: str, jpeg: bytes) -> bool:
        """Publish a JPEG; False when it could not be sent now."""

    def publish_state(self) -> None:
        """Re-publish the retained state document after a change (engine swap)."""


@runtime_checkable
class Observer(Protocol):
    """Sees the inference loop's timings as they happen (the ``/metrics`` histograms)."""

    def inference(self, seconds: float) -> None:
        """One ``infer`` call (a batch) took ``seconds``."""

    def tracker(self, seconds: float) -> None:
        """The trackers of one frame took ``seconds`` (all heads)."""

    def frame(self, camera: str, e2e_s: float, now: float) -> None:
        """``camera``'s frame was processed ``e2e_s`` after it was read; ``now`` is monotonic."""


__all__: List[str] = ["Engine", "EventLog", "Notifier", "Observer", "Publisher", "Sink"]
