"""The demo's story: an airline and its customer, scene by scene (package docstring).

Each scene is a short function that makes the clients act, waits for what the
other side receives, and shows both views; :data:`SCENES` is the running
order. The story checks itself as it goes: a step that does not happen raises
DemoError, so ``blindrelay demo`` exits 1 with one line instead of showing
something that did not occur.

Not here: the relay and the clock (``stage``), frame descriptions (``wire``),
the terminal (``screen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from zoneinfo import ZoneInfo

from blindrelay.protocol.business import OpeningHours, is_open
from blindrelay.protocol.errors import RecipientUnavailable
from blindrelay.protocol.signed import ConsentStatement

from ..business import Business
from ..sdk import Client, Message
from ..transport import tapped
from .screen import Screen, Style
from .stage import DemoError, DeskClock, RelayProcess, run_command
from .wire import Wire, categories_text

T = TypeVar("T")

STEP_TIMEOUT_S = 10.0
"""Longest wait for one event of the story; a healthy loopback run needs milliseconds."""

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


async def within(awaitable: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, STEP_TIMEOUT_S)
    except TimeoutError:
        raise DemoError(f"timed out waiting for {what}") from None


def _quote(text: str | bytes | None) -> str:
    return f'"{text}"' if isinstance(text, str) else repr(text)


@dataclass(slots=True)
class Cast:
    """Who plays, where, and what each has received so far."""

    screen: Screen
    wire: Wire
    relay: RelayProcess
    workdir: Path
    operator_key: bytes
    desk: DeskClock
    user: Client
    airline_client: Client
    airline: Business
    user_inbox: asyncio.Queue[Message]
    airline_inbox: asyncio.Queue[Message]
    consent_seen: asyncio.Queue[ConsentStatement]
    reading: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def assembled(
        cls, screen: Screen, wire: Wire, relay: RelayProcess, workdir: Path, operator_key: bytes
    ) -> AsyncIterator[Cast]:
        """Both clients, not yet connected, each on a tapped wire; closed at the end."""
        desk = DeskClock(ZoneInfo(TIMEZONE))
        desk.move_to(10, 0)
        # Each client's wire is tapped: the relay's view is exactly those bytes.
        airline_client = Client.open(None, clock=desk, open_transport=tapped(wire.tap(BUSINESS)))
        user = Client.open(None, operator_key=operator_key, open_transport=tapped(wire.tap(USER)))
        airline_inbox: asyncio.Queue[Message] = asyncio.Queue()
        consent_seen: asyncio.Queue[ConsentStatement] = asyncio.Queue()
        airline = Business(
            airline_client,
            away_message=AWAY_MESSAGE,
            on_message=airline_inbox.put,
            on_consent_change=consent_seen.put,
        )
        cast = cls(
            screen, wire, relay, workdir, operator_key, desk, user, airline_client, airline,
            asyncio.Queue(), airline_inbox, consent_seen,
        )  # fmt: skip
        try:
            yield cast
        finally:
            if cast.reading is not None:
                cast.reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cast.reading
            await airline.close()
            await user.close()

    def start_reading(self) -> None:
        """Both sides take in what arrives from here on (the airline by its callbacks)."""
        self.airline.start()
        self.reading = asyncio.create_task(self._user_reads())

    async def _user_reads(self) -> None:
        async for message in self.user.messages():
            await self.user_inbox.put(message)

    async def next_message(self, inbox: asyncio.Queue[Message], what: str) -> Message:
        """The next message (receipts are read apart, and shown as relay frames only)."""
        return await within(inbox.get(), what)

    def views(self, clients: list[tuple[str, str]]) -> None:
        """What the clients saw, beside what the relay saw since the last scene."""
        self.screen.views(clients, self.wire.relay_view())


# --- The scenes ---------------------------------------------------------------------


async def setting(cast: Cast) -> None:
    """The airline registers, publishes its profile and is verified; the customer joins."""
    airline, db = cast.airline, cast.relay.db
    await cast.airline_client.connect(cast.relay.url)
    await within(cast.airline_client.register(BUSINESS, "business"), "the airline to register")
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
        "--operator-key-file", str(cast.workdir / "operator.key"), "--db", str(db),
    )  # fmt: skip
    await cast.user.connect(cast.relay.url)
    await within(cast.user.register(USER), "the user to register")
    cast.start_reading()
    cast.screen.note(f"relay: {cast.relay.url}, database {db} (deleted at the end)")
    cast.screen.note(f"operator: badge key made; public half {cast.operator_key.hex()[:16]}…")
    cast.screen.note(f"operator: {badge.strip()}")
    cast.views([
        (BUSINESS, "registered as a business; identity key kept on the device"),
        (BUSINESS, f"profile: {BUSINESS_NAME}, daily 08:00-20:00 {TIMEZONE}"),
        (USER, "registered as a user; operator key pinned in her app"),
    ])  # fmt: skip


async def consent(cast: Cast) -> None:
    """The airline asks; the customer sees its verified name, and grants."""
    style = cast.screen.style
    await within(cast.airline.request_consent(USER, ["utility"], EXPLANATION), "the request")
    request = await cast.next_message(cast.user_inbox, "the consent request")
    info = await within(cast.user.business_info(BUSINESS), "the business profile")
    if info.verified_name is None:
        raise DemoError(f"the airline's badge did not verify: {info.badge.status.value}")
    # SPEC §8.1: the badge's name is the verified one; the profile's is a claim.
    mark = style.badge(" ✔ ") + f" {info.verified_name} (verified by the operator)"
    if info.name_mismatch:
        mark += style.warn(f' but its profile says "{info.claimed_name}": NOT verified')
    await within(cast.user.grant(BUSINESS, ["utility"]), "the grant")
    receipt = await within(cast.consent_seen.get(), "the consent receipt")
    cast.views([
        (BUSINESS, f"asks {USER} for: utility"),
        (USER, f"from {request.sender}: {mark}"),
        (USER, f"asks for {categories_text(request.categories)}: {_quote(request.body)}"),
        (USER, "a business is not a private person: it keeps what you send it"),
        (USER, "grants: utility (signed with her identity key)"),
        (BUSINESS, f"receipt from {receipt.signer}: {receipt.action}"
                   f" {categories_text(receipt.categories)}, signature verified"),
    ])  # fmt: skip


async def notification(cast: Cast) -> None:
    sent = await within(cast.airline.notify("utility", NOTIFICATION), "the notification")
    received = await cast.next_message(cast.user_inbox, "the notification")
    cast.views([
        (BUSINESS, f"notifies {', '.join(sent.sent)} (utility, paid per message)"),
        (USER, f"{received.category} from {received.sender}: {_quote(received.body)}"),
    ])  # fmt: skip


async def conversation(cast: Cast) -> None:
    """A question inside the service window, and the airline's free reply."""
    await within(cast.user.send(BUSINESS, QUESTION), "the question")
    question = await cast.next_message(cast.airline_inbox, "the question at the airline")
    await within(cast.airline.reply(USER, ANSWER), "the answer")
    answer = await cast.next_message(cast.user_inbox, "the answer")
    cast.views([
        (USER, f"to {BUSINESS}: {_quote(QUESTION)}"),
        (BUSINESS, f"from {question.sender} (desk open, {cast.desk.local()}):"
                   f" {_quote(question.body)}"),
        (BUSINESS, f"service reply (free, inside the window): {_quote(ANSWER)}"),
        (USER, f"from {answer.sender}: {_quote(answer.body)}"),
    ])  # fmt: skip


