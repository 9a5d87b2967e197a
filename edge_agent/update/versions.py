"""Model version strings: which names are allowed (they become folder names) and their order.

A version is ``N[.N...]`` optionally followed by a pre-release tag ``aN``, ``bN``, ``rcN`` or
``devN`` (``1``, ``0.2.0``, ``0.1.1rc0``). A pre-release sorts before its release, as in PEP 440.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Tuple

from edge_agent.update.errors import UpdateError

_VERSION_RE = re.compile(r"^(\d{1,9}(?:\.\d{1,9}){0,5})(?:[.-]?(dev|a|b|rc)(\d{0,9}))?$")
_PRE_RANK = {"dev": 0, "a": 1, "b": 2, "rc": 3, None: 4}


def check(version: object) -> str:
    """``version`` if it is a valid version string, else :class:`UpdateError` ``bad_version``."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise UpdateError("bad_version", f"version {version!r} is not of the form N[.N...][rcN] "
                          "(digits and dots, optional a/b/rc/dev tag)")
    return version


def key(version: str) -> Tuple:
    """Sort key: ``key(a) < key(b)`` when ``a`` is older than ``b``."""
    m = _VERSION_RE.fullmatch(check(version))
    assert m is not None
    nums = [int(x) for x in m.group(1).split(".")]
    while len(nums) > 1 and nums[-1] == 0:  # 1.0 == 1
        nums.pop()
    return tuple(nums), _PRE_RANK[m.group(2)], int(m.group(3) or 0)


def newer(a: str, b: str) -> bool:
    """True when version ``a`` is strictly newer than ``b``."""
    return key(a) > key(b)


def highest(candidates: Iterable[object]) -> Optional[str]:
    """The newest valid version among ``candidates`` (others are skipped), or None."""
    best: Optional[str] = None
    for v in candidates:
        if isinstance(v, str) and _VERSION_RE.fullmatch(v) and (best is None or newer(v, best)):
            best = v
    return best
