"""Prometheus ``/metrics`` and ``/healthz`` over HTTP (``metrics:`` in the config).

Two kinds of numbers:

* totals the agent already keeps (frames per camera, outbox rows, MQTT state, engine, update
  state) are read from their owners at scrape time by :class:`_Snapshot`, through
  :class:`Sources` — nothing is counted twice;
* latencies and events are observed as they happen into prometheus-client histograms and
  counters by :class:`Observations`, which the inference loop and the event sinks call.

``/healthz`` answers 200 while every camera delivered a processed frame within
``max_frame_age_s``, the outbox is writable and the process is not short of file descriptors or
memory, else 503; both with a JSON body naming the reason.
The server listens on loopback (127.0.0.1:9108) unless the config names another address.

The server is bounded (:class:`BoundedHTTPServer`) so that no number of clients can take the
descriptors, threads or memory the cameras and the outbox need: at most ``max_connections`` at
once, each with a ``request_timeout_s`` on every read and write.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)

from edge_agent.clips.http import PREFIX as CLIP_PREFIX
from edge_agent.clips.http import ClipResponse, ClipRoute, send_range
from edge_agent.clips.service import ClipStats
from edge_agent.common import resources

log = logging.getLogger(__name__)

# Remote update states (design section 8) plus idle; the current one is 1 in the state set.
UPDATE_STATES = ("idle", "accepted", "downloading", "verifying", "building", "staged", "switching",
                 "health_check", "committed", "rolled_back", "failed")
_MIN_FREE_BYTES = 1 << 20  # below this the outbox cannot take an event

INFERENCE_BUCKETS = (.001, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28, 2.56)
TRACKER_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, .01, .025)
E2E_BUCKETS = (.01, .025, .05, .1, .2, .4, .8, 1.6, 3.2, 6.4, 12.8)


class Observations:
    """Histograms and counters fed while the agent runs; also each camera's last frame time.

    ``frame`` is called once per processed frame by the inference thread; its monotonic time
    is what ``/healthz`` calls "frames flow".
    """

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.inference_s = Histogram(
            "edge_agent_inference_seconds", "Detector latency per batch",
            registry=registry, buckets=INFERENCE_BUCKETS)
        self.tracker_s = Histogram(
            "edge_agent_tracker_seconds", "Tracker latency per frame (all heads)",
            registry=registry, buckets=TRACKER_BUCKETS)
        self.e2e_s = Histogram(
            "edge_agent_end_to_end_seconds", "Frame read to events emitted", ["camera"],
            registry=registry, buckets=E2E_BUCKETS)
        self.events = Counter(
            "edge_agent_events", "Events stored in the outbox", ["type", "phase"],
            registry=registry)
        self._last_frame: Dict[str, float] = {}

    def inference(self, seconds: float) -> None:
        self.inference_s.observe(seconds)

    def tracker(self, seconds: float) -> None:
        self.tracker_s.observe(seconds)

    def frame(self, camera: str, e2e_seconds: float, now: Optional[float] = None) -> None:
        self.e2e_s.labels(camera).observe(e2e_seconds)
        self._last_frame[camera] = time.monotonic() if now is None else now

    def last_frame(self, camera: str) -> Optional[float]:
        """Monotonic time of the camera's last processed frame (None: none yet)."""
        return self._last_frame.get(camera)


class EventCounterSink:
    """An event sink (``write``/``close``) that counts events by type and phase."""

    name = "metrics"

    def __init__(self, obs: Observations):
        self._events = obs.events

    def write(self, event: Dict[str, Any]) -> None:
        self._events.labels(str(event.get("type", "?")), str(event.get("phase", "?"))).inc()

    def close(self) -> None:
        pass


@dataclass
class Sources:
    """Where the scrape-time numbers come from (each a cheap call; None: not configured).

    ``stats`` returns the pipeline stats document (``cameras: {name: {frames_in, processed,
    dropped, fps, state}}``); ``engine`` a dict with name, version, sha256, backend.
    """

    cameras: Sequence[str]
    stats: Callable[[], Dict[str, Any]]
    engine: Callable[[], Dict[str, str]]
    outbox_rows: Optional[Callable[[], int]] = None
    outbox_path: Optional[Path] = None
    mqtt_connected: Optional[Callable[[], bool]] = None
    update_state: Callable[[], str] = field(default=lambda: "idle")
    clips: Optional[Callable[[], ClipStats]] = None


