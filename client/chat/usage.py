"""The chat's one error for a command typed wrongly, and the parsing its commands share
(``console``, ``consent``, ``business``)."""

from __future__ import annotations

import shlex


class Usage(Exception):
    """A command typed wrongly: its one-line explanation is shown."""


def one_handle(rest: str, usage: str) -> str:
    """The one handle a command takes (quotes allowed), or :class:`Usage`."""
    try:
        words = shlex.split(rest)
    except ValueError:  # an unclosed quote
        raise Usage(usage) from None
    if len(words) != 1:
        raise Usage(usage)
    return words[0]
