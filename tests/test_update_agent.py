"""Remote updates end to end: `edge-agent run` processes, the real broker, a real HTTP server,
and `edge-agent engine push` from the operator's side; SIGKILL in the middle of an update."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml
from conftest import wait_for
from mqtt_helpers import Subscriber
from update_helpers import ModelServer, make_model, request, signed, signed_update_kit

from edge_agent import cli

REPO = Path(__file__).resolve().parent.parent


class Agent:
    """One `edge-agent run` process with its own state dir, on the test broker."""

    def __init__(self, tmp: Path, device: str, broker, model: Path, clip: Path, pub: str,
                 **update: Any):
        self.dir = tmp / device
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        upd = {"trusted_keys": [pub], "health_check_batches": 10, "download_timeout_s": 5,
               "health_timeout_s": 60, "health_latency_factor": 10}  # a loaded machine is noisy
        upd.update(update)
        self.config = self.dir / "agent.yaml"
        self.config.write_text(yaml.safe_dump({
            "device_id": device, "state_dir": str(self.dir / "state"),
            "log": {"format": "human", "level": "info"}, "model": {"path": str(model)},
            "cameras": [{"name": "cam", "source": str(clip), "loop": True}],
            "events": {"snapshots": {"enabled": False}},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                     "reconnect_max_s": 0.5, "stats_interval_s": 1},
            "update": upd}))
        self.proc: Optional[subprocess.Popen] = None
        self.runs = 0

    def start(self) -> Agent:
        self.runs += 1
        log = open(self.dir / f"agent{self.runs}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        return self

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.dir.glob("agent*.log")))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def docs(sub: Subscriber, device: str, suffix: str) -> List[Dict[str, Any]]:
    return [json.loads(p) for t, p, _ in sub.snapshot()
            if t == f"edge-agent/{device}/{suffix}"]


def last_state(sub: Subscriber, device: str) -> Dict[str, Any]:
    states = docs(sub, device, "state")
    return states[-1] if states else {}


def engine_version(sub: Subscriber, device: str) -> Optional[str]:
    return last_state(sub, device).get("engine", {}).get("version")


def final(sub: Subscriber, device: str, rid: str, timeout: float = 60) -> Dict[str, Any]:
    def done():
        return [d for d in docs(sub, device, "engine/update")
                if d.get("request_id") == rid and d["state"] in ("COMMITTED", "ROLLED_BACK",
                                                                 "FAILED")]
    seen = lambda: [d["state"] for d in docs(sub, device, "engine/update")]  # noqa: E731
    assert wait_for(lambda: bool(done()), timeout), f"{device}: no final state for {rid}: {seen()}"
    return done()[-1]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = signed_update_kit(tmp_path_factory.mktemp("agents"), frames=60)
    yield kit
    kit["server"].close()


@pytest.fixture
def sub(broker):
    s = Subscriber(broker, ["edge-agent/+/engine/update", "edge-agent/+/state",
                            "edge-agent/+/cmd/+/reply"]).ready()
    yield s
    s.close()


def _push(broker, url: str, sig: Path, version: str, *devices: str, canary: int = 0) -> int:
    args = ["engine", "push", "--url", url, "--sig", str(sig), "--version", version,
            "--host", broker.host, "--port", str(broker.port), "--timeout", "90"]
    if len(devices) == 1:
        args += ["--device", devices[0]]
    else:
        args += ["--devices", ",".join(devices), "--canary", str(canary)]
    return cli.main(args)


def test_default_model_update_pushed_committed_and_kept_after_restart(
        tmp_path, broker, sub, kit, yolox_nano, video_dir, capsys):
    """The default model (YOLOX-nano), re-versioned and signed, pushed while a clip loops."""
    a = Agent(tmp_path, "cam-a", broker, yolox_nano, video_dir / "intel_car-detection.mp4",
              kit["pub"], health_check_batches=5).start()
    try:
        assert wait_for(lambda: engine_version(sub, "cam-a") == "0.1.1rc0", 60), a.log()
        copy = tmp_path / "yolox.onnx"
        copy.write_bytes(yolox_nano.read_bytes())
        assert cli.main(["engine", "sign", str(copy), "--key", str(kit["key"]),
                         "--version", "0.2.0"]) == 0
        url = kit["server"].add("yolox-0.2.0.onnx", copy.read_bytes())
        assert _push(broker, url, tmp_path / "yolox-0.2.0.sig", "0.2.0", "cam-a") == 0
        out = capsys.readouterr()
        assert "cam-a: COMMITTED" in out.out and "HEALTH_CHECK" in out.err
        assert wait_for(lambda: engine_version(sub, "cam-a") == "0.2.0", 10)
        # the state polled between the swap and the pointer may show the old current first
        assert wait_for(lambda: last_state(sub, "cam-a")["update"]["current"] == "0.2.0", 10)
        assert a.stop() == 0
        n = len(docs(sub, "cam-a", "state"))
        a.start()  # a restart keeps the committed version
        assert wait_for(lambda: len(docs(sub, "cam-a", "state")) > n, 60), a.log()
        assert engine_version(sub, "cam-a") == "0.2.0"
        # the device answers the list/status commands too
        sub.request("edge-agent/cam-a/cmd/engine.list", b'{"request_id": "l1"}')
        assert wait_for(lambda: docs(sub, "cam-a", "cmd/engine.list/reply"), 10)
        listing = docs(sub, "cam-a", "cmd/engine.list/reply")[-1]["result"]
        assert listing["current"] == "0.2.0" and listing["previous"] == "0.1.1rc0"
    finally:
        a.stop()


def test_sigkill_while_downloading_resumes_from_its_byte(tmp_path, broker, sub, kit):
    srv = kit["server"]
    a = Agent(tmp_path, "cam-k", broker, kit["base"], kit["clip"], kit["pub"]).start()
    try:
        assert wait_for(lambda: engine_version(sub, "cam-k") == "1", 60), a.log()
        big = tmp_path / "big.onnx"
        m = make_model(big, pad_kb=256)
        data = big.read_bytes()
        srv.drip_bytes, srv.drip_s = len(data) // 40, 0.1  # ~4 s in all
        url = srv.add("drip.onnx", data, "drip")
        req = request(url, data, "2", signed(m, data, "2", kit["key"]), rid="k1")
        sub.request("edge-agent/cam-k/cmd/engine.update", json.dumps(req).encode())
        assert wait_for(lambda: any(d.get("request_id") == "k1" and (d.get("progress") or 0) >= 20
                                    for d in docs(sub, "cam-k", "engine/update")), 30)
        a.kill()
        part = next((a.dir / "state" / "models" / "downloads").glob("*.part"))
        have = part.stat().st_size
        assert 0 < have < len(data)
        a.start()
        done = final(sub, "cam-k", "k1")
        assert done["state"] == "COMMITTED", done
        resumed = [r for p, r in srv.requests if p == "/drip.onnx"][-1]
        assert resumed is not None and int(resumed.split("=")[1].rstrip("-")) >= have
        assert any("resumed after a restart at byte" in (d.get("message") or "")
                   for d in docs(sub, "cam-k", "engine/update"))
        assert wait_for(lambda: engine_version(sub, "cam-k") == "2", 10)
    finally:
        a.stop()


def test_sigkill_during_health_check_restarts_on_the_old_engine(tmp_path, broker, sub, kit):
    a = Agent(tmp_path, "cam-h", broker, kit["base"], kit["clip"], kit["pub"],
              health_check_batches=100000, health_timeout_s=600).start()
    try:
        assert wait_for(lambda: engine_version(sub, "cam-h") == "1", 60), a.log()
        data = kit["base"].read_bytes()
        url = kit["server"].add("hc.onnx", data)
        req = request(url, data, "2", signed(kit["manifest"], data, "2", kit["key"]), rid="h1")
        sub.request("edge-agent/cam-h/cmd/engine.update", json.dumps(req).encode())
        assert wait_for(lambda: any(d.get("request_id") == "h1" and d["state"] == "HEALTH_CHECK"
                                    for d in docs(sub, "cam-h", "engine/update")), 30)
        a.kill()
        a.start()
        done = final(sub, "cam-h", "h1")
        assert done["state"] == "ROLLED_BACK" and done["error"]["code"] == "restarted"
        assert "restarted during HEALTH_CHECK" in done["message"]
        idle = lambda: last_state(sub, "cam-h").get("update", {}).get("state") == "IDLE"  # noqa
        assert wait_for(lambda: engine_version(sub, "cam-h") == "1" and idle(), 20), \
            json.dumps(last_state(sub, "cam-h"))
        models = a.dir / "state" / "models"
        assert json.loads((models / "current").read_text())["version"] == "1"
        assert [p.name for p in (models / "failed").iterdir()][0].startswith("2-")
    finally:
        a.stop()


def test_canary_rollout_good_model_commits_everywhere_bad_one_stops_at_the_canary(
        tmp_path, broker, sub, kit, capsys):
    srv, key, man = kit["server"], kit["key"], kit["manifest"]
    agents = [Agent(tmp_path, d, broker, kit["base"], kit["clip"], kit["pub"],
                    health_check_batches=6).start() for d in ("fleet-1", "fleet-2")]
    try:
        for ag in agents:
            assert wait_for(lambda d=ag.device: engine_version(sub, d) == "1", 60), ag.log()
        data = kit["base"].read_bytes()
        good = tmp_path / "good.sig"
        good.write_text(json.dumps(signed(man, data, "2", key)))
        assert _push(broker, srv.add("good.onnx", data), good, "2", "fleet-1", "fleet-2",
                     canary=1) == 0
        assert "fleet-1 (canary): COMMITTED" in capsys.readouterr().out
        for ag in agents:
            assert wait_for(lambda d=ag.device: engine_version(sub, d) == "2", 10)

        nan = tmp_path / "nan.onnx"
        m = make_model(nan, nan=True)
        bad = tmp_path / "bad.sig"
        bad.write_text(json.dumps(signed(m, nan.read_bytes(), "3", key)))
        before = len(docs(sub, "fleet-2", "engine/update"))
        assert _push(broker, srv.add("nan.onnx", nan.read_bytes()), bad, "3", "fleet-1",
                     "fleet-2", canary=1) == 1
        out = capsys.readouterr().out
        assert "fleet-1 (canary): ROLLED_BACK" in out and "fleet-2: SKIPPED" in out
        assert wait_for(lambda: engine_version(sub, "fleet-1") == "2", 10)
        time.sleep(0.5)
        assert len(docs(sub, "fleet-2", "engine/update")) == before  # never asked
        assert engine_version(sub, "fleet-2") == "2"
        # cmd/engine.rollback: back to the previous version on request, between batches
        sub.request("edge-agent/fleet-2/cmd/engine.rollback", b'{"request_id": "rb"}')
        back = final(sub, "fleet-2", "rb")
        assert back["state"] == "ROLLED_BACK" and back["kind"] == "rollback"
        assert wait_for(lambda: engine_version(sub, "fleet-2") == "1", 10)
    finally:
        for ag in agents:
            ag.stop()


def test_push_exits_non_zero_with_the_reason(tmp_path, broker, sub, kit, capsys):
    a = Agent(tmp_path, "cam-r", broker, kit["base"], kit["clip"], kit["pub"]).start()
    try:
        assert wait_for(lambda: engine_version(sub, "cam-r") == "1", 60), a.log()
        data = kit["base"].read_bytes()
        sig = tmp_path / "low.sig"
        sig.write_text(json.dumps(signed(kit["manifest"], data, "0.9", kit["key"])))
        assert _push(broker, kit["server"].add("low.onnx", data), sig, "0.9", "cam-r") == 1
        out = capsys.readouterr().out
        assert "cam-r: REFUSED: version_not_newer" in out  # judged before any download
        assert not [p for p, _ in kit["server"].requests if p == "/low.onnx"]
        assert _push(broker, "http://x/y", sig, "1.5", "cam-r") == 2  # --version != signed one
        # an MQTT 5 requester gets every transition on its response topic, correlated
        v5 = Subscriber(broker, ["my/replies"], v5=True).ready()
        try:
            req = request(kit["server"].add("gone.onnx", data, "404"), data, "3",
                          signed(kit["manifest"], data, "3", kit["key"]), rid="v5")
            v5.request("edge-agent/cam-r/cmd/engine.update", json.dumps(req).encode(),
                       response_topic="my/replies", correlation=b"corr-1")
            states = lambda: [json.loads(p)["result"].get("state")  # noqa: E731
                              for _, p, _ in v5.snapshot()]
            assert v5.wait_for(lambda: "FAILED" in states(), 20), states()
            assert states()[0] == "ACCEPTED" and "DOWNLOADING" in states()
            assert all(getattr(props, "CorrelationData", None) == b"corr-1"
                       for _, _, props in v5.snapshot())
        finally:
            v5.close()
    finally:
        a.stop()


def test_trickling_server_cancel_sigterm_restart_and_a_nul_version(tmp_path, broker, sub, kit):
    """`edge-agent run` against a server that sends one byte a second: cmd/engine.cancel ends the
    download, SIGTERM stops the agent at once, the restart resumes and then fails with `timeout`
    (no wedge, no .part); a NUL in a version is refused and never reaches a topic."""
    srv = ModelServer()
    a = Agent(tmp_path, "cam-t", broker, kit["base"], kit["clip"], kit["pub"],
              download_deadline_s=600, download_timeout_s=30, download_min_rate_kb_s=0).start()
    downloads = a.dir / "state" / "models" / "downloads"

    def started(rid: str) -> bool:  # a byte of the download is on disk
        return any(d.get("request_id") == rid and (d.get("bytes") or 0) > 0
                   for d in docs(sub, "cam-t", "engine/update"))

    try:
        assert wait_for(lambda: engine_version(sub, "cam-t") == "1", 60), a.log()
        data = kit["base"].read_bytes()
        env = signed(kit["manifest"], data, "2", kit["key"])
        bad = dict(request(srv.add("nul.onnx", data), data, "2", env, rid="nul"),
                   version="2\u0000evil")
        sub.request("edge-agent/cam-t/cmd/engine.update", json.dumps(bad).encode())
        assert wait_for(lambda: docs(sub, "cam-t", "cmd/engine.update/reply"), 10)
        reply = docs(sub, "cam-t", "cmd/engine.update/reply")[-1]
        assert reply["request_id"] == "nul" and reply["error"]["code"] == "bad_version"

        url = srv.add("trickle.onnx", data, "trickle")
        sub.request("edge-agent/cam-t/cmd/engine.update",
                    json.dumps(request(url, data, "2", env, rid="t1")).encode())
        assert wait_for(lambda: started("t1"), 20)
        t0 = time.monotonic()
        sub.request("edge-agent/cam-t/cmd/engine.cancel", b'{"request_id": "c1"}')
        done = final(sub, "cam-t", "t1", timeout=10)
        cancel_s = time.monotonic() - t0  # publish -> broker -> agent -> broker -> here
        assert done["state"] == "FAILED" and done["error"]["code"] == "cancelled", done
        assert cancel_s < 2.0, cancel_s  # 0.1 s here; the 1 s bound itself: test_update_hardening
        assert not list(downloads.iterdir())

        sub.request("edge-agent/cam-t/cmd/engine.update",
                    json.dumps(request(url, data, "2", env, rid="t2")).encode())
        assert wait_for(lambda: started("t2"), 20)
        t0 = time.monotonic()
        assert a.stop() == 0
        stop_s = time.monotonic() - t0
        assert stop_s < 5.0, stop_s  # the whole agent; the download ends at once (was 12 s)
        assert len(list(downloads.iterdir())) == 1  # kept for the resume

        cfg = yaml.safe_load(a.config.read_text())
        cfg["update"]["download_deadline_s"] = 3
        a.config.write_text(yaml.safe_dump(cfg))
        a.start()
        done = final(sub, "cam-t", "t2", timeout=60)
        assert done["state"] == "FAILED" and done["error"]["code"] == "timeout", done
        assert any("resumed after a restart" in (d.get("message") or "")
                   for d in docs(sub, "cam-t", "engine/update"))
        idle = lambda: last_state(sub, "cam-t").get("update", {}).get("state") == "IDLE"  # noqa
        assert wait_for(idle, 20)
        assert not list(downloads.iterdir())
        for t, p, _ in sub.snapshot():  # the NUL version reached no topic
            assert b"evil" not in p or t.endswith("cmd/engine.update/reply"), t
            assert b"\\u0000" not in p and b"\0" not in p or t.endswith("/reply"), t
    finally:
        a.stop()
        srv.close()
    print(f"cancel round trip {cancel_s:.3f} s, SIGTERM to exit {stop_s:.2f} s")
