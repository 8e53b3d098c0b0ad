"""``blindrelay demo``: the whole story in one command, and what the relay saw of it.

An airline asks a customer for consent, notifies her of a flight time, answers
her question, sends its away reply after hours, and is refused once she blocks
it — played over real sockets against a relay running as a subprocess on a
temporary database. Every scene shows two views: what each client sees (the
plaintext, decrypted on the device) and what the relay sees — the frames the
clients put on the wire and the relay sent back, decoded as the relay decodes
them: handles, frame types, intents, sizes and ciphertext. It ends with the
relay's own inventory (``blindrelay inspect``) and a digest of its log.

The relay and the operator's commands are subprocesses (``serve``, ``admin``,
``inspect``): the client package never imports the server, and the demo uses
the same commands an operator would.

Not here: the SDK (``sdk``, ``business``), the interactive client (``chat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TypeVar
from zoneinfo import ZoneInfo

from blindrelay.protocol import codec, frames
from blindrelay.protocol.business import OpeningHours, is_open
from blindrelay.protocol.crypto.session import MessageType, peek_envelope
from blindrelay.protocol.errors import (
    ErrorCode,
    MalformedEnvelope,
    ProtocolError,
    RecipientUnavailable,
)
from blindrelay.protocol.signed import ConsentStatement, unverified_body

from .business import Business
from .sdk import Client, Message
from .sessions import wall_clock_ms
from .transport import tapped

T = TypeVar("T")

STEP_TIMEOUT_S = 10.0
"""Longest wait for one event of the story; a healthy loopback run needs milliseconds."""
RELAY_START_TIMEOUT_S = 15.0
"""For the relay subprocess to print its URL (interpreter start-up on a slow machine)."""
RELAY_STOP_TIMEOUT_S = 5.0
"""After SIGTERM; the relay is killed if it has not stopped by then."""
CIPHERTEXT_HEX_BYTES = 12
"""Ciphertext bytes shown in hex: enough to see noise, short enough for one line."""
SIDE_BY_SIDE_MIN_COLUMNS = 150
"""Narrower terminals (and pipes) get the two views one above the other."""

USER, BUSINESS = "maria", "skyway"
BUSINESS_NAME = "Skyway Air"
TIMEZONE = "Europe/Berlin"
OPEN_MIN, CLOSE_MIN = 8 * 60, 20 * 60
"""The airline's service desk: daily 08:00–20:00 in its own time zone."""

EXPLANATION = (
    "Skyway Air would like to send you flight times and gate changes for your bookings."
)
NOTIFICATION = "SK 1234 Frankfurt to Lisbon departs 14:25 from gate B7"
QUESTION = "Can I take my folding bike on SK 1234?"
ANSWER = "Yes, a folded bike flies free as cabin luggage."
LATE_QUESTION = "Is the lounge in Lisbon open late?"
AWAY_MESSAGE = "Our service desk is closed (08:00-20:00 Berlin time); we answer in the morning."
LAST_NOTIFICATION = "SK 1234 is boarding now at gate B7"
STORY_PLAINTEXTS = (
    EXPLANATION, NOTIFICATION, QUESTION, ANSWER, LATE_QUESTION, AWAY_MESSAGE, LAST_NOTIFICATION,
)  # fmt: skip
"""Every secret of the story; the tests check none of them is in a relay line."""


class DemoError(Exception):
    """A step of the story did not happen; shown as one line, exit status 1."""


# --- Output -------------------------------------------------------------------------


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


# --- What the relay sees -------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data[:CIPHERTEXT_HEX_BYTES].hex() + "…"


def describe_envelope(body: bytes) -> str:
    """An envelope as the relay can parse it (SPEC §13.6): its kind and its ciphertext."""
    try:
        info = peek_envelope(body)
    except MalformedEnvelope:
        return f"{len(body)} B, not an envelope"
    if info.message_type is MessageType.PREKEY:
        assert info.sender_identity_key is not None  # peek_envelope: a prekey message has one
        kind = f"prekey message from key {info.sender_identity_key[:6].hex()}…"
    else:
        kind = "message"
    return f"{len(body)} B {kind}, ciphertext {_hex(info.ciphertext)}"


def _categories(values: tuple[str, ...] | None) -> str:
    return ",".join(values) if values else "-"


