"""`make demo`: validate the shipped config, then track a shared clip when everything exists."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent import cli
from edge_agent import config as cfgmod

CLIP = ("data", "video", "nvidia_Retail02_short.mp4")
MODEL = ("weights", "yolox_nano_coco.onnx")


def main(argv=None) -> int:
    """Run the demo; returns the exit status."""
    ap = argparse.ArgumentParser(prog="edge_agent.demo")
    ap.add_argument("--shared", default="../shared", help="the shared data folder")
    args = ap.parse_args(argv)
    try:
        cfgmod.load("configs/edge-agent.yaml")
    except cfgmod.ConfigError as exc:
        print(f"configs/edge-agent.yaml is invalid:\n{exc}", file=sys.stderr)
        return 2
    print("configs/edge-agent.yaml: valid")
    shared = Path(args.shared)
    clip, model = shared.joinpath(*CLIP), shared.joinpath(*MODEL)
    missing = [str(p) for p in (clip, model) if not p.exists()]
    if missing:
        print("demo needs a video and a model; not found: " + ", ".join(missing), file=sys.stderr)
        print("run: edge-agent track -i VIDEO --model MODEL.onnx -o out.mp4", file=sys.stderr)
        return 2
    Path("out").mkdir(exist_ok=True)
    print(f"tracking {clip} with {model} -> out/demo.mp4, events -> out/demo-events.jsonl")
    return cli.main(["track", "-i", str(clip), "--model", str(model), "-o", "out/demo.mp4",
                     "--events", "out/demo-events.jsonl"])


if __name__ == "__main__":
    sys.exit(main())
