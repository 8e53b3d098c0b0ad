"""What the demo plays on: the relay and the operator as subprocesses, and a desk clock.

The relay runs as ``blindrelay serve`` on loopback and a temporary database,
the operator's steps as ``blindrelay admin`` and ``inspect``: the client
package never imports the server, and the demo uses the same commands an
operator would. The airline's clock can be moved so that the desk is shown
open, then closed, whatever the real time is.

Not here: the story (``story``), the clients (``sdk``, ``business``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from ..sessions import wall_clock_ms

RELAY_START_TIMEOUT_S = 15.0
"""For the relay subprocess to print its URL (interpreter start-up on a slow machine)."""
RELAY_STOP_TIMEOUT_S = 5.0
"""After SIGTERM; the relay is killed if it has not stopped by then."""


class DemoError(Exception):
    """A step of the story did not happen; shown as one line, exit status 1."""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "blindrelay.server.cli", *args]


async def run_command(*args: str) -> str:
    """Run a ``blindrelay`` command to completion; its stdout, or DemoError."""
    process = await asyncio.create_subprocess_exec(
        *_command(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise DemoError(f"blindrelay {args[0]} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


@dataclass(slots=True)
class RelayProcess:
    """``blindrelay serve`` on loopback, a random port and ``db``; its JSON log kept."""

    process: asyncio.subprocess.Process
    url: str
    db: Path
    log_lines: list[str]
    _reader: asyncio.Task[None]

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, db: Path) -> AsyncIterator[RelayProcess]:
        process = await asyncio.create_subprocess_exec(
            # A tree head every 0.2 s: the customer's first message to the airline waits
            # for the head that proves the airline's key (SPEC §15.6), not 10 s.
            *_command("serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
                      "--log-level", "DEBUG", "--sth-interval-s", "0.2"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches us; we stop the relay ourselves
        )  # fmt: skip
        log_lines: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        reader = asyncio.create_task(_collect(process.stderr, log_lines))
        try:
            try:
                first = await asyncio.wait_for(process.stdout.readline(), RELAY_START_TIMEOUT_S)
            except TimeoutError:
                raise DemoError("the relay did not start in time") from None
            text = first.decode().strip()
            if not text.startswith("listening "):
                raise DemoError(f"the relay did not start: {' '.join(log_lines[-3:]) or text}")
            yield cls(process, text.removeprefix("listening "), db, log_lines, reader)
        finally:
            await _stop(process)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, RELAY_STOP_TIMEOUT_S)

    def log_events(self) -> Counter[str]:
        """How many log lines of each ``event`` the relay wrote (so far)."""
        return Counter(_event(line) for line in self.log_lines)


async def _collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    async for raw in stream:
        lines.append(raw.decode(errors="replace").rstrip("\n"))


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), RELAY_STOP_TIMEOUT_S)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _event(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return "non-json"
    return str(record.get("event", "?")) if isinstance(record, dict) else "non-json"


class DeskClock:
    """The airline's clock, set to a chosen local time of day and running from there.

    Lets the demo show the desk open, then closed, whatever the real time is;
    only the airline's client reads it (for its away replies, SPEC §8.2).
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.offset_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset_ms

    def move_to(self, hour: int, minute: int) -> None:
        """Jump to the next ``hour:minute`` local after the time this clock shows."""
        shown = datetime.fromtimestamp(self() / 1000, self.zone)
        target = shown.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if target <= shown:
            target += timedelta(days=1)
        self.offset_ms += int((target - shown) / timedelta(milliseconds=1))

    def local(self) -> str:
        return datetime.fromtimestamp(self() / 1000, self.zone).strftime("%H:%M")
