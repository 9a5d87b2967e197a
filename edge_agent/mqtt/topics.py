"""The MQTT topic tree of one device (DESIGN section 7); the only place topic strings are built.

``<prefix>/<device_id>/`` followed by:

====================  =========================================
status                online / offline (Last Will) / stopped
state                 retained JSON
events/<type>         event JSON
snapshots/<event_id>  JPEG bytes
stats                 periodic metrics JSON
cmd/<name>            command request; reply on cmd/<name>/reply
engine/update         update progress (retained)
ha/...                Home Assistant entity states (discovery on)
====================  =========================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it is safe as one topic level (no '/', '+', '#'), else ValueError."""
    if not isinstance(value, str) or not SEGMENT_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not usable in a topic (allowed: {SEGMENT_RE.pattern})"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """Topic names for ``device_id`` under ``prefix``."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "#+") or self.prefix.strip("/") != (
            self.prefix
        ):
            raise ValueError(f"topic prefix {self.prefix!r} must not contain '#'/'+' or edge '/'")
        check_segment(self.device_id, "device_id")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def engine_update(self) -> str:
        return f"{self.base}/engine/update"

    @property
    def cmd_filter(self) -> str:
        """Subscription for requests; single level, so replies (cmd/x/reply) are not matched."""
        return f"{self.base}/cmd/+"

    def event(self, event_type: str) -> str:
        return f"{self.base}/events/{check_segment(event_type, 'event type')}"

    def snapshot(self, event_id: str) -> str:
        return f"{self.base}/snapshots/{check_segment(event_id, 'event_id')}"

    def reply(self, name: str) -> str:
        """Reply topic of a request whose command level was ``name`` (from
        :meth:`command_name`: one level the broker accepted, so not re-checked; an unknown
        name is answered there too)."""
        return f"{self.base}/cmd/{name}/reply"

    def ha_state(self, *parts: str) -> str:
        return "/".join([self.base, "ha"] + [check_segment(p, "entity name") for p in parts])

    def command_name(self, topic: str) -> Optional[str]:
        """The command level of a request topic of this device (any text), else None."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        return name if name and "/" not in name else None


def event_filter(prefix: str, device: str = "+") -> str:
    """Subscription for the events of one device (or all with ``+``)."""
    return f"{_device_level(prefix, device)}/events/+"


def status_filter(prefix: str, device: str = "+") -> str:
    """Subscription for the status of one device (or all with ``+``)."""
    return f"{_device_level(prefix, device)}/status"


def _device_level(prefix: str, device: str) -> str:
    if device != "+":
        check_segment(device, "device")
    return f"{prefix}/{device}"
