"""Events lost when the broker dies: the issue-22 scenario, N runs per broker and delivery mode.

One run: a private broker (Mosquitto, NATS with JetStream and its MQTT listener, or RabbitMQ
with rabbitmq_mqtt), the
reference end-to-end consumer (edge_agent.mqtt.consumer, a persistent session, 2 ms of work per
message, acking what it stored), the agent as its own process (bench/loss_agent.py) appending
2,000 events 1.5 ms apart; mid-stream the broker is SIGKILLed and restarted twice and the agent
SIGKILLed and restarted once (it continues after the last event it saw appended), while three
busy loops load the CPUs. Lost = event ids appended that never reached the consumer's store.

    .venv/bin/python bench/loss_bench.py --broker mosquitto --delivery end_to_end --runs 10
    .venv/bin/python bench/loss_bench.py --broker nats --delivery puback --agent-kills 0

``run_scenario`` is what tests/test_mqtt_faults.py runs once per broker.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from brokers import REDELIVER_S, Mosquitto, NatsServer, RabbitMq, wait_for  # noqa: E402

from edge_agent.mqtt.consumer import AckConsumer, EventStore  # noqa: E402


@dataclass
class Result:
    """One run: ``lost`` of ``events``; ``stored`` distinct, ``duplicates`` received again."""

    broker: str
    delivery: str
    events: int
    lost: int
    stored: int
    duplicates: int
    seconds: float
    outbox_left: Optional[int]  # rows the agent still held at the end (puback: not PUBACKed)


class AgentProc:
    """bench/loss_agent.py as a subprocess; its ``<seq> <event_id>`` lines are collected."""

    def __init__(self, hosts: str, outbox: Path, start: int, count: int, protocol: str,
                 delivery: str, ack_timeout: float, log: Path, interval: float = 0.0015):
        self.log = open(log, "ab")
        self.start = start
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "loss_agent.py"), "--hosts", hosts, "--outbox",
             str(outbox), "--start", str(start), "--count", str(count), "--protocol", protocol,
             "--delivery", delivery, "--ack-timeout", str(ack_timeout),
             "--interval", str(interval)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines: List[str] = []
        self.appended: List[Tuple[int, str]] = []
        self.left: Optional[int] = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                self.appended.append((int(parts[0]), parts[1]))
            elif parts[:1] == ["LEFT"]:
                self.left = int(parts[1])
            else:
                self.lines.append(line.strip())

    def wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.lines:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the agent never printed {text!r} (see {self.log.name})")
            time.sleep(0.02)

    def wait_index(self, index: int, timeout: float) -> None:
        """Until event ``index`` was appended (or all were)."""
        deadline = time.monotonic() + timeout
        while self.start + len(self.appended) < index and "APPENDED" not in self.lines:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the agent stopped appending (see {self.log.name})")
            time.sleep(0.02)

    def next_index(self) -> int:
        """After a SIGKILL: the first event index it did not report as appended."""
        self._reader.join(5)
        return 1 + max((int(eid.rsplit("-", 1)[1]) for _, eid in self.appended), default=-1)

    def sigkill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.sigkill()
        self.log.close()



def _kill_plan(broker_kills: int, agent_kills: int, events: int) -> List[Tuple[int, str]]:
    """(appended events, what to kill), evenly spread, agent kills between broker kills."""
    what = ["broker"] * broker_kills
    for i in range(agent_kills):
        what.insert(min(len(what), 2 * i + 1), "agent")
    n = len(what)
    return [(int(events * (k + 1) / (n + 1.5)), w) for k, w in enumerate(what)]


def run_scenario(broker_kind: str, workdir: Path, delivery: str = "end_to_end",
                 events: int = 2000, broker_kills: int = 2, agent_kills: int = 1,
                 busy: int = 3, consumer_delay_s: float = 0.002, ack_timeout: float = 3.0,
                 settle_s: float = 90.0) -> Result:
    """One run of the scenario (module docstring) in ``workdir``; everything it started is
    stopped before it returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    kinds = {"mosquitto": Mosquitto, "nats": NatsServer, "rabbitmq": RabbitMq}
    broker = kinds[broker_kind](workdir / "broker")
    busy_procs: List[subprocess.Popen] = []
    consumer: Optional[AckConsumer] = None
    agent: Optional[AgentProc] = None
    store = EventStore(workdir / "store.jsonl")
    t0 = time.monotonic()
    # The run's timeline (kills, restarts, the consumer's notes): what to read when one loses.
    timeline = open(workdir / "timeline.log", "a", buffering=1)

    def note(text: str) -> None:
        timeline.write(f"{time.monotonic() - t0:8.3f} {text}\n")

    try:
        broker.start()
        consumer = AckConsumer(broker.host, broker.port, store, client_id="loss-consumer",
                               protocol=broker.protocol, delay_s=consumer_delay_s,
                               on_note=lambda text: note(f"consumer: {text}")).start()
        if not consumer.subscribed.wait(20):
            raise RuntimeError("the consumer did not subscribe")
        if broker_kind == "mosquitto":  # its session must be saved before the first kill
            db, since = broker.workdir / "mosquitto.db", time.time()
            if not wait_for(lambda: db.exists() and db.stat().st_mtime > since, 20):
                raise RuntimeError("mosquitto did not save its persistence file")
        busy_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(busy)]
        hosts = f"{broker.host}:{broker.port}"
        outbox = workdir / "outbox.sqlite"

        def new_agent(start: int) -> AgentProc:
            a = AgentProc(hosts, outbox, start, events, broker.protocol, delivery, ack_timeout,
                          workdir / "agent.log")
            a.wait_line("CONNECTED", 60)
            return a

        agent = new_agent(0)
        for at, what in _kill_plan(broker_kills, agent_kills, events):
            agent.wait_index(at, 120)
            note(f"{what} SIGKILL at event {at}; the consumer holds {len(store.ids)}")
            if what == "broker":
                broker.kill()
                time.sleep(0.4)  # events keep arriving in the outbox meanwhile
                broker.start()
                note("broker started again")
            else:
                agent.sigkill()
                start = agent.next_index()
                agent.stop()
                agent = new_agent(start)
        agent.wait_line("APPENDED", 300)
        want = {f"r-{i}" for i in range(events)}
        if delivery == "end_to_end":
            wait_for(lambda: want <= store.ids, settle_s)
        else:
            # puback: the outbox empty means every event got its PUBACK; then give the
            # consumer time to drain what the broker still has queued for it
            wait_for(lambda: agent.left == 0, settle_s)
            last = [-1, time.monotonic()]

            def quiet() -> bool:
                n = len(store.ids) + store.duplicates
                if n != last[0]:
                    last[:] = [n, time.monotonic()]
                # longer than a broker takes to redeliver what the consumer did not PUBACK
                return want <= store.ids or time.monotonic() - last[1] > 3 * REDELIVER_S
            wait_for(quiet, settle_s)
        lost = len(want - store.ids)
        note(f"end: {lost} lost, {len(store.ids)} stored, agent outbox {agent.left}")
        return Result(broker_kind, delivery, events, lost, store.stored_total,
                      store.duplicates, time.monotonic() - t0, agent.left)
    finally:
        for p in busy_procs:
            p.kill()
            p.wait()
        if agent is not None:
            agent.stop()
        if consumer is not None:
            consumer.stop()
        else:
            store.close()
        broker.kill()
        timeline.close()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", choices=["mosquitto", "nats", "rabbitmq"], default="mosquitto")
    ap.add_argument("--delivery", choices=["puback", "end_to_end"], default="end_to_end")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--broker-kills", type=int, default=2)
    ap.add_argument("--agent-kills", type=int, default=1)
    ap.add_argument("--busy", type=int, default=3, help="busy loops of CPU load")
    ap.add_argument("--consumer-ms", type=float, default=2.0, help="consumer work per message")
    args = ap.parse_args(argv)
    print(f"{args.broker}, delivery {args.delivery}: {args.events} events, "
          f"{args.broker_kills} broker SIGKILLs, {args.agent_kills} agent SIGKILLs, "
          f"{args.busy} busy loops, consumer {args.consumer_ms} ms/message")
    print(f"{'run':>3} {'lost':>5} {'stored':>6} {'dups':>5} {'seconds':>7}")
    results = []
    for i in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="loss-bench-"))
        try:
            r = run_scenario(args.broker, work, args.delivery, args.events, args.broker_kills,
                             args.agent_kills, args.busy, args.consumer_ms / 1000.0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.append(r)
        print(f"{i + 1:3d} {r.lost:5d} {r.stored:6d} {r.duplicates:5d} {r.seconds:7.1f}",
              flush=True)
    bad = [r.lost for r in results if r.lost]
    print(f"runs with loss: {len(bad)} of {len(results)}; lost per run: "
          f"{'-'.join(map(str, (min(bad), max(bad)))) if bad else 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
