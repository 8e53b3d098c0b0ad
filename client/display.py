"""Text that others wrote, made safe to print on a terminal (threat model T39).

A message body, a name in a profile, a refusal's reason from the relay and a
WebSocket close reason (outside the Noise channel: anyone on the path writes it)
reach a terminal that obeys what is in them: a line break starts a line that
looks like the chat's own (another sender, a verified badge), a carriage return
or an escape sequence rewrites what is shown, sets the window title or writes
the clipboard (OSC 52), a bidi override reverses what follows. What is printed
here is shown, never obeyed: such characters appear escaped, as ``\\x1b``.

Not here: what the SDK hands the application (``Message.body`` is the sender's
text as sent; an application shows it its own way).
"""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Marks, embeddings, overrides and isolates: they reorder the text after them."""

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Controls (C0, DEL, C1), lone surrogates, line and paragraph separators."""


def _escape(c: str) -> str:
    """``\\x1b``, ``\\u202e``, ``\\n``: what a character is, in printable ASCII."""
    return c.encode("unicode_escape").decode("ascii")


def _escaped(c: str) -> str:
    if unicodedata.category(c) in _UNSAFE_CATEGORIES or c in _BIDI_CONTROLS:
        return _escape(c)
    return c


def one_line(text: str) -> str:
    """``text`` as one terminal line: every control, separator and bidi control escaped.

    Other invisible characters stay (a zero-width joiner holds an emoji together):
    within one line they cannot move the cursor or hide the chat's own words.
    """
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(map(_escaped, text))


def name(text: str) -> str:
    """A name (a business's, a badge's) with every non-printable character escaped:
    stricter than :func:`one_line`, since a zero-width or unusual space inside a name
    makes a lookalike of another name."""
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def rows(line: str, width: int, continuation: str) -> list[str]:
    """``line`` cut into rows no wider than ``width`` columns, whatever the terminal makes
    of its characters; rows after the first start with ``continuation``.

    A line longer than the terminal is wrapped by the terminal, and what follows the
    wrap starts at column 0, where the chat's own lines start: a body padded to the
    width ("ok", spaces, then ``airline [✔ verified: …]: …``) showed a forged line
    without any control character. Cut here, every row after the first is marked.
    Widths are counted high (printable ASCII one column, anything else two: no
    terminal draws a character wider), so a row is never wider than counted.
    """
    if width <= len(continuation) + 2:  # too narrow to mark anything: leave it
        return [line]
    cut: list[str] = []
    row, used = "", 0
    for c in line:
        wide = 1 if " " <= c <= "~" else 2
        if used + wide > width:
            cut.append(row)
            row, used = continuation, len(continuation)
        row += c
        used += wide
    cut.append(row)
    return cut


def lines(text: str) -> list[str]:
    """``text`` split at its line breaks (``\\n``, ``\\r``, ``\\u2028``…), each
    :func:`one_line`: a caller shows the second and later lines as continuations."""
    return [one_line(line) for line in text.splitlines()] or [""]


__all__ = ["lines", "name", "one_line", "rows"]
