"""Command dispatch: ``cmd/<name>`` request bytes -> a reply dict. No MQTT in here.

Request: a JSON object with ``request_id`` (string of 1..128 characters, or an integer) and the
command's own fields. Reply (always a JSON object)::

    {"request_id": ..., "command": "ping", "ok": true,  "result": {...}, "ts": "...Z"}
    {"request_id": ..., "command": "x",    "ok": false, "error": {"code": "...", "message": "..."},
     "ts": "...Z"}

Error codes: ``too_large`` (payload over ``max_bytes``), ``bad_json`` (not UTF-8 JSON),
``bad_request`` (not an object, missing/wrong ``request_id``, or the handler rejected a field
with ``ValueError``/``TypeError``/``KeyError``), ``unknown_command``, ``internal`` (the handler
failed; details go to the log, not to the requester), ``bad_response_topic`` (the MQTT 5
Response Topic is not one a reply may go to; the command is not run, see :meth:`refuse`).

Handlers are ``fn(request: dict) -> dict`` and run on the client's command worker thread.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable, Dict, List, Optional

from edge_agent.events.event import iso_utc

log = logging.getLogger(__name__)

Handler = Callable[[Dict[str, Any]], Dict[str, Any]]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_ID_LEN = 128


class CommandError(Exception):
    """Raised by a handler to send a specific error code and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Dispatcher:
    """Maps command names to handlers and turns every request into exactly one reply."""

    def __init__(self, max_bytes: int = 65536):
        self.max_bytes = int(max_bytes)
        self._handlers: Dict[str, Handler] = {}
        self.counts: Dict[str, int] = {"ok": 0, "error": 0}

    def register(self, name: str, fn: Handler) -> None:
        """Add or replace the handler of ``name`` (``[A-Za-z0-9_.-]{1,64}``)."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"command name {name!r} must match {_NAME_RE.pattern}")
        if not callable(fn):
            raise ValueError(f"handler for {name!r} is not callable")
        self._handlers[name] = fn

    def names(self) -> List[str]:
        return sorted(self._handlers)

    def refuse(self, name: str, payload: bytes, code: str, message: str) -> Dict[str, Any]:
        """The error reply to a request that is not run (e.g. its reply may not go where it
        asked); carries the request's ``request_id`` when one can be read."""
        request_id: Any = None
        if len(payload) <= self.max_bytes:
            try:
                request = json.loads(payload.decode("utf-8"))
                if isinstance(request, dict):
                    request_id = _request_id(request.get("request_id"))
            except (ValueError, RecursionError, CommandError):
                pass  # no usable request_id: the reply says null
        self.counts["error"] += 1
        return _error_reply(name, request_id, code, message)

    def handle(self, name: str, payload: bytes) -> Dict[str, Any]:
        """Decode, validate and run one request; always returns the reply dict."""
        shown = name[:64] if isinstance(name, str) else "?"
        request_id: Any = None
        try:
            if len(payload) > self.max_bytes:
                raise CommandError(
                    "too_large", f"payload is {len(payload)} bytes; the limit is {self.max_bytes}"
                )
            try:
                request = json.loads(payload.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise CommandError("bad_json", f"payload is not UTF-8: {exc.reason}") from None
            except (ValueError, RecursionError) as exc:
                raise CommandError("bad_json", f"payload is not JSON: {_short(exc)}") from None
            if not isinstance(request, dict):
                raise CommandError(
                    "bad_request", f"request must be a JSON object, got {_json_type(request)}"
                )
            request_id = _request_id(request.get("request_id"))
            fn = self._handlers.get(name)
            if fn is None:
                raise CommandError(
                    "unknown_command",
                    f"unknown command {shown!r}; known: {', '.join(self.names())}",
                )
            try:
                result = fn(request)
            except CommandError:
                raise
            except (ValueError, TypeError, KeyError) as exc:
                raise CommandError("bad_request", _short(exc)) from None
            except Exception as exc:
                log.exception("command %s (request %s) failed", shown, request_id)
                raise CommandError("internal", f"command failed: {type(exc).__name__}") from None
            if not isinstance(result, dict):
                log.error("command %s returned %s, not a dict", shown, type(result).__name__)
                raise CommandError("internal", "handler returned no result object")
            reply = {
                "request_id": request_id,
                "command": shown,
                "ok": True,
                "result": result,
                "ts": iso_utc(time.time()),
            }
            try:
                json.dumps(reply, allow_nan=False)
            except (TypeError, ValueError) as exc:
                log.error("command %s returned a non-JSON result: %s", shown, exc)
                raise CommandError("internal", "handler result is not JSON-serialisable") from None
            self.counts["ok"] += 1
            return reply
        except CommandError as err:
            self.counts["error"] += 1
            return _error_reply(name, request_id, err.code, err.message)


def _error_reply(name: Any, request_id: Any, code: str, message: str) -> Dict[str, Any]:
    return {
        "request_id": request_id,
        "command": name[:64] if isinstance(name, str) else "?",
        "ok": False,
        "error": {"code": code, "message": message},
        "ts": iso_utc(time.time()),
    }


def _request_id(value: Any) -> Any:
    if value is None:
        raise CommandError("bad_request", "request_id is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CommandError(
            "bad_request", f"request_id must be a string or integer, got {_json_type(value)}"
        )
    if isinstance(value, str) and not (1 <= len(value) <= _MAX_ID_LEN):
        raise CommandError("bad_request", f"request_id must have 1..{_MAX_ID_LEN} characters")
    if isinstance(value, int) and abs(value) > 2**63:
        raise CommandError("bad_request", "request_id integer is out of range")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for t, n in names.items():
        if isinstance(value, t):
            return n
    return "number"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def require(request: Dict[str, Any], key: str, kind: type, default: Optional[Any] = None) -> Any:
    """``request[key]`` checked to be ``kind`` (bool is not an int); ValueError names the field."""
    if key not in request:
        if default is not None:
            return default
        raise ValueError(f"field {key!r} is required")
    value = request[key]
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"field {key!r} must be {kind.__name__}, got boolean")
    if not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be {kind.__name__}, got {_json_type(value)}")
    return value
