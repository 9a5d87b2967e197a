"""Home Assistant MQTT discovery (``mqtt.ha_discovery: true``).

Entities, all bound to the device's ``status`` topic for availability (``online`` = available;
``offline`` and ``stopped`` = unavailable):

* ``sensor`` per camera and zone: persons in the zone from ``crowd`` events
  (state topic ``<base>/ha/crowd/<camera>/<zone>``, retained).
* ``binary_sensor`` per camera: ``ON`` while any weapon track is active on that camera
  (``weapon`` start/update -> ON, end of the last one -> OFF; ``<base>/ha/weapon/<camera>``).
* ``sensor`` per camera: the latest clip around an alert (state: its id; attributes: ``path``
  ``/clips/<id>.mp4`` on the agent's HTTP endpoint, status, seconds, bytes; from ``clip`` events;
  ``<base>/ha/clip/<camera>``). MQTT has no video entity: HA links to the clip, it does not hold it.

Configs go to ``<ha_prefix>/<component>/edge_agent_<device>/<object>/config`` (retained). Cameras
and zones passed at start are announced on every connect; ones first seen in an event are
announced with that event's state.

:class:`HaBridge` is pure (messages in, messages out); :class:`HaSink` feeds it the event objects
as the pipeline delivers them (an event sink) and publishes what it returns.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Dict, List, Set, Tuple

from edge_agent.mqtt.connection import Connection
from edge_agent.mqtt.topics import Topics, check_segment, ha_discovery_topic

log = logging.getLogger(__name__)

Message = Tuple[str, bytes, bool]  # topic, payload, retain


class HaBridge:
    """Builds discovery configs and entity states; pure (no MQTT calls)."""

    def __init__(
        self,
        topics: Topics,
        ha_prefix: str,
        device_id: str,
        version: str,
        cameras: Dict[str, List[str]],
    ):
        if not ha_prefix or any(c in ha_prefix for c in "#+"):
            raise ValueError(f"mqtt.ha_prefix {ha_prefix!r} is not a valid topic prefix")
        self.topics = topics
        self.prefix = ha_prefix.rstrip("/")
        self.device_id = device_id
        self.node = f"edge_agent_{device_id}".replace("-", "_").replace(".", "_")
        self.version = version
        self._zones: Set[Tuple[str, str]] = set()
        self._cameras: Set[str] = set()
        self._active_weapons: Dict[str, Set[Any]] = {}
        self._clip_cameras: Set[str] = set()
        self._announced_initial = False
        for cam, zones in cameras.items():
            self._cameras.add(check_segment(cam, "camera"))
            for z in zones:
                self._zones.add((cam, check_segment(z, "zone")))

    def _device(self) -> Dict[str, Any]:
        return {
            "identifiers": [f"edge-agent-{self.device_id}"],
            "name": f"edge-agent {self.device_id}",
            "manufacturer": "edge-agent",
            "model": "edge-agent",
            "sw_version": self.version,
        }

    def _availability(self) -> Dict[str, Any]:
        return {
            "availability": [{
                "topic": self.topics.status,
                "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
            }],
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    def _obj(self, *parts: str) -> str:
        return "_".join(p.replace("-", "_").replace(".", "_") for p in (self.node,) + parts)

    def _config(self, component: str, obj: str, name: str, state_topic: str,
                **fields: Any) -> Message:
        """The retained discovery config of one entity; ``fields`` are component-specific."""
        cfg = {
            "name": name,
            "unique_id": obj,
            "object_id": obj,
            "state_topic": state_topic,
            **fields,
            "device": self._device(),
            **self._availability(),
        }
        topic = ha_discovery_topic(self.prefix, component, self.node, obj)
        return topic, json.dumps(cfg).encode(), True

    def crowd_config(self, camera: str, zone: str) -> Message:
        return self._config(
            "sensor", self._obj(camera, zone, "crowd"), f"{camera} {zone} crowd",
            self.topics.ha_state("crowd", camera, zone),
            unit_of_measurement="persons", state_class="measurement", icon="mdi:account-group",
        )

    def weapon_config(self, camera: str) -> Message:
        return self._config(
            "binary_sensor", self._obj(camera, "weapon"), f"{camera} weapon",
            self.topics.ha_state("weapon", camera),
            payload_on="ON", payload_off="OFF", device_class="safety",
        )

    def clip_config(self, camera: str) -> Message:
        topic = self.topics.ha_state("clip", camera)
        return self._config(
            "sensor", self._obj(camera, "clip"), f"{camera} latest clip", topic,
            value_template="{{ value_json.id }}", json_attributes_topic=topic,
            icon="mdi:filmstrip",
        )

    def discovery_messages(self) -> List[Message]:
        """All configs (every connect); on the first call also the initial idle states."""
        msgs = [self.weapon_config(c) for c in sorted(self._cameras)]
        msgs += [self.clip_config(c) for c in sorted(self._clip_cameras)]
        msgs += [self.crowd_config(c, z) for c, z in sorted(self._zones)]
        if not self._announced_initial:
            self._announced_initial = True
            ha = self.topics.ha_state
            msgs += [(ha("weapon", c), b"OFF", True) for c in sorted(self._cameras)]
            msgs += [(ha("crowd", c, z), b"0", True) for c, z in sorted(self._zones)]
        return msgs

    def on_event(self, event: Dict[str, Any]) -> List[Message]:
        """Entity states (and configs of new entities) for one published event."""
        etype = event.get("type")
        out: List[Message] = []
        if etype == "crowd":
            camera = check_segment(event["camera"], "camera")
            zone = check_segment(event["zone"], "zone")
            count = event.get("count", 0)
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError(f"crowd count {count!r} is not an integer")
            if (camera, zone) not in self._zones:
                self._zones.add((camera, zone))
                out.append(self.crowd_config(camera, zone))
            out.append((self.topics.ha_state("crowd", camera, zone), str(count).encode(), True))
        elif etype == "weapon":
            camera = check_segment(event["camera"], "camera")
            if camera not in self._cameras:
                self._cameras.add(camera)
                out.append(self.weapon_config(camera))
            active = self._active_weapons.setdefault(camera, set())
            track = event.get("track_id")
            if event.get("phase") == "end":
                active.discard(track)
            else:
                active.add(track)
            out.append((self.topics.ha_state("weapon", camera), b"ON" if active else b"OFF", True))
        elif etype == "clip":
            out.extend(self._clip_state(event))
        return out

    def _clip_state(self, event: Dict[str, Any]) -> List[Message]:
        camera = check_segment(event["camera"], "camera")
        clip = event["clip"]
        out: List[Message] = []
        if camera not in self._clip_cameras:
            self._clip_cameras.add(camera)
            out.append(self.clip_config(camera))
        state = {"id": clip["id"], "status": clip["status"], "path": f"/clips/{clip['id']}.mp4",
                 "duration_s": clip["duration_s"], "bytes": clip["bytes"],
                 "alert_type": event.get("alert_type")}
        out.append((self.topics.ha_state("clip", camera), json.dumps(state).encode(), True))
        return out


class HaSink:
    """An event sink that keeps the Home Assistant entities up to date.

    While offline only the newest state of each entity is kept (they are retained, so older
    ones do not matter); it is published after the discovery configs on the next connect.
    """

    name = "home_assistant"

    def __init__(self, bridge: HaBridge, conn: Connection):
        self.bridge = bridge
        self.conn = conn
        self._lock = threading.Lock()  # the delivery's thread(s) and the publisher's
        self._pending: Dict[str, Message] = {}

    def write(self, event: Dict[str, Any]) -> None:
        with self._lock:
            try:
                msgs = self.bridge.on_event(event)
            except (ValueError, TypeError, KeyError) as exc:
                log.debug("mqtt: no Home Assistant state for an event: %s", exc)
                return
            if not self.conn.connected.is_set():
                self._pending.update((m[0], m) for m in msgs)
                return
            for topic, data, retain in msgs:
                self.conn.publish(topic, data, qos=1, retain=retain)

    def on_connected(self) -> None:
        """Every (re)connect: all discovery configs, then states that waited."""
        with self._lock:
            msgs = self.bridge.discovery_messages() + list(self._pending.values())
            self._pending.clear()
            for topic, data, retain in msgs:
                self.conn.publish(topic, data, qos=1, retain=retain)

    def close(self) -> None:
        """Nothing to flush: the states are retained on the broker."""
