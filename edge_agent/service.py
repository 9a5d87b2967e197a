"""Where the daemon's parts used to live, kept as names for code written against them.

The wiring moved: the daemon is :class:`edge_agent.agent.Agent` (``cmd_run``), the inference
loop :class:`edge_agent.pipeline.Pipeline`, event delivery :mod:`edge_agent.delivery`, the
`track` command :mod:`edge_agent.track`. docs/architecture.md draws the whole.
"""

from edge_agent.agent import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, Agent, cmd_run
from edge_agent.pipeline import CameraState, Pipeline
from edge_agent.track import cmd_track, track_config

__all__ = ["Agent", "CameraState", "EXIT_BAD_INPUT", "EXIT_OK", "EXIT_RUNTIME",
           "Pipeline", "cmd_run", "cmd_track", "track_config"]