async def away_reply(cast: Cast) -> None:
    """After hours the airline's own client answers with its away message (SPEC §8.2)."""
    cast.desk.move_to(21, 30)
    profile = cast.airline.profile
    assert profile is not None
    if is_open(profile, cast.desk()):
        raise DemoError("the desk should be closed at 21:30")
    await within(cast.user.send(BUSINESS, LATE_QUESTION), "the late question")
    late = await cast.next_message(cast.airline_inbox, "the late question at the airline")
    away = await cast.next_message(cast.user_inbox, "the away reply")
    cast.views([
        (USER, f"to {BUSINESS}: {_quote(LATE_QUESTION)}"),
        (BUSINESS, f"from {late.sender} (desk closed, {cast.desk.local()}): {_quote(late.body)}"),
        (BUSINESS, "away reply sent by the airline's own client"),
        (USER, f"from {away.sender}: {_quote(away.body)}"),
    ])  # fmt: skip


async def block(cast: Cast) -> None:
    """After the customer's block the relay refuses the airline's next notification."""
    await within(cast.user.block(BUSINESS), "the block")
    # Sent by the airline's client itself, not business.notify(), which skips a
    # customer once it has heard of her block: the relay enforces it either way.
    try:
        await within(cast.airline_client.send(USER, LAST_NOTIFICATION, intent="notification",
                                              category="utility"), "the refused notification")
    except RecipientUnavailable:
        pass
    else:
        raise DemoError("the notification after the block was not refused")
    cast.views([
        (USER, f"blocks {BUSINESS} (one action, signed)"),
        (BUSINESS, f"notifies {USER}: {_quote(LAST_NOTIFICATION)}"),
        (BUSINESS, f"notification to {USER} refused: RecipientUnavailable"),
        (USER, "(receives nothing)"),
    ])  # fmt: skip


