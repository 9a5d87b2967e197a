"""HTTP(S) download of a model file: resumable with ``Range``, bounded in size, time and rate,
and abortable from another thread at once.

The bytes go to a ``.part`` file that survives a crash; the next attempt (also after a restart of
the agent) asks for ``Range: bytes=<have>-`` and appends. A server that ignores the range (200
instead of 206) makes us start over. The size limit (the signed size when the manifest declares
one, else ``max_bytes``) is checked against ``Content-Length`` before any byte is read and
against the bytes received while reading.

Time bounds: ``timeout_s`` per connect and per read (a silent server), ``min_rate`` bytes/s over
every ``timeout_s`` window (a trickling one), and ``deadline_s`` for the whole download, retries
included. :meth:`Downloader.abort` (a cancel, a SIGTERM, the deadline) shuts the socket down, so
a read blocked on a slow server returns at once instead of after its timeout.

Redirects are followed by hand (at most ``max_redirects``), each target checked with the same
rules as the request's URL: ``http``/``https`` only, and never from ``https`` down to ``http``.
Proxies come from the environment (``http_proxy``, ``https_proxy``, ``no_proxy``), as urllib
reads them.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from edge_agent.update.errors import UpdateError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_REDIRECTS = (301, 302, 303, 307, 308)

Progress = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)
Connection = Union[http.client.HTTPConnection, http.client.HTTPSConnection]


@dataclass
class DownloadResult:
    path: Path
    size: int
    resumed_from: int  # bytes already on disk when this call started


def _redact(url: str) -> str:
    """The URL without user:password@ (credentials must not reach logs or replies)."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def check_url(url: object) -> str:
    """``url`` if it is an http:// or https:// URL we may fetch, else UpdateError
    ``bad_request``."""
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url) or len(url) > 2048 \
            or any(c.isspace() or ord(c) < 32 for c in url):
        raise UpdateError("bad_request", f"url must be an http:// or https:// URL, got "
                          f"{_redact(str(url))[:100]!r}")
    return url


def check_redirect(origin: str, target: str) -> str:
    """The absolute URL a redirect from ``origin`` points to, checked like a request's URL;
    UpdateError ``bad_redirect`` when it is another scheme or a downgrade to http."""
    url = urllib.parse.urljoin(origin, target.strip())
    try:
        check_url(url)
    except UpdateError:
        raise UpdateError("bad_redirect", f"{_redact(origin)} redirects to "
                          f"{_redact(url)[:100]!r}; only http:// and https:// are followed"
                          ) from None
    if origin.startswith("https:") and url.startswith("http:"):
        raise UpdateError("bad_redirect", f"{_redact(origin)} redirects from https down to "
                          f"{_redact(url)[:100]!r}")
    return url


