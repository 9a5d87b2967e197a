"""Clips around alerts: the pre-roll ring, the MP4 writer, the bounded store, and an agent that
records a clip around a real weapon event on a real video (the shipped model, ONNX Runtime)."""

from __future__ import annotations

import hashlib
import http.client
import json
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import av
import cv2
import numpy as np
import pytest
from conftest import free_port, wait_for
from test_capture_rtsp import RtspServer, require_rtsp_server
from test_model_events import MODEL, gun_images

from edge_agent import cli
from edge_agent import config as cfgmod
from edge_agent.clips.http import ClipRoute
from edge_agent.clips.mp4 import Mp4Writer, encoder_name
from edge_agent.clips.ring import FrameRing
from edge_agent.clips.scale import scale_bbox
from edge_agent.clips.store import ClipStore, decodable_frames
from edge_agent.daemon.agent import EXIT_OK, Agent
from edge_agent.daemon.exporter import Exporter, Sources

ID = "0123456789abcdef0123456789abcdef"


def _ids(n: int) -> List[str]:
    return [f"{i:032x}" for i in range(1, n + 1)]


def _numbered(i: int, w: int = 320, h: int = 240) -> np.ndarray:
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.putText(img, str(i), (20, h - 40), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
    return img


def _write_clip(path: Path, frames: int, fps: float = 10.0) -> Mp4Writer:
    w = Mp4Writer(path, 320, 240, fps)
    for i in range(frames):
        w.write(_numbered(i), i / fps)
    w.close()
    return w


def test_scale_bbox_to_the_record_stream_and_says_which_frame():
    px = [100.0, 50.5, 200.0, 300.0]
    box = {"px": px, "norm": [0.15625, 0.14028, 0.3125, 0.83333]}
    scale_bbox(box, (640, 360), (1920, 1080))
    assert box["px"] == [300.0, 151.5, 600.0, 900.0] and box["frame"] == [1920, 1080]
    assert px == [100.0, 50.5, 200.0, 300.0]  # a new list: a clip keeps the detect stream's
    scale_bbox(box, (640, 360), (1920, 1080))
    assert box["px"] == [300.0, 151.5, 600.0, 900.0]  # once only
    unknown = {"px": [1.0, 2.0, 3.0, 4.0], "norm": [0.0, 0.0, 0.0, 0.0]}
    scale_bbox(unknown, (640, 360), None)  # the record stream not open yet: says so
    assert unknown["px"] == [1.0, 2.0, 3.0, 4.0] and unknown["frame"] == [640, 360]


def test_ring_keeps_the_last_seconds_within_its_byte_cap():
    ring = FrameRing(seconds=2.0, max_bytes=10_000_000)
    for i in range(100):
        ring.push(i / 10.0, ring.encode(_numbered(i)))
    kept = ring.since(0.0)
    assert kept[0].t == pytest.approx(7.9) and kept[-1].t == pytest.approx(9.9)
    assert ring.bytes == sum(len(f.jpeg) for f in kept)
    small = FrameRing(seconds=60.0, max_bytes=3 * len(kept[-1].jpeg))
    for f in kept:
        small.push(f.t, f.jpeg)
    assert small.bytes <= small.max_bytes and small.evicted_for_size > 0
    assert small.since(0.0)[-1].t == pytest.approx(9.9)  # the newest always stays


def test_mp4_is_h264_and_decodes_frame_for_frame(tmp_path):
    assert encoder_name() == "libx264"  # the PyAV wheel carries x264: browsers play the clips
    w = _write_clip(tmp_path / "a.mp4", 30)
    assert w.frames == 30 and decodable_frames(tmp_path / "a.mp4") == 30
    cap = cv2.VideoCapture(str(tmp_path / "a.mp4"))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    cap.release()
    assert fourcc in ("avc1", "h264", "H264")


def test_store_commit_lookup_and_reasons(tmp_path):
    store = ClipStore(tmp_path / "clips", 10_000_000)
    store.begin(ID, "lot", "weapon", "gun", 3)
    assert store.lookup(ID)[2] == "the clip is still recording"
    _write_clip(store.part_path(ID), 20)
    info = store.commit(ID, 1.9)
    assert info.status == "ready" and info.bytes == store.final_path(ID).stat().st_size
    assert not store.part_path(ID).exists() and len(info.sha256) == 64
    path, _, why = store.lookup(ID)
    assert path == store.final_path(ID) and why == "ready"
    assert "never" in store.lookup("f" * 32)[2]
    with pytest.raises(ValueError, match="event id"):
        store.lookup("../../etc/passwd")
    again = ClipStore(tmp_path / "clips", 10_000_000)  # the index survives a restart
    assert again.lookup(ID)[1].sha256 == info.sha256


def test_cap_holds_under_fifty_alerts_and_spares_protected_and_open(tmp_path):
    one = tmp_path / "one.mp4"
    _write_clip(one, 20)
    size = one.stat().st_size
    store = ClipStore(tmp_path / "clips", 10 * size + size // 2)
    ids = _ids(50)
    protected = {ids[0]}  # e.g. its event is still in the outbox
    store.begin(ids[0], "lot")
    shutil.copy(one, store.part_path(ids[0]))
    store.commit(ids[0], 1.9)
    store.begin(ids[1], "lot")
    shutil.copy(one, store.part_path(ids[1]))  # still recording: a .part is never removed
    for cid in ids[2:]:
        store.begin(cid, "lot")
        shutil.copy(one, store.part_path(cid))
        store.commit(cid, 1.9)
        store.enforce_cap(protected)
        time.sleep(0.002)  # distinct mtimes order the clips
        assert store.used_bytes() <= store.max_bytes
    status = {c.id: c.status for c in store.list()}
    assert status[ids[-1]] == "ready" and status[ids[2]] == "rotated"
    assert status[ids[0]] == "ready" and store.final_path(ids[0]).exists()  # oldest, protected
    assert store.part_path(ids[1]).exists()
    assert "size cap" in store.lookup(ids[2])[2]
    assert store.used_bytes() <= store.max_bytes


def test_recover_finishes_a_truncated_clip_and_drops_garbage(tmp_path):
    store = ClipStore(tmp_path / "clips", 100_000_000)
    full = tmp_path / "full.mp4"
    _write_clip(full, 60)  # key frame every 2 s: fragments of 20 frames
    good, bad = _ids(2)
    store.begin(good, "lot")
    store.begin(bad, "lot")
    data = full.read_bytes()
    store.part_path(good).write_bytes(data[: int(len(data) * 0.7)])  # SIGKILL mid-write
    store.part_path(bad).write_bytes(b"\x00" * 1000)
    done = {c.id: c for c in ClipStore(tmp_path / "clips", 100_000_000).recover()}
    assert done[good].status == "ready" and done[good].reason == "truncated_by_restart"
    assert 0 < decodable_frames(store.final_path(good)) < 60
    assert done[bad].status == "failed" and not store.part_path(bad).exists()


# --- the agent ------------------------------------------------------------------------------

FPS = 10


def _slideshow(path: Path, guns: List[Path], lead_s: float, tail_s: float,
               hold_s: float = 1.5, noisy_tail: bool = False) -> Dict[str, float]:
    """Grey frames, the gun images (``hold_s`` each), grey (or noise) frames; returns when
    the guns show."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (416, 416))
    grey = np.full((416, 416, 3), 114, np.uint8)
    n = 0
    for _ in range(int(lead_s * FPS)):
        writer.write(grey)
        n += 1
    first = n / FPS
    for p in guns:
        frame = grey.copy()
        img = cv2.imread(str(p))
        frame[:img.shape[0], :img.shape[1]] = img
        for _ in range(int(hold_s * FPS)):
            writer.write(frame)
            n += 1
    last = (n - 1) / FPS
    noise = np.random.default_rng(0)
    for _ in range(int(tail_s * FPS)):
        writer.write(noise.integers(0, 256, grey.shape, np.uint8) if noisy_tail else grey)
    writer.release()
    return {"first": first, "last": last}


def _config(tmp_path: Path, source: Path, **clips: Any) -> cfgmod.Config:
    return cfgmod.Config.model_validate({
        "device_id": "clip-test", "state_dir": str(tmp_path / "state"),
        "model": {"path": str(MODEL)},
        "cameras": [{"name": "lot", "source": str(source)}],
        # The clips are the point here, not who carries the gun (tests/test_model_events.py)
        "events": {"sinks": {"jsonl": "events.jsonl"}, "clips": clips,
                   "weapon": {"require_carrier": False}},
        "mqtt": {"enabled": False}, "metrics": {"enabled": False},
        "update": {"enabled": False},
    })


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, weights_dir) -> Dict[str, Any]:
    """One agent run over a gun slideshow (6 s grey, two guns 1.5 s each, 12 s grey)."""
    weapons = weights_dir.parent / "data" / "weapons" / "rf-gun-detection-v1" / "valid"
    tmp_path = tmp_path_factory.mktemp("clips")
    video = tmp_path / "guns.mp4"
    t = _slideshow(video, gun_images(weapons, 2), lead_s=6.0, tail_s=12.0)
    cfg = _config(tmp_path, video, pre_s=5.0, post_s=10.0, overlay=True)
    assert Agent(cfg, source="clip-test").run() == EXIT_OK
    text = (tmp_path / "state" / "events.jsonl").read_text()
    return {"t": t, "events": [json.loads(x) for x in text.split("\n") if x],
            "store": ClipStore(tmp_path / "state" / "clips", 10**9)}


def test_agent_records_a_clip_around_a_weapon_event(recorded):
    t, events, store = recorded["t"], recorded["events"], recorded["store"]
    start = next(e for e in events if e["type"] == "weapon" and e["phase"] == "start")
    end = next(e for e in events if e["type"] == "weapon" and e["phase"] == "end"
               and e["track_id"] == start["track_id"])
    clip_id = start["event_id"]
    assert start["clip"]["status"] == "recording" and start["clip"]["id"] == clip_id
    assert end["clip"]["id"] == clip_id
    ready = [e for e in events if e["type"] == "clip" and e["clip"]["id"] == clip_id]
    assert len(ready) == 1 and ready[0]["clip"]["status"] == "ready", ready
    assert ready[0]["alert_type"] == "weapon" and ready[0]["track_id"] == start["track_id"]
    path, info, _ = store.lookup(clip_id)
    assert path is not None and info.bytes == path.stat().st_size == ready[0]["clip"]["bytes"]
    assert info.media_start_s <= t["first"] - (5.0 - 0.5)
    assert info.media_end_s >= t["last"] + (10.0 - 0.5)
    assert end["frame"] / FPS >= t["last"]
    frames = decodable_frames(path)  # every frame written decodes
    assert frames == round((info.media_end_s - info.media_start_s) * FPS) + 1


def _get(port: int, path: str, **headers: str) -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


@pytest.fixture
def served(recorded):
    def serve(token=None, loopback=True):
        ex = Exporter(Sources(cameras=["lot"], stats=dict, engine=dict, outbox_rows=lambda: 0),
                      clips=ClipRoute(recorded["store"], token, loopback))
        ex.start("127.0.0.1", 0)
        started.append(ex)
        return ex.port
    started: List[Exporter] = []
    yield serve
    for ex in started:
        ex.stop()


def test_clip_is_served_over_http_with_ranges(recorded, served):
    ready = next(e for e in recorded["events"] if e["type"] == "clip")
    clip_id = ready["clip"]["id"]
    whole = recorded["store"].final_path(clip_id).read_bytes()
    port = served()
    status, headers, body = _get(port, f"/clips/{clip_id}.mp4")
    assert status == 200 and body == whole and headers["Accept-Ranges"] == "bytes"
    assert hashlib.sha256(body).hexdigest() == ready["clip"]["sha256"]
    status, headers, body = _get(port, f"/clips/{clip_id}.mp4", Range="bytes=100-1099")
    assert status == 206 and body == whole[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
    status, _, body = _get(port, f"/clips/{clip_id}.mp4", Range="bytes=-500")
    assert status == 206 and body == whole[-500:]
    status, headers, _ = _get(port, f"/clips/{clip_id}.mp4", Range=f"bytes={len(whole)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"
    status, _, body = _get(port, f"/clips/{'e' * 32}.mp4")
    assert status == 404 and b"never recorded" in body
    status, _, body = _get(port, "/clips/../state/outbox.sqlite")
    assert status == 404


def test_preroll_memory_is_in_metrics(tmp_path):
    from edge_agent.clips.service import ClipService
    from edge_agent.config import ClipsConfig
    from edge_agent.events import EventFactory, FrameContext
    from edge_agent.events.event import EngineInfo

    delivered: List[Any] = []
    svc = ClipService(ClipsConfig(pre_s=1.0), ClipStore(tmp_path / "c", 10**8),
                      EventFactory("dev", EngineInfo("m", "1", "0" * 64)), delivered.extend)
    for i in range(40):
        img = _numbered(i, 640, 360)
        svc.observe(FrameContext("cam1", i, i / 10.0, 0.0, 640, 360, img), {}, [])
    svc.close()
    ex = Exporter(Sources(cameras=["cam1"], stats=dict, engine=dict, clips=svc.stats))
    ex.start("127.0.0.1", 0)
    try:
        status, _, body = _get(ex.port, "/metrics")
    finally:
        ex.stop()
    line = next(x for x in body.decode().splitlines()
                if x.startswith('edge_agent_clip_preroll_bytes{camera="cam1"}'))
    held = float(line.split()[-1])
    assert 0 < held == svc.stats().preroll_bytes["cam1"] < 40 * 640 * 360 * 3 / 20


def test_clip_needs_the_token_off_loopback(recorded, served):
    clip_id = next(e for e in recorded["events"] if e["type"] == "clip")["clip"]["id"]
    assert _get(served(None, loopback=False), f"/clips/{clip_id}.mp4")[0] == 403
    port = served("s3cret-token", loopback=False)
    assert _get(port, f"/clips/{clip_id}.mp4")[0] == 401
    assert _get(port, f"/clips/{clip_id}.mp4", Authorization="Bearer wrong")[0] == 401
    status, _, body = _get(port, f"/clips/{clip_id}.mp4", Authorization="Bearer s3cret-token")
    assert status == 200 and len(body) > 1000


def test_clips_command_lists_and_copies(recorded, tmp_path, capsys):
    ready = next(e for e in recorded["events"] if e["type"] == "clip")
    clip_id = ready["clip"]["id"]
    conf = tmp_path / "agent.yaml"
    conf.write_text(f"state_dir: {recorded['store'].dir.parent}\n"
                    "cameras: [{name: lot, source: rtsp://cam/1}]\n")
    assert cli.main(["clips", "--config", str(conf), "list"]) == 0
    assert clip_id in capsys.readouterr().out
    out = tmp_path / "copy.mp4"
    assert cli.main(["clips", "--config", str(conf), "get", clip_id, "-o", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ready["clip"]["sha256"]
    assert cli.main(["clips", "--config", str(conf), "get", "a" * 32]) == 2
    assert "never recorded" in capsys.readouterr().err
    nowhere = tmp_path / "no-such-folder" / "copy.mp4"  # a failed copy says why, no traceback
    assert cli.main(["clips", "--config", str(conf), "get", clip_id, "-o", str(nowhere)]) == 1
    assert f"cannot copy clip {clip_id}" in capsys.readouterr().err


def test_sigkill_during_a_clip_then_restart_never_leaves_it_recording(tmp_path, weights_dir):
    weapons = weights_dir.parent / "data" / "weapons" / "rf-gun-detection-v1" / "valid"
    video = tmp_path / "guns.mp4"
    # Read at the pipeline's pace (no frame dropped however busy the machine); the clip stays
    # open for 300 frames after its alert ends, so the kill below lands inside it.
    _slideshow(video, gun_images(weapons, 2), lead_s=2.0, tail_s=40.0)
    conf = tmp_path / "agent.yaml"
    conf.write_text(json.dumps({
        "device_id": "clip-kill", "state_dir": str(tmp_path / "state"),
        "model": {"path": str(MODEL)},
        "cameras": [{"name": "lot", "source": str(video)}],
        "events": {"sinks": {"jsonl": "events.jsonl"}, "clips": {"post_s": 30.0},
                   "weapon": {"require_carrier": False}},
        "mqtt": {"enabled": False}, "metrics": {"enabled": False},
        "update": {"enabled": False}}))
    clips = tmp_path / "state" / "clips"
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(conf)]
    with open(tmp_path / "run1.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert wait_for(lambda: any(clips.glob("*.mp4.part")) or proc.poll() is not None,
                            300, step=0.05) and proc.poll() is None, \
                (tmp_path / "run1.log").read_text()[-2000:]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    part = next(clips.glob("*.mp4.part"))
    clip_id = part.name.split(".")[0]
    grey = tmp_path / "grey.mp4"  # the restart: a second of nothing, then the agent exits
    _slideshow(grey, [], lead_s=1.0, tail_s=0.0)
    conf.write_text(conf.read_text().replace(str(video), str(grey)))
    done = subprocess.run(cmd, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not list(clips.glob("*.part"))
    events = [json.loads(x) for x in (tmp_path / "state" / "events.jsonl").read_text().split("\n")
              if x]
    ends = [e for e in events if e["type"] == "clip" and e["clip"]["id"] == clip_id]
    assert len(ends) == 1 and ends[0]["clip"]["status"] in ("ready", "failed"), ends
    store = ClipStore(clips, 10**9)
    path, info, _ = store.lookup(clip_id)
    assert info.status == ends[0]["clip"]["status"]
    if info.status == "ready":  # finished from what was written: it plays
        assert info.reason == "truncated_by_restart" and decodable_frames(path) > 0


def _h264_slideshow(path: Path, guns: List[Path], lead_s: float, tail_s: float) -> None:
    """The slideshow as a plain H.264 MP4 (what an RTSP camera sends), key frame every 1 s."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 416, 416, "yuv420p"
        stream.codec_context.gop_size = FPS
        grey = np.full((416, 416, 3), 114, np.uint8)
        frames = [grey] * int(lead_s * FPS)
        for p in guns:
            frame = grey.copy()
            img = cv2.imread(str(p))
            frame[:img.shape[0], :img.shape[1]] = img
            frames += [frame] * int(2.0 * FPS)
        frames += [grey] * int(tail_s * FPS)
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts = i
            for pkt in stream.encode(vf):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)


def _decoded(path: Path) -> List[bytes]:
    with av.open(str(path)) as f:
        return [fr.to_ndarray(format="gray").tobytes() for fr in f.decode(video=0)]


def _run_until_a_clip(agent: Agent, state: Path) -> None:
    """Run the agent on this (main) thread, which owns the signals, until a clip is written."""
    def stop_when_ready():
        # a finished clip: its event is delivered before the agent's sinks close
        wait_for(lambda: any((state / "clips").glob("*.mp4")), 120)
        agent.pipeline.stop()  # as SIGTERM does: run() then stops the rest in order
    watcher = threading.Thread(target=stop_when_ready, daemon=True)
    watcher.start()
    agent.run()
    watcher.join(5)


def test_rtsp_camera_clip_is_its_own_packets(tmp_path, weights_dir):
    require_rtsp_server()
    weapons = weights_dir.parent / "data" / "weapons" / "rf-gun-detection-v1" / "valid"
    video = tmp_path / "cam.mp4"
    _h264_slideshow(video, gun_images(weapons, 2), lead_s=7.0, tail_s=20.0)
    server = RtspServer(free_port(), video).start()
    try:
        cfg = _config(tmp_path, Path("unused"), pre_s=3.0, post_s=2.0)
        cfg.cameras[0].source = server.url
        _run_until_a_clip(Agent(cfg, source="clip-test"), tmp_path / "state")
        jsonl = tmp_path / "state" / "events.jsonl"
    finally:
        server.stop()
    events = [json.loads(x) for x in jsonl.read_text().split("\n") if x]
    ready = next(e for e in events if e["type"] == "clip")
    assert ready["clip"]["status"] == "ready", ready
    path = ClipStore(tmp_path / "state" / "clips", 10**9).final_path(ready["clip"]["id"])
    with av.open(str(path)) as f:
        stream = f.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (416, 416)
        packets = sum(1 for p in f.demux(stream) if p.size)
    clip = _decoded(path)
    assert len(clip) == packets >= (3.0 + 2.0) * FPS * 0.8
    # Not re-encoded: every decoded frame of the clip is bit for bit a frame of the source.
    source = set(_decoded(video))
    assert all(fr in source for fr in clip)


def test_clips_on_key_survives_yaml_booleans():
    # `on:` unquoted is the boolean true in YAML 1.1; the shipped config writes it that way
    cfg = cfgmod.load_text("events:\n  clips:\n    on: [weapon, crowd]\n", "agent.yaml")
    assert cfg.events.clips.on == ["weapon", "crowd"]
    shipped = cfgmod.load(Path(__file__).resolve().parent.parent / "configs" / "edge-agent.yaml")
    assert shipped.events.clips.on == ["weapon"]


def _file_size_limit(nbytes: int):
    def apply() -> None:  # in the child: writes past it fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_a_disk_that_fills_while_writing_fails_the_clip_not_the_agent(tmp_path, weights_dir):
    weapons = weights_dir.parent / "data" / "weapons" / "rf-gun-detection-v1" / "valid"
    video = tmp_path / "guns.mp4"
    _slideshow(video, gun_images(weapons, 2), lead_s=2.0, tail_s=12.0, noisy_tail=True)
    conf = tmp_path / "agent.yaml"
    conf.write_text(json.dumps({
        "device_id": "clip-full", "state_dir": str(tmp_path / "state"),
        "model": {"path": str(MODEL)},
        "cameras": [{"name": "lot", "source": str(video)}],
        "events": {"sinks": {"jsonl": "events.jsonl"}, "weapon": {"require_carrier": False},
                   "clips": {"overlay": False}},
        "mqtt": {"enabled": False}, "metrics": {"enabled": False},
        "update": {"enabled": False}}))
    # No file may grow past 2 MB: the clip of noise hits it, the event files do not.
    done = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(conf)],
                          capture_output=True, timeout=300, preexec_fn=_file_size_limit(2_000_000))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    events = [json.loads(x) for x in (tmp_path / "state" / "events.jsonl").read_text().split("\n")
              if x]
    weapon = [e for e in events if e["type"] == "weapon"]
    assert {"start", "end"} <= {e["phase"] for e in weapon}  # the alert itself went out whole
    clip = next(e for e in events if e["type"] == "clip")
    assert clip["clip"]["status"] == "failed" and "write_error" in clip["clip"]["reason"]
    assert not list((tmp_path / "state" / "clips").glob("*.part"))


