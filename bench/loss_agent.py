"""The agent side of the loss scenario (bench/loss_bench.py), as its own process so that it can
be SIGKILLed: the real Outbox + AgentMqtt, appending events ``<run>-<i>`` for i in
``[--start, --count)`` every ``--interval`` s.

Prints ``CONNECTED`` once connected, ``<seq> <event_id>`` after each append returned (the event
is then in the outbox), ``APPENDED`` at the end, and on SIGTERM flushes, prints ``STOPPED``
and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from edge_agent.config import MqttConfig
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.outbox.eventlog import Outbox


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", required=True, help="host:port[,host:port...]")
    p.add_argument("--outbox", required=True)
    p.add_argument("--device", default="dev1")
    p.add_argument("--run", default="r", help="event_id prefix")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--interval", type=float, default=0.0015)
    p.add_argument("--protocol", default="5")
    p.add_argument("--delivery", default="end_to_end")
    p.add_argument("--ack-timeout", type=float, default=3.0)
    p.add_argument("--commit-ms", type=int, default=20)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s agent %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    ob = Outbox(args.outbox, commit_interval_ms=args.commit_ms)
    cfg = MqttConfig(hosts=args.hosts.split(","), protocol=args.protocol,
                     delivery=args.delivery, ack_timeout_s=args.ack_timeout,
                     reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5,
                     stats_interval_s=3600)
    m = AgentMqtt(cfg, args.device, ob)
    m.start()
    if m.wait_connected(30):
        print("CONNECTED", flush=True)
    for i in range(args.start, args.count):
        if stop.is_set():
            break
        ev = {"event_id": f"{args.run}-{i}", "type": "crowd", "phase": "update",
              "camera": "cam1", "zone": "all", "count": i % 9, "track_id": i}
        seq = ob.append(ev)
        print(f"{seq} {ev['event_id']}", flush=True)
        if args.interval:
            time.sleep(args.interval)
    print("APPENDED", flush=True)
    while not stop.wait(0.5):
        print(f"LEFT {len(ob)} {m.connection.host}:{m.connection.port}", flush=True)
    m.stop(timeout=5)
    ob.close()
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
