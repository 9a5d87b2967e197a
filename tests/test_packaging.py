"""The shipped model is package data and found from any folder; config paths are config-relative.

The wheel is built for real from a copy of this checkout (no network: --no-deps, no build
isolation) and installed into a folder, so what an installed daemon sees is what is tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest
from test_installer import _copy_checkout

from edge_agent import config as cfgmod
from edge_agent.cli import main as cli_main
from edge_agent.config import shipped

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "retail02_12s.mp4"
SHIPPED_MODEL = "edge_agent/_shipped/engines/models/edge_multihead.onnx"


def test_default_model_path_is_the_shipped_model_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path(cfgmod.load_text("").model.path)
    assert path.is_absolute() and path.is_file()
    assert path == shipped.path(shipped.DEFAULT_MODEL)
    # Written out in a file elsewhere, the default value still names the shipped model.
    (tmp_path / "site.yaml").write_text(f"model:\n  path: {shipped.DEFAULT_MODEL}\n")
    assert Path(cfgmod.load(tmp_path / "site.yaml").model.path) == path


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    site = tmp_path / "etc" / "site"
    site.mkdir(parents=True)
    hexkey = "ab" * 32
    (site / "cam.yaml").write_text(f"""\
state_dir: state
model: {{path: models/m.onnx, manifest: models/m.json, engine_dir: ../engines}}
cameras:
  - {{name: clip, source: clips/door.mp4}}
  - {{name: ip, source: "rtsp://10.0.0.5/s"}}
  - {{name: usb, source: "0"}}
  - {{name: gst, source: "videotestsrc ! appsink"}}
  - {{name: abs, source: /srv/clip.mp4}}
mqtt:
  tls: {{ca_file: tls/ca.pem, cert_file: /etc/ssl/c.pem}}
update: {{ca_file: tls/dl.pem, trusted_keys: [{hexkey}, keys/ops.pub]}}
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = cfgmod.load(Path("..") / "etc" / "site" / "cam.yaml")
    assert cfg.state_dir == str(site / "state")
    assert cfg.model.path == str(site / "models/m.onnx")
    assert cfg.model.manifest == str(site / "models/m.json")
    assert cfg.model.engine_dir == str(site / "../engines")
    assert [c.source for c in cfg.cameras] == [
        str(site / "clips/door.mp4"), "rtsp://10.0.0.5/s", "0", "videotestsrc ! appsink",
        "/srv/clip.mp4"]
    assert cfg.mqtt.tls.ca_file == str(site / "tls/ca.pem")
    assert cfg.mqtt.tls.cert_file == "/etc/ssl/c.pem" and cfg.mqtt.tls.key_file is None
    assert cfg.update.ca_file == str(site / "tls/dl.pem")
    assert cfg.update.trusted_keys == [hexkey, str(site / "keys/ops.pub")]
    # Documented as relative to state_dir: left so.
    assert cfg.mqtt.outbox.path == "outbox.sqlite" and cfg.events.snapshots.dir == "snapshots"


def test_config_show_prints_absolute_paths(tmp_path, monkeypatch, capsys):
    (tmp_path / "c.yaml").write_text("state_dir: st\nmodel: {engine_dir: eng}\n")
    monkeypatch.chdir("/")
    assert cli_main(["config", "show", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"state_dir: {tmp_path / 'st'}\n" in out
    assert f"  engine_dir: {tmp_path / 'eng'}\n" in out
    assert f"  path: {shipped.path(shipped.DEFAULT_MODEL)}\n" in out


def test_shipped_config_validates_from_another_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "config", "validate",
                           str(REPO / "configs" / "edge-agent.yaml")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert ": ok" in proc.stdout


@pytest.mark.slow
def test_wheel_carries_the_model_and_runtime_needs_no_torch(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("edge_agent-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        model = z.read(SHIPPED_MODEL)
        manifest = json.loads(z.read(SHIPPED_MODEL.replace(".onnx", ".json")))
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert hashlib.sha256(model).hexdigest() == manifest["sha256"]
    assert "edge_agent/_shipped/engines/models/MODEL_CARD.md" in names
    assert "edge_agent/_shipped/engines/manifests/yolox_nano_coco.json" in names
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch = [r for r in requires if r.split()[1].startswith("torch")]
    assert torch and all('extra == "train"' in r for r in torch), torch
    for tool in ("pytest", "hypothesis", "ruff"):
        assert all('extra == "dev"' in r for r in requires if r.split()[1].startswith(tool))

    # Installed (files only; this venv has the dependencies), from a folder that is not the
    # checkout: the default model is the installed copy and opens.
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr
    code = ("import edge_agent\nfrom edge_agent import config\n"
            "from edge_agent.inference import open_engine\n"
            "c = config.load_text('')\nwith open_engine(c.model) as e:\n"
            "    print(edge_agent.__file__, c.model.path, e.manifest.name)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert run.returncode == 0, run.stderr
    package, model_path, name = run.stdout.split()
    assert package == str(site / "edge_agent" / "__init__.py")
    assert model_path == str(site / SHIPPED_MODEL) and name == "edge_multihead"


def test_track_from_another_folder_with_the_default_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "track", "-i", str(SAMPLE),
                           "-o", "out.mp4", "--max-frames", "8", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "8 frames" in proc.stderr and (tmp_path / "out.mp4").stat().st_size > 0


def test_demo_runs_the_shipped_model_on_the_sample_without_shared(tmp_path, capsys):
    from edge_agent.cli import demo

    rc = demo.main(["--shared", str(tmp_path / "no-shared"), "--out", str(tmp_path / "out"),
                    "--max-frames", "40"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "model " + str(shipped.path(shipped.DEFAULT_MODEL)) in out
    events = [json.loads(e) for e in
              (tmp_path / "out" / "demo-events.jsonl").read_text().splitlines()]
    # Every event is printed, one line each (which ones the tracker raises is not pinned here).
    assert f"{len(events)} events:" in out
    assert all(f"frame {e['frame']:>4}  {e['type']} {e['phase']}" in out for e in events)
    assert not (tmp_path / "out" / "demo-parking.mp4").exists()
    cap = cv2.VideoCapture(str(tmp_path / "out" / "demo.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 1920
    cap.release()
