"""The downloader against a real local HTTP server: resume, limits, timeouts, HTTP errors."""

from __future__ import annotations

import os
import subprocess

import pytest
from update_helpers import ForwardProxy, ModelServer

from edge_agent.update.download import Downloader
from edge_agent.update.errors import UpdateError

DATA = os.urandom(300_000)


@pytest.fixture
def server():
    s = ModelServer()
    yield s
    s.close()


def test_full_download_with_progress(server, tmp_path):
    url = server.add("m.onnx", DATA)
    seen = []
    res = Downloader(timeout_s=5).fetch(url, tmp_path / "m.part", lambda g, t: seen.append((g, t)))
    assert (tmp_path / "m.part").read_bytes() == DATA and res.size == len(DATA)
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) > 2


def test_resume_asks_for_the_missing_range_only(server, tmp_path):
    url = server.add("m.onnx", DATA)
    part = tmp_path / "m.part"
    part.write_bytes(DATA[:123_456])  # what a killed agent left
    res = Downloader(timeout_s=5).fetch(url, part)
    assert part.read_bytes() == DATA and res.resumed_from == 123_456
    assert server.requests[-1] == ("/m.onnx", "bytes=123456-")


def test_complete_part_file_is_not_fetched_again(server, tmp_path):
    url = server.add("m.onnx", DATA)
    part = tmp_path / "m.part"
    part.write_bytes(DATA)
    assert Downloader(timeout_s=5).fetch(url, part).size == len(DATA)


@pytest.mark.parametrize("fault,code", [("404", "http_error"), ("500", "http_5xx"),
                                        ("truncate", "truncated")])
def test_http_faults_are_named(server, tmp_path, fault, code):
    url = server.add("m.onnx", DATA, fault)
    with pytest.raises(UpdateError) as e:
        Downloader(timeout_s=5, retries=1, retry_delay_s=0.01).fetch(url, tmp_path / "m.part")
    assert e.value.code == code
    if fault == "truncate":  # each retry resumed where the last one broke off
        assert [r for _, r in server.requests] == [None, f"bytes={len(DATA) // 2}-"]
        assert "of 300000" in e.value.message or "ended at byte" in e.value.message


def test_stalled_server_times_out(server, tmp_path):
    url = server.add("m.onnx", DATA, "stall")
    with pytest.raises(UpdateError) as e:
        Downloader(timeout_s=0.5, retries=0).fetch(url, tmp_path / "m.part")
    assert e.value.code == "timeout" and "stalled" in e.value.message


def test_oversize_refused_before_reading(server, tmp_path):
    url = server.add("m.onnx", DATA)
    with pytest.raises(UpdateError) as e:
        Downloader(timeout_s=5, max_bytes=100_000).fetch(url, tmp_path / "m.part")
    assert e.value.code == "too_large" and "300000" in e.value.message
    assert not (tmp_path / "m.part").exists() or (tmp_path / "m.part").stat().st_size == 0


def test_bad_urls_and_unreachable_hosts(tmp_path):
    d = Downloader(timeout_s=1, retries=0)
    with pytest.raises(UpdateError, match="bad_request"):
        d.fetch("file:///etc/passwd", tmp_path / "x")
    with pytest.raises(UpdateError) as e:
        d.fetch("http://user:secret@127.0.0.1:9/m.onnx", tmp_path / "x")
    assert e.value.code == "connection" and "secret" not in e.value.message


def test_ipv6_literal_and_no_host(tmp_path):
    try:
        srv = ModelServer(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        url = srv.add("m.onnx", DATA)
        assert url.startswith("http://[::1]:")
        Downloader(timeout_s=5).fetch(url, tmp_path / "v6.part")
        assert (tmp_path / "v6.part").read_bytes() == DATA
    finally:
        srv.close()
    with pytest.raises(UpdateError, match="no host"):
        Downloader(timeout_s=1).fetch("http://:80/m.onnx", tmp_path / "x")


def test_credentials_go_to_their_own_host_only(server, tmp_path):
    server.add("m.onnx", DATA)
    server.redirect("away", f"http://localhost:{server.port}/m.onnx")  # another host name
    url = f"http://ops:s3cret@127.0.0.1:{server.port}/away"
    Downloader(timeout_s=5).fetch(url, tmp_path / "m.part")
    assert (tmp_path / "m.part").read_bytes() == DATA
    import base64

    assert server.auth[-2] == ("/away", "Basic " + base64.b64encode(b"ops:s3cret").decode())
    assert server.auth[-1] == ("/m.onnx", None)


@pytest.fixture
def proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    p = ForwardProxy()
    yield p
    p.close()


def test_through_the_proxy_the_environment_names(server, proxy, tmp_path, monkeypatch):
    import base64

    monkeypatch.setenv("http_proxy", f"http://ops:pw@127.0.0.1:{proxy.port}")
    url = server.add("m.onnx", DATA)
    Downloader(timeout_s=5).fetch(url, tmp_path / "m.part")
    assert (tmp_path / "m.part").read_bytes() == DATA
    assert proxy.seen == [("GET", url, "Basic " + base64.b64encode(b"ops:pw").decode())]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    Downloader(timeout_s=5).fetch(url, tmp_path / "direct.part")
    assert len(proxy.seen) == 1 and (tmp_path / "direct.part").read_bytes() == DATA


def test_https_with_the_configured_ca_and_refused_without(tmp_path, proxy, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    srv = ModelServer(tls=(cert, key))
    try:
        url = srv.add("m.onnx", DATA)
        assert url.startswith("https://")
        Downloader(timeout_s=5, ca_file=str(cert)).fetch(url, tmp_path / "ok.part")
        assert (tmp_path / "ok.part").read_bytes() == DATA
        with pytest.raises(UpdateError) as e:  # the system CAs do not know this server
            Downloader(timeout_s=5, retries=0).fetch(url, tmp_path / "no.part")
        assert e.value.code == "connection" and "CERTIFICATE_VERIFY_FAILED" in e.value.message
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")  # a CONNECT tunnel
        Downloader(timeout_s=5, ca_file=str(cert)).fetch(url, tmp_path / "tunnel.part")
        assert (tmp_path / "tunnel.part").read_bytes() == DATA
        assert proxy.seen == [("CONNECT", f"127.0.0.1:{srv.port}", None)]
    finally:
        srv.close()
