"""Agent side of the crash tests, run as its own process: the real Outbox + AgentMqtt.

Appends ``--count`` events (one per ``--interval`` s) and prints ``<seq> <event_id>`` on stdout
after each ``append`` returned (so the test knows what was in the outbox when it kills us).
Prints ``CONNECTED`` once connected. SIGTERM -> ``AgentMqtt.stop()`` (status ``stopped``), exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from mqtt_helpers import metrics_of

from edge_agent.config import MqttConfig
from edge_agent.mqtt.client import AgentMqtt
from edge_agent.outbox.eventlog import Outbox


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--outbox", required=True)
    p.add_argument("--device", default="dev1")
    p.add_argument("--run", default="a", help="event_id prefix")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--protocol", default="5")
    p.add_argument("--commit-ms", type=int, default=20, help="outbox commit_interval_ms")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s agent %(levelname)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    ob = Outbox(args.outbox, commit_interval_ms=args.commit_ms)
    cfg = MqttConfig(host=args.host, port=args.port, protocol=args.protocol,
                     reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5)
    m = AgentMqtt(cfg, args.device, ob, metrics=metrics_of(ob, args.device,
                                                           state=lambda: {"run": args.run}))
    m.start()
    if m.wait_connected(10):
        print("CONNECTED", flush=True)
    for i in range(args.count):
        if stop.is_set():
            break
        ev = {"event_id": f"{args.run}-{i}", "type": "crowd", "phase": "update",
              "camera": "cam1", "zone": "all", "count": i}
        seq = ob.append(ev)
        print(f"{seq} {ev['event_id']}", flush=True)
        if args.interval:
            time.sleep(args.interval)
    print("APPENDED", flush=True)
    stop.wait()
    m.stop(timeout=5)
    ob.close()
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
