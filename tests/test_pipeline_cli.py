"""`edge-agent track` and `edge-agent run` as a user runs them (real processes, real broker).

Fault paths: a file that ends, a corrupt file, a device that does not exist, SIGTERM mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List

import cv2
import jsonschema
import pytest
import yaml
from agent_procs import agent_config, read_events, start_agent
from conftest import wait_for

from edge_agent import cli

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "edge_agent" / "schemas" / "event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
RETAIL = "nvidia_Retail02_short.mp4"
CAR = "intel_car-detection.mp4"


# --- track -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_track_writes_annotated_video_and_valid_events(tmp_path, video_dir, yolox_nano, capsys):
    conf = tmp_path / "zones.yaml"
    conf.write_text(yaml.safe_dump({"cameras": [{
        "name": "shop", "source": "unused", "zones": [
            {"name": "floor", "polygon": [[0, 0.3], [1, 0.3], [1, 1], [0, 1]], "min_count": 2,
             "hold_s": 0.2}]}]}))
    out, events = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    rc = cli.main(["track", "-i", str(video_dir / RETAIL), "-c", "0.3", "--model", str(yolox_nano),
                   "-o", str(out), "--events", str(events), "-C", str(conf),
                   "--max-frames", "45"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "fps" in err and "frames in" in err
    cap = cv2.VideoCapture(str(out))
    shapes = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shapes.append(frame.shape)
    assert len(shapes) == 45 and set(shapes) == {(1080, 1920, 3)}
    evs = read_events(events)
    assert [(e["type"], e["phase"]) for e in evs][:1] == [("crowd", "start")]
    assert evs[-1]["phase"] == "end" and evs[0]["camera"] == "shop" and evs[0]["zone"] == "floor"
    for e in evs:
        VALIDATOR.validate(e)


def test_track_events_to_stdout_when_no_file(tmp_path, video_dir, yolox_nano, capsys):
    conf = tmp_path / "z.yaml"
    conf.write_text(yaml.safe_dump({"cameras": [{"name": "c", "source": "x", "zones": [
        {"name": "all", "min_count": 1, "hold_s": 0}]}]}))
    rc = cli.main(["track", "-i", str(video_dir / RETAIL), "--model", str(yolox_nano),
                   "-C", str(conf), "--max-frames", "8", "--no-progress"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [e["phase"] for e in lines] == ["start", "end"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "bad_conf", "bad_model", "bad_output",
                                  "bad_events", "unwritable_output"])
def test_track_bad_input_is_a_clear_error(case, tmp_path, video_dir, yolox_nano, capsys):
    args = ["track", "-i", str(video_dir / CAR), "--model", str(yolox_nano), "--no-progress"]
    want = ""
    if case == "missing":
        args[2] = str(tmp_path / "nope.mp4")
        want = "input video not found"
    elif case == "corrupt":
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"\x00" * 5000)
        args[2] = str(bad)
        want = "cannot open video"
    elif case == "bad_conf":
        args += ["-c", "1.5"]
        want = "confidence must be in 0..1"
    elif case == "bad_output":
        args += ["-o", str(tmp_path / "out.txt")]
        want = "output video must end in .mp4"
    elif case == "unwritable_output":
        (tmp_path / "file").write_text("")
        args += ["-o", str(tmp_path / "file" / "out.mp4")]  # its folder is a file
        want = f"error: -o {tmp_path / 'file' / 'out.mp4'}: [Errno"
    elif case == "bad_events":
        args += ["--events", str(tmp_path)]  # a directory
        want = f"--events {tmp_path}: cannot write it"
    else:
        fake = tmp_path / "m.onnx"
        fake.write_bytes(b"not onnx")
        args[4] = str(fake)
        want = "model"
    assert cli.main(args) == 2
    assert want in capsys.readouterr().err


# --- run -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_sigterm_flushes_end_events_and_seq_persists(tmp_path, video_dir, yolox_nano):
    cams = [{"name": "shop", "source": str(video_dir / RETAIL), "loop": True, "realtime": True,
             "zones": [{"name": "all", "min_count": 1, "hold_s": 0}]},
            # a device that does not exist: retried in the background, never blocks the rest
            {"name": "ghost", "source": "/dev/video91", "reconnect": {"min_s": 0.2, "max_s": 1}}]
    config = agent_config(tmp_path, yolox_nano, cams)
    jsonl = tmp_path / "state" / "events.jsonl"
    proc = start_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: any(e["phase"] == "start" for e in read_events(jsonl)), 60), \
            (tmp_path / "agent.log").read_text()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "agent.log").read_text()
    assert "no such video device /dev/video91" in log
    evs = read_events(jsonl)
    for e in evs:
        VALIDATOR.validate(e)
    starts = {e["event_id"] for e in evs if e["phase"] == "start"}
    ends = [e for e in evs if e["phase"] == "end"]
    assert starts and len(ends) == len(starts)
    assert all(e["reason"] == "agent_stop" for e in ends)
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    snaps = list((tmp_path / "state" / "snapshots").glob("*.jpg"))
    assert snaps and {p.stem for p in snaps} <= {e["event_id"] for e in evs}

    # Restart: seq continues from the outbox in state_dir (persisted, never reused).
    proc = start_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: len(read_events(jsonl)) > len(evs), 60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    second = read_events(jsonl)[len(evs):]
    assert second[0]["seq"] == max(seqs) + 1


@pytest.mark.slow
def test_run_file_that_ends_exits_cleanly_with_end_events(tmp_path, video_dir, yolox_nano):
    cams = [{"name": "lot", "source": str(video_dir / CAR), "detect_every": 4,
             "zones": [{"name": "all", "min_count": 1, "hold_s": 0}]}]
    config = agent_config(tmp_path, yolox_nano, cams)
    proc = start_agent(config, tmp_path / "agent.log")
    assert proc.wait(90) == 0, (tmp_path / "agent.log").read_text()
    log = (tmp_path / "agent.log").read_text()
    assert "end of file after 377 frames" in log and "all cameras ended" in log


def test_run_corrupt_file_fails_clearly(tmp_path, yolox_nano):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"x" * 10000)
    config = agent_config(tmp_path, yolox_nano, [{"name": "broken", "source": str(bad)}])
    proc = start_agent(config, tmp_path / "agent.log")
    assert proc.wait(60) == 1
    log = (tmp_path / "agent.log").read_text()
    assert "camera broken: cannot open video file" in log and "every camera failed" in log


def test_run_bad_config_and_gstreamer_without_gstreamer(tmp_path, yolox_nano, video_dir, capsys):
    video = str(video_dir / CAR)  # the start-up checks want an existing file source
    config = agent_config(tmp_path, yolox_nano, [])
    assert cli.main(["run", "--config", str(config)]) == 2
    config = agent_config(tmp_path, yolox_nano, [
        {"name": "csi", "source": "nvarguscamerasrc ! nvvidconv ! appsink"}])
    if "GStreamer:                   NO" in cv2.getBuildInformation():
        assert cli.main(["run", "--config", str(config)]) == 2
        assert "JetPack" in capsys.readouterr().err
    config = agent_config(tmp_path, yolox_nano, [{"name": "c", "source": video}],
                          tracker={"default": {"max_shadow_ages": 3}})
    assert cli.main(["run", "--config", str(config)]) == 2
    assert "tracker.default.max_shadow_ages: unknown key" in capsys.readouterr().err
    config = agent_config(tmp_path, yolox_nano, [{"name": "c", "source": video}],
                          mqtt={"tls": {"ca_file": str(tmp_path / "no-such-ca.pem")}})
    assert cli.main(["run", "--config", str(config)]) == 2
    assert "no-such-ca.pem" in capsys.readouterr().err
    (tmp_path / "state" / "evdir").mkdir(parents=True)  # the events file is a directory
    config = agent_config(tmp_path, yolox_nano, [{"name": "c", "source": video}],
                          events={"sinks": {"jsonl": "evdir"}})
    assert cli.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err  # refused by the start-up checks, with file:line
    assert "agent.yaml:" in err and "events.sinks.jsonl:" in err and "is a directory" in err
    config.write_text("cameras: [{name: x}]\n")
    assert cli.main(["run", "--config", str(config)]) == 2
    assert "cameras[0].source" in capsys.readouterr().err


@pytest.mark.slow
def test_run_publishes_events_and_snapshots_over_mqtt(tmp_path, video_dir, yolox_nano, broker):
    import paho.mqtt.client as paho

    got: Dict[str, List[bytes]] = {"events": [], "snapshots": [], "replies": []}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            if "/events/" in msg.topic:
                got["events"].append(msg.payload)
            elif "/snapshots/" in msg.topic:
                got["snapshots"].append(msg.topic.rsplit("/", 1)[1])
            elif msg.topic.endswith("/cmd/snapshot/reply"):
                got["replies"].append(msg.payload)

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-sub")
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("edge-agent/cli-test/#", qos=1)
    sub.loop_start()
    cams = [{"name": "shop", "source": str(video_dir / RETAIL), "loop": True, "realtime": True,
             "zones": [{"name": "all", "min_count": 1, "hold_s": 0}]}]
    config = agent_config(tmp_path, yolox_nano, cams, device_id="cli-test",
                          mqtt={"enabled": True, "host": broker.host, "port": broker.port})
    proc = start_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: got["events"] and got["snapshots"], 60), \
            (tmp_path / "agent.log").read_text()
        sub.publish("edge-agent/cli-test/cmd/snapshot",
                    json.dumps({"request_id": "r1", "camera": "shop"}), qos=1)
        sub.publish("edge-agent/cli-test/cmd/snapshot",
                    json.dumps({"request_id": "r2", "camera": "nope"}), qos=1)
        assert wait_for(lambda: len(got["replies"]) >= 2, 20), \
            (tmp_path / "agent.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.loop_stop()
        sub.disconnect()
    evs = [json.loads(p) for p in got["events"]]
    for e in evs:
        VALIDATOR.validate(e)
    assert evs[0]["phase"] == "start" and evs[0]["snapshot"] == f"{evs[0]['event_id']}.jpg"
    assert evs[0]["event_id"] in got["snapshots"]
    assert any(e["phase"] == "end" and e["reason"] == "agent_stop" for e in evs)
    replies = {r["request_id"]: r for r in map(json.loads, got["replies"])}
    ok, bad = replies["r1"], replies["r2"]
    assert ok["ok"] is True and ok["result"]["camera"] == "shop"
    assert ok["result"]["published"] is True and ok["result"]["bytes"] > 1000
    assert ok["result"]["snapshot_id"] in got["snapshots"]
    assert bad["ok"] is False and "unknown camera 'nope'" in bad["error"]["message"]
    assert os.path.exists(tmp_path / "state" / "outbox.sqlite")


def test_track_config_tracker_section_overrides_pipeline_defaults(tmp_path, video_dir, yolox_nano,
                                                                   capsys):
    # Same 8 frames as above but no detection may start a track: no person, no crowd event.
    conf = tmp_path / "z.yaml"
    conf.write_text(yaml.safe_dump({
        "tracker": {"default": {"adaptive": False, "new_track_thresh": 0.99}},
        "cameras": [{"name": "c", "source": "x", "zones": [
            {"name": "all", "min_count": 1, "hold_s": 0}]}]}))
    rc = cli.main(["track", "-i", str(video_dir / RETAIL), "--model", str(yolox_nano),
                   "-C", str(conf), "--max-frames", "8", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr()
    assert not [x for x in out.out.splitlines() if x.startswith("{")]
    assert "8 frames in" in out.err and "0 events" in out.err
