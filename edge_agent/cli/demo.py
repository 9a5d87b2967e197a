"""`make demo`: the shipped model on the sample clip in samples/, with its events printed.

Needs a checkout (the clip is not part of the installed package), nothing beside it. With
``../shared`` beside the checkout it also tracks a 768x432 parking-lot clip from there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from edge_agent import cli
from edge_agent import config as cfgmod

REPO = Path(__file__).resolve().parents[2]  # edge_agent/cli/ -> the repository
CONFIG = REPO / "configs" / "edge-agent.yaml"
SAMPLE = REPO / "samples" / "retail02_12s.mp4"
SHARED_CLIP = ("data", "video", "intel_car-detection.mp4")


def event_line(event: dict) -> str:
    """One line of an event for the terminal: frame, type, phase, what and where."""
    what = event.get("label") or ""
    if event.get("type") == "crowd":
        what = f"{event.get('count')} persons in zone {event.get('zone')}"
    elif event.get("text"):
        what += f" {event['text']!r}"
    track = f" track {event['track_id']}" if event.get("track_id") is not None else ""
    return (f"  frame {event.get('frame', '?'):>4}  {event.get('type')} {event.get('phase')}"
            f"{track}: {what} (score {event.get('score')})")


def track(clip: Path, out: Path, name: str, max_frames: int = 0) -> int:
    """Track ``clip`` with the shipped config's model; print its events; the exit status."""
    video, events = out / f"{name}.mp4", out / f"{name}-events.jsonl"
    print(f"tracking {clip} with the shipped model -> {video}, events -> {events}")
    rc = cli.main(["track", "-i", str(clip), "-C", str(CONFIG), "-o", str(video),
                   "--events", str(events), "--max-frames", str(max_frames)])
    if rc == 0:
        lines = events.read_text().splitlines() if events.exists() else []
        print(f"{len(lines)} events:")
        for line in lines:
            print(event_line(json.loads(line)))
    return rc


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; returns the exit status."""
    ap = argparse.ArgumentParser(prog="edge_agent.cli.demo")
    ap.add_argument("--shared", default=str(REPO.parent / "shared"),
                    help="the shared data folder (optional: a second clip from it)")
    ap.add_argument("--out", default="out", help="where the videos and events go")
    ap.add_argument("--max-frames", type=int, default=0, help="stop each clip after N frames")
    args = ap.parse_args(argv)
    try:
        cfg = cfgmod.load(CONFIG)
    except cfgmod.ConfigError as exc:
        print(f"{CONFIG} is invalid:\n{exc}", file=sys.stderr)
        return 2
    print(f"{CONFIG}: valid; model {cfg.model.path}")
    if not SAMPLE.is_file():
        print(f"error: the sample clip {SAMPLE} is missing (the demo runs from a checkout)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rc = track(SAMPLE, out, "demo", args.max_frames)
    extra = Path(args.shared).joinpath(*SHARED_CLIP)
    if rc == 0 and extra.is_file():
        rc = track(extra, out, "demo-parking", args.max_frames)
    return rc


if __name__ == "__main__":
    sys.exit(main())
