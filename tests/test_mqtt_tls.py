"""TLS and passwords against a real Mosquitto with a test CA made by openssl in the test."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_helpers import event, make_cfg

from edge_agent.config import TlsConfig
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.outbox.eventlog import Outbox

USER, PASSWORD = "agent", "s3cret-Pa55word"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


def _server_cert(d: Path, name: str, ca: str, san: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (make test installs it)", pytrace=False)
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd is not installed (part of mosquitto)", pytrace=False)
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _server_cert(d, "server", "ca", "IP:127.0.0.1")
    _server_cert(d, "badname", "ca", "DNS:not-this-host.example")
    _server_cert(d, "client", "ca", "DNS:edge-1")
    pw = d / "passwords"
    proc = subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), USER, PASSWORD],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return d


def _tls_broker(broker_factory, pki: Path, cert: str = "server", mutual: bool = False):
    return broker_factory([
        f"cafile {pki / 'ca.crt'}",
        f"certfile {pki / (cert + '.crt')}",
        f"keyfile {pki / (cert + '.key')}",
        f"password_file {pki / 'passwords'}",
        *(["require_certificate true"] if mutual else []),
    ]).start()


def _agent(broker, tmp_path, ca: Path, password=PASSWORD, insecure=False, client_cert=None,
           **kw):
    tls = TlsConfig(ca_file=str(ca), insecure=insecure)
    if client_cert:
        tls = TlsConfig(ca_file=str(ca), cert_file=str(client_cert.with_suffix(".crt")),
                        key_file=str(client_cert.with_suffix(".key")))
    cfg = make_cfg(broker, username=USER, password=password, tls=tls, **kw)
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = AgentMqtt(cfg, "dev1", ob)
    m.start()
    return m, ob


def _tls_subscriber(broker, pki: Path, topic: str, got: list) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-sub")
    c.tls_set(ca_certs=str(pki / "ca.crt"))
    c.username_pw_set(USER, PASSWORD)
    c.on_message = lambda cl, ud, msg: got.append((msg.topic, msg.payload))
    c.connect(broker.host, broker.port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    return c


def test_right_ca_and_password_connect_and_publish(broker_factory, pki, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    broker = _tls_broker(broker_factory, pki)
    got: list = []
    sub = _tls_subscriber(broker, pki, "edge-agent/dev1/#", got)
    time.sleep(0.3)
    m, ob = _agent(broker, tmp_path, pki / "ca.crt")
    assert m.wait_connected(10), m.last_error
    ob.append(event(1))
    deadline = time.monotonic() + 5
    while not any("/events/" in t for t, _ in got) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [json.loads(p)["event_id"] for t, p in got if "/events/" in t] == ["r-1"]
    m.stop()
    ob.close()
    sub.disconnect()
    sub.loop_stop()
    assert PASSWORD not in caplog.text  # not even paho's debug log


def test_password_from_environment_overrides_the_config(broker_factory, pki, tmp_path,
                                                        monkeypatch):
    broker = _tls_broker(broker_factory, pki)
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", PASSWORD)
    m, ob = _agent(broker, tmp_path, pki / "ca.crt", password="wrong-in-file")
    assert m.wait_connected(10), m.last_error
    m.stop()
    ob.close()


def test_wrong_ca_is_refused_and_retried(broker_factory, pki, tmp_path, caplog):
    broker = _tls_broker(broker_factory, pki)
    m, ob = _agent(broker, tmp_path, pki / "other-ca.crt", reconnect_min_s=0.1,
                   reconnect_max_s=0.2)
    assert not m.wait_connected(1.5)
    assert m.counters["connect_failures"] >= 2
    assert "CERTIFICATE_VERIFY_FAILED" in m.last_error
    assert "ca_file" in caplog.text  # the hint names the setting to fix
    m.stop(timeout=0.5)
    ob.close()


def test_hostname_mismatch_is_refused_unless_insecure_is_explicit(broker_factory, pki, tmp_path):
    broker = _tls_broker(broker_factory, pki, cert="badname")
    m, ob = _agent(broker, tmp_path, pki / "ca.crt")
    assert not m.wait_connected(1.0)
    assert "CERTIFICATE_VERIFY_FAILED" in m.last_error or "match" in m.last_error
    m.stop(timeout=0.5)
    ob.close()
    m2, ob2 = _agent(broker, tmp_path / "2", pki / "ca.crt", insecure=True)
    assert m2.wait_connected(10), m2.last_error
    m2.stop()
    ob2.close()


def test_mutual_tls_needs_the_client_certificate(broker_factory, pki, tmp_path):
    broker = _tls_broker(broker_factory, pki, mutual=True)
    m, ob = _agent(broker, tmp_path, pki / "ca.crt", client_cert=pki / "client")
    assert m.wait_connected(10), m.last_error
    m.stop()
    ob.close()
    m2, ob2 = _agent(broker, tmp_path / "2", pki / "ca.crt", reconnect_min_s=0.1,
                     reconnect_max_s=0.2)
    assert not m2.wait_connected(1.0)
    assert m2.counters["connect_failures"] >= 1
    assert "client certificate" in m2.last_error and "cert_file" in m2.last_error
    m2.stop(timeout=0.3)
    ob2.close()


@pytest.mark.slow
def test_wrong_password_is_reported_clearly_and_retried_with_backoff(broker_factory, pki,
                                                                     tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    broker = _tls_broker(broker_factory, pki)
    m, ob = _agent(broker, tmp_path, pki / "ca.crt", password="not-the-password",
                   reconnect_min_s=0.2, reconnect_max_s=0.8)
    time.sleep(3.2)
    assert not m.connected
    attempts = list(m.connect_attempts)
    assert len(attempts) >= 4, attempts
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # backoff doubles 0.2 -> 0.4 -> 0.8 (sleeps are lower bounds, so only check growth)
    assert gaps[2] >= 0.7 and gaps[0] < gaps[2], gaps
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("refused the connection" in e and "Not authorized" in e
               and "mqtt.password" in e for e in errors), errors
    assert "not-the-password" not in caplog.text
    m.stop(timeout=0.5)
    ob.close()


def test_tls_config_errors_name_the_setting(tmp_path, pki):
    ob = Outbox(tmp_path / "outbox.sqlite")
    from edge_agent.config import MqttConfig

    with pytest.raises(ValueError, match="mqtt.tls.ca_file: no such file"):
        AgentMqtt(MqttConfig(tls=TlsConfig(ca_file=str(tmp_path / "nope.crt"))), "d", ob)
    with pytest.raises(ValueError, match="cert_file is not"):
        AgentMqtt(MqttConfig(tls=TlsConfig(key_file=str(pki / "server.key"))), "d", ob)
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load the certificates"):
        AgentMqtt(MqttConfig(tls=TlsConfig(ca_file=str(junk))), "d", ob)
    ob.close()


def test_listen_ack_over_tls_with_a_password(broker_factory, pki, tmp_path, capsys):
    """The reference end-to-end consumer on a TLS broker with a password (the fleet setup)."""
    import threading

    from edge_agent.cli import main

    broker = _tls_broker(broker_factory, pki)
    store = tmp_path / "events.jsonl"
    rc: list = []
    listener = threading.Thread(target=lambda: rc.append(main([
        "listen", "--host", broker.host, "--port", str(broker.port), "--ack", "--store",
        str(store), "--username", USER, "--password", PASSWORD, "--ca-file",
        str(pki / "ca.crt"), "--count", "5", "--timeout", "60", "--quiet"])))
    listener.start()
    time.sleep(1.0)  # its SUBSCRIBE; the agent's ack timeout covers a late one
    m, ob = _agent(broker, tmp_path, pki / "ca.crt", delivery="end_to_end", ack_timeout_s=2)
    assert m.wait_connected(10), m.last_error
    for i in range(5):
        ob.append(event(i))
    listener.join(90)
    assert rc == [0]
    deadline = time.monotonic() + 10
    while len(ob) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ob) == 0, "the consumer's acks did not reach the agent"
    assert len(store.read_text().splitlines()) == 5
    m.stop()
    ob.close()
    assert PASSWORD not in capsys.readouterr().err
