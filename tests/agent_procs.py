"""Shared by the tests that run the real daemon as a process: write its config, start it, stop
it, read the events it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent


def agent_config(tmp_path: Path, model_file: Path, cameras: List[Dict[str, Any]],
                 device_id: str = "agent-test", name: str = "agent.yaml",
                 **sections: Any) -> Path:
    """Write a config for ``edge-agent run`` to ``tmp_path/name`` and return its path.

    The base: state in ``tmp_path/state``, human logs, events to ``events.jsonl`` in the state
    directory, MQTT off. Each keyword replaces that top-level section (``model`` too: give its
    ``path`` then).
    """
    data: Dict[str, Any] = {
        "device_id": device_id,
        "state_dir": str(tmp_path / "state"),
        "log": {"format": "human", "level": "info"},
        "model": {"path": str(model_file)},
        "cameras": cameras,
        "events": {"sinks": {"jsonl": "events.jsonl"}},
        "mqtt": {"enabled": False},
    }
    data.update(sections)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_agent(config: Path, log: Path, env: Optional[Dict[str, str]] = None,
                harness: bool = False) -> subprocess.Popen:
    """``edge-agent run --config CONFIG`` in the repository, its output appended to ``log``.

    ``harness``: through tests/agent_harness.py (SIGUSR1 blocks the inference loop)."""
    entry = [str(REPO / "tests" / "agent_harness.py")] if harness else ["-m", "edge_agent.cli"]
    out = open(log, "a")
    try:
        return subprocess.Popen([sys.executable, *entry, "run", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    finally:
        out.close()  # the child has its own descriptor


def stop_agent(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig`` (if it still runs) and return its exit status; kill it and fail when it
    does not end within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the agent did not stop within {timeout:g} s of {sig!r}") from None


def read_events(path: Path) -> List[Dict[str, Any]]:
    """The events of a JSON-lines file (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
