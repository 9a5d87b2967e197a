"""``GET /clips/<event_id>.mp4`` for the agent's HTTP endpoint: Range requests and a token.

A browser's ``<video>`` asks for byte ranges to seek, so single ranges are answered with 206.
Off loopback the endpoint needs a bearer token (``metrics.token`` or the environment variable
:data:`TOKEN_ENV`); without one configured it refuses instead of serving video to the network.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Dict, Mapping, Optional, Tuple

from edge_agent.clips.store import CLIP_ID, ClipStore

TOKEN_ENV = "EDGE_AGENT_HTTP_TOKEN"
PREFIX = "/clips/"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 16


@dataclass
class ClipResponse:
    """What to send: a status, headers, and either a JSON error body or a byte range of a file."""

    status: int
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    path: Optional[Path] = None
    start: int = 0
    length: int = 0


def http_token(configured: Optional[str], environ: Optional[Mapping[str, str]] = None
               ) -> Optional[str]:
    """The bearer token: :data:`TOKEN_ENV` when set, else the configured one (or None)."""
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV) or configured or None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, **headers: str) -> ClipResponse:
    body = json.dumps({"error": message}).encode()
    return ClipResponse(status, {"Content-Type": "application/json", **headers}, body)


def parse_range(header: str, size: int) -> Tuple[int, int]:
    """``(start, length)`` of one ``bytes=`` range in a file of ``size`` bytes.

    Raises ValueError for a range that is malformed, multiple, or past the end (416)."""
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise ValueError(f"unsupported Range {header[:80]!r}: one 'bytes=start-end' range only")
    first, last = m.group(1), m.group(2)
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            raise ValueError("an empty suffix range")
        return max(0, size - n), min(n, size)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(f"range {header[:80]!r} is past the end of a {size}-byte clip")
    return start, end - start + 1


def clip_response(store: Optional[ClipStore], url_path: str, headers: Mapping[str, str],
                  token: Optional[str], bound_to_loopback: bool) -> ClipResponse:
    """The answer to ``GET url_path`` (which starts with :data:`PREFIX`)."""
    if store is None:
        return _error(404, "clips are disabled (events.clips.enabled: false)")
    if token is None and not bound_to_loopback:
        return _error(403, "clips are served off loopback only with a token: set metrics.token "
                      f"or {TOKEN_ENV}")
    if token is not None:
        given = headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(401, "missing or wrong bearer token",
                          **{"WWW-Authenticate": 'Bearer realm="edge-agent"'})
    name = url_path[len(PREFIX):]
    if not name.endswith(".mp4") or not CLIP_ID.match(name[:-4]):
        return _error(404, "clip URLs are /clips/<event_id>.mp4 (32 hex digits)")
    path, _, reason = store.lookup(name[:-4])
    if path is None:
        return _error(404, reason)
    size = path.stat().st_size
    base = {"Content-Type": "video/mp4", "Accept-Ranges": "bytes"}
    rng = headers.get("Range")
    if rng is None:
        return ClipResponse(200, {**base, "Content-Length": str(size)}, path=path, length=size)
    try:
        start, length = parse_range(rng, size)
    except ValueError as exc:
        return _error(416, str(exc), **{"Content-Range": f"bytes */{size}"})
    return ClipResponse(206, {**base, "Content-Length": str(length),
                              "Content-Range": f"bytes {start}-{start + length - 1}/{size}"},
                        path=path, start=start, length=length)


@dataclass
class ClipRoute:
    """The clip endpoint of one agent: its store, its token, where the server listens."""

    store: Optional[ClipStore]
    token: Optional[str]
    bound_to_loopback: bool

    def respond(self, url_path: str, headers: Mapping[str, str]) -> ClipResponse:
        """See :func:`clip_response`."""
        return clip_response(self.store, url_path, headers, self.token, self.bound_to_loopback)


def send_range(out: BinaryIO, path: Path, start: int, length: int) -> None:
    """Copy ``length`` bytes of ``path`` from ``start`` to ``out`` in 64 KiB blocks."""
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            block = f.read(min(_CHUNK, left))
            if not block:
                break  # the clip rotated out mid-send: the client sees a short body
            out.write(block)
            left -= len(block)
