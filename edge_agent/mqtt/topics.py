"""The MQTT topic tree of one device (docs/mqtt.md); the only place topic strings are built.

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
ack                   the consumer's end-to-end acknowledgement: the
                      highest contiguous seq it stored (retained)
====================  =========================================

Topics built from outside input (a command name, a requester's MQTT 5 Response Topic) are checked
against MQTT's limits (:func:`topic_problem`) before use: a broker drops the connection of a
client that publishes to an invalid topic, and paho raises on one. Where a reply may go is
:meth:`Topics.route_reply` (the rule is in docs/mqtt.md, "Where replies go").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_TOPIC_BYTES = 65535  # MQTT: a topic is a UTF-8 string with a 16-bit length
# Characters MQTT forbids in topic names (U+0000) or says should not be there (controls,
# non-characters); surrogates cannot be encoded as UTF-8 at all.
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def topic_problem(topic: object) -> Optional[str]:
    """Why ``topic`` cannot be published to (a short predicate: "is ...", "contains ..."), or
    None when it can."""
    if not isinstance(topic, str) or not topic:
        return "is empty or not a string"
    if len(topic) > MAX_TOPIC_BYTES or len(topic.encode("utf-8", "surrogatepass")) > (
        MAX_TOPIC_BYTES
    ):
        return f"is longer than MQTT's {MAX_TOPIC_BYTES} bytes"
    if "+" in topic or "#" in topic:
        return "contains a wildcard ('+' or '#')"
    bad = _BAD_CHAR.search(topic)
    if bad:
        return f"contains the character U+{ord(bad.group()):04X}"
    if topic.startswith("$"):
        return "is a '$' (broker) topic"
    return None


def under(topic: str, namespace: str) -> bool:
    """True when ``topic`` is ``namespace`` itself or below it (level-wise, not by text)."""
    return topic == namespace or topic.startswith(namespace + "/")


@dataclass(frozen=True)
class ReplyRoute:
    """Where one command reply goes: ``topic`` (None: nowhere usable) and, when the request is
    refused because of its topics, ``refusal`` (the reply is then an error naming it)."""

    topic: Optional[str]
    refusal: Optional[str] = None


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
    ha_prefix: Optional[str] = None  # Home Assistant's namespace: never a reply topic

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
    def ack(self) -> str:
        """Where the consumer acknowledges stored events (``mqtt.delivery: end_to_end``)."""
        return f"{self.base}/ack"

    @property
    def cmd_filter(self) -> str:
        """Subscription for requests; single level, so replies (cmd/x/reply) are not matched."""
        return f"{self.base}/cmd/+"

    def command(self, name: str) -> str:
        """Where a requester sends ``cmd/<name>`` to this device."""
        return f"{self.base}/cmd/{check_segment(name, 'command')}"

    @property
    def events_tree(self) -> str:
        """Every event topic of this device, as an ACL or a subscription names them."""
        return f"{self.base}/events/#"

    def event(self, event_type: str) -> str:
        return f"{self.base}/events/{check_segment(event_type, 'event type')}"

    def snapshot(self, event_id: str) -> str:
        return f"{self.base}/snapshots/{check_segment(event_id, 'event_id')}"

    def reply(self, name: str) -> str:
        """Default reply topic of a request whose command level was ``name`` (from
        :meth:`command_name`; an unknown name is answered there too). It may be too long to
        use: :meth:`route_reply` checks."""
        return f"{self.base}/cmd/{name}/reply"

    def response_topic_problem(self, name: str, topic: object) -> Optional[str]:
        """Why a requester's Response Topic ``topic`` for command ``name`` is refused, or None.

        Allowed: a publishable topic (:func:`topic_problem`) that is either this request's own
        reply namespace (``<base>/cmd/<name>/reply`` or below it) or outside both our
        ``<prefix>/`` tree and Home Assistant's: anything else could be taken for what a device
        publishes (events, status, state ...) or obeys (``cmd/...``, discovery configs)."""
        why = topic_problem(topic)
        if why:
            return why
        assert isinstance(topic, str)
        if under(topic, self.reply(name)):
            return None
        if under(topic, self.prefix):
            return (f"is inside the devices' topic tree {self.prefix}/ (allowed there: this "
                    "request's own .../cmd/<name>/reply and below)")
        if self.ha_prefix and under(topic, self.ha_prefix):
            return f"is inside Home Assistant's topic tree {self.ha_prefix}/"
        return None

    def route_reply(self, name: str, response_topic: object = None) -> ReplyRoute:
        """Where the reply to ``cmd/<name>`` goes, given the request's Response Topic (None
        when it had none, e.g. MQTT 3.1.1). A refused Response Topic is answered with an error
        on the default reply topic; a default reply topic over MQTT's limit is not usable."""
        default: Optional[str] = self.reply(name)
        if topic_problem(default):
            default = None
        if response_topic is None:
            if default is None:
                return ReplyRoute(None, "the command name is too long for a reply topic")
            return ReplyRoute(default)
        why = self.response_topic_problem(name, response_topic)
        if why is None:
            return ReplyRoute(str(response_topic))
        return ReplyRoute(default, f"response topic refused: it {why}")

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


def ack_topic(prefix: str, device: str) -> str:
    """The ack topic of ``device`` (what a consumer publishes to)."""
    return f"{_device_level(prefix, device)}/ack"


def status_filter(prefix: str, device: str = "+") -> str:
    """Subscription for the status of one device (or all with ``+``)."""
    return f"{_device_level(prefix, device)}/status"


def split_device_topic(prefix: str, topic: str) -> Tuple[str, str]:
    """``(device, rest)`` of a received ``<prefix>/<device>/<rest>``; a topic outside
    ``prefix`` is read from its first level."""
    rest = topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else topic
    device, _, tail = rest.partition("/")
    return device, tail


def ha_discovery_topic(ha_prefix: str, component: str, node: str, obj: str) -> str:
    """Home Assistant's discovery config topic of one entity (its own tree, not ours)."""
    return f"{ha_prefix}/{component}/{node}/{obj}/config"


def _device_level(prefix: str, device: str) -> str:
    if device != "+":
        check_segment(device, "device")
    return f"{prefix}/{device}"
