"""Weapon events as an operator gets them: `edge-agent track` on clips without guns and on a
slideshow of CCTV validation frames with a gun in a hand, with and without the carrier rule.

    .venv/bin/python bench/weapon_events_bench.py [--model engines/models/edge_multihead.onnx]
        [--shared ../shared] [--slides 48] [--tiles 2] [--out out/weapon_events] [--json R.json]

Per clip: weapon ``start`` events (goal: 0) with ``events.weapon.require_carrier`` on (the
default) and off (the rule before it existed). The slideshow (``edge_agent/model/eventcheck.py``):
each frame held 1 s at 10 fps, then 1 s of black; a slide counts when it raises a weapon start
with a track ID and a carrier person track ID. The delay is, per slide that both runs raise,
frames from the start without the rule to the start with it. ``--tiles N`` runs every video as
a camera with ``tiles: N`` (the weapon head also on N x N tiles, docs/inference.md "Tiles").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from edge_agent.model import eventcheck as ec


def clip_counts(model: Path, shared: Path, out: Path, clips, tiles: int = 1) -> dict:
    res = {}
    for clip in clips:
        row = {}
        for carrier in (True, False):
            t0 = time.monotonic()
            evs = ec.track_events(shared / "data" / "video" / clip, model, out, carrier,
                                  tiles=tiles)
            starts = ec.weapon_starts(evs)
            row["carrier" if carrier else "no_carrier"] = {
                "weapon_starts": len(starts),
                "frames": [int(e["frame"]) for e in starts],
                "seconds": round(time.monotonic() - t0, 1),
            }
        res[clip] = row
        print(f"{clip:42s} weapon starts: carrier rule {row['carrier']['weapon_starts']} "
              f"{row['carrier']['frames']}, without it {row['no_carrier']['weapon_starts']} "
              f"{row['no_carrier']['frames']}", flush=True)
    return res


def slideshow(model: Path, shared: Path, out: Path, n: int, source: str = "cctv",
              tiles: int = 1) -> dict:
    show = ec.write_slideshow(ec.gun_frames(shared, n, source), out / f"{source}_guns.mp4")
    on = ec.slide_hits(show, ec.track_events(show.path, model, out, True, tiles=tiles))
    off = ec.slide_hits(show, ec.track_events(show.path, model, out, False, tiles=tiles))
    delays = sorted(ec.carrier_delays(on, off))
    raised_off = sum(f is not None for f in off.start_frame)
    res = {"slides": show.slides, "fps": show.fps, "hold_frames": show.hold,
           "hits_carrier": on.hits, "fraction_carrier": round(on.hits / show.slides, 3),
           "raised_no_carrier": raised_off, "hits_no_carrier": off.hits,
           "delay_frames": delays}
    print(f"slideshow of {show.slides} {source} validation images with a gun: weapon start with a "
          f"track and a carrier on {on.hits} ({res['fraction_carrier']:.1%}); without the "
          f"carrier rule a start on {raised_off} ({off.hits} with a person named)", flush=True)
    if delays:
        print(f"  carrier-rule delay over {len(delays)} slides both raised: median "
              f"{delays[len(delays) // 2]} frames, max {delays[-1]} (at {show.fps:g} fps)")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="engines/models/edge_multihead.onnx")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--slides", type=int, default=48)
    ap.add_argument("--out", help="folder for the videos, configs and events (default: temp)")
    ap.add_argument("--ugr-slides", type=int, default=48,
                    help="a second slideshow of UGR validation images (close-ups: where today's "
                         "model raises events, so the carrier rule's delay shows)")
    ap.add_argument("--clips", nargs="*", default=list(ec.NO_GUN_CLIPS))
    ap.add_argument("--tiles", type=int, default=1, help="cameras[].tiles of every run")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    model, shared = Path(a.model), Path(a.shared)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        res = {"model": str(model), "tiles": a.tiles,
               "slideshow": slideshow(model, shared, out, a.slides, tiles=a.tiles),
               "slideshow_ugr": slideshow(model, shared, out, a.ugr_slides, "ugr", a.tiles),
               "clips": clip_counts(model, shared, out, a.clips, a.tiles)}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
