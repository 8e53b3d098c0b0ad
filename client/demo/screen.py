"""What the demo's terminal shows: colours, scene headings and the two views.

A scene prints what the clients see (decrypted on the device) beside or above
what the relay sees; a wide terminal gets them side by side, a narrow one or
a pipe one above the other, and colour only on a terminal that wants it.

Not here: what the lines say (``story`` for the clients' view, ``wire`` for
the relay's).
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import IO

SIDE_BY_SIDE_MIN_COLUMNS = 150
"""Narrower terminals (and pipes) get the two views one above the other."""


@dataclass(frozen=True, slots=True)
class Style:
    """ANSI colours on a terminal; nothing when piped or when NO_COLOR is set."""

    enabled: bool

    @classmethod
    def for_stream(cls, stream: IO[str]) -> Style:
        wanted = stream.isatty() and "NO_COLOR" not in os.environ
        return cls(wanted and os.environ.get("TERM") != "dumb")

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def title(self, text: str) -> str:
        return self._paint("1", text)

    def client(self, text: str) -> str:
        return self._paint("32", text)

    def relay(self, text: str) -> str:
        return self._paint("33", text)

    def dim(self, text: str) -> str:
        return self._paint("2", text)

    def badge(self, text: str) -> str:
        return self._paint("1;37;42", text)

    def warn(self, text: str) -> str:
        return self._paint("1;31", text)


class Screen:
    """Scenes of two views: "clients see" lines and "relay sees" lines."""

    def __init__(self, out: IO[str], style: Style, step: bool, columns: int) -> None:
        self.out = out
        self.style = style
        self.step = step
        self.columns = columns
        self.scene_number = 0

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def scene(self, title: str) -> None:
        if self.step and self.scene_number > 0:
            print(self.style.dim("  [Enter] next scene "), end="", file=self.out, flush=True)
            await _line_from_stdin()
        self.scene_number += 1
        heading = f"── {self.scene_number}. {title} "
        self.print()
        self.print(self.style.title(heading + "─" * max(0, min(self.columns, 100) - len(heading))))

    def note(self, text: str) -> None:
        """A fact of the setting, outside both views."""
        self.print("  " + self.style.dim(text))

    def views(self, clients: list[tuple[str, str]], relay: list[str]) -> None:
        """``clients`` as (who, text); ``relay`` as frame descriptions."""
        left = [f"{who:<8}│ {text}" for who, text in clients]
        right = relay or ["(nothing)"]
        if self.columns >= SIDE_BY_SIDE_MIN_COLUMNS:
            self._side_by_side(left, right)
            return
        self.print(self.style.dim("  what the clients see (decrypted on the device):"))
        for line in left:
            self.print("  " + self.style.client(line))
        self.print(self.style.dim("  what the relay sees:"))
        for line in right:
            self.print("  " + self.style.relay(line))

    def relay_lines(self, lines: list[str]) -> None:
        """Lines of the relay's own (``inspect``, its log), outside the two views."""
        for line in lines:
            self.print("  " + self.style.relay(line))

    def _side_by_side(self, left: list[str], right: list[str]) -> None:
        width = (self.columns - 5) // 2
        wrap_left = textwrap.TextWrapper(width=width, subsequent_indent=" " * 8 + "│   ")
        wrap_right = textwrap.TextWrapper(width=width, subsequent_indent=" " * 16)
        left_rows = [row for line in left for row in wrap_left.wrap(line)]
        right_rows = [row for line in right for row in wrap_right.wrap(line)]
        header = "what the clients see (decrypted on the device)"
        self.print("  " + self.style.dim(header.ljust(width) + " ┃ what the relay sees"))
        for index in range(max(len(left_rows), len(right_rows))):
            a = left_rows[index] if index < len(left_rows) else ""
            b = right_rows[index] if index < len(right_rows) else ""
            self.print("  " + self.style.client(a.ljust(width)) + " ┃ " + self.style.relay(b))


async def _line_from_stdin() -> str:
    """One line of input without blocking the event loop (the clients keep running).

    Input that is not a terminal (a file, /dev/null) is read at once: epoll
    cannot wait on regular files, and they never block.
    """
    if not sys.stdin.isatty():
        return sys.stdin.readline()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return sys.stdin.readline()
