"""``edge-agent listen``: subscribe to a broker and print events live, showing gaps in ``seq``.

Table mode prints one line per event plus ``!!`` lines for sequence gaps (events the device
assigned a seq to but this listener never received: dropped by a full outbox, or lost) and
``--`` lines for status changes. ``--json`` prints each event's JSON exactly as received, and
gaps / status changes as ``{"gap": {...}}`` / ``{"status": {...}}`` lines.

A seq lower than the last one is shown as ``dup`` (at-least-once delivery re-sends after a
reconnect or restart) or ``late`` when it fills a gap reported earlier.

``--ack --store FILE`` makes it the reference end-to-end consumer (:mod:`edge_agent.mqtt.consumer`):
events go to FILE (fsynced, de-duplicated by ``event_id``) and each device's contiguous seq is
acknowledged on its ``ack`` topic; a persistent session keeps events queued while it is away.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Set, TextIO

from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail
from edge_agent.config.secrets import mqtt_password
from edge_agent.mqtt.consumer import AckConsumer, EventStore
from edge_agent.mqtt.paho_client import ClientTls, new_client
from edge_agent.mqtt.topics import event_filter, split_device_topic, status_filter

_COLUMNS = [("TIME", 12), ("DEVICE", 12), ("SEQ", 7), ("TYPE", 7), ("PHASE", 6),
            ("CAMERA", 10), ("TRACK", 6), ("LABEL", 10), ("SCORE", 5), ("DETAIL", 22),
            ("EVENT_ID", 0)]


@dataclass
class SeqTracker:
    """Per-device sequence bookkeeping: gaps, late arrivals and duplicates."""

    last: Dict[str, int] = field(default_factory=dict)
    missing: Dict[str, Set[int]] = field(default_factory=dict)
    gaps: int = 0
    missing_total: int = 0

    def see(self, device: str, seq: int) -> Dict[str, Any]:
        """Returns {"mark": ""|"dup"|"late", "gap": None | (first, last)}."""
        last = self.last.get(device)
        miss = self.missing.setdefault(device, set())
        if last is None:
            self.last[device] = seq
            return {"mark": "", "gap": None}
        if seq == last + 1:
            self.last[device] = seq
            return {"mark": "", "gap": None}
        if seq > last + 1:
            self.last[device] = seq
            self.gaps += 1
            self.missing_total += seq - last - 1
            if seq - last - 1 <= 100_000:  # remember for "late"; a huge jump is not itemised
                miss.update(range(last + 1, seq))
            return {"mark": "", "gap": (last + 1, seq - 1)}
        if seq in miss:
            miss.discard(seq)
            self.missing_total -= 1
            return {"mark": "late", "gap": None}
        return {"mark": "dup", "gap": None}


def _clock(event: Dict[str, Any]) -> str:
    ts = event.get("ts")
    if isinstance(ts, dict):
        ts = ts.get("iso") or ts.get("utc")
    if isinstance(ts, str) and "T" in ts:
        return ts.split("T", 1)[1].rstrip("Z")[:12]
    return time.strftime("%H:%M:%S", time.gmtime())


def _detail(event: Dict[str, Any]) -> str:
    etype = event.get("type")
    if etype == "crowd":
        return f"zone={event.get('zone')} count={event.get('count')}"
    if etype == "plate":
        text = event.get("text")
        return f"text={text}" if text else ""
    if etype == "weapon":
        person = event.get("person_track_id", event.get("nearest_person_track_id"))
        return f"person={person}" if person is not None else ""
    return ""


def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = str(value)
    if width and len(text) > width:
        text = text[: width - 1] + "~"
    return text.ljust(width) if width else text


def format_header() -> str:
    return " ".join(_cell(name, w) for name, w in _COLUMNS).rstrip()


def format_event(device: str, event: Dict[str, Any], mark: str) -> str:
    seq = event.get("seq")
    values = [_clock(event), device, f"{seq}{'*' if mark else ''}", event.get("type"),
              event.get("phase"), event.get("camera"), event.get("track_id"), event.get("label"),
              event.get("score"), _detail(event),
              f"{event.get('event_id')}{' (' + mark + ')' if mark else ''}"]
    return " ".join(_cell(v, w) for v, (_, w) in zip(values, _COLUMNS)).rstrip()


class Printer:
    """Turns received messages into output lines (table or JSON)."""

    def __init__(self, out: TextIO, as_json: bool, flush_each: bool = True):
        self.out = out
        self.as_json = as_json
        self.flush_each = flush_each  # False: the caller flushes (after each batch)
        self.quiet = False  # gaps and status only, no line per event
        self.seqs = SeqTracker()
        self.events = 0
        self._header_done = False

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        if self.flush_each:
            self.out.flush()

    def status(self, device: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        if self.as_json:
            self._line(json.dumps({"status": {"device": device, "status": text}}))
        else:
            self._line(f"-- {device} is {text}")

    def event(self, device: str, payload: bytes) -> None:
        try:
            event = json.loads(payload)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            print(f"edge-agent listen: {device}: a message that is not an event ({exc})",
                  file=sys.stderr)
            return
        self.show(device, event, payload)

    def show(self, device: str, event: Dict[str, Any], payload: bytes) -> None:
        """One parsed event (``payload``: its JSON as received, for ``--json``)."""
        self.events += 1
        seq = event.get("seq")
        seen = self.seqs.see(device, seq) if isinstance(seq, int) and not isinstance(
            seq, bool) else {"mark": "", "gap": None}
        if seen["gap"] is not None:
            first, last = seen["gap"]
            n = last - first + 1
            if self.as_json:
                self._line(json.dumps({"gap": {"device": device, "first": first, "last": last,
                                               "missing": n}}))
            else:
                self._line(f"!! {device}: seq {first}..{last} missing ({n} event"
                           f"{'s' if n != 1 else ''})")
        if self.quiet:
            return
        if self.as_json:
            self._line(payload.decode("utf-8", "replace"))
            return
        if not self._header_done:
            self._header_done = True
            self._line(format_header())
        self._line(format_event(device, event, seen["mark"]))


def _ack_main(args: argparse.Namespace, prefix: str) -> int:
    """``listen --ack --store FILE``: store, then acknowledge (module docstring)."""
    if not args.store:
        return fail("listen", "--ack needs --store FILE (events are acknowledged only once "
                    "stored there)", EXIT_BAD_INPUT)
    if args.ca_file and not os.path.isfile(args.ca_file):
        return fail("listen", f"--ca-file: no such file: {args.ca_file}", EXIT_BAD_INPUT)
    try:
        store = EventStore(args.store)
    except OSError as exc:
        return fail("listen", f"--store: {exc}", EXIT_BAD_INPUT)
    printer = Printer(sys.stdout, args.json, flush_each=False)
    printer.quiet = args.quiet

    def shown(device: str, event: Dict[str, Any], new: bool, payload: bytes) -> None:
        printer.show(device, event, payload)

    def note(text: str) -> None:
        print(f"edge-agent listen: {text}", file=sys.stderr)

    password = args.password if args.password is not None else mqtt_password()
    try:
        consumer = AckConsumer(args.host, args.port, store, prefix=prefix, device=args.device,
                               client_id=args.client_id, protocol=args.protocol,
                               on_event=shown, on_note=note, on_batch=printer.out.flush,
                               username=args.username, password=password,
                               ca_file=args.ca_file)
        consumer.connect()
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"edge-agent listen: cannot connect to {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        store.close()
        return EXIT_FAILED
    stop: List[int] = []
    if threading.current_thread() is threading.main_thread():  # signals reach only that one
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    try:
        rc = consumer.run(until=lambda: bool(stop) or (
            bool(args.count) and printer.events >= args.count) or (
            deadline is not None and time.monotonic() >= deadline))
    finally:
        consumer.stop()
    s = printer.seqs
    marks = ", ".join(f"{d} acked {c.mark}" for d, c in sorted(store.chains.items()))
    print(f"edge-agent listen: {printer.events} events ({store.stored_total} stored, "
          f"{store.duplicates} duplicates), {s.gaps} gaps, {s.missing_total} missing; "
          f"{marks or 'nothing acked'}", file=sys.stderr)
    return rc


def main(args: argparse.Namespace) -> int:
    """Handler of ``edge-agent listen``."""
    out = sys.stdout
    prefix = args.prefix.strip("/")
    if getattr(args, "ack", False):
        return _ack_main(args, prefix)
    try:
        events_topic = event_filter(prefix, args.device)
        status_topic = status_filter(prefix, args.device)
    except ValueError as exc:
        return fail("listen", f"--device: {exc}", EXIT_BAD_INPUT)
    password = args.password if args.password is not None else mqtt_password()

    q: queue.Queue = queue.Queue()
    if args.ca_file and not os.path.isfile(args.ca_file):
        return fail("listen", f"--ca-file: no such file: {args.ca_file}", EXIT_BAD_INPUT)
    try:
        client = new_client(username=args.username, password=password,
                            tls=ClientTls(args.ca_file) if args.ca_file else None)
    except (ssl.SSLError, OSError) as exc:
        return fail("listen", f"--ca-file: cannot load {args.ca_file}: {exc}", EXIT_BAD_INPUT)

    def on_connect(c, userdata, flags, reason_code, properties):
        q.put(("connect", reason_code))
        if not reason_code.is_failure:
            c.subscribe([(events_topic, 1), (status_topic, 1)])

    client.on_connect = on_connect
    client.on_disconnect = lambda c, u, f, rc, p: q.put(("disconnect", rc))
    client.on_message = lambda c, u, msg: q.put(("message", msg.topic, bytes(msg.payload)))
    try:
        client.connect(args.host, args.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        return fail("listen", f"cannot connect to {args.host}:{args.port}: {exc}", EXIT_FAILED)
    client.loop_start()
    printer = Printer(out, args.json)
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    rc = EXIT_OK
    try:
        while True:
            if args.count and printer.events >= args.count:
                break
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                item = q.get(timeout=wait)
            except queue.Empty:
                continue
            kind = item[0]
            if kind == "connect":
                if item[1].is_failure:
                    print(f"edge-agent listen: {args.host}:{args.port} refused the connection: "
                          f"{item[1]}", file=sys.stderr)
                    rc = EXIT_FAILED
                    break
                print(f"edge-agent listen: connected to {args.host}:{args.port}, listening on "
                      f"{events_topic}", file=sys.stderr)
            elif kind == "disconnect":
                print(f"edge-agent listen: disconnected ({item[1]}); reconnecting",
                      file=sys.stderr)
            else:
                _, topic, payload = item
                device, rest = split_device_topic(prefix, topic)
                if rest == "status":
                    printer.status(device, payload)
                else:
                    printer.event(device, payload)
    finally:
        client.disconnect()
        client.loop_stop()
    s = printer.seqs
    print(f"edge-agent listen: {printer.events} events, {s.gaps} gaps, "
          f"{s.missing_total} missing", file=sys.stderr)
    return rc
