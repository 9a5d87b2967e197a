"""The real `edge-agent run ARGS`, plus one test hook: SIGUSR1 blocks the inference loop.

On SIGUSR1 a task that sleeps ``$EDGE_AGENT_TEST_HANG_S`` seconds (default 3) runs on the
inference thread (through ``Pipeline.run_in_loop``, as an engine swap would), so the loop hangs
the way a stuck engine call would. Everything else is the unchanged agent.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from edge_agent import cli, pipeline

_pipes = []
_init = pipeline.Pipeline.__init__


def _remember(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _pipes.append(self)


def _hang(_signum, _frame) -> None:
    hang_s = float(os.environ.get("EDGE_AGENT_TEST_HANG_S", "3"))
    if _pipes:
        _pipes[-1].run_in_loop(lambda _pipe: time.sleep(hang_s))


if __name__ == "__main__":
    pipeline.Pipeline.__init__ = _remember
    signal.signal(signal.SIGUSR1, _hang)
    sys.exit(cli.main(sys.argv[1:]))
