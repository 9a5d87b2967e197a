"""edge-agent: detection, tracking and durable MQTT events on edge cameras.

docs/architecture.md draws the packages. Modules that moved into them keep their old import
paths (``edge_agent.eventlog`` is ``edge_agent.outbox.eventlog``), so scripts written against
the old layout keep working; new code imports the new paths. The old paths import nothing until
used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Dict, Optional, Sequence

__version__ = "0.1.0"

# old module path -> where it lives now
MOVED: Dict[str, str] = {
    "edge_agent.agent": "edge_agent.daemon.agent",
    "edge_agent.config_cmd": "edge_agent.cli.config_cmd",
    "edge_agent.bench_cmd": "edge_agent.cli.bench_cmd",
    "edge_agent.install_cmd": "edge_agent.cli.service_cmd",
    "edge_agent.demo": "edge_agent.cli.demo",
    "edge_agent.track": "edge_agent.cli.track_cmd",
    "edge_agent.mqtt.commands": "edge_agent.mqtt.dispatch",
    "edge_agent.update.commands": "edge_agent.update.cli",
    "edge_agent.inference.commands": "edge_agent.inference.cli",
    "edge_agent.supervise": "edge_agent.daemon.supervise",
    "edge_agent.reload": "edge_agent.daemon.reload",
    "edge_agent.sdnotify": "edge_agent.daemon.sdnotify",
    "edge_agent.statelock": "edge_agent.daemon.statelock",
    "edge_agent.exporter": "edge_agent.daemon.exporter",
    "edge_agent.logsetup": "edge_agent.daemon.logsetup",
    "edge_agent.preflight": "edge_agent.daemon.preflight",
    "edge_agent.interfaces": "edge_agent.common.interfaces",
    "edge_agent.resources": "edge_agent.common.resources",
    "edge_agent.yamlsafe": "edge_agent.config.yamlsafe",
    "edge_agent.secrets": "edge_agent.config.secrets",
    "edge_agent.shipped": "edge_agent.config.shipped",
    "edge_agent.eventlog": "edge_agent.outbox.eventlog",
    "edge_agent.seqmark": "edge_agent.outbox.seqmark",
    "edge_agent.delivery": "edge_agent.outbox.delivery",
    "edge_agent.openevents": "edge_agent.outbox.openevents",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path of :data:`MOVED` to the module itself (one module object under
    two names, so a test that patches one patches both)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self) -> None:
        self._specs: Dict[str, object] = {}

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Nothing to run (imported under its new name); the import system has just set the
        # alias's spec on it: give it back its own, so it still reads as what it is.
        module.__spec__ = self._specs.pop(module.__name__, module.__spec__)


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
