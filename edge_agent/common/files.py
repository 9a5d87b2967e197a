"""Files: the sha256 of one, read in blocks (models, clips, downloads), and an fsync of a
directory (so a rename in it survives a power cut).

Standard library only: the `clips` command imports this at argument-parse time and the daemon's
start-up before any heavy package."""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20  # 1 MiB: large enough that a 100 MB model hashes at disk speed


def sha256_file(path: os.PathLike) -> str:
    """Hex sha256 of the file at ``path`` (OSError when it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: os.PathLike) -> None:
    """fsync a directory, so a rename inside it survives a power cut."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
