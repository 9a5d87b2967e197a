"""The command server: ``cmd/<name>`` requests in, one reply each, on a thread of its own.

paho's thread only queues a request (:meth:`CommandServer.enqueue`; a full queue drops it and
counts ``commands_dropped``); the worker decodes and runs it through the
:class:`~edge_agent.mqtt.dispatch.Dispatcher` and publishes the reply on ``cmd/<name>/reply``,
or on the MQTT 5 Response Topic with the request's Correlation Data echoed, when
``Topics.route_reply`` allows that topic; otherwise the request is not run and gets a
``bad_response_topic`` error on ``cmd/<name>/reply``.

Built-in commands: ``ping``, ``state`` (the state document) and ``config.get`` (the config,
secrets masked).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from edge_agent.config import MqttConfig
from edge_agent.config.secrets import mask, mqtt_credentials
from edge_agent.metrics import Metrics
from edge_agent.mqtt.connection import Connection, Request
from edge_agent.mqtt.dispatch import Dispatcher, Handler, require

log = logging.getLogger(__name__)


class CommandServer:
    """Queue + worker thread + built-in commands (module docstring)."""

    def __init__(self, cfg: MqttConfig, metrics: Metrics, counters: Dict[str, int],
                 config_fn: Optional[Callable[[], Dict[str, Any]]] = None):
        self.cfg = cfg
        self.metrics = metrics
        self.counters = counters
        self._config_fn = config_fn
        password = mqtt_credentials(cfg)[1]
        self._secrets = [password] if password else []
        self.dispatcher = Dispatcher(cfg.max_command_bytes)
        self.dispatcher.register("ping", self._cmd_ping)
        self.dispatcher.register("state", lambda request: metrics.state())
        self.dispatcher.register("config.get", self._cmd_config_get)
        self._queue: queue.Queue = queue.Queue(maxsize=1000)
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.conn: Optional[Connection] = None  # set by start()
        # (response topic, correlation data) of the request being served, for handlers that
        # reply again later (the remote update: one reply per transition)
        self.route: Optional[Tuple[Optional[str], Optional[bytes]]] = None

    def register(self, name: str, fn: Handler) -> None:
        """Handle ``cmd/<name>``; ``fn(request) -> dict`` runs on the command thread."""
        self.dispatcher.register(name, fn)

    def enqueue(self, request: Request) -> None:
        """From paho's thread: queue only."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self.counters["commands_dropped"] += 1

    def start(self, conn: Connection) -> None:
        self.conn = conn
        self._thread = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker to finish (after the request it is serving); see :meth:`join`."""
        self._stopping = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the worker also exits on its own once it sees _stopping

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._stopping:
                    return
                continue
            if item is None:
                return
            try:
                self._serve(*item)
            except Exception:
                log.exception("mqtt: command handling failed")

    def _serve(self, name: str, payload: bytes, response_topic: Any, correlation: Any) -> None:
        assert self.conn is not None
        v5 = self.cfg.protocol == "5"
        corr = bytes(correlation) if isinstance(correlation, (bytes, bytearray)) else None
        # Where the reply may go decides whether the request runs (docs/mqtt.md, the rule).
        route = self.conn.topics.route_reply(name, response_topic if v5 else None)
        if route.refusal is None:
            self.route = (route.topic, corr)  # later replies of the handler go there too
            try:
                reply = self.dispatcher.handle(name, payload)
            finally:
                self.route = None
        else:
            log.warning("mqtt: command %r refused: %s", name[:64], route.refusal)
            if route.topic is None:
                return
            reply = self.dispatcher.refuse(name, payload, "bad_response_topic", route.refusal)
        data = json.dumps(reply, default=str).encode()
        try:
            self.conn.publish(route.topic, data, qos=1, correlation=corr)
        except ValueError as exc:  # paho refused it after all: one line, no traceback
            log.warning("mqtt: reply to %r not sent: %s", name[:64], exc)

    def _cmd_ping(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return {"pong": True, "uptime_s": self.metrics.uptime_s()}

    def _cmd_config_get(self, request: Dict[str, Any]) -> Dict[str, Any]:
        section = require(request, "section", str, default="")
        if self._config_fn is not None:
            config = self._config_fn()
        else:
            config = {"mqtt": self.cfg.model_dump(mode="json")}
        config = mask(config, self._secrets)
        if section:
            if section not in config:
                raise ValueError(f"unknown section {section!r}; known: {', '.join(config)}")
            return {"config": {section: config[section]}}
        return {"config": config}
