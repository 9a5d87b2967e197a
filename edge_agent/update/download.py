"""HTTP(S) download of a model file, resumable with ``Range``, size-limited, with timeouts.

The bytes go to a ``.part`` file that survives a crash; the next attempt (also after a restart of
the agent) asks for ``Range: bytes=<have>-`` and appends. A server that ignores the range (200
instead of 206) makes us start over. The size limit is checked against ``Content-Length`` before
any byte is read and against the bytes received while reading.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edge_agent.update.errors import UpdateError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

Progress = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)


@dataclass
class DownloadResult:
    path: Path
    size: int
    resumed_from: int  # bytes already on disk when this call started


def _redact(url: str) -> str:
    """The URL without user:password@ (credentials must not reach logs or replies)."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def check_url(url: object) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url) or len(url) > 2048:
        raise UpdateError("bad_request", f"url must be an http:// or https:// URL, got "
                          f"{_redact(str(url))[:100]!r}")
    return url


class Downloader:
    """Fetch ``url`` into ``part``. ``timeout_s`` bounds the connect and each read (a stalled
    server fails after that long without a byte); ``max_bytes`` bounds the file."""

    def __init__(self, timeout_s: float = 30.0, max_bytes: int = 500 << 20, retries: int = 2,
                 ca_file: Optional[str] = None, retry_delay_s: float = 0.5):
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def fetch(self, url: str, part: Path, progress: Optional[Progress] = None,
              cancelled: Callable[[], bool] = lambda: False) -> DownloadResult:
        """Download (or finish downloading) ``url`` into ``part``.

        Transient failures (connection reset, a truncated body, HTTP 5xx) are retried up to
        ``retries`` times, each resuming where the file ends. Raises :class:`UpdateError`.
        """
        check_url(url)
        start = part.stat().st_size if part.exists() else 0
        attempt = 0
        while True:
            try:
                size = self._attempt(url, part, progress, cancelled)
                return DownloadResult(part, size, start)
            except UpdateError as exc:
                transient = exc.code in ("truncated", "http_5xx", "connection")
                if not transient or attempt >= self.retries or cancelled():
                    raise
                attempt += 1
                log.warning("download %s: %s; retry %d of %d", _redact(url), exc.message,
                            attempt, self.retries)
                time.sleep(self.retry_delay_s * attempt)

    def _attempt(self, url: str, part: Path, progress: Optional[Progress],
                 cancelled: Callable[[], bool]) -> int:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "edge-agent-update"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ctx)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # we already have every byte (or more than exist)
                total = _total_from_range(exc.headers.get("Content-Range"))
                if total == have:
                    return have
                part.unlink(missing_ok=True)
                raise UpdateError("truncated", f"the server rejected resuming at byte {have} "
                                  f"(size {total}); starting over") from None
            code = "http_5xx" if exc.code >= 500 else "http_error"
            raise UpdateError(code, f"HTTP {exc.code} {exc.reason} from {_redact(url)}") from None
        except (socket.timeout, TimeoutError):
            raise UpdateError("timeout", f"no answer from {_redact(url)} within "
                              f"{self.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise UpdateError("timeout", f"no answer from {_redact(url)} within "
                                  f"{self.timeout_s:g} s") from None
            raise UpdateError("connection", f"cannot reach {_redact(url)}: {reason}") from None
        except (OSError, ValueError) as exc:
            raise UpdateError("connection", f"cannot reach {_redact(url)}: {exc}") from None
        with resp:
            return self._read_body(resp, url, part, have, progress, cancelled)

    def _read_body(self, resp, url: str, part: Path, have: int, progress, cancelled) -> int:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length_n = int(length) if length and length.isdigit() else None
        if status == 206:
            m = _RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise UpdateError("http_error", f"bad Content-Range "
                                  f"{resp.headers.get('Content-Range')!r} for a resume at {have}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        elif status == 200:
            if have:
                log.info("download %s: the server ignored Range; starting over", _redact(url))
            have, total, mode = 0, length_n, "wb"
        else:
            raise UpdateError("http_error", f"unexpected HTTP {status} from {_redact(url)}")
        if total is not None and total > self.max_bytes:
            raise UpdateError("too_large", f"the file is {total} bytes; update.max_download_mb "
                              f"allows {self.max_bytes}")
        got = have
        with open(part, mode) as f:
            while True:
                if cancelled():
                    raise UpdateError("cancelled", "the download was cancelled")
                try:
                    chunk = resp.read(CHUNK)
                except (socket.timeout, TimeoutError):
                    raise UpdateError("timeout", f"the server stalled: no data for "
                                      f"{self.timeout_s:g} s at byte {got}") from None
                except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, short read
                    f.flush()
                    os.fsync(f.fileno())
                    raise UpdateError("truncated", f"the connection broke at byte {got}"
                                      + (f" of {total}" if total else "") + f": {exc}") from None
                if not chunk:
                    break
                got += len(chunk)
                if got > self.max_bytes:
                    raise UpdateError("too_large", f"more than {self.max_bytes} bytes "
                                      "(update.max_download_mb)")
                f.write(chunk)
                f.flush()  # into the page cache: a killed agent resumes from here
                if progress is not None:
                    progress(got, total)
            f.flush()
            os.fsync(f.fileno())
        if total is not None and got != total:
            raise UpdateError("truncated", f"the download ended at byte {got} of {total}")
        return got


def _total_from_range(value: Optional[str]) -> Optional[int]:
    m = re.match(r"^bytes \*/(\d+)$", value or "")
    return int(m.group(1)) if m else None
