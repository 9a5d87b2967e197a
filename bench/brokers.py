"""Private MQTT brokers for the durability tests and benches: Mosquitto, a NATS server with
JetStream and its MQTT listener, and a three-node NATS cluster (JetStream replicas 3).

Each runs on free loopback ports with its own config and store directory; the system's brokers
(1883, 4222) are never touched. ``kill()`` is SIGKILL, ``start()`` starts it again on the same
ports and store, so what the broker had stored is all that survives.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import paho.mqtt.client as mqtt

REDELIVER_S = 5  # NATS: redelivery of unacknowledged QoS 1 messages to a subscriber


def wait_for(cond: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Poll ``cond()`` until it is true or ``timeout`` s passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


class Recorder:
    """A paho 3.1.1 client (the protocol every broker here speaks) that records every message
    on ``topics``; returns once the broker granted the subscription. ``clean=False``: a
    persistent session, whose QoS 1 messages the broker queues while it is away."""

    def __init__(self, port: int, client_id: str, topics: Sequence[str], clean: bool = True,
                 host: str = "127.0.0.1", timeout: float = 30.0):
        self.messages: List[Tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, 1) for t in topics]
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        if topics and not self.subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"{client_id}: no SUBACK within {timeout:g} s")

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def payloads(self, suffix: str) -> List[bytes]:
        """The payloads of the messages whose topic ends with ``suffix``, in arrival order."""
        with self.lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError(f"{name} is not installed (make system-deps installs it)")
    return found


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float, what: str,
                    log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited at start (rc {proc.returncode}): {text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def mqtt_ready(port: int, timeout: float, what: str) -> None:
    """Until an MQTT 3.1.1 client is accepted on ``port``."""
    import paho.mqtt.client as paho

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{port}")
        done: List[str] = []
        c.on_connect = lambda cl, u, f, rc, p, out=done: out.append(str(rc))
        try:
            c.connect("127.0.0.1", port, keepalive=5)
            c.loop_start()
            t = time.monotonic() + 5
            while not done and time.monotonic() < t:
                time.sleep(0.05)
            c.disconnect()
            c.loop_stop()
        except OSError as exc:
            done.append(str(exc))
        last = done[0] if done else "no CONNACK"
        if last == "Success":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what}: MQTT not ready within {timeout:.0f} s ({last})")


class _Process:
    """One broker process: ``start``, ``kill`` (SIGKILL), ``stop`` (SIGTERM)."""

    name = "broker"
    host = "127.0.0.1"
    port = 0

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"{self.name}.log"
        self.proc: Optional[subprocess.Popen] = None

    def command(self) -> List[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> _Process:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as log:
            # its own process group: a broker started by a script (RabbitMQ) is killed whole
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        _wait_listening(self.proc, self.port, timeout, self.name, self.log)
        return self

    def kill(self) -> None:
        """SIGKILL of the broker's process group: nothing gets saved on the way out."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Mosquitto(_Process):
    """Mosquitto with persistence; ``extra`` config lines (e.g. ``autosave_on_changes true``)."""

    name = "mosquitto"
    protocol = "5"

    def __init__(self, workdir: Path, extra: Optional[List[str]] = None):
        super().__init__(workdir)
        self.port = free_port()
        lines = [f"listener {self.port} {self.host}", f"user {getpass.getuser()}",
                 "allow_anonymous true", *(extra or []), "persistence true",
                 f"persistence_location {self.workdir}/", "autosave_interval 1",
                 "max_queued_messages 0", f"log_dest file {self.workdir}/mosquitto-file.log"]
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> List[str]:
        return [_binary("mosquitto"), "-c", str(self.conf)]


