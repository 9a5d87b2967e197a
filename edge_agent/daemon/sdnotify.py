"""systemd notification protocol (Type=notify, WatchdogSec) without libsystemd.

A notification is one datagram to the unix socket named by ``$NOTIFY_SOCKET``; a leading ``@`` means
the abstract namespace. Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING/EXTEND_TIMEOUT to systemd."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines; returns False when not under systemd or the send failed."""
        if not self._addr:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self._addr)
                s.sendall(msg)
            return True
        except OSError:
            return False  # systemd went away; the daemon keeps running

    def ready(self, status: str = "running") -> bool:
        return self.send(ready=1, status=status)

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def stopping(self) -> bool:
        return self.send(stopping=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up time (e.g. while a TensorRT engine builds)."""
        return self.send(extend_timeout_usec=int(seconds * 1e6))

    def watchdog(self, now: Optional[float] = None) -> bool:
        """Ping the watchdog if half its interval has passed; call from the inference loop."""
        if self.watchdog_interval_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval_s:
            return False
        self._last_ping = now
        return self.send(watchdog=1)