class Downloader:
    """Fetch a URL into a ``.part`` file. Used by one thread at a time; :meth:`abort` may be
    called from any thread."""

    def __init__(self, timeout_s: float = 30.0, max_bytes: int = 500 << 20, retries: int = 2,
                 ca_file: Optional[str] = None, retry_delay_s: float = 0.5,
                 deadline_s: float = 3600.0, min_rate: float = 0.0, max_redirects: int = 5):
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.deadline_s = deadline_s
        self.min_rate = min_rate  # bytes/s over each timeout_s window; 0: no floor
        self.max_redirects = max_redirects
        self._ctx = ssl.create_default_context(cafile=ca_file) if ca_file else \
            ssl.create_default_context()
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None  # of the connection in use
        self._interrupted = False
        self._late = False  # the deadline fired
        self._generation = 0  # of the fetch in progress: a late timer of an older one is void

    # --- control from other threads ---------------------------------------------------------

    def abort(self) -> None:
        """End the download in progress now: its connection is shut down (a blocked read
        returns at once). The caller's ``cancelled()`` says why; without one it is a timeout."""
        with self._lock:
            self._interrupted = True
            sock = self._sock
        if sock is not None:
            try:  # the plain socket's shutdown: an SSLSocket's would drop its TLS state under
                # the reading thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def _expire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._late = True
        self.abort()

    def _stopped(self, cancelled: Callable[[], bool]) -> Optional[UpdateError]:
        """Why the download must end now (cancel or deadline), or None."""
        if cancelled():
            return UpdateError("cancelled", "the download was cancelled")
        with self._lock:
            late = self._late
        if late:
            return UpdateError("timeout", f"the download did not finish within "
                               f"update.download_deadline_s ({self.deadline_s:g} s)")
        return None

    # --- the download ------------------------------------------------------------------------

    def fetch(self, url: str, part: Path, progress: Optional[Progress] = None,
              cancelled: Callable[[], bool] = lambda: False,
              size: Optional[int] = None) -> DownloadResult:
        """Download (or finish downloading) ``url`` into ``part``.

        ``size``: the exact size the signed manifest declares (else at most ``max_bytes``).
        Transient failures (connection reset, a truncated body, HTTP 5xx) are retried up to
        ``retries`` times, each resuming where the file ends. Raises :class:`UpdateError`.
        """
        check_url(url)
        with self._lock:
            self._interrupted, self._late = False, False
            self._generation += 1
            generation = self._generation
        start = part.stat().st_size if part.exists() else 0
        timer = threading.Timer(self.deadline_s, self._expire, (generation,))
        timer.daemon = True
        timer.start()
        attempt = 0
        try:
            while True:
                why = self._stopped(cancelled)
                if why is not None:
                    raise why
                try:
                    got = self._attempt(url, part, progress, cancelled, size)
                    return DownloadResult(part, got, start)
                except UpdateError as exc:
                    why = self._stopped(cancelled)
                    if why is not None:
                        raise why from None
                    transient = exc.code in ("truncated", "http_5xx", "connection")
                    if not transient or attempt >= self.retries:
                        raise
                    attempt += 1
                    log.warning("download %s: %s; retry %d of %d", _redact(url), exc.message,
                                attempt, self.retries)
                    time.sleep(self.retry_delay_s * attempt)
        finally:
            timer.cancel()
            with self._lock:
                self._sock = None

    def _attempt(self, url: str, part: Path, progress: Optional[Progress],
                 cancelled: Callable[[], bool], size: Optional[int]) -> int:
        have = part.stat().st_size if part.exists() else 0
        limit = size if size is not None else self.max_bytes
        if have > limit:  # not what the signed manifest describes: start over
            part.unlink()
            have = 0
        if size is not None and have == size:
            return have  # complete; VERIFYING hashes it
        conn, resp = self._open(url, have)
        try:
            return self._read_body(resp, url, part, have, progress, cancelled, limit, size)
        finally:
            conn.close()

    def _open(self, url: str, have: int):
        """Connect and send the GET, following checked redirects; (connection, response)."""
        origin = url
        for _ in range(self.max_redirects + 1):
            conn, resp = self._request(url, origin, have)
            if resp.status not in _REDIRECTS:
                return conn, resp
            location = resp.getheader("Location") or ""
            conn.close()
            if not location:
                raise UpdateError("http_error", f"HTTP {resp.status} without a Location from "
                                  f"{_redact(url)}")
            url = check_redirect(url, location)
            log.info("download: redirected to %s", _redact(url))
        raise UpdateError("bad_redirect", f"more than {self.max_redirects} redirects from "
                          f"{_redact(origin)}")

    def _request(self, url: str, origin: str, have: int):
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UpdateError("bad_request", f"bad port in {_redact(url)[:100]!r}") from None
        host = parts.hostname  # without the brackets of an IPv6 literal
        if not host:
            raise UpdateError("bad_request", f"no host in {_redact(url)[:100]!r}")
        conn, absolute, headers = self._connection(parts.scheme, host, port)
        headers["User-Agent"] = "edge-agent-update"
        if have:
            headers["Range"] = f"bytes={have}-"
        same_origin = urllib.parse.urlsplit(origin)[:2] == parts[:2]
        if parts.username is not None and same_origin:  # never to another host after a redirect
            cred = f"{urllib.parse.unquote(parts.username)}:" \
                   f"{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if absolute:  # a plain-http proxy takes the whole URL (without credentials)
            path = urllib.parse.urlunsplit((parts.scheme, _hostport(host, parts.port), path, "",
                                            ""))
        try:
            conn.connect()
            with self._lock:  # kept here: the connection drops it once the response has it
                self._sock = conn.sock
                interrupted = self._interrupted
            if interrupted:  # aborted while connecting: the socket was not there to shut down
                raise OSError("aborted")
            conn.request("GET", path, headers=headers)
            return conn, conn.getresponse()
        except (socket.timeout, TimeoutError):
            conn.close()
            raise UpdateError("timeout", f"no answer from {_redact(url)} within "
                              f"{self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise UpdateError("connection", f"cannot reach {_redact(url)}: {exc}") from None

    def _connection(self, scheme: str, host: str, port: int
                    ) -> Tuple[Connection, bool, Dict[str, str]]:
        """A connection to ``host`` or, as the environment says (``https_proxy``, ``http_proxy``,
        ``no_proxy``), through a proxy: a CONNECT tunnel for https, else the whole URL in the
        request line (then the second value is True; the third: headers for that proxy)."""
        proxy = urllib.request.getproxies().get(scheme)
        if proxy and urllib.request.proxy_bypass(host):
            proxy = None
        if proxy:
            pp = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if pp.scheme != "http" or not pp.hostname:
                raise UpdateError("bad_request", f"{scheme}_proxy must be an http:// proxy")
            p_headers: Dict[str, str] = {}
            if pp.username is not None:
                cred = f"{urllib.parse.unquote(pp.username)}:" \
                       f"{urllib.parse.unquote(pp.password or '')}"
                p_headers["Proxy-Authorization"] = \
                    "Basic " + base64.b64encode(cred.encode()).decode()
            p_port = pp.port or 80
            if scheme == "https":
                conn: Connection = http.client.HTTPSConnection(
                    pp.hostname, p_port, timeout=self.timeout_s, context=self._ctx)
                conn.set_tunnel(host, port, headers=p_headers)
                return conn, False, {}
            conn = http.client.HTTPConnection(pp.hostname, p_port, timeout=self.timeout_s)
            return conn, True, p_headers
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout_s,
                                               context=self._ctx), False, {}
        return http.client.HTTPConnection(host, port, timeout=self.timeout_s), False, {}

    def _read_body(self, resp: http.client.HTTPResponse, url: str, part: Path, have: int,
                   progress: Optional[Progress], cancelled: Callable[[], bool], limit: int,
                   size: Optional[int]) -> int:
        status = resp.status
        length = resp.getheader("Content-Length")
        length_n = int(length) if length and length.isdigit() else None
        if status == 416 and have:  # we already have every byte (or more than exist)
            total = _total_from_range(resp.getheader("Content-Range"))
            if total == have:
                return have
            part.unlink(missing_ok=True)
            raise UpdateError("truncated", f"the server rejected resuming at byte {have} "
                              f"(size {total}); starting over")
        if status == 206:
            m = _RANGE_RE.match(resp.getheader("Content-Range") or "")
            if not m or int(m.group(1)) != have:
                raise UpdateError("http_error", f"bad Content-Range "
                                  f"{resp.getheader('Content-Range')!r} for a resume at {have}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        elif status == 200:
            if have:
                log.info("download %s: the server ignored Range; starting over", _redact(url))
            have, total, mode = 0, length_n, "wb"
        elif status >= 400:
            code = "http_5xx" if status >= 500 else "http_error"
            raise UpdateError(code, f"HTTP {status} {resp.reason} from {_redact(url)}")
        else:
            raise UpdateError("http_error", f"unexpected HTTP {status} from {_redact(url)}")
        _check_total(total, limit, size)
        return self._copy(resp, part, mode, have, total, progress, cancelled, limit)

    def _copy(self, resp: http.client.HTTPResponse, part: Path, mode: str, have: int,
              total: Optional[int], progress: Optional[Progress],
              cancelled: Callable[[], bool], limit: int) -> int:
        got = have
        window_start, window_got = time.monotonic(), got
        with open(part, mode) as f:
            while True:
                try:
                    chunk = resp.read1(CHUNK)  # what arrived: a trickle must not fill 64 KiB first
                except (socket.timeout, TimeoutError):
                    raise UpdateError("timeout", f"the server stalled: no data for "
                                      f"{self.timeout_s:g} s at byte {got}") from None
                except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, short
                    why = self._stopped(cancelled)
                    if why is not None:
                        raise why from None
                    raise UpdateError("truncated", f"the connection broke at byte {got}"
                                      + (f" of {total}" if total else "") + f": {exc}") from None
                why = self._stopped(cancelled)
                if why is not None:  # an abort shows as an early end of the body
                    raise why
                if not chunk:
                    break
                got += len(chunk)
                if got > limit:
                    raise UpdateError("too_large", f"more than {limit} bytes (the signed size or "
                                      "update.max_download_mb)")
                f.write(chunk)
                f.flush()  # into the page cache: a killed agent resumes from here
                if progress is not None:
                    progress(got, total)
                now = time.monotonic()
                if now - window_start >= self.timeout_s:
                    rate = (got - window_got) / (now - window_start)
                    if rate < self.min_rate:
                        raise UpdateError("timeout", f"the server sends {rate:.0f} bytes/s, below "
                                          f"update.download_min_rate_kb_s ({self.min_rate:g} "
                                          "bytes/s)")
                    window_start, window_got = now, got
            f.flush()
            os.fsync(f.fileno())
        if total is not None and got != total:
            raise UpdateError("truncated", f"the download ended at byte {got} of {total}")
        return got


def _check_total(total: Optional[int], limit: int, size: Optional[int]) -> None:
    if total is None:
        return
    if size is not None and total != size:
        raise UpdateError("size_mismatch", f"the server has {total} bytes; the signed manifest "
                          f"says {size}")
    if total > limit:
        raise UpdateError("too_large", f"the file is {total} bytes; update.max_download_mb "
                          f"allows {limit}")


def _hostport(host: str, port: Optional[int]) -> str:
    name = f"[{host}]" if ":" in host else host
    return f"{name}:{port}" if port else name


def _total_from_range(value: Optional[str]) -> Optional[int]:
    m = re.match(r"^bytes \*/(\d+)$", value or "")
    return int(m.group(1)) if m else None
