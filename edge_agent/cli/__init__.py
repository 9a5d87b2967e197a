"""`edge-agent` command line.

Each subcommand's arguments are declared here; its handler lives in the module that owns the
work and is imported only when the subcommand runs (so `config show` does not load OpenCV or
ONNX Runtime). A handler takes the parsed ``argparse.Namespace`` and returns the exit status.

Exit statuses: :mod:`edge_agent.common.exitcodes`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable, Dict, List, Optional

from edge_agent import __version__
from edge_agent.common.exitcodes import EXIT_INTERRUPTED

# subcommand -> "module:function" of its handler, imported only when the subcommand runs
HANDLERS: Dict[str, str] = {
    "config": "edge_agent.cli.config_cmd:main",
    "run": "edge_agent.daemon.agent:cmd_run",
    "track": "edge_agent.cli.track_cmd:cmd_track",
    "engine": "edge_agent.inference.cli:main",
    "train": "edge_agent.model.train:main",
    "export": "edge_agent.model.export:main",
    "listen": "edge_agent.mqtt.listen:main",
    "bench": "edge_agent.cli.bench_cmd:main",
    "service": "edge_agent.cli.service_cmd:main",
    "clips": "edge_agent.clips.command:main",
}


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="validate or show a config file")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    v = csub.add_parser("validate", help="check a config file and exit (status 2 when invalid)")
    v.add_argument("file")
    v.add_argument("--schema-only", action="store_true",
                   help="check the file alone (syntax, keys, ranges), not the model, video files "
                        "and certificates it names (default: every check `run` makes at start)")
    s = csub.add_parser("show", help="print the effective config, secrets masked")
    s.add_argument("file", nargs="?", help="config file (default: built-in defaults)")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", "-C", required=True, help="YAML config file")


def _add_track(sub) -> None:
    p = sub.add_parser("track", help="one-shot: detect and track a video file, write events")
    p.add_argument("-i", "--input", required=True, help="video file")
    p.add_argument("-c", "--confidence", type=float, default=0.3, help="score threshold")
    p.add_argument("--model", help="ONNX model (default: the config's model.path)")
    p.add_argument("--manifest", help="model manifest JSON (default: beside the model)")
    p.add_argument("-o", "--output", help="annotated output video (.mp4)")
    p.add_argument("--events", help="JSON-lines file for events (default: stdout)")
    p.add_argument("--config", "-C", help="YAML config for rules and tracker parameters; its "
                   "first camera's zones, detect_every, tiles and tile_heads apply to the video")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_engine(sub) -> None:
    p = sub.add_parser("engine", help="inspect, build and benchmark models/engines")
    esub = p.add_subparsers(dest="engine_cmd", required=True)
    i = esub.add_parser("inspect", help="print a model's manifest and check the ONNX against it")
    i.add_argument("model")
    i.add_argument("--manifest")
    i.add_argument("--engine-dir", default="engines", help="engine store (manifests, plans)")
    b = esub.add_parser("build", help="build a TensorRT plan for this device")
    b.add_argument("model")
    b.add_argument("--manifest")
    b.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    b.add_argument("--max-batch", type=int, default=4)
    b.add_argument("--workspace-mb", type=int, default=1024)
    b.add_argument("--engine-dir", default="engines")
    b.add_argument("--no-progress", action="store_true", help="no progress bar / spinner")
    n = esub.add_parser("bench", help="latency and throughput of a model on this machine")
    n.add_argument("model")
    n.add_argument("--manifest")
    n.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto")
    n.add_argument("--max-batch", type=int, default=4)
    n.add_argument("--iterations", type=int, default=50)
    n.add_argument("--engine-dir", default="engines")
    n.add_argument("--video", help="take frames from this video (default: 1080p noise)")
    n.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    from edge_agent.update.cli import add_parsers  # keygen, sign, list, install, push, ...

    add_parsers(esub)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the multi-head model (extra [train])")
    p.add_argument("--config", "-C", help="training YAML (e.g. configs/train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument("--smoke", action="store_true", help="a few steps on a few images per source")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a training checkpoint to ONNX + manifest ([train])")
    p.add_argument("checkpoint", help="checkpoint .pt written by `edge-agent train`")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write (manifest beside it)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the ONNX Runtime and FP16 checks (and the validation metrics)")
    p.add_argument("--val-limit", type=int, default=0, help="validate on N images per source")
    p.add_argument("--config", "-C", help="training YAML (default: the one saved in CKPT)")


def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="subscribe to a broker and print events live")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--device", default="+", help="device id (default: all)")
    p.add_argument("--prefix", default="edge-agent")
    p.add_argument("--json", action="store_true", help="print raw JSON lines")
    p.add_argument("--username")
    p.add_argument("--password", help="or env EDGE_AGENT_MQTT_PASSWORD")
    p.add_argument("--ca-file")
    p.add_argument("--count", type=int, default=0, help="exit after N events (0 = never)")
    p.add_argument("--timeout", type=float, default=0, help="exit after S seconds (0 = never)")
    p.add_argument("--ack", action="store_true",
                   help="end-to-end consumer: store events in --store, then acknowledge them "
                        "on <prefix>/<device>/ack (mqtt.delivery: end_to_end)")
    p.add_argument("--store", help="with --ack: JSON-lines file the events are appended to")
    p.add_argument("--client-id", default="edge-agent-listen-ack",
                   help="with --ack: the persistent session's client id")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5",
                   help="with --ack: MQTT version (3.1.1 for brokers without MQTT 5)")
    p.add_argument("--quiet", action="store_true",
                   help="with --ack: print only gaps and the summary, no line per event")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench_cmd", required=True)
    t = bsub.add_parser("tracker", help="tracker update() speed on real and dense data")
    t.add_argument("--frames", type=int, default=0, help="limit frames per sequence")
    t.add_argument("--mot-dir", help="MOTChallenge folder (default: ../shared/data/mot)")
    t.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")


def _add_service(sub) -> None:
    p = sub.add_parser("service", help="install or uninstall the systemd service (install.sh)")
    ssub = p.add_subparsers(dest="service_cmd", required=True)
    for name, text in (("install", "install (or with --uninstall remove) the service"),
                       ("uninstall", "remove the venv and unit; keep config and data")):
        s = ssub.add_parser(name, help=text)
        s.add_argument("--prefix", help="everything under this directory (no root needed)")
        s.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
        s.add_argument("--uninstall", action="store_true", help=argparse.SUPPRESS
                       if name == "uninstall" else "remove what the install added")
        s.add_argument("--purge", action="store_true",
                       help="with uninstall: also remove config, data and the user")
        s.add_argument("--extra", choices=["auto", "cpu", "gpu", "none"],
                       help="pip extra (default auto: none on Jetson, gpu with NVIDIA, else cpu)")
        s.add_argument("--python", help="interpreter for the venv (default python3)")


def _add_clips(sub) -> None:
    from edge_agent.clips.command import add_parser

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs test)."""
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Edge camera daemon: detect, track, publish over MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_track, _add_config, _add_engine, _add_train, _add_export,
                _add_listen, _add_bench, _add_service, _add_clips):
        add(sub)
    return parser


def _resolve(command: str, spec: Optional[str] = None) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = (spec or HANDLERS[command]).split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `edge-agent` console script."""
    args = build_parser().parse_args(argv)
    handler = _resolve(args.command, getattr(args, "handler", None))
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
