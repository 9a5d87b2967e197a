"""The operator's side of the command protocol: send ``cmd/<name>`` to devices, receive replies.

Used by ``edge-agent engine push``. Replies (``cmd/<name>/reply``) and the retained
``engine/update`` progress of the watched devices arrive on :attr:`Requester.inbox` as
``(device, kind, doc)`` with kind ``reply`` or ``progress``; paho's callbacks only decode and
enqueue.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import threading
import uuid
from typing import Any, Dict, Optional, Tuple

import paho.mqtt.client as paho

from edge_agent.mqtt.paho_client import ClientTls, new_client
from edge_agent.mqtt.topics import Topics, split_device_topic


class Requester:
    """One MQTT connection for sending commands and following their replies."""

    def __init__(self, host: str, port: int, prefix: str = "edge-agent",
                 username: Optional[str] = None, password: Optional[str] = None,
                 ca_file: Optional[str] = None):
        self.host, self.port, self.prefix = host, port, prefix
        self.inbox: queue.Queue[Tuple[str, str, Dict[str, Any]]] = queue.Queue()
        self._connected = threading.Event()
        self._subacks: Dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        if username and password is None:
            password = os.environ.get("EDGE_AGENT_MQTT_PASSWORD")
        if ca_file and not os.path.isfile(ca_file):
            raise ValueError(f"--ca-file: no such file: {ca_file}")
        self._client = new_client(f"edge-agent-push-{uuid.uuid4().hex[:8]}", "5",
                                  username=username, password=password,
                                  tls=ClientTls(ca_file) if ca_file else None)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def connect(self, timeout: float = 10.0) -> None:
        """Connect, or raise ``ConnectionError`` saying why not."""
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise ConnectionError(f"{self.host}:{self.port} did not accept the connection "
                                  f"within {timeout:g} s")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            ev = self._subacks.get(mid)
        if ev is not None:
            ev.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            device, rest = split_device_topic(self.prefix, msg.topic)
            kind = "progress" if rest == "engine/update" else "reply"
            doc = json.loads(bytes(msg.payload).decode("utf-8"))
            if isinstance(doc, dict):
                self.inbox.put((device, kind, doc))
        except (ValueError, UnicodeDecodeError):
            pass  # not ours to judge; a bad message is simply not a reply

    def watch(self, device: str, command: str, timeout: float = 10.0) -> None:
        """Subscribe to ``device``'s replies of ``command`` and its engine/update progress."""
        t = Topics(self.prefix, device)
        ev = threading.Event()
        with self._lock:
            rc, mid = self._client.subscribe([(t.reply(command), 1), (t.engine_update, 1)])
            self._subacks[mid] = ev
        if rc != paho.MQTT_ERR_SUCCESS or not ev.wait(timeout):
            raise ConnectionError(f"could not subscribe to {device}'s replies")

    def send(self, device: str, command: str, payload: Dict[str, Any]) -> None:
        topic = Topics(self.prefix, device).command(command)
        info = self._client.publish(topic, json.dumps(payload).encode(), qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publishing to {topic} failed (rc {info.rc})")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