def _h264_pair(detect: Path, record: Path, guns: List[Path], lead_s: float,
               tail_s: float) -> Tuple[int, int]:
    """One scene as a camera serves it twice: a 640x360 substream and a 1920x1080 main stream
    (H.264, key frame every 1 s). The guns fill a 360 px square at x 200 of the substream;
    returns that square's x range."""
    grey = np.full((360, 640, 3), 114, np.uint8)
    scenes = [grey] * int(lead_s * FPS)
    for p in guns:
        frame = grey.copy()
        frame[:, 200:560] = cv2.resize(cv2.imread(str(p)), (360, 360))
        scenes += [frame] * int(2.0 * FPS)
    scenes += [grey] * int(tail_s * FPS)
    for path, (w, h) in ((detect, (640, 360)), (record, (1920, 1080))):
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.codec_context.gop_size = FPS
            stream.codec_context.options = {"preset": "ultrafast"}
            for i, img in enumerate(scenes):
                vf = av.VideoFrame.from_ndarray(cv2.resize(img, (w, h)), format="bgr24")
                vf.pts = i
                for pkt in stream.encode(vf):
                    out.mux(pkt)
            for pkt in stream.encode(None):
                out.mux(pkt)
    return 200, 560


def test_boxes_of_a_detect_stream_are_scaled_to_its_record_stream(tmp_path, weights_dir):
    require_rtsp_server()
    weapons = weights_dir.parent / "data" / "weapons" / "rf-gun-detection-v1" / "valid"
    sub, main = tmp_path / "sub.mp4", tmp_path / "main.mp4"
    x0, x1 = _h264_pair(sub, main, gun_images(weapons, 2), lead_s=7.0, tail_s=20.0)
    detect, record = RtspServer(free_port(), sub).start(), RtspServer(free_port(), main).start()
    try:
        cfg = _config(tmp_path, Path("unused"), pre_s=3.0, post_s=2.0)
        cfg.cameras[0].source, cfg.cameras[0].record = detect.url, record.url
        _run_until_a_clip(Agent(cfg, source="clip-test"), tmp_path / "state")
        jsonl = tmp_path / "state" / "events.jsonl"
    finally:
        detect.stop()
        record.stop()
    events = [json.loads(x) for x in jsonl.read_text().split("\n") if x]
    start = next(e for e in events if e["type"] == "weapon" and e["phase"] == "start")
    ready = next(e for e in events if e["type"] == "clip")
    for ev in (start, ready):
        assert ev["bbox"]["frame"] == [1920, 1080], ev
        px, norm = ev["bbox"]["px"], ev["bbox"]["norm"]
        assert px == pytest.approx([n * s for n, s in zip(norm, (1920, 1080) * 2)], abs=0.2)
        # in the main stream's pixels: the gun's square is x 600..1680 there (200..560 detected)
        assert 3 * x0 - 40 <= px[0] < px[2] <= 3 * x1 + 40, ev
    assert ready["bbox"]["px"] == start["bbox"]["px"]  # the clip event names the same box
    path = ClipStore(tmp_path / "state" / "clips", 10**9).final_path(ready["clip"]["id"])
    with av.open(str(path)) as f:  # the clip is the main stream's own packets
        cc = f.streams.video[0].codec_context
        assert (cc.name, cc.width, cc.height) == ("h264", 1920, 1080)
