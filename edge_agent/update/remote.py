"""The remote update over MQTT: ``cmd/engine.*`` handlers in, progress and replies out.

The command server runs the handlers of :func:`command_handlers`; the updater publishes each
transition through :func:`mqtt_publisher` (retained ``engine/update`` and a further reply on the
request's route, docs/update.md).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Protocol

from edge_agent.mqtt.dispatch import CommandError, Handler
from edge_agent.update.errors import UpdateError
from edge_agent.update.updater import FAILED, ROLLED_BACK, TERMINAL, Publish, Updater


class UpdateChannel(Protocol):
    """What the update publishes through (``AgentMqtt``)."""

    def publish_engine_update(self, progress: Dict[str, Any]) -> None: ...

    def publish_reply(self, name: str, reply: Dict[str, Any], route: Any = None) -> None: ...

    def publish_state(self) -> None: ...


def command_handlers(updater: Updater, route_fn: Optional[Callable[[], Any]] = None
                     ) -> Dict[str, Handler]:
    """``cmd/engine.*`` handlers; an :class:`UpdateError` becomes the command server's
    :class:`CommandError` (so the reply carries its code). ``route_fn()`` (inside a handler)
    gives the request's reply route, which the later transitions' replies follow."""

    def route() -> Any:
        return route_fn() if route_fn is not None else None

    def wrap(fn: Callable[[Dict[str, Any]], Dict[str, Any]]):
        def handler(request: Dict[str, Any]) -> Dict[str, Any]:
            try:
                return fn(request)
            except UpdateError as exc:
                raise CommandError(exc.code, exc.message) from None
        return handler

    return {
        "engine.update": wrap(lambda r: updater.submit(r, route())),
        "engine.rollback": wrap(lambda r: updater.request_rollback(r, route())),
        "engine.cancel": wrap(updater.cancel),
        "engine.status": wrap(lambda _r: updater.status()),
        "engine.list": wrap(lambda _r: updater.list_versions()),
    }


def reply_doc(doc: Dict[str, Any]) -> Dict[str, Any]:
    """A transition as a command reply (the shape the command server's replies have)."""
    reply: Dict[str, Any] = {"request_id": doc.get("request_id"),
                             "command": f"engine.{doc.get('kind', 'update')}",
                             "ok": doc.get("state") not in (FAILED, ROLLED_BACK) or
                             doc.get("kind") == "rollback" and "error" not in doc,
                             "result": doc, "ts": doc.get("ts")}
    if "error" in doc:
        reply["error"] = doc["error"]
    return reply


def mqtt_publisher(mqtt: Optional[UpdateChannel]) -> Publish:
    """``publish`` for the updater: retained ``engine/update`` and a reply per transition
    (nothing without MQTT). Before the client connects, the latest progress is kept and
    published on connect."""

    def publish(doc: Dict[str, Any], route: Any = None) -> None:
        if mqtt is None:
            return
        mqtt.publish_engine_update(doc)
        mqtt.publish_reply(f"engine.{doc.get('kind', 'update')}", reply_doc(doc), route)
        if doc.get("state") in TERMINAL:  # the retained state names the engine that runs
            mqtt.publish_state()

    return publish
