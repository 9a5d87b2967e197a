"""Event sinks besides MQTT: a JSON-lines file and the console."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Optional, TextIO


def dumps(event: Dict[str, Any]) -> str:
    """One event as a compact JSON line (no newline)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class JsonlSink:
    """Appends one JSON object per line; flushed per event, fsynced on ``close``.

    ``truncate=True`` starts the file afresh (one-shot runs, whose ``seq`` restarts at 1).
    """

    name = "jsonl"

    def __init__(self, path: os.PathLike, truncate: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: Optional[TextIO] = open(self.path, "w" if truncate else "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: Dict[str, Any]) -> None:
        line = dumps(event) + "\n"
        with self._lock:
            if self._f is None:
                raise RuntimeError(f"jsonl sink {self.path} is closed")
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
                self._f = None


class ConsoleSink:
    """Prints events to a stream (stdout by default) as JSON lines."""

    name = "console"

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, event: Dict[str, Any]) -> None:
        stream = self.stream or sys.stdout
        with self._lock:
            stream.write(dumps(event) + "\n")
            stream.flush()

    def close(self) -> None:
        pass