def describe_sent(frame: frames.Frame) -> str | None:
    """A frame a client sent, as the relay reads it; None for handshake noise."""
    match frame:
        case frames.Register():
            return (
                f"REGISTER handle={frame.handle} kind={frame.kind}"
                f" identity key {frame.identity_key[:6].hex()}… (public)"
            )
        case frames.PrekeysUpload():
            signed = "signed prekey + " if frame.signed_prekey is not None else ""
            return f"PREKEYS_UPLOAD {signed}{len(frame.one_time)} one-time prekeys (public halves)"
        case frames.ProfilePut():
            return f"PROFILE_PUT signed profile, {len(frame.profile)} B (public by design)"
        case frames.ProfileFetch() | frames.BundleFetch():
            return f"{frame.TYPE.name} handle={frame.handle}"
        case frames.Send():
            extra = ""
            if frame.category is not None:
                extra = f" category={frame.category}"
            if frame.categories is not None:
                extra = f" categories={_categories(frame.categories)}"
            envelope = describe_envelope(frame.body)
            return f"SEND to={frame.to} intent={frame.intent}{extra} {envelope}"
        case frames.Statement():
            try:
                statement = unverified_body(ConsentStatement, frame.statement)
            except ProtocolError:
                return f"STATEMENT {len(frame.statement)} B (undecodable)"
            what = statement.action
            if statement.categories:
                what += " " + _categories(statement.categories)
            return f"STATEMENT {what} -> {statement.target} (signed, not secret)"
        case frames.Ack():
            return f"ACK deliveries {','.join(map(str, frame.delivery_ids))} (relay deletes them)"
    return None


def describe_received(frame: frames.Frame) -> str | None:
    """A frame the relay sent to a client; None for handshake noise."""
    match frame:
        case frames.Deliver():
            extra = ""
            if frame.category is not None:
                extra = f" category={frame.category}"
            if frame.categories is not None:
                extra = f" categories={_categories(frame.categories)}"
            body = (
                f"{len(frame.body)} B signed statement (forwarded as received)"
                if frame.intent == frames.Intent.STATEMENT
                else describe_envelope(frame.body)
            )
            return (
                f"DELIVER #{frame.delivery_id} from={frame.sender} ({frame.sender_kind})"
                f" intent={frame.intent}{extra} {body}"
            )
        case frames.Profile():
            badge = "with badge" if frame.badge is not None else "no badge"
            return f"PROFILE handle={frame.handle} ({badge})"
        case frames.Bundle():
            return f"BUNDLE handle={frame.handle} (public prekeys)"
        case frames.Error():
            try:
                name = ErrorCode(frame.code).name
            except ValueError:
                name = "unknown"
            return f"ERROR {frame.code} {name}"
        case frames.Welcome():
            return f"WELCOME handle={frame.handle} queued={frame.queued}"
    return None


@dataclass(slots=True)
class Wire:
    """Every message each client moved, in the order they moved (one event loop)."""

    messages: list[tuple[str, str, bytes]] = field(default_factory=list)
    _mark: int = 0

    def tap(self, who: str) -> Callable[[str, bytes], None]:
        return lambda direction, data: self.messages.append((who, direction, data))

    def relay_view(self) -> list[str]:
        """The frames since the last call, described from the relay's side."""
        lines: list[str] = []
        for who, direction, data in self.messages[self._mark :]:
            frame = codec.decode(data)
            if direction == "out":
                text = describe_sent(frame)
                arrow = f"{who} → relay"
            else:
                text = describe_received(frame)
                arrow = f"relay → {who}"
            if text is not None:
                lines.append(f"{arrow:<15} {text}")
        self._mark = len(self.messages)
        return lines

    @property
    def total_bytes(self) -> int:
        return sum(len(data) for _, _, data in self.messages)


# --- The relay and the operator, as subprocesses ------------------------------------


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
    log_lines: list[str]
    _reader: asyncio.Task[None]

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, db: Path) -> AsyncIterator[RelayProcess]:
        process = await asyncio.create_subprocess_exec(
            *_command("serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
                      "--log-level", "DEBUG"),
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
            yield cls(process, text.removeprefix("listening "), log_lines, reader)
        finally:
            await _stop(process)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, RELAY_STOP_TIMEOUT_S)


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


# --- Clocks -------------------------------------------------------------------------


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


# --- The story ----------------------------------------------------------------------


async def within(awaitable: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, STEP_TIMEOUT_S)
    except TimeoutError:
        raise DemoError(f"timed out waiting for {what}") from None


async def next_message(queue: asyncio.Queue[Message], what: str) -> Message:
    """The next message (receipts are read apart, and shown as relay frames only)."""
    return await within(queue.get(), what)


async def _inbox(client: Client, queue: asyncio.Queue[Message]) -> None:
    async for message in client.messages():
        await queue.put(message)


