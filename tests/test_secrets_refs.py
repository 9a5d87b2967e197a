"""Issue 23, finding 8 (secrets): ``${NAME}`` references in the config, resolved at load from the
environment (systemd's ``EnvironmentFile=``) or a systemd credential (``LoadCredential=``), and
masked wherever the config shows. The end-to-end run (a real RTSP camera that asks for the
password, the agent's logs, MQTT status and ``config show``) is in test_secrets_agent.py."""

from __future__ import annotations

import pytest

from edge_agent import config as cfgmod
from edge_agent.config.secrets import MASK, config_secrets, masked_config
from edge_agent.daemon.reload import plan

TEXT = """\
mqtt: {username: agent, password: "${MQTT_PASSWORD}"}
cameras:
  - name: cam1
    source: "rtsp://viewer:${CAM1_PASSWORD}@10.0.0.5/stream"
  - name: cam2
    source: "rtsp://10.0.0.6/${CAM2_PATH}"
"""
ENV = {"MQTT_PASSWORD": "mq-9f3e", "CAM1_PASSWORD": "p4ss-7a1b", "CAM2_PATH": "tok-55aa"}


def test_references_are_resolved_from_the_environment_and_masked():
    cfg = cfgmod.load_text(TEXT, "site.yaml", environ=ENV)
    assert cfg.cameras[0].source == "rtsp://viewer:p4ss-7a1b@10.0.0.5/stream"
    assert cfg.cameras[1].source == "rtsp://10.0.0.6/tok-55aa"
    assert cfg.mqtt.password.get_secret_value() == "mq-9f3e"
    shown = str(masked_config(cfg))
    for value in ENV.values():
        assert value not in shown
    assert f"rtsp://viewer:{MASK}@10.0.0.5/stream" in shown and f"10.0.0.6/{MASK}" in shown
    assert set(ENV.values()) <= set(config_secrets(cfg))  # the log filter masks them too


def test_a_systemd_credential_serves_when_the_environment_has_none(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    for name, value in ENV.items():
        (creds / name).write_text(value + "\n")  # a credential file's newline is not part of it
        (creds / name).chmod(0o400)
    cfg = cfgmod.load_text(TEXT, "site.yaml", environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.cameras[0].source == "rtsp://viewer:p4ss-7a1b@10.0.0.5/stream"
    assert cfg.mqtt.password.get_secret_value() == "mq-9f3e"
    both = dict(ENV, CAM2_PATH="env", CREDENTIALS_DIRECTORY=str(creds))
    env_wins = cfgmod.load_text(TEXT, "site.yaml", environ=both)
    assert env_wins.cameras[1].source.endswith("/env")


def test_a_missing_reference_is_an_error_with_file_and_line():
    with pytest.raises(cfgmod.ConfigError) as exc:
        cfgmod.load_text(TEXT, "site.yaml", environ={k: v for k, v in ENV.items()
                                                     if k != "CAM1_PASSWORD"})
    assert exc.value.problems == [
        "site.yaml:4: cameras[0].source: ${CAM1_PASSWORD} is not set (no environment variable "
        "CAM1_PASSWORD, e.g. from the unit's EnvironmentFile=, and no systemd credential of "
        "that name)"]


def test_a_reload_keeps_masking_what_it_resolved(tmp_path):
    old = cfgmod.load_text(TEXT, "site.yaml", environ=ENV)
    new = cfgmod.load_text(TEXT.replace("cameras:", "tracker: {default: {high_thresh: 0.4}}\n"
                                        "cameras:"), "site.yaml", environ=ENV)
    runs = plan(old, new).config  # what config.get shows after the reload
    shown = str(masked_config(runs))
    assert all(v not in shown for v in ENV.values())
