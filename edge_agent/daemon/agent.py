"""The daemon (``edge-agent run``): an :class:`Agent` that starts its parts in order and stops
them in reverse.

``Agent.start()`` runs :attr:`Agent.steps` in order; each step builds one part and returns how
to undo it. A step that meets bad input raises :class:`StartError` (one line: what and why), and
:meth:`Agent.stop` undoes what was started, newest first: the same teardown after a full run, a
failed start or a crash of the pipeline. :attr:`Agent.steps` is the one place the order is
written; each step gets what it needs from the steps before it as values (attributes they set),
never as a lambda to one that does not exist yet.

The state directory is locked first (``statelock``: one agent per directory); ``open_events``
ends what a crash of the previous run left open (``openevents``) before the first new event.
The engine is the model store's current version (``update/startup.py``). ``mqtt`` builds the
MQTT client without connecting; ``update`` starts the remote-update worker, which publishes
through that client and registers its ``cmd/engine.*`` commands on it; ``mqtt_connect`` then
connects, and ``update_recovery`` resumes or reports an update a crash interrupted
(docs/update.md).

``Agent.run()`` is start, then the inference loop on the calling thread until SIGTERM/SIGINT
(or every camera ended), then stop. Exit status: 0 after a stop, 2 for bad input, 1 when the
pipeline failed or every camera failed.

systemd sees the agent through ``supervise.Supervisor`` (READY=1 once every camera delivered a
frame or failed, STATUS=, the watchdog from the inference loop); SIGHUP and ``cmd/config.reload``
reload what can change without a restart (``reload.py``).

Where later parts plug in: a step inserted into :attr:`Agent.steps` (its undo runs at stop);
``agent.pipeline.run_in_loop(fn)`` for work on the inference thread (engine swaps);
``agent.metrics`` for the stats and state documents; ``agent.mqtt.register_command`` for
commands.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from edge_agent import __version__
from edge_agent import config as cfgmod
from edge_agent.capture import CaptureError, check_sources
from edge_agent.clips import ClipInfo, ClipStore
from edge_agent.clips.http import ClipRoute, http_token, is_loopback
from edge_agent.common import resources
from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from edge_agent.common.interfaces import Engine, Sink
from edge_agent.config.secrets import config_secrets, masked_config
from edge_agent.daemon import logsetup, preflight, reload
from edge_agent.daemon.sdnotify import Notifier
from edge_agent.daemon.statelock import StateDirLocked, StateLock
from edge_agent.daemon.supervise import Supervisor, status_line
from edge_agent.events import ConsoleSink, Emission, JsonlSink, SnapshotStore, encode_jpeg
from edge_agent.metrics import Metrics
from edge_agent.outbox.delivery import EventDelivery
from edge_agent.outbox.eventlog import Outbox
from edge_agent.outbox.openevents import REASON as OPEN_REASON
from edge_agent.outbox.openevents import OpenEvents
from edge_agent.pipeline import Pipeline
from edge_agent.update import remote as update_remote
from edge_agent.update import startup as update_startup
from edge_agent.update import worker as update_worker
from edge_agent.update.host import PipelineHost

if TYPE_CHECKING:  # imported by their steps, only when enabled (paho, prometheus_client)
    from edge_agent.daemon.exporter import Exporter, Observations
    from edge_agent.mqtt.client import AgentMqtt
    from edge_agent.update.store import ModelStore
    from edge_agent.update.updater import Updater

log = logging.getLogger(__name__)

Undo = Optional[Callable[[], None]]


class StartError(Exception):
    """A step could not start because of its input; the message says what and why."""


def resolve_in(base: Path, p: str) -> Path:
    """``p`` as is when absolute, else under ``base`` (the state directory)."""
    path = Path(p)
    return path if path.is_absolute() else base / path


class Agent:
    """The parts of one running daemon and the order they start and stop in (module doc)."""

    def __init__(self, cfg: cfgmod.Config, source: str = "config"):
        self.cfg = cfg
        self.source = source  # the config file, for messages
        self.state_dir = Path(cfg.state_dir)
        self.metrics = Metrics(cfg.device_id)
        self.event_log: Optional[Outbox] = None
        self.engine: Optional[Engine] = None  # the engine opened at start (a swap may follow)
        self.delivery: Optional[EventDelivery] = None
        self.observations: Optional[Observations] = None  # metrics.enabled
        self.pipeline: Optional[Pipeline] = None
        self.mqtt: Optional[AgentMqtt] = None
        self.store: Optional[ModelStore] = None  # the model store (update.enabled)
        self.updater: Optional[Updater] = None
        self.reloader: Optional[reload.Reloader] = None
        self.exporter: Optional[Exporter] = None
        self.supervisor = Supervisor(Notifier(), status_interval_s=5.0)
        # descriptors and memory: short of either, everything fails at once (docs/service.md)
        self.metrics.add("resources", stats=lambda: {"resources": resources.usage().doc()},
                         state=lambda: {"resources": resources.usage().doc()})
        self._stopping = False  # set by SIGTERM / SIGINT, also during start-up
        self._undo_lock = threading.Lock()
        self._serving: Optional[int] = None  # the thread running the pipeline, while it runs
        self._served = threading.Event()
        self.steps: List[Tuple[str, Callable[[], Undo]]] = [
            ("state_dir", self._start_state_dir),
            ("event_log", self._start_event_log),
            ("engine", self._start_engine),
            ("cameras", self._check_cameras),
            ("delivery", self._start_delivery),
            ("pipeline", self._start_pipeline),
            ("reload", self._start_reload),
            ("mqtt", self._start_mqtt),
            ("update", self._start_update),
            ("mqtt_connect", self._connect_mqtt),
            ("update_recovery", self._recover_update),
            ("exporter", self._start_exporter),
            ("open_events", self._start_open_events),
            ("notifier", self._start_notifier),
        ]
        self._undo: List[Tuple[str, Callable[[], None]]] = []

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Run the steps in order; on StartError the steps already done stay for :meth:`stop`."""
        for name, step in self.steps:
            if self._stopping:  # SIGTERM while starting (e.g. during a long engine build)
                log.info("stop requested during start-up: not starting %s", name)
                return
            log.debug("start: %s", name)
            undo = step()
            if undo is not None:
                self._undo.append((name, undo))

    def stop(self) -> None:
        """Undo the started steps, newest first; safe after a partial start, idempotent.

        Called from another thread while the pipeline runs, it stops the pipeline and waits for
        it to finish first: undoing the engine or the outbox under frames still being processed
        would fail them."""
        serving = self._serving
        if serving is not None and serving != threading.get_ident():
            self._stopping = True
            if self.pipeline is not None:
                self.pipeline.stop()
            self._served.wait()
        with self._undo_lock:
            self._undo_all()

    def _undo_all(self) -> None:
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
            except Exception:  # one part failing to stop must not keep the others running
                log.exception("stop: %s failed", name)

    def run(self) -> int:
        """Start, run the pipeline until stopped, stop; returns the exit status."""
        if not self.cfg.cameras:
            log.error("%s: no cameras configured; add at least one under `cameras:`",
                      self.source)
            return EXIT_BAD_INPUT
        # Handlers first: a start step may already publish (events the last run left open),
        # and a SIGTERM that arrives then must stop us cleanly, not kill us.
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        rc: Optional[int] = None
        try:
            self.start()
            if not self._stopping:
                rc = self._serve()
        except StartError as exc:
            log.error("%s", exc)
            return EXIT_BAD_INPUT
        finally:  # also for a bug in a step: undo what started, then fail loudly
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        return EXIT_OK if rc is None else self._exit_status(rc)

    def _on_signal(self, signum, _frame) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self._stopping = True
        if self.pipeline is not None:
            self.pipeline.stop()

    def _on_hup(self, _signum, _frame) -> None:
        if self.reloader is not None:  # not yet started: the config is read fresh anyway
            self.reloader.request("SIGHUP")  # a thread of its own: signal-safe

    def _serve(self) -> int:
        """The inference loop on this thread; its failure is logged (systemd restarts us)."""
        assert self.pipeline is not None and self.engine is not None
        info = self.pipeline.engine_info
        log.info("edge-agent %s: %d camera(s), engine %s %s on %s", __version__,
                 len(self.cfg.cameras), info.name, info.version, self.engine.backend_name)
        self._served.clear()
        self._serving = threading.get_ident()
        try:
            if not self._stopping:  # stop() from another thread may have come first
                self.pipeline.run()
        except CaptureError as exc:
            log.error("%s", exc)
            return EXIT_BAD_INPUT
        except Exception as exc:  # e.g. the engine failing at run time
            log.error("pipeline failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            return EXIT_FAILED
        finally:
            self._serving = None
            self._served.set()
        return EXIT_OK

    def _exit_status(self, rc: int) -> int:
        pipe = self.pipeline
        assert pipe is not None
        st = pipe.stats()
        log.info("stopped: %s",
                 {n: (c["processed"], c["dropped"]) for n, c in st["cameras"].items()})
        failed = pipe.failed_cameras()
        if rc == EXIT_OK and failed and len(failed) == len(pipe.cameras()):
            log.error("every camera failed: %s", ", ".join(failed))
            return EXIT_FAILED
        return rc

    # --- the steps (each returns its undo) -------------------------------------------------

    def _start_state_dir(self) -> Undo:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lock = StateLock(self.state_dir).acquire()
        except StateDirLocked as exc:  # another agent: its outbox, seq and client id
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"state_dir {self.state_dir} is not writable: {exc}") from None
        return lock.release

    def _start_event_log(self) -> Undo:
        # Always the durable outbox: it owns the persisted per-device seq, MQTT or not.
        try:
            self.event_log = Outbox.from_config(self.cfg.mqtt.outbox, self.state_dir)
        except (ValueError, OSError) as exc:
            raise StartError(f"outbox: {exc}") from None
        log_ = self.event_log
        self.metrics.add("outbox", stats=lambda: {"outbox": log_.stats()})
        return log_.close

    def _start_engine(self) -> Undo:
        from edge_agent.inference import ModelError, open_engine

        try:
            with self.supervisor.extend_start("loading the engine"):  # a TensorRT build: minutes
                # the model store's current version (seeded from model.path on first start)
                self.store = update_startup.open_store(self.cfg)
                self.engine = update_startup.open_running(self.cfg, self.store, open_engine)
        except (ModelError, ValueError, OSError) as exc:
            raise StartError(f"model: {exc}") from None
        return self._close_engines

    def _close_engines(self) -> None:
        """The engine in use (a remote update may have swapped it) and the first one."""
        assert self.engine is not None
        current = self.pipeline.engine if self.pipeline is not None else self.engine
        current.close()
        if self.engine is not current:
            self.engine.close()

    def _check_cameras(self) -> Undo:
        try:
            check_sources(self.cfg.cameras)
        except CaptureError as exc:
            raise StartError(str(exc)) from None
        return None

    def _start_delivery(self) -> Undo:
        ecfg, sc = self.cfg.events, self.cfg.events.snapshots
        sinks: List[Sink] = []
        try:
            if ecfg.sinks.jsonl:
                sinks.append(JsonlSink(resolve_in(self.state_dir, ecfg.sinks.jsonl)))
            if ecfg.sinks.console:
                sinks.append(ConsoleSink())
            snaps = None
            if sc.enabled:
                snaps = SnapshotStore(resolve_in(self.state_dir, sc.dir),
                                      int(sc.max_total_mb * (1 << 20)), sc.max_dim,
                                      sc.jpeg_quality)
        except (OSError, ValueError) as exc:  # e.g. a path that is a directory, or not writable
            for s in sinks:
                s.close()
            raise StartError(f"events: {exc}") from None
        assert self.event_log is not None
        self.delivery = EventDelivery(self.event_log, sinks, snaps,
                                      ack_after_sinks=not self.cfg.mqtt.enabled)
        return self.delivery.close

    def _start_pipeline(self) -> Undo:
        assert self.delivery is not None and self.engine is not None
        clip_store, recovered = self._clip_store()
        if self.cfg.metrics.enabled:  # /metrics histograms, fed from the first frame on
            from edge_agent.daemon.exporter import observations

            self.observations = observations()
        try:
            self.pipeline = Pipeline(self.cfg, self.engine, self.delivery,
                                     notifier=self.supervisor, clip_store=clip_store,
                                     observer=self.observations)
        except (TypeError, ValueError) as exc:  # e.g. an unknown or out-of-range tracker param
            raise StartError(f"{self.source}: {exc}") from None
        pipe = self.pipeline
        if pipe.clips is not None and recovered:
            log.warning("%d clip(s) interrupted by the previous run finished", len(recovered))
            pipe.clips.announce(recovered)
        self.metrics.add("pipeline", stats=pipe.stats, state=pipe.state)
        return pipe.stop

    def _clip_store(self) -> Tuple[Optional[ClipStore], List[ClipInfo]]:
        """The clip store, with what a crash left half-written finished or removed."""
        cc = self.cfg.events.clips
        if not cc.enabled:
            return None, []
        try:
            store = ClipStore(resolve_in(self.state_dir, cc.dir), int(cc.max_total_mb * 1e6))
            return store, store.recover()
        except (OSError, ValueError) as exc:
            raise StartError(f"events.clips: {exc}") from None

    def _start_mqtt(self) -> Undo:
        if not self.cfg.mqtt.enabled:
            return None
        from edge_agent.mqtt.client import AgentMqtt

        assert self.pipeline is not None and self.event_log is not None and self.delivery
        assert self.reloader is not None
        pipe = self.pipeline
        snaps = self.delivery.snapshots
        try:
            mqtt = AgentMqtt(self.cfg.mqtt, self.cfg.device_id, self.event_log,
                             metrics=self.metrics, cameras=pipe.camera_zones(),
                             config_fn=lambda: masked_config(pipe.cfg),
                             snapshot_dir=snaps.dir if snaps is not None else None)
        except ValueError as exc:  # e.g. a TLS file that does not exist
            raise StartError(f"mqtt: {exc}") from None
        mqtt.register_command("snapshot", self.snapshot_command)
        mqtt.register_command("config.reload",
                              reload.command(self.reloader, reload.mqtt_later(mqtt)))
        self.mqtt = mqtt
        return None  # not connected yet: mqtt_connect's undo stops it

    def _connect_mqtt(self) -> Undo:
        """Connect once every command is registered (the update's come with its step)."""
        if self.mqtt is None:
            return None
        assert self.delivery is not None
        if self.mqtt.ha_sink is not None:
            self.delivery.add_sink(self.mqtt.ha_sink)
        self.mqtt.start()
        return self.mqtt.stop

    def _start_update(self) -> Undo:
        """The remote-update worker (docs/update.md); its commands come with the mqtt step."""
        if self.store is None:
            return None
        assert self.pipeline is not None
        try:
            up = update_worker.make_updater(
                self.cfg, self.store, PipelineHost(self.pipeline),
                update_remote.mqtt_publisher(self.mqtt), self.supervisor.notifier.extend_timeout)
        except ValueError as exc:  # e.g. a trusted key that is not a key
            raise StartError(f"update: {exc}") from None
        if self.mqtt is not None:
            for name, fn in update_remote.command_handlers(up, self.mqtt.reply_route).items():
                self.mqtt.register_command(name, fn)
        self.updater = up
        self.metrics.add("update", state=lambda: {"update": up.state_getter()})
        up.start()
        return up.stop

    def _recover_update(self) -> Undo:
        """An update the last run left in the middle: resumed, or reported (once MQTT is up)."""
        if self.updater is not None:
            note = self.updater.recover()
            if note:
                log.warning("update: %s", note)
        return None

    def _start_reload(self) -> Undo:
        pipe = self.pipeline
        assert pipe is not None

        def apply(plan: reload.ReloadPlan) -> None:  # on the inference thread; waits
            pipe.run_in_loop(lambda p: p.reconfigure(plan.config, plan.cameras, plan.tracker,
                                                     plan.events)).result(timeout=30)

        self.reloader = reload.Reloader(self.source, lambda: pipe.cfg, apply, self.supervisor)
        return None

    def _start_exporter(self) -> Undo:
        """/metrics and /healthz; a port that cannot be bound is logged, not fatal."""
        mc = self.cfg.metrics
        if not mc.enabled:
            return None
        from edge_agent.daemon.exporter import Exporter, Sources

        pipe, ob, mqtt = self.pipeline, self.event_log, self.mqtt
        assert pipe is not None and ob is not None and self.delivery is not None
        src = Sources(cameras=pipe.cameras(), stats=self.metrics.stats,  # what MQTT publishes
                      engine=lambda: pipe.state()["engine"],
                      outbox_rows=lambda: len(ob), outbox_path=ob.path,
                      mqtt_connected=(lambda: mqtt.connected) if mqtt is not None else None,
                      clips=pipe.clips.stats if pipe.clips is not None else None,
                      **({"update_state": self.updater.state_name} if self.updater else {}))
        given = mc.token.get_secret_value() if mc.token is not None else None
        route = ClipRoute(pipe.clips.store if pipe.clips is not None else None,
                          http_token(given), is_loopback(mc.host))
        ex = Exporter(src, mc.max_frame_age_s, mc.max_connections, mc.request_timeout_s,
                      route, self.observations)
        try:
            ex.start(mc.host, mc.port)
        except OSError as exc:
            log.error("metrics: cannot listen on %s:%d (%s); running without /metrics and "
                      "/healthz", mc.host, mc.port, exc.strerror or exc)
            return None
        self.exporter = ex
        self.delivery.add_sink(ex.sink())
        return ex.stop

    def _start_open_events(self) -> Undo:
        """End (``agent_restarted``) what the previous run left open, then record this run's."""
        assert self.delivery is not None
        record = OpenEvents(self.state_dir)
        ends = record.closing_events()
        if ends:
            log.warning("closing %d event(s) the previous run left open (reason %s)",
                        len(ends), OPEN_REASON)
            self.delivery.deliver([Emission(ev) for ev in ends])
        record.forget_leftovers()
        self.delivery.add_sink(record)  # closed (emptied) with the other sinks
        return None

    def _start_notifier(self) -> Undo:
        """READY=1 once every camera settled, then STATUS= lines (from the inference loop)."""
        pipe, sup = self.pipeline, self.supervisor
        assert pipe is not None
        sup.watch(pipe.settled, self._status)
        return sup.stopping

    def _status(self) -> str:
        pipe = self.pipeline
        assert pipe is not None
        e = pipe.engine_info
        engine = f"{e.name} {e.version} ({getattr(pipe.engine, 'backend_name', '?')})"
        m = self.mqtt
        state = "off" if m is None else ("connected" if m.connected else "disconnected")
        line = status_line(pipe.stats(), engine, state)
        short = resources.usage().problems()
        return line + "".join(f"; {p}" for p in short)

    # --- commands --------------------------------------------------------------------------

    def snapshot_command(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """MQTT ``cmd/snapshot``: publish the newest processed frame of ``camera`` as a JPEG."""
        assert self.pipeline is not None
        cams = self.pipeline.cameras()
        name = request.get("camera")
        if name is None and len(cams) == 1:
            name = cams[0]
        if not isinstance(name, str) or name not in cams:
            raise ValueError(f"unknown camera {name!r}; known: {', '.join(cams)}")
        f = self.pipeline.last_frame(name)
        if f is None:
            raise ValueError(f"camera {name} has no frame yet")
        sc = self.cfg.events.snapshots
        jpeg = encode_jpeg(f.image, sc.max_dim, sc.jpeg_quality)
        snap_id = f"{name}-{f.index}-{int(time.time() * 1000)}"
        published = self.mqtt.publish_snapshot(snap_id, jpeg) if self.mqtt is not None else False
        return {"camera": name, "frame": f.index, "snapshot_id": snap_id, "bytes": len(jpeg),
                "published": bool(published)}


def cmd_run(args: argparse.Namespace) -> int:
    """`edge-agent run --config FILE`: load the config, then ``Agent(cfg).run()``."""
    try:
        cfg = preflight.load_checked(args.config)  # what `config validate` checks
    except cfgmod.ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logsetup.setup(getattr(args, "log_level", None) or cfg.log.level, cfg.log.format,
                   config_secrets(cfg))
    return Agent(cfg, source=str(args.config)).run()