def _quote(text: str | bytes | None) -> str:
    return f'"{text}"' if isinstance(text, str) else repr(text)


async def play(screen: Screen, workdir: Path) -> None:
    """The story, scene by scene (module docstring)."""
    style = screen.style
    wire = Wire()
    db = workdir / "relay.db"
    started = time.monotonic()
    screen.print(style.title("blindrelay demo") + style.dim(
        " — an airline and its customer over an end-to-end encrypted relay"))  # fmt: skip

    async with RelayProcess.running(db) as relay:
        await screen.scene("A relay, an operator, an airline and a customer")
        operator_key = bytes.fromhex(
            (await run_command("admin", "keygen", "--out", str(workdir / "operator.key"))).strip()
        )
        desk = DeskClock(ZoneInfo(TIMEZONE))
        desk.move_to(10, 0)
        # Each client's wire is tapped: the relay's view below is exactly those bytes.
        airline_client = Client.open(None, clock=desk, open_transport=tapped(wire.tap(BUSINESS)))
        user = Client.open(None, operator_key=operator_key, open_transport=tapped(wire.tap(USER)))
        airline_inbox: asyncio.Queue[Message] = asyncio.Queue()
        user_inbox: asyncio.Queue[Message] = asyncio.Queue()
        consent_seen: asyncio.Queue[ConsentStatement] = asyncio.Queue()
        airline = Business(
            airline_client,
            away_message=AWAY_MESSAGE,
            on_message=airline_inbox.put,
            on_consent_change=consent_seen.put,
        )
        inbox_task: asyncio.Task[None] | None = None
        try:
            await airline_client.connect(relay.url)
            await within(airline_client.register(BUSINESS, "business"), "the airline to register")
            hours = [OpeningHours(day, OPEN_MIN, CLOSE_MIN) for day in range(7)]
            await within(
                airline.publish_profile(
                    display_name=BUSINESS_NAME, timezone=TIMEZONE, hours=hours,
                    description="Flights across Europe",
                ),
                "the profile",
            )  # fmt: skip
            badge = await run_command(
                "admin", "verify-business", BUSINESS, "--name", BUSINESS_NAME,
                "--operator-key", str(workdir / "operator.key"), "--db", str(db),
            )  # fmt: skip
            await user.connect(relay.url)
            await within(user.register(USER), "the user to register")
            airline.start()
            inbox_task = asyncio.create_task(_inbox(user, user_inbox))
            screen.note(f"relay: {relay.url}, database {db} (deleted at the end)")
            screen.note(f"operator: badge key made; public half {operator_key.hex()[:16]}…")
            screen.note(f"operator: {badge.strip()}")
            screen.views(
                [
                    (BUSINESS, "registered as a business; identity key kept on the device"),
                    (BUSINESS, f"profile: {BUSINESS_NAME}, daily 08:00-20:00 {TIMEZONE}"),
                    (USER, "registered as a user; operator key pinned in her app"),
                ],
                wire.relay_view(),
            )

            await screen.scene("The airline asks for consent")
            await within(airline.request_consent(USER, ["utility"], EXPLANATION), "the request")
            request = await next_message(user_inbox, "the consent request")
            info = await within(user.business_info(BUSINESS), "the business profile")
            if info.verified_name is None:
                raise DemoError(f"the airline's badge did not verify: {info.badge.status.value}")
            # SPEC §8.1: the badge's name is the verified one; the profile's is a claim.
            mark = style.badge(" ✔ ") + f" {info.verified_name} (verified by the operator)"
            if info.name_mismatch:
                mark += style.warn(f' but its profile says "{info.claimed_name}": NOT verified')
            await within(user.grant(BUSINESS, ["utility"]), "the grant")
            receipt = await within(consent_seen.get(), "the consent receipt")
            screen.views(
                [
                    (BUSINESS, f"asks {USER} for: utility"),
                    (USER, f"from {request.sender}: {mark}"),
                    (USER, f"asks for {_categories(request.categories)}: {_quote(request.body)}"),
                    (USER, "a business is not a private person: it keeps what you send it"),
                    (USER, "grants: utility (signed with her identity key)"),
                    (BUSINESS, f"receipt from {receipt.signer}: {receipt.action}"
                               f" {_categories(receipt.categories)}, signature verified"),
                ],
                wire.relay_view(),
            )  # fmt: skip

            await screen.scene("A flight-time notification")
            sent = await within(airline.notify("utility", NOTIFICATION), "the notification")
            notification = await next_message(user_inbox, "the notification")
            screen.views(
                [
                    (BUSINESS, f"notifies {', '.join(sent.sent)} (utility, paid per message)"),
                    (USER, f"{notification.category} from {notification.sender}:"
                           f" {_quote(notification.body)}"),
                ],
                wire.relay_view(),
            )  # fmt: skip

            await screen.scene("The customer chats with the airline")
            await within(user.send(BUSINESS, QUESTION), "the question")
            question = await next_message(airline_inbox, "the question at the airline")
            await within(airline.reply(USER, ANSWER), "the answer")
            answer = await next_message(user_inbox, "the answer")
            screen.views(
                [
                    (USER, f"to {BUSINESS}: {_quote(QUESTION)}"),
                    (BUSINESS, f"from {question.sender} (desk open, {desk.local()}):"
                               f" {_quote(question.body)}"),
                    (BUSINESS, f"service reply (free, inside the window): {_quote(ANSWER)}"),
                    (USER, f"from {answer.sender}: {_quote(answer.body)}"),
                ],
                wire.relay_view(),
            )  # fmt: skip

            await screen.scene("Outside business hours: the away reply")
            desk.move_to(21, 30)
            profile = airline.profile
            assert profile is not None
            if is_open(profile, desk()):
                raise DemoError("the desk should be closed at 21:30")
            await within(user.send(BUSINESS, LATE_QUESTION), "the late question")
            late = await next_message(airline_inbox, "the late question at the airline")
            away = await next_message(user_inbox, "the away reply")
            screen.views(
                [
                    (USER, f"to {BUSINESS}: {_quote(LATE_QUESTION)}"),
                    (BUSINESS, f"from {late.sender} (desk closed, {desk.local()}):"
                               f" {_quote(late.body)}"),
                    (BUSINESS, "away reply sent by the airline's own client"),
                    (USER, f"from {away.sender}: {_quote(away.body)}"),
                ],
                wire.relay_view(),
            )  # fmt: skip

            await screen.scene("The customer blocks the airline")
            await within(user.block(BUSINESS), "the block")
            # Sent by the airline's client itself, not business.notify(), which skips a
            # customer once it has heard of her block: the relay enforces it either way.
            try:
                await within(airline_client.send(USER, LAST_NOTIFICATION, intent="notification",
                                                 category="utility"), "the refused notification")
            except RecipientUnavailable:
                pass
            else:
                raise DemoError("the notification after the block was not refused")
            screen.views(
                [
                    (USER, f"blocks {BUSINESS} (one action, signed)"),
                    (BUSINESS, f"notifies {USER}: {_quote(LAST_NOTIFICATION)}"),
                    (BUSINESS, f"notification to {USER} refused: RecipientUnavailable"),
                    (USER, "(receives nothing)"),
                ],
                wire.relay_view(),
            )
        finally:
            if inbox_task is not None:
                inbox_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inbox_task
            await airline.close()
            await user.close()

        await screen.scene("What the relay holds: blindrelay inspect")
        inventory = await run_command("inspect", "--db", str(db))
        for line in inventory.splitlines():
            screen.print("  " + style.relay(line))

    await screen.scene("What the relay logged")
    events = Counter(_event(line) for line in relay.log_lines)
    screen.print("  " + style.relay(
        f"{len(relay.log_lines)} JSON lines: "
        + ", ".join(f"{name} ×{count}" for name, count in sorted(events.items()))
    ))  # fmt: skip
    screen.print("  " + style.dim("(types, sizes, handles and outcomes; never a body or a key)"))
    screen.print()
    screen.print(style.title(
        f"The relay carried {len(wire.messages)} frames ({wire.total_bytes} B) and could"
        f" read none of the {len(STORY_PLAINTEXTS)} texts above."
        f" {time.monotonic() - started:.1f} s."
    ))  # fmt: skip


def _event(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return "non-json"
    return str(record.get("event", "?")) if isinstance(record, dict) else "non-json"


def run(step: bool = False, out: IO[str] | None = None) -> int:
    """Play the demo; 0 on success, 1 (one line on stderr) if a step failed."""
    stream = out or sys.stdout
    columns = shutil.get_terminal_size((80, 24)).columns if stream.isatty() else 80
    screen = Screen(stream, Style.for_stream(stream), step, columns)
    with tempfile.TemporaryDirectory(prefix="blindrelay-demo-") as workdir:
        try:
            asyncio.run(play(screen, Path(workdir)))
        except DemoError as exc:
            print(f"blindrelay demo: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nblindrelay demo: interrupted; relay stopped", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. piped into head: stop quietly, relay stopped
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            return 1
    return 0