def outbox_oldest_age(path: Path, now: Optional[float] = None) -> float:
    """Seconds since the oldest row still in the outbox was stored; 0 when it is empty."""
    with _connect(path) as db:
        oldest = db.execute("SELECT MIN(created) FROM events").fetchone()[0]
    return 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)


def outbox_problem(path: Path) -> Optional[str]:
    """Why the outbox cannot store an event now (None: it can).

    Checks what a write needs: permission on the file and its folder, free space, and the
    database's write lock (taken and released at once; a busy lock is not a failure).
    """
    folder = path.parent
    try:
        if not path.exists():
            return f"outbox {path} does not exist"
        if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
            return f"outbox {path} is not writable by this user"
        if shutil.disk_usage(folder).free < _MIN_FREE_BYTES:
            return f"outbox {path}: the disk is full"
    except OSError as exc:  # e.g. a folder on the way that this user may not enter
        return f"outbox {path}: cannot reach it: {exc.strerror}"
    try:
        with _connect(path, timeout=0.2) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None  # the agent is writing right now
        return f"outbox {path}: {exc}"
    except sqlite3.DatabaseError as exc:
        return f"outbox {path}: {exc}"
    return None


class _connect:
    """A short-lived extra connection to the outbox database (WAL: readers do not block it)."""

    def __init__(self, path: Path, timeout: float = 1.0):
        self.db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


class _Snapshot:
    """Collector: the totals the agent keeps, read at scrape time."""

    def __init__(self, src: Sources):
        self.src = src

    def describe(self) -> List[Metric]:
        return []  # families are built per scrape; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        yield from self._cameras()
        yield from self._outbox()
        src = self.src
        if src.mqtt_connected is not None:
            yield GaugeMetricFamily("edge_agent_mqtt_connected", "1 while connected to the broker",
                                    value=1.0 if src.mqtt_connected() else 0.0)
        eng = src.engine()
        yield InfoMetricFamily("edge_agent_engine", "The running detector engine",
                               value={k: str(eng.get(k, "")) for k in
                                      ("name", "version", "sha256", "backend")})
        cur = src.update_state()
        states = list(UPDATE_STATES) + ([cur] if cur not in UPDATE_STATES else [])
        yield StateSetMetricFamily("edge_agent_update_state", "Remote engine update state",
                                   value={s: s == cur for s in states})
        yield from _resources()
        if src.clips is not None:
            yield from _clips(src.clips())

    def _cameras(self) -> Iterable[Metric]:
        cams = self.src.stats().get("cameras", {})
        fams = {
            key: CounterMetricFamily(f"edge_agent_frames_{name}", text, labels=["camera"])
            for key, name, text in (("frames_in", "in", "Frames read from the camera"),
                                    ("processed", "processed", "Frames through the pipeline"),
                                    ("dropped", "dropped", "Frames replaced before processing"))
        }
        fams["reconnects"] = CounterMetricFamily("edge_agent_camera_reconnects",
                                                 "Streams reopened after a stall or an error",
                                                 labels=["camera"])
        fps = GaugeMetricFamily("edge_agent_camera_fps", "Processed frames per second (EMA)",
                                labels=["camera"])
        for name, c in cams.items():
            for key, fam in fams.items():
                fam.add_metric([name], float(c.get(key, 0)))
            fps.add_metric([name], float(c.get("fps", 0.0)))
        yield from fams.values()
        yield fps

    def _outbox(self) -> Iterable[Metric]:
        src = self.src
        if src.outbox_rows is not None:
            yield GaugeMetricFamily("edge_agent_outbox_rows", "Events waiting in the outbox",
                                    value=float(src.outbox_rows()))
        if src.outbox_path is not None:
            try:
                age = outbox_oldest_age(src.outbox_path)
            except sqlite3.Error as exc:
                log.warning("metrics: outbox age unreadable: %s", exc)
                return
            yield GaugeMetricFamily("edge_agent_outbox_oldest_age_seconds",
                                    "Age of the oldest event in the outbox (0: empty)", value=age)