SCENES: tuple[tuple[str, Callable[[Cast], Awaitable[None]]], ...] = (
    ("A relay, an operator, an airline and a customer", setting),
    ("The airline asks for consent", consent),
    ("A flight-time notification", notification),
    ("The customer chats with the airline", conversation),
    ("Outside business hours: the away reply", away_reply),
    ("The customer blocks the airline", block),
)
"""The story's running order: (title, scene)."""


# --- The whole demo -----------------------------------------------------------------


async def play(screen: Screen, workdir: Path) -> None:
    """The scenes, then what the relay holds and what it logged."""
    style, wire, started = screen.style, Wire(), time.monotonic()
    screen.print(style.title("blindrelay demo") + style.dim(
        " — an airline and its customer over an end-to-end encrypted relay"))  # fmt: skip
    async with RelayProcess.running(workdir / "relay.db") as relay:
        made = await run_command("admin", "keygen", "--out", str(workdir / "operator.key"))
        operator_key = _public_key(made)
        async with Cast.assembled(screen, wire, relay, workdir, operator_key) as cast:
            for title, scene in SCENES:
                await screen.scene(title)
                await scene(cast)
        await screen.scene("What the relay holds: blindrelay inspect")
        screen.relay_lines((await run_command("inspect", "--db", str(relay.db))).splitlines())
    await screen.scene("What the relay logged")
    events = relay.log_events()
    screen.relay_lines([
        f"{len(relay.log_lines)} JSON lines: "
        + ", ".join(f"{name} ×{count}" for name, count in sorted(events.items()))
    ])  # fmt: skip
    screen.print("  " + style.dim("(types, sizes, handles and outcomes; never a body or a key)"))
    screen.print()
    screen.print(style.title(
        f"The relay carried {len(wire.messages)} frames ({wire.total_bytes} B) and could"
        f" read none of the {len(STORY_PLAINTEXTS)} texts above."
        f" {time.monotonic() - started:.1f} s."
    ))  # fmt: skip


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


def _public_key(keygen_output: str) -> bytes:
    """The operator public key ``blindrelay admin keygen`` printed, labelled."""
    found = re.search(r"operator public key: ([0-9a-f]{64})", keygen_output)
    if found is None:
        raise RuntimeError(f"admin keygen printed no public key: {keygen_output!r}")
    return bytes.fromhex(found.group(1))
