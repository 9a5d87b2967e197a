"""Where the shipped default model and manifests are, from any working directory.

``pip install .`` copies ``engines/models`` and ``engines/manifests`` into the package as
``edge_agent/_shipped/engines/...`` (setup.py); a source checkout or an editable install has them
at the repository root. Both keep the same relative layout, so ``path("engines/...")`` works for
either.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # edge_agent/
_INSTALLED = _PACKAGE / "_shipped"
_CHECKOUT = _PACKAGE.parent

# model.path's default: this exact value means the shipped model wherever it is installed.
DEFAULT_MODEL = "engines/models/edge_multihead.onnx"


def root() -> Path:
    """The folder holding ``engines/``: the installed package data, else the checkout."""
    return _INSTALLED if (_INSTALLED / "engines").is_dir() else _CHECKOUT


def path(relative: str) -> Path:
    """``relative`` (e.g. ``engines/manifests``) under :func:`root`."""
    return root() / relative