class NatsServer(_Process):
    """nats-server with JetStream (file store in ``workdir``) and its MQTT listener (3.1.1).

    ``cluster_port`` / ``routes`` join it to a cluster; ``replicas`` is the replication of the
    MQTT streams (sessions, retained messages, QoS 1 messages)."""

    name = "nats"
    protocol = "3.1.1"

    def __init__(self, workdir: Path, server_name: str = "n1", cluster_port: int = 0,
                 routes: Optional[List[int]] = None, replicas: int = 1):
        super().__init__(workdir)
        self.name = f"nats-{server_name}"
        self.log = self.workdir / f"{self.name}.log"
        self.client_port = free_port()
        self.port = free_port()  # MQTT
        store = self.workdir / "jetstream"
        lines = [f"server_name: {server_name}", f"listen: 127.0.0.1:{self.client_port}",
                 "jetstream {", f'  store_dir: "{store}"', "  max_memory_store: 64MB",
                 "  max_file_store: 1GB", "}",
                 "mqtt {", f"  listen: 127.0.0.1:{self.port}",
                 # a QoS 1 message the subscriber did not PUBACK (its connection died) comes
                 # again after this; NATS's default is 30 s
                 f'  ack_wait: "{REDELIVER_S}s"']
        if replicas > 1:  # consumers too: a subscription must outlive the node it began on
            lines += [f"  stream_replicas: {replicas}", f"  consumer_replicas: {replicas}"]
        lines.append("}")
        if cluster_port:
            lines += ["cluster {", "  name: edge", f"  listen: 127.0.0.1:{cluster_port}",
                      "  routes: [" + ", ".join(f"nats-route://127.0.0.1:{p}"
                                                for p in routes or []) + "]", "}"]
        self.conf = self.workdir / "nats.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> List[str]:
        return [_binary("nats-server"), "-c", str(self.conf)]


class RabbitMq(_Process):
    """A private RabbitMQ node (its own node name, ports, Erlang cookie and Mnesia directory)
    with ``rabbitmq_mqtt`` (MQTT 3.1.1 in 3.10). It shares the system's epmd, which serves
    every node on the machine."""

    name = "rabbitmq"
    protocol = "3.1.1"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.amqp_port, self.port, self.dist_port = free_port(), free_port(), free_port()
        self.node = f"edge-test-{self.port}@localhost"
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n")
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"edgetest{self.port}\n")
            cookie.chmod(0o400)

    def command(self) -> List[str]:
        return [_binary("env"), f"HOME={self.workdir}", f"RABBITMQ_NODENAME={self.node}",
                "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1", f"RABBITMQ_NODE_PORT={self.amqp_port}",
                f"RABBITMQ_DIST_PORT={self.dist_port}",
                f"RABBITMQ_MNESIA_BASE={self.workdir}/mnesia",
                f"RABBITMQ_LOG_BASE={self.workdir}/log",
                f"RABBITMQ_ENABLED_PLUGINS_FILE={self.workdir}/enabled_plugins",
                f"RABBITMQ_CONFIG_FILE={self.workdir}/rabbitmq",
                f"RABBITMQ_PLUGINS_EXPAND_DIR={self.workdir}/plugins-expand",
                "/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def start(self, timeout: float = 120.0) -> _Process:
        return super().start(timeout)


class NatsCluster:
    """Three NATS servers in one cluster, JetStream and MQTT on each, MQTT streams replicated
    on all three."""

    def __init__(self, workdir: Path, size: int = 3):
        self.workdir, self.size = Path(workdir), size
        self.nodes = self._nodes(self.workdir)

    def _nodes(self, where: Path) -> list:
        cports = [free_port() for _ in range(self.size)]
        return [
            NatsServer(where / f"n{i + 1}", f"n{i + 1}", cports[i],
                       [p for j, p in enumerate(cports) if j != i], replicas=self.size)
            for i in range(self.size)
        ]

    def start(self, timeout: float = 60.0) -> NatsCluster:
        # A free port can be taken by someone else before a node binds it: new ports, again.
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                self.kill()
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                self.nodes = self._nodes(self.workdir / f"retry{attempt + 1}")
        return self

    def _start(self, timeout: float) -> NatsCluster:
        procs = []
        for n in self.nodes:
            with open(n.log, "ab") as log:
                n.proc = subprocess.Popen(n.command(), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            procs.append(n)
        deadline = time.monotonic() + timeout
        for n in procs:
            assert n.proc is not None
            _wait_listening(n.proc, n.port, timeout, n.name, n.log)
        for n in procs:  # its MQTT sessions need JetStream, which needs a meta leader
            mqtt_ready(n.port, deadline - time.monotonic(), n.name)
        return self

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()
