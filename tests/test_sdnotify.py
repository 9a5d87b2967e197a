"""sd_notify over a real unix datagram socket, path and abstract namespace."""

from __future__ import annotations

import os
import socket

import pytest

from edge_agent.daemon.sdnotify import Notifier


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify.sock")
        s.bind(name)
    else:
        name = f"@edge-agent-test-{os.getpid()}"
        s.bind("\0" + name[1:])
    s.settimeout(2)
    yield name, s
    s.close()


def test_ready_and_watchdog(notify_socket):
    name, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
    assert n.watchdog_interval_s == 2.0
    assert n.ready("cameras up")
    assert sock.recv(1024) == b"READY=1\nSTATUS=cameras up"
    assert n.watchdog(now=100.0)
    assert sock.recv(1024) == b"WATCHDOG=1"
    assert not n.watchdog(now=101.0)  # within half the interval: no ping
    assert n.watchdog(now=102.5)
    assert sock.recv(1024) == b"WATCHDOG=1"
    assert n.extend_timeout(90)
    assert sock.recv(1024) == b"EXTEND_TIMEOUT_USEC=90000000"


def test_outside_systemd_is_a_noop():
    n = Notifier({})
    assert not n.enabled and not n.ready() and not n.watchdog()


def test_vanished_socket_does_not_raise(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
