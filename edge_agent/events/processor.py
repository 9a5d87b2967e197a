"""Per-camera event processing: the camera's rules, fed one frame of per-head tracks."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_agent.config import CameraConfig, EventsConfig
from edge_agent.events.event import Emission, EventFactory, FrameContext
from edge_agent.events.ocr import Reader
from edge_agent.events.rules import (
    CarrierGeometry,
    CrowdRule,
    HeadTracks,
    PlateRule,
    WeaponRule,
)
from edge_agent.events.snapshots import annotated
from edge_agent.events.zones import Zone, zones_for_camera

log = logging.getLogger(__name__)

# Heads the rules know, as named in model manifests.
WEAPON, CROWD, PLATE = "weapon", "crowd", "plate"


class CameraEvents:
    """The rules of one camera, built from the config and the model's heads.

    A rule whose head the model lacks is not created (a COCO YOLOX adapter has no plate head).
    """

    def __init__(self, cam: CameraConfig, cfg: EventsConfig, factory: EventFactory,
                 heads: Dict[str, Sequence[str]], ocr: Optional[Reader] = None,
                 ocr_status: str = "ocr_unavailable"):
        self.camera = cam.name
        max_dim = cfg.snapshots.max_dim
        snap = self._snapshotter(max_dim) if cfg.snapshots.enabled else None
        self.zones: List[Zone] = zones_for_camera(cam.zones, cfg.crowd_default_zone)
        self.weapon = None
        self.crowd = None
        self.plate = None
        if WEAPON in heads and cfg.weapon.enabled:
            w = cfg.weapon
            carrier = (CarrierGeometry(w.carrier_margin, w.carrier_max_size)
                       if w.require_carrier else None)
            if carrier is not None and CROWD not in heads:
                log.warning("camera %s: the model has no %s head, so no weapon track can have a "
                            "carrier and no weapon event will start (events.weapon."
                            "require_carrier: false starts them without one)", cam.name, CROWD)
            self.weapon = WeaponRule(factory, w.threshold, w.window, w.update_interval_s, snap,
                                     carrier)
        if CROWD in heads and self.zones:
            self.crowd = CrowdRule(factory, self.zones, snap)
        if PLATE in heads and cfg.plate.enabled:
            reader = ocr if cfg.plate.ocr else None
            status = ocr_status if cfg.plate.ocr else "ocr_disabled"
            self.plate = PlateRule(factory, reader, status, snapshot=snap)

    @staticmethod
    def _snapshotter(max_dim: int):
        def snap(ctx: FrameContext, box, text: str) -> Optional[np.ndarray]:
            if ctx.image is None:
                return None
            return annotated(ctx.image, box, text, max_dim)
        return snap

    def update(self, ctx: FrameContext, tracks: Dict[str, HeadTracks]) -> List[Emission]:
        """Emissions for one frame; ``tracks`` maps head -> its tracks (missing = none)."""
        out: List[Emission] = []
        persons = tracks.get(CROWD)
        if self.weapon is not None:
            out += self.weapon.update(ctx, tracks.get(WEAPON) or HeadTracks(), persons)
        if self.crowd is not None:
            out += self.crowd.update(ctx, persons or HeadTracks())
        if self.plate is not None:
            out += self.plate.update(ctx, tracks.get(PLATE) or HeadTracks())
        return out

    def close(self, ctx: FrameContext, reason: str = "agent_stop") -> List[Emission]:
        """``end`` events for everything still open."""
        out: List[Emission] = []
        for rule in (self.weapon, self.crowd, self.plate):
            if rule is not None:
                out += rule.close(ctx, reason)
        return out

    def zone_counts(self) -> Dict[str, int]:
        """Persons per zone in the last frame (for overlays and stats)."""
        return dict(self.crowd.last_counts) if self.crowd is not None else {}
