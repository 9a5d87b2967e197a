"""Home Assistant MQTT discovery (``mqtt.ha_discovery: true``).

Entities, all bound to the device's ``status`` topic for availability (``online`` = available;
``offline`` and ``stopped`` = unavailable):

* ``sensor`` per camera and zone: persons in the zone from ``crowd`` events
  (state topic ``<base>/ha/crowd/<camera>/<zone>``, retained).
* ``binary_sensor`` per camera: ``ON`` while any weapon track is active on that camera
  (``weapon`` start/update -> ON, end of the last one -> OFF; ``<base>/ha/weapon/<camera>``).

Configs go to ``<ha_prefix>/<component>/edge_agent_<device>/<object>/config`` (retained). Cameras
and zones passed at start are announced on every connect; ones first seen in an event are
announced when that event is published.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Set, Tuple

from edge_agent.mqtt.topics import Topics, check_segment

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
        topic = f"{self.prefix}/{component}/{self.node}/{obj}/config"
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

    def discovery_messages(self) -> List[Message]:
        """All configs (every connect); on the first call also the initial idle states."""
        msgs = [self.weapon_config(c) for c in sorted(self._cameras)]
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
        return out
