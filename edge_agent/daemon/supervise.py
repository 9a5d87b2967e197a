"""What systemd sees of the agent: readiness, status line, watchdog, reload and start-up time.

* ``READY=1`` only once the engine is loaded (before the pipeline exists) and every camera has
  delivered a processed frame or reported an error — checked from the inference loop;
* ``STATUS=`` every ``status_interval_s``: fps and frames per camera, engine, MQTT state;
* ``WATCHDOG=1`` from the inference loop only (:meth:`Supervisor.watchdog` is what the loop
  calls), so a loop that hangs stops the pings and systemd restarts the service;
* ``EXTEND_TIMEOUT_USEC=`` while the engine is opened (a TensorRT build takes minutes);
* ``RELOADING=1`` then ``READY=1`` around a config reload.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional

from edge_agent.daemon.sdnotify import Notifier


class Supervisor:
    """The one object the daemon talks to systemd through (a no-op outside systemd)."""

    def __init__(self, notifier: Notifier, status_interval_s: float = 10.0):
        self.notifier = notifier
        self.status_interval_s = status_interval_s
        self.ready_sent = False
        self._settled: Callable[[], bool] = lambda: False
        self._status: Callable[[], str] = lambda: "starting"
        self._next_status = 0.0
        self._next_settle_check = 0.0

    def watch(self, settled: Callable[[], bool], status: Callable[[], str]) -> None:
        """From now on READY=1 follows ``settled()`` and STATUS= is ``status()``."""
        self._settled = settled
        self._status = status

    def watchdog(self, now: Optional[float] = None) -> None:
        """Call once per inference-loop iteration: pings, READY when settled, then STATUS."""
        now = time.monotonic() if now is None else now
        self.notifier.watchdog(now)
        if not self.ready_sent:
            if now < self._next_settle_check:
                return
            self._next_settle_check = now + 0.1
            if self._settled():
                self.ready_sent = True
                self._next_status = now + self.status_interval_s
                self.notifier.ready(self._status())
        elif now >= self._next_status:
            self._next_status = now + self.status_interval_s
            self.notifier.status(self._status())

    def reloading(self, what: str) -> None:
        self.notifier.send(reloading=1, status=f"reloading {what}")

    def reloaded(self, outcome: str) -> None:
        """READY=1 again after a reload (applied or rejected), with its outcome as status."""
        self.notifier.send(ready=1, status=f"{outcome}; {self._status()}")

    def stopping(self) -> None:
        self.notifier.stopping()

    @contextlib.contextmanager
    def extend_start(self, what: str, step_s: float = 30.0) -> Iterator[None]:
        """Keep asking systemd for ``2 * step_s`` more start-up time while the block runs."""
        if not self.notifier.enabled:
            yield
            return
        done = threading.Event()

        def keep_extending() -> None:
            while True:
                self.notifier.send(extend_timeout_usec=int(2 * step_s * 1e6),
                                   status=f"{what} (this can take minutes)")
                if done.wait(step_s):
                    return

        t = threading.Thread(target=keep_extending, name="sd-extend", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join(timeout=1)


def status_line(stats: Dict[str, Any], engine: str, mqtt: str) -> str:
    """``cam1 9.8 fps 1234 frames, cam2 reconnecting 0 frames; engine yolox 1.0 (onnxruntime);
    mqtt connected`` — what ``systemctl status`` shows."""
    cams = ", ".join(
        f"{n} {c['fps']:.1f} fps {c['processed']} frames"
        + ("" if c["state"] == "running" else f" ({c['state']})")
        for n, c in stats["cameras"].items())
    return f"{cams}; engine {engine}; mqtt {mqtt}"
