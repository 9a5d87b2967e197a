"""Topics built from outside input: MQTT's limits and where a command reply may go."""

from __future__ import annotations

import pytest

from edge_agent.mqtt.topics import MAX_TOPIC_BYTES, Topics, topic_problem

T = Topics("edge-agent", "dev1", ha_prefix="homeassistant")


@pytest.mark.parametrize("topic, fragment", [
    ("", "is empty"),
    (None, "is empty or not a string"),
    (b"bytes/topic", "not a string"),
    ("a/+/b", "wildcard"),
    ("a/#", "wildcard"),
    ("#", "wildcard"),
    ("a\x00b", "U+0000"),
    ("a\nb", "U+000A"),
    ("a\x7fb", "U+007F"),
    ("a\x85b", "U+0085"),
    ("a\ud800b", "U+D800"),
    ("a\uffffb", "U+FFFF"),
    ("$SYS/broker/load", "'$'"),
    ("$share/g/x", "'$'"),
    ("x" * (MAX_TOPIC_BYTES + 1), "longer than"),
    ("é" * (MAX_TOPIC_BYTES // 2 + 1), "longer than"),  # 2 bytes each in UTF-8
    ("😀" * (MAX_TOPIC_BYTES // 4 + 1), "longer than"),
])
def test_unpublishable_topics_are_named(topic, fragment):
    why = topic_problem(topic)
    assert why and fragment in why, why


@pytest.mark.parametrize("topic", [
    "a", "/", "a//b", "x" * MAX_TOPIC_BYTES, "é" * (MAX_TOPIC_BYTES // 2), "app/ui-7/réponse",
    "a/$b", "😀/x",
])
def test_publishable_topics_pass(topic):
    assert topic_problem(topic) is None


# --- the reply rule ----------------------------------------------------------------------------

ALLOWED = [
    "edge-agent/dev1/cmd/ping/reply",  # the default
    "edge-agent/dev1/cmd/ping/reply/ui-7",  # the requester's own topic in our reply namespace
    "edge-agent/dev1/cmd/ping/reply/a/b/c",
    "app/ui-7/replies",  # outside every device's and Home Assistant's tree
    "edge-agentx/dev1/events/weapon",  # another prefix that merely starts with ours
    "homeassistantx/a",
    "clients/42",
]

REFUSED = [
    ("edge-agent/dev1/events/weapon", "devices' topic tree"),  # own events
    ("edge-agent/dev1/events/crowd", "devices' topic tree"),
    ("edge-agent/dev1/status", "devices' topic tree"),  # availability
    ("edge-agent/dev1/state", "devices' topic tree"),
    ("edge-agent/dev1/stats", "devices' topic tree"),
    ("edge-agent/dev1/snapshots/x", "devices' topic tree"),
    ("edge-agent/dev1/engine/update", "devices' topic tree"),
    ("edge-agent/dev1/ha/weapon/cam1", "devices' topic tree"),
    ("edge-agent/dev1/cmd/ping", "devices' topic tree"),  # answering itself
    ("edge-agent/dev1/cmd/config.get", "devices' topic tree"),
    ("edge-agent/dev1/cmd/state/reply", "devices' topic tree"),  # another command's replies
    ("edge-agent/dev1/cmd/pingx/reply", "devices' topic tree"),
    ("edge-agent/dev1/cmd/ping/replyx", "devices' topic tree"),
    ("edge-agent/dev2/cmd/config.get", "devices' topic tree"),  # relaying to another device
    ("edge-agent/dev2/cmd/ping/reply", "devices' topic tree"),
    ("edge-agent/dev2/events/weapon", "devices' topic tree"),
    ("edge-agent", "devices' topic tree"),
    ("edge-agent/", "devices' topic tree"),
    ("homeassistant/binary_sensor/x/config", "Home Assistant"),  # discovery configs
    ("homeassistant/status", "Home Assistant"),
    ("edge-agent/dev1/cmd/ping/reply/#", "wildcard"),
    ("fuzz/+/x", "wildcard"),
    ("$SYS/x", "'$'"),
    ("", "empty"),
    ("a\x00b", "U+0000"),
    ("r/" + "x" * MAX_TOPIC_BYTES, "longer than"),
]


@pytest.mark.parametrize("topic", ALLOWED)
def test_allowed_response_topics_get_the_reply(topic):
    route = T.route_reply("ping", topic)
    assert route.topic == topic and route.refusal is None


@pytest.mark.parametrize("topic, fragment", REFUSED)
def test_refused_response_topics_get_an_error_on_the_default_topic(topic, fragment):
    route = T.route_reply("ping", topic)
    assert route.topic == "edge-agent/dev1/cmd/ping/reply"
    assert route.refusal.startswith("response topic refused: it ") and fragment in route.refusal


def test_no_response_topic_means_the_default_reply_topic():
    assert T.route_reply("config.get") == T.route_reply("config.get", None)
    assert T.route_reply("config.get").topic == "edge-agent/dev1/cmd/config.get/reply"


def test_multi_level_prefix_guards_the_whole_tree():
    t = Topics("site/a", "cam-3")
    assert t.route_reply("ping", "site/a/cam-9/cmd/ping").refusal
    assert t.route_reply("ping", "site/a").refusal
    assert t.route_reply("ping", "site/b/x").refusal is None  # another site is not ours
    assert t.route_reply("ping", "homeassistant/x").refusal is None  # no HA prefix given


@pytest.mark.parametrize("name", ["n" * MAX_TOPIC_BYTES, "n" * (MAX_TOPIC_BYTES - 20),
                                  "é" * 33000, "😀" * 17000])
def test_command_name_too_long_for_the_default_reply_topic(name):
    route = T.route_reply(name)
    assert route.topic is None and "too long" in route.refusal
    # a usable response topic still gets the (error) reply
    assert T.route_reply(name, "app/ui/1").topic == "app/ui/1"
    refused = T.route_reply(name, "edge-agent/dev1/status")
    assert refused.topic is None and refused.refusal


def test_longest_name_that_fits_is_still_answered():
    room = MAX_TOPIC_BYTES - len("edge-agent/dev1/cmd//reply")
    assert T.route_reply("n" * room).topic is not None
    assert T.route_reply("n" * (room + 1)).topic is None
