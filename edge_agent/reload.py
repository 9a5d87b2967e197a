"""Live config reload (SIGHUP, ``cmd/config.reload``): what may change without a restart.

Reloaded in place, between two batches, with the streams kept open: the event rules
(``events:``), each camera's zones, ``detect_every`` and ``fps_limit``, and the tracker
parameters. Everything else (a camera added or removed, a camera's source, the model, the
broker, the state dir, the metrics address, ...) needs a restart: such changes are listed in the
report and none of them is applied, not even in part. An invalid file is rejected with its
``file:line`` errors and the running config stays as it was.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

from edge_agent import config as cfgmod

log = logging.getLogger(__name__)

# Top-level sections that are read once at start.
RESTART_SECTIONS = ("device_id", "state_dir", "log", "model", "mqtt", "metrics", "update")
# Camera fields that belong to the capture (an open stream); zones etc. are reloadable.
CAMERA_RESTART_FIELDS = ("source", "type", "loop", "realtime", "stall_timeout_s", "reconnect")


@dataclass
class ReloadPlan:
    """What a new config changes. ``config`` is what will run: the new reloadable parts on
    top of the running config's restart-only parts."""

    config: cfgmod.Config
    cameras: List[str] = field(default_factory=list)  # cameras whose rules/zones/pacing change
    tracker: bool = False
    events: bool = False
    needs_restart: List[str] = field(default_factory=list)

    @property
    def changed(self) -> List[str]:
        out = ["events"] if self.events else []
        out += ["tracker"] if self.tracker else []
        return out + [f"cameras.{c}" for c in self.cameras]


def plan(old: cfgmod.Config, new: cfgmod.Config) -> ReloadPlan:
    """Compare the running config with a new one (both validated)."""
    o, n = old.model_dump(mode="json"), new.model_dump(mode="json")
    restart = [k for k in RESTART_SECTIONS if o[k] != n[k]]
    old_cams = {c["name"]: c for c in o["cameras"]}
    new_cams = {c["name"]: c for c in n["cameras"]}
    restart += [f"cameras.{c} added" for c in new_cams if c not in old_cams]
    restart += [f"cameras.{c} removed" for c in old_cams if c not in new_cams]
    merged_cams, changed_cams = [], []
    for name, oc in old_cams.items():
        nc = new_cams.get(name)
        if nc is None:
            merged_cams.append(oc)
            continue
        restart += [f"cameras.{name}.{f}" for f in CAMERA_RESTART_FIELDS if oc[f] != nc[f]]
        mc = dict(nc, **{f: oc[f] for f in CAMERA_RESTART_FIELDS})
        if mc != oc:
            changed_cams.append(name)
        merged_cams.append(mc)
    merged = dict(n, **{k: o[k] for k in RESTART_SECTIONS}, cameras=merged_cams)
    merged["mqtt"] = dict(merged["mqtt"], password=None)  # the dump masks it; the old one stays
    cfg = cfgmod.Config.model_validate(merged).model_copy(update={"mqtt": old.mqtt})
    return ReloadPlan(cfg, changed_cams, o["tracker"] != n["tracker"], o["events"] != n["events"],
                      restart)


class Reloader:
    """Runs reloads one at a time: load and check the file, then apply on the inference loop.

    ``apply(plan)`` runs the plan on the inference thread and returns when done (it raises
    to reject, e.g. tracker parameters the Tracker refuses); ``current()`` is the running config.
    """

    def __init__(self, path: str, current: Callable[[], cfgmod.Config],
                 apply: Callable[[ReloadPlan], None], supervisor=None):
        self.path = path
        self._current = current
        self._apply = apply
        self._supervisor = supervisor
        self._lock = threading.Lock()

    def request(self, why: str = "SIGHUP") -> None:
        """Signal-safe: reload on a thread of its own."""
        threading.Thread(target=self.reload, args=(why,), name="reload", daemon=True).start()

    def reload(self, why: str = "request") -> Dict[str, Any]:
        """Reload now; a report ``{ok, applied, needs_restart, errors}`` (never raises)."""
        with self._lock:
            sup = self._supervisor
            if sup is not None:
                sup.reloading(self.path)
            report = self._reload(why)
            if sup is not None:
                sup.reloaded("config reloaded" if report["ok"] else "config reload rejected")
            return report

    def _reload(self, why: str) -> Dict[str, Any]:
        report: Dict[str, Any] = {"ok": False, "file": self.path, "applied": [],
                                  "needs_restart": [], "errors": []}
        try:
            new = cfgmod.load(self.path)
        except cfgmod.ConfigError as exc:
            report["errors"] = exc.problems
            log.error("config reload (%s) rejected, the running config stays: %s", why,
                      "; ".join(exc.problems))
            return report
        p = plan(self._current(), new)
        report["needs_restart"] = p.needs_restart
        try:
            if p.changed:
                self._apply(p)
        except Exception as exc:  # e.g. a tracker parameter out of range
            report["errors"] = [f"{self.path}: {exc}"]
            log.error("config reload (%s) rejected, the running config stays: %s", why, exc)
            return report
        report.update(ok=True, applied=p.changed)
        log.info("config reloaded (%s): applied %s%s", why, ", ".join(p.changed) or "nothing",
                 f"; needs a restart, not applied: {', '.join(p.needs_restart)}"
                 if p.needs_restart else "")
        return report


def command(reloader: Reloader) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """The ``cmd/config.reload`` handler: the reload report (an error when rejected)."""

    def handle(request: Dict[str, Any]) -> Dict[str, Any]:
        report = reloader.reload("cmd/config.reload")
        if not report["ok"]:
            raise ValueError("config reload rejected: " + "; ".join(report["errors"]))
        return report

    return handle
