"""The model store under ``<state_dir>/models``: one folder per version, current/previous pointers.

Layout::

    models/
      versions/<version>/model.onnx      the ONNX file (its sha256 is the manifest's)
                        /manifest.json   the manifest, byte for byte as it was signed
                        /signature.json  the signature envelope (absent for seeded/unsigned)
                        /info.json       name, sha256, installed time, source, signer
                        /cache/...       plans built on this device for this version
      failed/<version>-<UTC stamp>/      a version that failed its health check (kept to look at)
      current, previous                  {"version": ...}: switched atomically
      running.json                       the version the agent last ran
      floor.json                         the highest version ever current: updates must be above
      downloads/<sha256>.part            the one download in progress (resumed after a restart)
      update.json                        the journal of the update in progress

Pointers and journals are written atomically: a temporary file is written and fsynced, renamed
over the old one, and the directory is fsynced, so a crash leaves the old or the new pointer,
never a torn one. A version folder is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edge_agent.common.files import fsync_dir
from edge_agent.update import versions
from edge_agent.update.errors import UpdateError

log = logging.getLogger(__name__)

MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE, INFO_FILE = (
    "model.onnx", "manifest.json", "signature.json", "info.json")
FLOOR_FILE = "floor.json"
_STAMP = "%Y%m%dT%H%M%SZ"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file + fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A JSON object file, or None when it is missing or unreadable (logged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("model store: %s is unreadable (%s); ignoring it", path, exc)
        return None
    return data if isinstance(data, dict) else None


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class VersionInfo:
    """One stored version."""

    version: str
    path: Path
    name: str
    sha256: str
    installed: str
    source: str
    signer: Optional[str]

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_FILE


class ModelStore:
    """The versions on this device and which one runs. Not thread-safe: one owner (the updater
    thread in the daemon, or the CLI)."""

    def __init__(self, root: os.PathLike, keep: int = 3):
        if keep < 2:
            raise ValueError(f"keep must be >= 2 (current and previous), got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / "versions"
        self.failed_dir = self.root / "failed"
        self.downloads_dir = self.root / "downloads"
        for d in (self.versions_dir, self.failed_dir, self.downloads_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- paths ----------------------------------------------------------------------------

    def version_dir(self, version: str) -> Path:
        """The folder of ``version``, refused (``bad_name``) unless it lies inside the store."""
        try:
            versions.check(version)
        except UpdateError as exc:
            raise UpdateError("bad_name", exc.message) from None
        path = (self.versions_dir / version).resolve()
        if path.parent != self.versions_dir.resolve():
            raise UpdateError("bad_name", f"version {version!r} would leave the model store")
        return path

    def sweep_downloads(self, keep: Optional[Path] = None) -> List[str]:
        """Remove every ``.part`` but ``keep`` (at most one download exists at a time)."""
        removed = []
        for p in self.downloads_dir.iterdir():
            if p != keep:
                try:
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                except OSError as exc:
                    log.warning("model store: cannot remove %s: %s", p.name, exc.strerror)
                    continue
                removed.append(p.name)
        if removed:
            log.info("model store: removed stale download(s) %s", ", ".join(removed))
        return removed

    def download_path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not _SHA_RE.fullmatch(sha256):
            raise UpdateError("bad_request", f"sha256 {str(sha256)[:80]!r} is not 64 lowercase "
                              "hex digits")
        return self.downloads_dir / f"{sha256}.part"

    # --- reading --------------------------------------------------------------------------

    def get(self, version: str) -> Optional[VersionInfo]:
        path = self.version_dir(version)
        info = read_json(path / INFO_FILE)
        if info is None or not (path / MODEL_FILE).is_file():
            return None
        return VersionInfo(version, path, str(info.get("name", "?")),
                           str(info.get("sha256", "")), str(info.get("installed", "")),
                           str(info.get("source", "")), info.get("signer"))

    def stored(self) -> List[VersionInfo]:
        """Stored versions, oldest first (by version order)."""
        out = []
        for d in self.versions_dir.iterdir():
            if d.name.startswith("."):
                continue
            try:
                v = self.get(d.name)
            except UpdateError:
                continue  # a foreign folder; not ours to judge
            if v is not None:
                out.append(v)
        return sorted(out, key=lambda v: versions.key(v.version))

    def failed(self) -> List[str]:
        """The folders in ``failed/``, oldest first by version order (then time)."""
        return sorted((d.name for d in self.failed_dir.iterdir() if not d.name.startswith(".")),
                      key=_failed_key)

    def _pointer(self, name: str) -> Optional[str]:
        data = read_json(self.root / name)
        v = data.get("version") if data else None
        return v if isinstance(v, str) else None

    @property
    def current(self) -> Optional[str]:
        return self._pointer("current")

    @property
    def previous(self) -> Optional[str]:
        return self._pointer("previous")

    @property
    def running(self) -> Optional[Dict[str, Any]]:
        """What the agent ran last (``{"version", "sha256", "since"}``), persisted."""
        return read_json(self.root / "running.json")

    def floor_version(self) -> Optional[str]:
        """The version an update must be above: the highest version ever current on this device.

        It only moves up: a rollback (or ``engine activate`` of an older version) runs an older
        model but does not lower it, so a rollback cannot open the door to a signed older push.
        ``previous`` and ``running.json`` count too (a store from before ``floor.json``).
        """
        floor = read_json(self.root / FLOOR_FILE) or {}
        run = self.running or {}
        return versions.highest([floor.get("version"), self.current, self.previous,
                                 run.get("version")])

    def _set_current_pointer(self, version: str) -> None:
        """Write ``current``, raising the floor first when ``version`` is above it (a crash
        between the two leaves the floor high, never the pointer above the floor)."""
        floor = self.floor_version()
        if floor is None or versions.newer(version, floor):
            write_json(self.root / FLOOR_FILE, {"version": version, "ts": now_utc()})
        write_json(self.root / "current", {"version": version, "ts": now_utc()})

    # --- writing --------------------------------------------------------------------------

    def add(self, version: str, model: os.PathLike, manifest_bytes: bytes,
            envelope: Optional[Dict[str, Any]] = None, *, name: str, sha256: str,
            source: str, move: bool = False) -> VersionInfo:
        """Store a version (copy, or move, ``model``). An existing folder of the same version is
        replaced only when it holds another file (a re-install of the same bytes is a no-op)."""
        final = self.version_dir(version)
        old = self.get(version)
        if old is not None and old.sha256 == sha256:
            if move:
                Path(model).unlink(missing_ok=True)
            return old
        tmp = self.versions_dir / f".{version}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (shutil.move if move else shutil.copyfile)(str(model), str(tmp / MODEL_FILE))
        _fsync_file(tmp / MODEL_FILE)
        write_atomic(tmp / MANIFEST_FILE, manifest_bytes)
        if envelope is not None:
            write_json(tmp / SIGNATURE_FILE, envelope)
        write_json(tmp / INFO_FILE, {
            "version": version, "name": name, "sha256": sha256, "installed": now_utc(),
            "source": source, "signer": (envelope or {}).get("key_id")})
        if final.exists():
            if version in (self.current, self.previous):
                shutil.rmtree(tmp, ignore_errors=True)
                raise UpdateError("version_in_use", f"version {version} is stored with another "
                                  "sha256 and is current or previous; use a new version number")
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(self.versions_dir)
        info = self.get(version)
        assert info is not None
        return info

    def set_current(self, version: str) -> None:
        """Make ``version`` current; the old current becomes previous."""
        if self.get(version) is None:
            raise UpdateError("unknown_version", f"version {version} is not in the store "
                              f"(stored: {', '.join(v.version for v in self.stored()) or 'none'})")
        cur = self.current
        if cur == version:
            return
        if cur is not None:
            write_json(self.root / "previous", {"version": cur, "ts": now_utc()})
        self._set_current_pointer(version)
        self.prune()

    def rollback(self) -> str:
        """Swap current and previous; returns the new current version. The floor stays."""
        prev, cur = self.previous, self.current
        if prev is None or self.get(prev) is None:
            raise UpdateError("no_previous", "there is no previous version to roll back to")
        self._set_current_pointer(prev)
        if cur is not None:
            write_json(self.root / "previous", {"version": cur, "ts": now_utc()})
        return prev

    def set_running(self, version: str, sha256: str) -> None:
        run = self.running or {}
        if run.get("version") != version or run.get("sha256") != sha256:
            write_json(self.root / "running.json",
                       {"version": version, "sha256": sha256, "since": now_utc()})

    def mark_failed(self, version: str, reason: str) -> Optional[Path]:
        """Move a version that is neither current nor previous to ``failed/`` with the reason."""
        path = self.version_dir(version)
        if not path.exists() or version in (self.current, self.previous):
            return None
        dest = self.failed_dir / f"{version}-{time.strftime(_STAMP, time.gmtime())}"
        os.rename(path, dest)
        write_json(dest / "failed.json", {"version": version, "reason": reason, "ts": now_utc()})
        fsync_dir(self.versions_dir)
        self._prune_failed()
        return dest

    def prune(self) -> List[str]:
        """Remove the oldest versions beyond ``keep`` (never current or previous)."""
        keep = {self.current, self.previous}
        stored = self.stored()
        extra = len(stored) - self.keep
        removed = []
        for v in stored:  # oldest first
            if extra <= 0:
                break
            if v.version in keep:
                continue
            shutil.rmtree(v.path, ignore_errors=True)
            removed.append(v.version)
            extra -= 1
        if removed:
            log.info("model store: removed old version(s) %s", ", ".join(removed))
        return removed

    def _prune_failed(self) -> None:
        for name in self.failed()[:-self.keep]:
            shutil.rmtree(self.failed_dir / name, ignore_errors=True)

    def seed(self, model: os.PathLike, manifest_bytes: bytes, version: str, name: str,
             sha256: str) -> Optional[VersionInfo]:
        """On first start (no current version), store the configured default model as current."""
        if self.current is not None and self.get(self.current) is not None:
            return None
        info = self.add(version, model, manifest_bytes, None, name=name, sha256=sha256,
                        source="seed")
        self._set_current_pointer(version)
        log.info("model store %s seeded with %s %s", self.root, name, version)
        return info

    # --- the update journal ---------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.root / "update.json"

    def journal(self) -> Optional[Dict[str, Any]]:
        return read_json(self.journal_path)

    def write_journal(self, data: Dict[str, Any]) -> None:
        write_json(self.journal_path, data)

    def clear_journal(self) -> None:
        try:
            self.journal_path.unlink()
            fsync_dir(self.root)
        except FileNotFoundError:
            pass


def _failed_key(name: str) -> Tuple[int, Tuple, str]:
    """``<version>-<stamp>`` by version order, then stamp; names we cannot read sort first."""
    version, _, stamp = name.rpartition("-")
    try:
        return 1, versions.key(version), stamp
    except UpdateError:
        return 0, (), name


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
