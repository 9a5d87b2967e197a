"""Video clips around alerts: a pre-roll ring per camera, MP4 writing, a bounded clip store.

``ClipService`` (``service.py``) is what the pipeline talks to; ``ClipStore`` (``store.py``) is
what the HTTP endpoint (``http.py``) and ``edge-agent clips`` (``command.py``) read.
"""

from edge_agent.clips.store import ClipInfo, ClipStore

__all__ = ["ClipInfo", "ClipStore"]
