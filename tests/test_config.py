"""Config loading: the shipped file is valid, and bad files give file:line, key path, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from config_helpers import assert_validate_refuses

from edge_agent import config as cfgmod
from edge_agent.cli import main as cli_main
from edge_agent.config.secrets import config_secrets, masked_config

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
device_id: shop-3
state_dir: ./state
cameras:
  - name: door
    source: ../shared/data/video/nvidia_Retail02_short.mp4
    zones:
      - name: till
        polygon: [[0.1, 0.1], [0.5, 0.1], [0.5, 0.6]]
        min_count: 3
mqtt:
  host: broker.local
  username: cam
  password: hunter2-secret
"""


def test_shipped_config_is_valid_and_matches_defaults():
    path = REPO / "configs" / "edge-agent.yaml"
    written = masked_config(cfgmod.load_text(path.read_text(), str(path)))
    default = masked_config(cfgmod.load_text(""))
    # The documented file must say exactly what the code's defaults are, but for the engine
    # store: the checkout's engines/ (relative paths are relative to the file's folder).
    assert written["model"].pop("engine_dir") == "../engines"
    assert default["model"].pop("engine_dir") == "engines"
    assert written == default
    assert cfgmod.load(path).model.engine_dir == str(REPO / "configs" / ".." / "engines")


def test_valid_config_loads(tmp_path):
    cfg = cfgmod.load_text(GOOD, environ={})
    assert cfg.device_id == "shop-3"
    assert cfg.cameras[0].zones[0].min_count == 3
    assert cfg.mqtt.password.get_secret_value() == "hunter2-secret"


def test_env_overrides_secret(tmp_path):
    cfg = cfgmod.load_text(GOOD, environ={"EDGE_AGENT_MQTT_PASSWORD": "from-env"})
    assert cfg.mqtt.password.get_secret_value() == "from-env"


def test_show_masks_secrets(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(GOOD.replace("source: ../shared", "source: rtsp://admin:cam@pw@10.0.0.5/s\n#"))
    assert cli_main(["config", "show", str(f)]) == 0
    out = capsys.readouterr().out
    assert "hunter2-secret" not in out
    assert "password: '**********'" in out
    assert "source: rtsp://admin:**********@10.0.0.5/s" in out and "cam@pw" not in out


def test_camera_url_password_is_a_log_secret():
    cfg = cfgmod.load_text(
        "cameras:\n  - name: a\n    source: rtsp://admin:cam@pw@10.0.0.5/s\n", environ={}
    )
    assert config_secrets(cfg) == ["cam@pw"]


# (yaml text, expected line, expected fragment of the message)
BAD = {
    "wrong_type": (
        "model:\n  max_batch: lots\n", 2, "model.max_batch: Input should be a valid integer"
    ),
    "unknown_key": ("mqtt:\n  hots: x\n", 2, "mqtt.hots: unknown key"),
    "unknown_top": ("device_id: a\ncamras: []\n", 2, "camras: unknown key"),
    "bad_enum": (
        "log:\n  format: xml\n", 2, "log.format: Input should be 'auto', 'human' or 'json'"
    ),
    "negative_fps": (
        "cameras:\n  - name: a\n    source: x.mp4\n    fps_limit: -5\n",
        4,
        "cameras[0].fps_limit: Input should be greater than or equal to 0",
    ),
    "malformed_yaml": ("mqtt:\n  host: [unclosed\n  port: 1\n", 3, "malformed YAML"),
    "bad_polygon": (
        "cameras:\n  - name: a\n    source: x\n    zones:\n      - name: z\n"
        "        polygon: [[0, 0], [1, 1]]\n",
        6,
        "cameras[0].zones[0].polygon: a polygon needs at least 3 points, got 2",
    ),
    "polygon_out_of_range": (
        "cameras:\n  - name: a\n    source: x\n    zones:\n      - name: z\n"
        "        polygon: [[0, 0], [2, 0], [1, 1]]\n",
        6,
        "outside the normalised range 0..1",
    ),
    "duplicate_cameras": (
        "cameras:\n  - name: a\n    source: x\n  - name: a\n    source: y\n",
        1,
        "cameras: duplicate camera name 'a' (entries 0 and 1)",
    ),
    "missing_source": ("cameras:\n  - name: a\n", 2, "cameras[0].source: Field required"),
    "bad_port": (
        "mqtt:\n  port: 70000\n", 2, "mqtt.port: Input should be less than or equal to 65535"
    ),
    "bad_name": ("device_id: 'my device/1'\n", 1, "device_id: String should match pattern"),
    "password_without_user": (
        "mqtt:\n  password: x\n", 1, "mqtt: password is set but username is not"
    ),
    "top_level_list": ("- a\n- b\n", 1, "the top level must be a mapping"),
    "backoff_order": (
        "cameras:\n  - name: a\n    source: x\n    reconnect: {min_s: 5, max_s: 1}\n",
        4,
        "max_s (1.0) must be >= min_s (5.0)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_file_line_and_key(case, tmp_path, capsys):
    text, line, fragment = BAD[case]
    assert_validate_refuses(tmp_path / f"{case}.yaml", text, line, fragment, capsys)


def test_missing_file_exit_2_without_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "config", "validate", str(missing)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert f"{missing}: no such config file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra,line,fragment", [
    ("    tiles: 9\n", 5, "cameras[0].tiles"),
    ("    tiles: 2\n    tile_heads: [weapn]\n", 6, "cameras[0].tile_heads[0]"),
])
def test_bad_tiles_are_named(tmp_path, capsys, extra, line, fragment):
    text = "cameras:\n  - name: door\n    source: x.mp4\n    detect_every: 3\n" + extra
    assert_validate_refuses(tmp_path / "t.yaml", text, line, fragment, capsys)