def _clips(st: ClipStats) -> Iterable[Metric]:
    ring = GaugeMetricFamily("edge_agent_clip_preroll_bytes",
                             "Memory held by the camera's pre-roll ring", labels=["camera"])
    for cam, n in st.preroll_bytes.items():
        ring.add_metric([cam], float(n))
    yield ring
    yield GaugeMetricFamily("edge_agent_clip_store_bytes", "Bytes of clips on disk",
                            value=float(st.store_bytes))
    total = CounterMetricFamily("edge_agent_clip_events", "Clip outcomes and losses",
                                labels=["what"])
    for what, n in st.counters.items():
        total.add_metric([what], float(n))
    yield total


def _resources() -> Iterable[Metric]:
    use = resources.usage()
    yield GaugeMetricFamily("edge_agent_open_fds", "File descriptors open", value=use.fds_open)
    yield GaugeMetricFamily("edge_agent_max_fds", "File descriptor limit (soft RLIMIT_NOFILE)",
                            value=use.fds_limit)
    if use.mem_available is not None:
        yield GaugeMetricFamily("edge_agent_memory_available_bytes",
                                "Memory the process could still get (host or cgroup)",
                                value=use.mem_available)


class Health:
    """The ``/healthz`` verdict: frames flow on every camera and the outbox is writable."""

    def __init__(self, src: Sources, obs: Observations, max_frame_age_s: float):
        self.src = src
        self.obs = obs
        self.max_age = max_frame_age_s
        self.started = time.monotonic()

    def check(self, now: Optional[float] = None) -> Tuple[bool, Dict[str, Any]]:
        """(healthy, JSON document with the reasons)."""
        now = time.monotonic() if now is None else now
        reasons: List[str] = []
        cams: Dict[str, Any] = {}
        for name in self.src.cameras:
            last = self.obs.last_frame(name)
            if last is None:  # not healthy before the first frame either
                cams[name] = {"last_frame_age_s": None}
                reasons.append(f"camera {name}: no frame yet ({now - self.started:.1f} s "
                               "after start)")
                continue
            age = now - last
            cams[name] = {"last_frame_age_s": round(age, 2)}
            if age > self.max_age:
                reasons.append(f"camera {name}: no frame for {age:.1f} s")
        ob = outbox_problem(self.src.outbox_path) if self.src.outbox_path is not None else None
        if ob:
            reasons.append(ob)
        res = resources.usage().doc()
        reasons.extend(res["problems"])
        ok = not reasons
        doc = {"status": "ok" if ok else "unhealthy", "reasons": reasons, "cameras": cams,
               "outbox": "ok" if ob is None else ob, "resources": res}
        return ok, doc


def observations() -> Observations:
    """Observations on a registry of their own (the pipeline gets them before the exporter
    exists, which then serves their registry)."""
    return Observations(CollectorRegistry(auto_describe=False))


