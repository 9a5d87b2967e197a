"""End-to-end delivery (``mqtt.delivery: end_to_end``) against a real Mosquitto: the consumer's
ack deletes outbox rows, unacknowledged events go again after an ack timeout, bad acks are
refused and counted, ``prev_seq`` explains the seqs a full outbox dropped; the reference
consumer (``edge-agent listen --ack --store``) stores, de-duplicates and acknowledges."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from mqtt_helpers import Subscriber, event, make_cfg

from edge_agent.mqtt.acks import AckTracker
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.mqtt.consumer import AckConsumer, Chain, EventStore
from edge_agent.outbox.eventlog import Outbox

BASE = "edge-agent/dev1"



def _publisher(broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="acker")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _ack(c: mqtt.Client, payload, topic: str = f"{BASE}/ack") -> None:
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)


# --- bookkeeping without a broker ------------------------------------------------------------


def test_ack_tracker_takes_forward_acks_and_refuses_the_rest():
    counters = __import__("collections").defaultdict(int)
    t = AckTracker(0, counters)
    for s in range(1, 11):
        t.sent(s)
    assert t.offer(2, b"4\n") == 4  # whitespace around the digits is fine
    assert t.mark == 4
    assert t.offer(2, b"99") is None and counters["acks_refused_future"] == 1
    assert t.offer(1, b"3") is None and counters["acks_refused_backwards"] == 1
    for bad in (b"abc", b"-5", b"4.5", b"", b"\xff\xfe", b"1e3", b"0x10"):
        assert t.offer(len(bad), bad) is None
    assert counters["acks_refused_invalid"] == 7
    assert t.offer(10 << 20, b"7") is None  # a 10 MB message: its size alone refuses it
    assert counters["acks_refused_invalid"] == 8
    assert t.offer(1, b"4") is None  # the same ack again: nothing new, not an error
    assert t.offer(2, b"10") == 10 and t.mark == 10 and not t.outstanding
    assert counters["consumer_acks"] == 2


def test_ack_timeout_doubles_while_no_ack_comes_and_resets_on_progress():
    t = AckTracker(0, __import__("collections").defaultdict(int))
    assert not t.overdue(1.0, t.progress_at + 5)  # nothing outstanding
    t.sent(1)
    t0 = t.progress_at
    assert not t.overdue(1.0, t0 + 0.9) and t.overdue(1.0, t0 + 1.0)
    waits = []
    now = t0 + 1.0
    for _ in range(6):
        t.timed_out(now)
        wait = next(w for w in (1, 2, 4, 8, 16, 32) if t.overdue(1.0, now + w))
        waits.append(wait)
        now += wait
    assert waits == [2, 4, 8, 16, 16, 16]
    assert t.offer(1, b"1") == 1 and t.timeouts == 0


def test_chain_follows_prev_seq_across_dropped_seqs():
    c = Chain()
    assert c.stored(1, 0) and c.mark == 1
    assert not c.stored(3, 2)  # 2 is still held by the device: a hole
    assert c.mark == 1
    assert c.stored(2, 1) and c.mark == 3
    assert not c.stored(7, 6)  # 4..5 dropped by the device, 6 still held
    assert c.stored(6, 3) and c.mark == 7
    assert c.stored(9, 0) and c.mark == 9  # the device held nothing below 9
    # sent again after the device dropped 11: the lower prev_seq wins
    assert not c.stored(12, 11)
    assert c.stored(12, 9) and c.mark == 12
    # an agent in puback mode sends no prev_seq (and ignores acks): nothing is kept pending
    c2 = Chain()
    assert c2.stored(1, None) and c2.stored(3, None) and c2.mark == 3 and not c2.pending


def test_event_store_dedups_and_reads_back_its_file(tmp_path):
    path = tmp_path / "events.jsonl"
    st = EventStore(path)
    assert st.add("dev1", {"event_id": "a", "seq": 1, "prev_seq": 0}) == (True, True)
    assert st.add("dev1", {"event_id": "a", "seq": 1, "prev_seq": 0}) == (False, False)
    assert st.add("dev1", {"event_id": "c", "seq": 3, "prev_seq": 2}) == (True, False)
    st.close()
    with open(path, "ab") as f:
        f.write(b'{"event_id": "torn", "se')  # a crash in the middle of a line
    st = EventStore(path)
    assert st.ids == {"a", "c"} and st.chain("dev1").mark == 1
    assert st.add("dev1", {"event_id": "b", "seq": 2, "prev_seq": 1}) == (True, True)
    assert st.chain("dev1").mark == 3
    with pytest.raises(ValueError):
        st.add("dev1", {"event_id": "x", "seq": "7"})
    st.close()


def test_the_consumer_retries_a_refusal_that_can_pass_and_stops_on_one_that_cannot(tmp_path):
    """A broker that is still starting may answer "Server unavailable": the consumer goes on
    (paho reconnects) and stores what comes next. A wrong
    password does not pass by retrying: run() ends with 1. (The queue is what paho's callbacks
    fill; no broker is needed to check the decision.)"""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer("127.0.0.1", 1, store, client_id="c-refused")
    payload = json.dumps({"event_id": "e-1", "seq": 1, "prev_seq": 0}).encode()
    consumer.q.put(("connect", ReasonCode(PacketTypes.CONNACK, identifier=136)))
    consumer.q.put(("message", ("edge-agent/dev1/events/weapon", payload)))
    assert consumer.run(until=lambda: "e-1" in store.ids) == 0
    assert store.chain("dev1").mark == 1
    consumer.q.put(("connect", ReasonCode(PacketTypes.CONNACK, identifier=134)))
    assert consumer.run() == 1
    store.close()


def test_outbox_ack_through_persists_the_acked_seq(tmp_path):
    with Outbox(tmp_path / "o.sqlite", commit_interval_ms=0) as ob:
        for i in range(10):
            ob.append(event(i))
        assert ob.ack_through(6) == 6 and len(ob) == 4 and ob.acked_seq == 6
        assert ob.oldest()[0] == 7
    with Outbox(tmp_path / "o.sqlite", commit_interval_ms=0) as ob:
        assert ob.acked_seq == 6 and [r.seq for r in ob.peek(0, 100)] == [7, 8, 9, 10]


# --- with the broker -------------------------------------------------------------------------


def _agent(broker, ob, **kw) -> AgentMqtt:
    m = AgentMqtt(make_cfg(broker, delivery="end_to_end", **kw), "dev1", ob)
    m.start()
    assert m.wait_connected(10)
    return m


def test_rows_stay_until_the_consumer_acks_and_bad_acks_are_refused(broker, tmp_path):
    sub = Subscriber(broker, [f"{BASE}/events/+"]).ready()
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = _agent(broker, ob)
    for i in range(10):
        ob.append(event(i))
    assert sub.wait_for(lambda: len(sub.events()) == 10)
    assert wait_for(lambda: m.counters["acked"] == 10, 20)
    assert len(ob) == 10, "end_to_end: a PUBACK deletes nothing"
    got = sub.events()
    assert [e["seq"] for e in got] == list(range(1, 11))
    assert [e["prev_seq"] for e in got] == list(range(0, 10))

    acker = _publisher(broker)
    _ack(acker, b"4")
    assert wait_for(lambda: len(ob) == 6, 20) and ob.acked_seq == 4
    bad = [b"999", b"not a number", b"-1", b"7.0", b"x" * (10 << 20)]
    for payload in bad:
        _ack(acker, payload)
    _ack(acker, b"2")  # backwards
    _ack(acker, b"10", topic="edge-agent/dev2/ack")  # another device's ack
    c = m.counters
    assert wait_for(lambda: c["acks_refused_future"] + c["acks_refused_invalid"]
                 + c["acks_refused_backwards"] == 6, 20)
    assert (c["acks_refused_future"], c["acks_refused_invalid"],
            c["acks_refused_backwards"]) == (1, 4, 1)
    assert len(ob) == 6 and ob.acked_seq == 4, "no bad ack (nor dev2's) deleted a row"
    # still delivering
    for i in range(10, 15):
        ob.append(event(i))
    assert sub.wait_for(lambda: len(sub.events()) == 15)
    st = m.stats()["mqtt"]
    assert st["delivery"] == "end_to_end" and st["consumer_acked_seq"] == 4
    assert st["consumer_lag_events"] == 11 and st["consumer_lag_s"] >= 0
    assert m.metrics.state()["delivery"]["consumer_lag_events"] == 11
    _ack(acker, b"15")
    assert wait_for(lambda: len(ob) == 0, 20)
    assert c["consumer_acks"] == 2
    m.stop()
    ob.close()
    acker.disconnect()
    sub.close()


def test_unacknowledged_events_go_again_after_the_ack_timeout(broker, tmp_path):
    sub = Subscriber(broker, [f"{BASE}/events/+"]).ready()
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = _agent(broker, ob, ack_timeout_s=1.0)
    for i in range(5):
        ob.append(event(i))
    assert sub.wait_for(lambda: len(sub.events()) >= 10, 20), "not published again"
    assert m.counters["ack_timeouts"] >= 1 and m.counters["republished"] >= 5
    again = sub.events()[5:10]
    assert [e["event_id"] for e in again] == [f"r-{i}" for i in range(5)]
    assert [e["seq"] for e in again] == [1, 2, 3, 4, 5], "same seq when sent again"
    acker = _publisher(broker)
    _ack(acker, b"5")
    assert wait_for(lambda: len(ob) == 0, 20)
    n = len(sub.events())
    time.sleep(2.5)  # well past the timeout: nothing outstanding, nothing sent again
    assert len(sub.events()) == n
    m.stop()
    ob.close()
    acker.disconnect()
    sub.close()


def test_prev_seq_skips_what_a_full_outbox_dropped(broker, tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite", max_rows=5, commit_interval_ms=5)
    for i in range(8):  # 8 events into 5 rows before any consumer: seq 1..3 dropped
        ob.append(event(i))
    store = EventStore(tmp_path / "store.jsonl")
    consumer = AckConsumer(broker.host, broker.port, store, client_id="c-drop").start()
    assert consumer.subscribed.wait(10)
    m = _agent(broker, ob)
    assert wait_for(lambda: len(ob) == 0, 20), "the consumer acks past the dropped seqs"
    assert store.chain("dev1").mark == 8
    consumer.stop()
    m.stop()
    ob.close()
    lines = [json.loads(x) for x in (tmp_path / "store.jsonl").read_text().splitlines()]
    assert [(e["seq"], e["prev_seq"]) for e in lines] == [(4, 0), (5, 4), (6, 5), (7, 6),
                                                          (8, 7)]


@pytest.mark.slow
def test_listen_ack_stores_dedups_and_acknowledges(broker, tmp_path):
    store = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "edge_agent.cli", "listen", "--host", broker.host, "--port",
           str(broker.port), "--ack", "--store", str(store), "--json", "--client-id", "ref"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    ob = Outbox(tmp_path / "outbox.sqlite", commit_interval_ms=5)
    m = _agent(broker, ob, ack_timeout_s=1.5)
    time.sleep(1.0)  # the listener's SUBSCRIBE
    for i in range(30):
        ob.append(event(i))
    assert wait_for(lambda: len(ob) == 0, 30), f"outbox still holds {len(ob)}"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in store.read_text().splitlines()]
    assert sorted(e["seq"] for e in lines) == list(range(1, 31))
    assert "dev1 acked 30" in err

    # Restarted on the same file with the same session: an event sent again (as after an
    # agent crash) is a duplicate; a new one is stored and acknowledged.
    again = _publisher(broker)
    again.publish(f"{BASE}/events/crowd", json.dumps(lines[3]), qos=1).wait_for_publish(10)
    ob.append(event(30))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert wait_for(lambda: len(ob) == 0, 30)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    lines = [json.loads(x) for x in store.read_text().splitlines()]
    assert sorted(e["seq"] for e in lines) == list(range(1, 32)), "each event stored once"
    # at least the one sent again (the agent's ack timeout may have re-sent event 31 too)
    assert int(re.search(r"(\d+) duplicates", err).group(1)) >= 1, err
    assert "dev1 acked 31" in err
    m.stop()
    ob.close()
    again.disconnect()


def test_listen_ack_needs_a_store(capsys):
    from edge_agent.cli import main

    assert main(["listen", "--ack"]) == 2
    assert "--store" in capsys.readouterr().err
