"""The inference loop (``loop.py``): one thread takes frames from the cameras, runs the detector,
the trackers and the rules, and hands every event to the outbox's delivery. Other threads reach
it through :meth:`Pipeline.run_in_loop` and read it through its methods (``stats()``,
``state()``, ``settled()``, ``failed_cameras()``)."""

from edge_agent.pipeline.loop import CameraState, FrameHook, Pipeline

__all__ = ["CameraState", "FrameHook", "Pipeline"]
