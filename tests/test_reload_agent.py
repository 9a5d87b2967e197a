"""Issue 23, finding 7, against a real agent process, a real broker and real signals: what a
reload claims is what the agent then does; a missing model is rejected with file:line; a FIFO in
place of the config is refused within a second while ``ping`` still answers; a burst of SIGHUPs
is one reload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from agent_procs import stop_agent
from conftest import wait_for
from mqtt_helpers import Subscriber

REPO = Path(__file__).resolve().parent.parent
PERSONS = "intel_one-by-one-person-detection.mp4"


def _write(path: Path, data: Dict[str, Any]) -> str:
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return text


def _events(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _line(text: str, fragment: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if fragment in ln)


@pytest.mark.slow
def test_reload_claims_match_what_the_agent_does(tmp_path, video_dir, yolox_nano, broker):
    state = tmp_path / "state"
    data: Dict[str, Any] = {
        "device_id": "rl-1",
        "state_dir": str(state),
        "log": {"format": "human", "level": "info"},
        "model": {"path": str(yolox_nano), "intra_op_threads": 1},
        "cameras": [{"name": "door", "source": str(video_dir / PERSONS), "loop": True,
                     "realtime": True, "fps_limit": 5,
                     "zones": [{"name": "hall", "min_count": 1, "hold_s": 0}]}],
        "events": {"sinks": {"jsonl": "events.jsonl"}, "snapshots": {"enabled": False}},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
        "metrics": {"enabled": False},
    }
    config = tmp_path / "agent.yaml"
    _write(config, data)
    log = tmp_path / "agent.log"
    jsonl, other = state / "events.jsonl", state / "other.jsonl"
    sub = Subscriber(broker, ["edge-agent/rl-1/cmd/+/reply"]).ready()
    with open(log, "w") as out:
        # the unchanged agent, plus SIGUSR1: its inference loop hangs for a few seconds
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "agent_harness.py"),
                                 "run", "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(REPO),
                                env=dict(os.environ, EDGE_AGENT_TEST_HANG_S="6"))

    def replies(name: str) -> List[Dict[str, Any]]:
        return [json.loads(p) for p in sub.payloads(f"/cmd/{name}/reply")]

    def reloads() -> int:
        return log.read_text().count("config reloaded (SIGHUP)")

    try:
        assert wait_for(lambda: any(e["phase"] == "start" for e in _events(jsonl)), 90), \
            log.read_text()

        # 1. sinks.jsonl changed with a zone: the zone is applied, the sink is "restart needed",
        # and that is what happens: its open crowd ends (config_reload), events stay in the old
        # file, the new one is never written.
        data["events"]["sinks"]["jsonl"] = "other.jsonl"
        data["cameras"][0]["zones"][0]["hold_s"] = 0.1
        _write(config, data)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config reloaded (SIGHUP): applied cameras.door; needs a "
                        "restart, not applied: events.sinks" in log.read_text(), 20), \
            log.read_text()
        assert wait_for(lambda: any(e.get("reason") == "config_reload"
                                    for e in _events(jsonl)), 20)
        n = len(_events(jsonl))
        # the rebuilt zone starts its crowd again: still into the running sink
        assert wait_for(lambda: len(_events(jsonl)) > n, 60)
        assert not other.exists()

        # 2. a missing model is rejected with file:line (the running model stays)
        good = dict(data["model"])
        data["model"]["path"] = str(tmp_path / "missing.onnx")
        text = _write(config, data)
        sub.request("edge-agent/rl-1/cmd/config.reload", b'{"request_id": "m"}')
        assert sub.wait_for(lambda: replies("config.reload"), 20)
        reply = replies("config.reload")[-1]
        assert reply["ok"] is False, reply
        assert f"{config}:{_line(text, 'missing.onnx')}: model.path: " in \
            reply["error"]["message"], reply
        data["model"] = good

        # 3. the config replaced by a FIFO: refused within a second, ping answers meanwhile
        config.unlink()
        os.mkfifo(config)
        t0 = time.monotonic()
        sub.request("edge-agent/rl-1/cmd/config.reload", b'{"request_id": "f"}')
        sub.request("edge-agent/rl-1/cmd/ping", b'{"request_id": "p"}')
        assert sub.wait_for(lambda: replies("ping") and len(replies("config.reload")) == 2, 10)
        assert time.monotonic() - t0 < 5.0  # broker round trips on a loaded machine included
        fifo = replies("config.reload")[-1]
        # not "pending": the agent itself had the verdict within the command's 1 s wait
        assert fifo["request_id"] == "f" and fifo["ok"] is False
        assert "not a regular file (a FIFO)" in fifo["error"]["message"], fifo
        assert replies("ping")[-1]["ok"] is True
        proc.send_signal(signal.SIGHUP)  # the same for a signal: rejected, no thread left hanging
        assert wait_for(lambda: log.read_text().count("not a regular file (a FIFO)") >= 2, 5)
        config.unlink()
        _write(config, data)

        # 4. a burst of SIGHUPs is one reload
        before = reloads()
        for _ in range(20):  # back to back: the burst must not straddle the 0.5 s quiet time
            proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: reloads() > before, 10)
        time.sleep(3.0)  # any further reload of the burst would have run by now
        assert reloads() == before + 1, log.read_text()[-2000:]

        # 5. a reload that waits for a hung inference loop: the command answers "pending" and
        # frees the command thread (ping answers at once); the report follows when it is done
        data["cameras"][0]["zones"][0]["hold_s"] = 0.2
        _write(config, data)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        n_reload = len(replies("config.reload"))
        sub.request("edge-agent/rl-1/cmd/config.reload", b'{"request_id": "slow"}')
        t0 = time.monotonic()
        time.sleep(0.2)
        sub.request("edge-agent/rl-1/cmd/ping", b'{"request_id": "p2"}')
        assert sub.wait_for(lambda: any(r["request_id"] == "p2" for r in replies("ping")), 10)
        t_ping = time.monotonic() - t0
        mine = [r for r in replies("config.reload")[n_reload:] if r["request_id"] == "slow"]
        assert mine and mine[0]["result"]["pending"] is True, mine
        assert t_ping < 4.0, t_ping  # well before the 6 s hang ended
        assert sub.wait_for(lambda: len([r for r in replies("config.reload")
                                         if r["request_id"] == "slow"]) == 2, 20)
        final = [r for r in replies("config.reload") if r["request_id"] == "slow"][-1]
        assert final["ok"] is True and final["result"]["applied"] == ["cameras.door"], final
        assert proc.poll() is None
    finally:
        sub.close()
        rc = stop_agent(proc)
    assert rc == 0, log.read_text()[-2000:]
