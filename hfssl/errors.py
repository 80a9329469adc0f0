"""The errors hfssl documents; scripts turn them into one line and an exit status (hfssl.api.script)."""

from __future__ import annotations

__all__ = ["OptionError", "PushError"]


class OptionError(ValueError):
    """A recipe's options are wrong: raised before any data is read. Scripts print its one-line message and exit 2."""


class PushError(RuntimeError):
    """A push that failed; the message says why (token removed) and how to retry."""
