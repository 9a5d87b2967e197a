"""Shared test fixtures: a real Mosquitto broker, the shared data folders, markers."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", REPO.parent / "shared"))


# --- markers ---------------------------------------------------------------------------------

# Fixtures that read ../shared: a test using any of them (even through another fixture) is
# marked shared_data, and skipped with SHARED_MISSING when the folder is not there.
SHARED_FIXTURES = frozenset({"shared_dir", "video_dir", "mot_dir", "weights_dir", "yolox_nano"})
SHARED_MISSING = f"shared_data: needs ../shared ({SHARED}), which is not beside this checkout"
# CI (.ci/run) sets this: there ../shared exists, and a shared_data test that skips fails the run.
REQUIRE_SHARED = os.environ.get("EDGE_AGENT_REQUIRE_SHARED") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SHARED_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)
    if not SHARED.is_dir():
        for item in items:
            if "shared_data" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=SHARED_MISSING))
    _skip_gpu_items(items)


def _skip_gpu_items(items) -> None:
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    from edge_agent.inference.engine import tensorrt_usable

    reason = tensorrt_usable()
    if reason:
        skip = pytest.mark.skip(reason=f"gpu test: {reason}")
        for item in gpu_items:
            item.add_marker(skip)


_skipped_shared: List[str] = []


def pytest_runtest_logreport(report):
    # TensorRT tests skip on machines without a GPU, whatever data they read.
    if report.skipped and "shared_data" in report.keywords and "gpu" not in report.keywords:
        _skipped_shared.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_SHARED and _skipped_shared and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if REQUIRE_SHARED and _skipped_shared:
        terminalreporter.write_line(
            f"EDGE_AGENT_REQUIRE_SHARED=1 and {len(_skipped_shared)} shared_data test(s) "
            f"skipped (../shared = {SHARED}): " + ", ".join(_skipped_shared[:5]), red=True)


# --- shared data -----------------------------------------------------------------------------


def _shared_path(*parts: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip(SHARED_MISSING)
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"shared data missing: {path} (expected ../shared beside the repo, or set "
            "EDGE_AGENT_SHARED)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _shared_path()


@pytest.fixture(scope="session")
def video_dir() -> Path:
    return _shared_path("data", "video")


@pytest.fixture(scope="session")
def mot_dir() -> Path:
    return _shared_path("data", "mot")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _shared_path("weights")


@pytest.fixture(scope="session")
def yolox_nano(weights_dir) -> Path:
    return _shared_path("weights", "yolox_nano_coco.onnx")


# --- the broker ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    """Poll ``cond()`` until it is true or ``timeout`` s passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        pytest.fail("mosquitto is not installed (make test installs it)", pytrace=False)
    return found


class Broker:
    """A mosquitto process on a free loopback port, with its own config and data dir.

    ``extra_conf`` lines are appended to the listener config (e.g. ``password_file``, TLS
    ``cafile``/``certfile``/``keyfile``). Persistence is on so queued messages of persistent
    sessions survive a restart; ``autosave_interval 1`` keeps what a SIGKILL can lose small.
    """

    def __init__(self, workdir: Path, extra_conf: Optional[List[str]] = None):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.extra_conf = list(extra_conf or [])
        self.proc: Optional[subprocess.Popen] = None
        self._write_conf()

    def _write_conf(self) -> None:
        has_auth = any(line.startswith("password_file") for line in self.extra_conf)
        lines = [
            f"listener {self.port} {self.host}",
            # As root mosquitto drops to user "mosquitto", which cannot write our temp dir.
            f"user {getpass.getuser()}",
            f"allow_anonymous {'false' if has_auth else 'true'}",
            *self.extra_conf,
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.proc = subprocess.Popen(
            [_mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}\n{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): the broker saves its persistence file."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to save anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def broker(tmp_path):
    """A running broker; ``broker.kill()`` / ``broker.start()`` for fault tests."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def broker_factory(tmp_path):
    """Make brokers with extra config lines (TLS, passwords); all are killed at teardown."""
    made: List[Broker] = []

    def make(extra_conf: Optional[List[str]] = None, name: str = "broker") -> Broker:
        b = Broker(tmp_path / f"{name}{len(made)}", extra_conf)
        made.append(b)
        return b

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def outbox(tmp_path):
    """A durable outbox in ``tmp_path`` that commits every 10 ms (tests wait less), closed after."""
    from edge_agent.outbox.eventlog import Outbox

    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=10)
    yield ob
    ob.close()