class Exporter:
    """The registry, the observations and the HTTP server of one agent."""

    def __init__(self, src: Sources, max_frame_age_s: float = 10.0, max_connections: int = 16,
                 request_timeout_s: float = 5.0,
                 clips: Optional[ClipRoute] = None, obs: Optional[Observations] = None):
        """``obs``: the observations the pipeline was built with (:func:`observations`); by
        default new ones."""
        self.clips = clips  # GET /clips/<event_id>.mp4 when set
        self.obs = obs if obs is not None else observations()
        self.registry = self.obs.registry
        self.registry.register(_Snapshot(src))
        self.health = Health(src, self.obs, max_frame_age_s)
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._server: Optional[BoundedHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def sink(self) -> EventCounterSink:
        return EventCounterSink(self.obs)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @property
    def port(self) -> Optional[int]:
        return None if self._server is None else self._server.server_address[1]

    def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0: any free one); raises OSError when it cannot bind."""
        handler = type("Handler", (_Handler,), {"exporter": self,
                                                "timeout": self.request_timeout_s})
        self._server = BoundedHTTPServer((host, port), handler, self.max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http",
                                        daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz)", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.close_all()
            self._server.server_close()
            self._server = None

    def connections(self) -> Dict[str, int]:
        """Open (busy: answering a request), refused and evicted connections of the server
        (zeros when not started)."""
        srv = self._server
        if srv is None:
            return {"open": 0, "busy": 0, "refused": 0, "evicted": 0, "accept_failures": 0}
        return srv.counts()


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, but at most ``max_connections`` of them.

    When a new connection finds the server full, the oldest connection that has not yet sent
    its request head is closed to make room (an idle or trickling client must not lock the
    health check out); when every connection is busy with a request the new one is refused
    (closed at once). Together with the handler's ``timeout`` (every read and write) this
    bounds the descriptors and threads the endpoint can take to ``max_connections + 1``.
    Failed accepts for want of descriptors pause the loop instead of spinning on a socket that
    stays readable.
    """

    daemon_threads = True
    request_queue_size = 64  # kernel backlog: costs no descriptor of ours
    _ACCEPT_PAUSE_S = 0.1

    def __init__(self, addr: Tuple[str, int], handler: type, max_connections: int):
        self.max_connections = max_connections
        self._conns: OrderedDict[socket.socket, bool] = OrderedDict()  # -> request read
        self._conns_lock = threading.Lock()
        self._refused = self._evicted = self._accept_failures = 0
        super().__init__(addr, handler)

    def counts(self) -> Dict[str, int]:
        with self._conns_lock:
            return {"open": len(self._conns), "busy": sum(self._conns.values()),
                    "refused": self._refused, "evicted": self._evicted,
                    "accept_failures": self._accept_failures}

    def get_request(self) -> Tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                with self._conns_lock:
                    self._accept_failures += 1
                time.sleep(self._ACCEPT_PAUSE_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            if len(self._conns) >= self.max_connections:
                victim = next((c for c, busy in self._conns.items() if not busy), None)
                if victim is None:
                    self._refused += 1
                    self.shutdown_request(request)
                    return
                del self._conns[victim]
                self._evicted += 1
                _hang_up(victim)  # its thread's read returns at once; that thread closes it
            self._conns[request] = False
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.pop(request, None)

    def request_started(self, request: Any) -> None:
        """The handler read a whole request head: this connection is no longer evictable."""
        with self._conns_lock:
            if request in self._conns:
                self._conns[request] = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client that resets is not worth one.
        log.debug("metrics: connection from %s failed", client_address, exc_info=True)

    def close_all(self) -> None:
        """Hang up every open connection (at stop; their threads end on their own)."""
        with self._conns_lock:
            conns, self._conns = list(self._conns), OrderedDict()
        for c in conns:
            _hang_up(c)


def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


class _Handler(BaseHTTPRequestHandler):
    exporter: Exporter
    server: BoundedHTTPServer

    def parse_request(self) -> bool:
        ok = super().parse_request()  # the request line and headers are in
        self.server.request_started(self.request)
        return ok

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path.startswith(CLIP_PREFIX) and self.exporter.clips is not None:
            self._clip(path)
            return
        try:
            code, body, ctype = self._answer(path)
        except Exception as exc:  # a failing source must not kill the server thread
            log.exception("metrics: %s failed", path)
            code, body, ctype = 500, json.dumps({"error": str(exc)}).encode(), "application/json"
        try:
            self._reply(code, body, ctype)
        except OSError as exc:  # the client went away or timed out: its loss, not an error
            log.debug("metrics: %s: reply not sent: %s", path, exc)
            self.close_connection = True

    def _answer(self, path: str) -> Tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, self.exporter.render(), CONTENT_TYPE_LATEST
        if path == "/healthz":
            ok, doc = self.exporter.health.check()
            return 200 if ok else 503, json.dumps(doc).encode(), "application/json"
        return 404, b'{"error": "not found: try /metrics or /healthz"}', "application/json"

    def _clip(self, path: str) -> None:
        try:
            res = self.exporter.clips.respond(path, self.headers)
        except OSError as exc:  # the clip rotated out between lookup and stat
            res = ClipResponse(404, {"Content-Type": "application/json"},
                               json.dumps({"error": f"clip not readable: {exc}"}).encode())
        try:
            self._send_clip(res)
        except OSError as exc:  # the player went away (it often does after a range)
            log.debug("metrics: %s: clip not sent: %s", path, exc)
            self.close_connection = True

    def _send_clip(self, res: ClipResponse) -> None:
        self.send_response(res.status)
        for k, v in res.headers.items():
            self.send_header(k, v)
        if res.path is None:
            self.send_header("Content-Length", str(len(res.body)))
        self.end_headers()
        if res.path is None:
            self.wfile.write(res.body)
        else:
            send_range(self.wfile, res.path, res.start, res.length)

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        log.debug("metrics http: " + format, *args)
