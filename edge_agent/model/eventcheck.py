"""The weapon check at event level: `edge-agent track` on clips and on a slideshow of gun frames.

What an operator sees is events, not AP. Two measurements, both through the real command line
(a subprocess of `edge-agent track`, the daemon's pipeline: engine, tracker, rules):

* weapon ``start`` events on clips with no gun in them (each should have none);
* a slideshow video of CCTV validation frames with a gun in a hand, each held ``hold_s``, then
  ``gap_s`` of black: the fraction of slides that raise a weapon ``start`` with a track ID and a
  carrier (``person_track_id``), and how many frames later the carrier rule starts it than a run
  without the rule.

The slides are the CCTV frames of our rf-gun-detection split's ``val`` part that have a gun box
(never trained on by either variant), picked evenly spaced by name, so the choice does not look
at any model's output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

SPLIT = Path(__file__).resolve().parent / "splits" / "rf_gun_v1.csv"
WEAPONS = "data/weapons/rf-gun-detection-v1/valid"  # under ../shared
# Clips with no gun in them (the event check); paths under ../shared/data/video.
NO_GUN_CLIPS = ("intel_car-detection.mp4", "intel_one-by-one-person-detection.mp4",
                "nvidia_Retail02_short.mp4", "license-unclear/ayanbag_traffic.mp4")


def gun_frames(shared: Path, n: int, source: str = "cctv", split: Path = SPLIT) -> List[Path]:
    """``n`` validation images of ``source`` (cctv, ugr, openimages) with at least one gun box,
    evenly spaced in name order."""
    folder = Path(shared) / WEAPONS
    with open(split, newline="") as fh:
        names = sorted(r["image"].strip() for r in csv.DictReader(fh)
                       if r["source"] == source and r["split"].strip() == "val")
    guns = [folder / "images" / nm for nm in names
            if (folder / "labels" / f"{Path(nm).stem}.txt").read_text().strip()]
    if len(guns) < n:
        raise ValueError(f"only {len(guns)} {source} validation images with a gun, {n} asked for")
    pick = np.linspace(0, len(guns) - 1, n).round().astype(int)
    return [guns[i] for i in pick]


@dataclass(frozen=True)
class Slideshow:
    """A written slideshow: slide ``i`` is shown on frames ``[i * period, i * period + hold)``."""

    path: Path
    slides: int
    hold: int  # frames a slide is shown
    period: int  # frames from one slide's first frame to the next's
    fps: float

    def slide_of(self, frame: int) -> int:
        return frame // self.period


def write_slideshow(images: Sequence[Path], out: Path, fps: float = 10.0, hold_s: float = 1.0,
                    gap_s: float = 1.0) -> Slideshow:
    """Each image held ``hold_s``, then ``gap_s`` of black (mp4v), on a canvas of the first
    image's size (others scaled to fit, aspect kept, top-left, black around)."""
    first = cv2.imread(str(images[0]))
    if first is None:
        raise ValueError(f"{images[0]}: image does not decode")
    h, w = first.shape[:2]
    hold, gap = max(1, round(hold_s * fps)), max(0, round(gap_s * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {out}")
    black = np.zeros((h, w, 3), np.uint8)
    for p in images:
        img = cv2.imread(str(p))
        if img is None:
            raise ValueError(f"{p}: image does not decode")
        if img.shape[:2] != (h, w):
            r = min(w / img.shape[1], h / img.shape[0])
            small = cv2.resize(img, (max(1, round(img.shape[1] * r)),
                                     max(1, round(img.shape[0] * r))),
                               interpolation=cv2.INTER_AREA)
            img = black.copy()
            img[:small.shape[0], :small.shape[1]] = small
        for _ in range(hold):
            writer.write(img)
        for _ in range(gap):
            writer.write(black)
    writer.release()
    return Slideshow(out, len(images), hold, hold + gap, fps)


def edge_agent_cmd() -> List[str]:
    """The `edge-agent` command of this Python (its console script, else ``-c`` into cli)."""
    script = Path(sys.executable).parent / "edge-agent"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from edge_agent.cli import main; "
            "sys.exit(main(sys.argv[1:]))"]


def track_events(video: Path, model: Path, out_dir: Path, require_carrier: bool = True,
                 confidence: float = 0.3, timeout_s: float = 1800, tiles: int = 1) -> List[dict]:
    """Events of `edge-agent track -i VIDEO --model MODEL` (a subprocess), with the rule set
    and ``tiles`` (``cameras[].tiles``: the weapon head also on tiles x tiles tiles)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{Path(video).stem}-{'carrier' if require_carrier else 'nocarrier'}"
    tag += f"-tiles{tiles}" if tiles > 1 else ""
    cfg = out_dir / f"{tag}.yaml"
    cfg.write_text(f"cameras:\n  - {{name: input, source: {Path(video).name}, tiles: {tiles}}}\n"
                   f"events:\n  weapon:\n    require_carrier: {str(require_carrier).lower()}\n")
    events = out_dir / f"{tag}.jsonl"
    cmd = edge_agent_cmd() + ["track", "-i", str(video), "--model", str(model), "--config",
                              str(cfg), "--events", str(events), "-c", str(confidence),
                              "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}")
    return [json.loads(x) for x in events.read_text().splitlines() if x.strip()]


def weapon_starts(events: Sequence[dict]) -> List[dict]:
    return [e for e in events if e.get("type") == "weapon" and e.get("phase") == "start"]


@dataclass
class SlideResult:
    """Per slide, the first weapon start's frame (None: no event), and whether it was complete."""

    start_frame: List[Optional[int]] = field(default_factory=list)
    complete: List[bool] = field(default_factory=list)  # track ID and carrier ID present

    @property
    def hits(self) -> int:
        return sum(self.complete)


def slide_hits(show: Slideshow, events: Sequence[dict]) -> SlideResult:
    """Which slides raised a weapon start (on the slide or in the black gap after it)."""
    first: Dict[int, dict] = {}
    for e in sorted(weapon_starts(events), key=lambda e: e["frame"]):
        first.setdefault(show.slide_of(int(e["frame"])), e)
    res = SlideResult()
    for i in range(show.slides):
        e = first.get(i)
        res.start_frame.append(None if e is None else int(e["frame"]))
        res.complete.append(e is not None and isinstance(e.get("track_id"), int)
                            and isinstance(e.get("person_track_id"), int))
    return res


def carrier_delays(on: SlideResult, off: SlideResult) -> List[int]:
    """Frames the carrier rule delayed each start that both runs raised."""
    return [a - b for a, b in zip(on.start_frame, off.start_frame)
            if a is not None and b is not None]
