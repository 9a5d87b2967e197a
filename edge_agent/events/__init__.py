"""Events stage: rules (weapon, crowd, plate), zones, snapshots, plate OCR, file/console sinks.

Rules take per-head track arrays (the tracker's (M, 8) output) and return
:class:`~edge_agent.events.event.Emission` objects; they know nothing about MQTT or capture.
"""

from edge_agent.events.event import Emission, EngineInfo, EventFactory, FrameContext
from edge_agent.events.processor import CameraEvents
from edge_agent.events.rules import CrowdRule, HeadTracks, PlateRule, WeaponRule
from edge_agent.events.sinks import ConsoleSink, JsonlSink
from edge_agent.events.snapshots import SnapshotStore, encode_jpeg
from edge_agent.events.zones import Zone

__all__ = [
    "CameraEvents", "ConsoleSink", "CrowdRule", "Emission", "EngineInfo", "EventFactory",
    "FrameContext", "HeadTracks", "JsonlSink", "PlateRule", "SnapshotStore", "WeaponRule", "Zone",
    "encode_jpeg",
]
