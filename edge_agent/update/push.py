"""``edge-agent engine push``: send a signed model to devices and follow each to its end.

One device: send ``cmd/engine.update``, draw its progress, exit 0 on COMMITTED, 1 with the
reason otherwise. Several (``--devices A,B,C --canary N``): the first N devices are updated first,
then the others one by one, stopping at the first device that does not commit (like the abort
threshold of a fleet rollout); the devices after it are never asked.
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from edge_agent.common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from edge_agent.update.errors import UpdateError
from edge_agent.update.signing import envelope_manifest, read_envelope_file

COMMAND = "engine.update"
TERMINAL = ("COMMITTED", "ROLLED_BACK", "FAILED")


@dataclass
class Outcome:
    device: str
    state: str  # COMMITTED, ROLLED_BACK, FAILED, REFUSED, TIMEOUT, SKIPPED
    reason: str = ""


class _Bar:
    """One progress line per device on stderr (redrawn on a terminal, a line per change else)."""

    def __init__(self, device: str, enabled: bool):
        self.device, self.enabled = device, enabled
        self.tty = sys.stderr.isatty()
        self._last = ""

    def show(self, state: str, progress: Optional[float], message: str = "") -> None:
        if not self.enabled:
            return
        pct = f"{progress:5.1f}%" if isinstance(progress, (int, float)) else "      "
        fill = int((progress or 0) / 100 * 20) if isinstance(progress, (int, float)) else 0
        text = f"{self.device:<16} [{'#' * fill:<20}] {state:<12} {pct} {message[:60]}"
        if text == self._last:
            return
        self._last = text
        sys.stderr.write(f"\r{text:<120}" if self.tty else text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def follow(req, device: str, request_id: str, timeout: float, bar: _Bar) -> Outcome:
    """Wait for ``request_id``'s terminal state on ``device``."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Outcome(device, "TIMEOUT", f"no final state within {timeout:g} s")
        try:
            dev, kind, doc = req.inbox.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if dev != device or doc.get("request_id") != request_id:
            continue  # another device, or an older update's retained progress
        if kind == "reply" and not doc.get("ok") and "result" not in doc:
            err = doc.get("error") or {}
            return Outcome(device, "REFUSED", f"{err.get('code')}: {err.get('message')}")
        state = doc.get("state") if kind == "progress" else (doc.get("result") or {}).get("state")
        body = doc if kind == "progress" else doc.get("result") or {}
        if not state:
            continue
        bar.show(state, body.get("progress"), body.get("message") or "")
        if state in TERMINAL:
            err = body.get("error") or {}
            reason = f"{err.get('code')}: {err.get('message')}" if err else body.get("message", "")
            return Outcome(device, state, reason)


def update_one(req, device: str, payload: Dict[str, Any], args) -> Outcome:
    request_id = f"push-{payload['version']}-{uuid.uuid4().hex[:8]}"
    req.watch(device, COMMAND)
    req.send(device, COMMAND, dict(payload, request_id=request_id))
    bar = _Bar(device, not args.no_progress)
    try:
        return follow(req, device, request_id, args.timeout, bar)
    finally:
        bar.done()


def plan(args) -> List[str]:
    """The devices in rollout order (canaries first)."""
    if bool(args.device) == bool(args.devices):
        raise UpdateError("bad_request", "give either --device ID or --devices A,B,...")
    devices = [args.device] if args.device else [d.strip() for d in args.devices.split(",")
                                                  if d.strip()]
    if len(set(devices)) != len(devices):
        raise UpdateError("bad_request", "a device is listed twice in --devices")
    if args.canary < 0 or args.canary > len(devices):
        raise UpdateError("bad_request", f"--canary {args.canary} must be 0..{len(devices)}")
    return devices


def push(args: argparse.Namespace) -> int:
    from edge_agent.mqtt.requester import Requester

    devices = plan(args)
    env = read_envelope_file(args.sig)
    m = envelope_manifest(env)
    if str(m.get("version")) != args.version:
        print(f"edge-agent engine push: --version {args.version} but {args.sig} signs version "
              f"{m.get('version')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    payload = {"url": args.url, "sha256": m.get("sha256"), "version": args.version,
               "signature": env}
    req = Requester(args.host, args.port, args.prefix, args.username, args.password,
                    args.ca_file)
    try:
        req.connect()
    except (ConnectionError, ValueError) as exc:
        print(f"edge-agent engine push: {exc}", file=sys.stderr)
        return EXIT_FAILED
    outcomes: List[Outcome] = []
    try:
        for i, dev in enumerate(devices):
            out = update_one(req, dev, payload, args)
            outcomes.append(out)
            if out.state != "COMMITTED":
                outcomes += [Outcome(d, "SKIPPED", f"{dev} did not commit")
                             for d in devices[i + 1:]]
                break
    except ConnectionError as exc:
        print(f"edge-agent engine push: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        req.close()
    for o in outcomes:
        role = " (canary)" if devices.index(o.device) < args.canary else ""
        print(f"{o.device}{role}: {o.state}" + (f": {o.reason}" if o.reason and
                                                o.state != "COMMITTED" else ""))
    return EXIT_OK if all(o.state == "COMMITTED" for o in outcomes) else EXIT_FAILED
