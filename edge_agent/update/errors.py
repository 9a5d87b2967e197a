"""The one exception of the update stage: a refusal or failure with a machine-readable code."""

from __future__ import annotations


class UpdateError(Exception):
    """An update step refused or failed. ``code`` is stable (for replies and tests), ``message``
    says what is wrong in words, never with a secret in it."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
