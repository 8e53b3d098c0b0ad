"""The chat's console: what a person types and what is printed back.

:class:`Chat` runs each line a person types (``/help`` lists the commands) and
prints each message and receipt as it arrives, with what the person needs to
judge it: a changed key in capitals, and ``/msg`` refused until ``/approve``
(SPEC §3.3); a business under its badge's name when the badge verifies, its own
profile's name only as an unverified claim (SPEC §8.1). Every line goes through
:meth:`Chat.say`: its control characters shown escaped, and a body's later lines, or
on a terminal what passes its width, shown as continuations (``  | ``), so that what
a peer or the relay wrote cannot pass for the chat's own line (``display``, threat
model T39).

Not here: opening the profile, registering and the input loop (``session``),
the protocol and key custody (``sdk``, ``sessions``, ``keystore``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import IO

from blindrelay.protocol.business import BadgeStatus
from blindrelay.protocol.errors import (
    BlindrelayError,
    Forbidden,
    InvalidStatement,
    KeyNotLogged,
    LogForked,
    LogUnchecked,
    RateLimited,
    RecipientUnavailable,
    UntrustedIdentity,
)
from blindrelay.protocol.signed import ConsentStatement

from .. import display
from ..business import Business
from ..sdk import (
    MAX_HELD_PER_SENDER,
    BusinessInfo,
    Client,
    ConnectionLost,
    Message,
    NoAnswer,
    RelayKeyChanged,
    TargetBlocked,
)
from .business import BUSINESS_COMMANDS, BusinessCommands
from .consent import ConsentCommands
from .usage import Usage, one_handle

COMMANDS: dict[str, tuple[str, str]] = {
    "to": ("/to HANDLE", "talk to HANDLE: plain lines go to them from now on"),
    "msg": ("/msg HANDLE TEXT", "send an end-to-end encrypted message (and talk to HANDLE)"),
    "history": ("/history [HANDLE] [N]", "the last N lines with HANDLE (default: current, 20)"),
    "accept": ("/accept HANDLE", "accept HANDLE's message request (replying accepts too)"),
    "contacts": ("/contacts", "contacts: trust, blocks, consent given and businesses' badges"),
    "safety": ("/safety HANDLE", "the safety number to compare with HANDLE"),
    "verify": ("/verify HANDLE", "mark HANDLE verified (after comparing safety numbers)"),
    "approve": ("/approve HANDLE", "accept HANDLE's new identity key (after comparing)"),
    "requests": ("/requests", "consent requests from businesses awaiting an answer"),
    "grant": ("/grant BUSINESS CATS", "consent to notifications (CATS: utility,marketing)"),
    "deny": ("/deny BUSINESS [CATS]", "refuse a consent request"),
    "revoke": ("/revoke BUSINESS CATS", "withdraw consent"),
    "block": ("/block HANDLE", "nothing of HANDLE's reaches you any more"),
    "unblock": ("/unblock HANDLE", "lift a block"),
    "help": ("/help [COMMAND]", "this list, or what one command does"),
    "quit": ("/quit", "leave (Ctrl-D too)"),
}
"""Command → (usage, what it does): ``/help`` and ``/help COMMAND`` print from here."""

HELP = "commands:\n" + "\n".join(
    f"  {usage:<26}{what}" for usage, what in COMMANDS.values()
)
"""The user's ``/help`` (kept for those who print it)."""

BADGE_RECHECK_MS = 10 * 60 * 1000
"""How long a business's profile and badge, as last fetched and checked, are shown
before they are asked of the relay again. The relay stops serving a badge the
operator revoked at once (SPEC §8.1), and a client relies on that (§15.6 rule 6):
kept for the session, a revoked or expired badge went on showing "✔ verified" until the
chat restarted. Ten minutes cost a business's customer one PROFILE_FETCH per business
it hears from in that time; shorter notices a revocation sooner."""

SEND_RATE_RETRIES = 5
"""A send the relay paces (402, its retry_after) is tried again this many times: the
person typed it once. A relay that took over an account counts its buckets as just spent
(SPEC §10), so the first request after a relay restart can meet one."""


class Chat:
    """One person's session: commands in, messages and warnings out."""

    def __init__(self, client: Client, out: IO[str], business: Business | None = None) -> None:
        self.client = client
        self.out = out
        self.business = business
        """Our :class:`Business` when the account is one: its commands, its dispatcher."""
        self.current: str | None = None
        """Whom plain lines go to (``/to``, ``/msg``)."""
        self._badges: dict[str, tuple[int, BusinessInfo]] = {}
        """A business's profile and badge as checked, and when (our clock, ms)."""
        self._requesters: set[str] = set()
        """Strangers whose message request was explained in this session."""
        self._sending: set[asyncio.Task[None]] = set()
        self._business_commands: BusinessCommands | None = None
        self._consent = ConsentCommands(client, self.say, self.remember, self.badge)
        self.columns: Callable[[], int | None] = lambda: None
        """The terminal's width, None when unknown (a pipe, a file): ``session`` sets it."""

    def say(self, text: str) -> None:
        """One line: what others wrote in ``text`` is shown, never obeyed; on a terminal,
        cut to its width, each row after the first marked ``  | `` (``display.rows``)."""
        line = display.one_line(text)
        columns = self.columns()
        for row in display.rows(line, columns - 1, "  | ") if columns else (line,):
            print(row, file=self.out, flush=True)

    def say_body(self, first: str, body: str, indent: str = "") -> None:
        """``first`` followed by the body's first line; its later lines each below as a
        continuation (``indent`` then ``  | ``), so none starts where a sender would."""
        head, *more = display.lines(body)
        self.say(f"{first}{head}")
        for line in more:
            self.say(f"{indent}  | {line}")

    def prompt(self) -> str:
        """``alice → bob> ``, with ``(offline)`` while the relay is not reachable."""
        me = self.client.handle or "?"
        to = f" → {self.current}" if self.current else ""
        state = "" if self.client.online else " (offline)"
        return f"{me}{to}{state}> "

    async def watch_connection(self, interval_s: float = 0.25) -> None:
        """Say when the relay goes away and when we are back: sends wait meanwhile."""
        online = self.client.online
        while True:
            await asyncio.sleep(interval_s)
            now = self.client.online
            if now != online:
                self.say("reconnected to the relay; waiting messages go now" if now else
                         "disconnected from the relay — reconnecting… (messages wait and "
                         "go when it is back)")  # fmt: skip
                online = now

    def show_history(self, contacts: int = 10, lines: int = 3) -> None:
        """The last lines with each contact, when a profile opens again."""
        shown = 0
        for handle in sorted(self.client.store.chat_contacts()):
            if shown >= contacts:
                break
            kept = self.client.store.chat_lines(handle, lines)
            if not kept:
                continue
            shown += 1
            self.say(f"  history with {handle}:")
            for _at, outgoing, text in kept:
                self.say_body(f"    {'you' if outgoing else handle}: ", text, "    ")

    def warn_identity_change(self, handle: str) -> None:
        """SPEC §3.3: surfaced before anything more is sent to ``handle``."""
        self.say(
            f"!!! WARNING: {handle.upper()}'S IDENTITY KEY CHANGED. This can mean a new "
            f"device or an attack. Compare /safety {handle} with them, then /approve {handle}. "
            f"Until then nothing is sent to {handle} and their new messages wait."
        )

    def log_alarm(self, exc: LogForked | LogUnchecked) -> None:
        """SPEC §15.6 rule 5: the relay's log cannot be trusted (a fork, kept across runs),
        or a contact's view of it is not proven; sends are refused meanwhile."""
        if isinstance(exc, LogForked):
            self.say(f"!!! {self.explain(exc, '')}; nothing more is sent through it")
        else:
            self.say(f"!!! the relay keeps refusing to prove that {exc.contact} sees the same "
                     f"log as you; nothing is sent to {exc.contact} until it does (compare "
                     f"/safety {exc.contact} with them)")  # fmt: skip

    # --- Stored lists --------------------------------------------------------------

    def remember(self, handle: str, kind: str = "") -> None:
        """Keep ``handle`` in the contact list, with its kind once known."""
        contacts = self.client.store.chat_contacts()
        if handle not in contacts or (kind and contacts[handle] != kind):
            self.client.store.set_chat_contact(handle, kind or contacts.get(handle, ""))

    # --- Incoming ---------------------------------------------------------------------

    async def receive(self) -> None:
        """Print messages and receipts as they arrive, each from its own reader (a
        business's messages come through its dispatcher: :meth:`business_message`)."""
        async with asyncio.TaskGroup() as readers:
            if self.business is None:
                readers.create_task(self._messages())
            readers.create_task(self._receipts())

    async def business_message(self, message: Message) -> None:
        """A customer's message, as our :class:`Business` dispatches it (after its away
        reply, if one was due)."""
        self.remember(message.sender, message.sender_kind)
        await self.show(message)

    def statement(self, statement: ConsentStatement) -> None:
        """A customer's grant, deny, revoke, block or unblock of us, verified."""
        categories = f" {','.join(statement.categories)}" if statement.categories else ""
        self.remember(statement.signer, "user")
        self.say(f"[consent] {statement.signer} {statement.action}{categories}")

    async def _messages(self) -> None:
        async for message in self.client.messages():
            self.remember(message.sender, message.sender_kind)
            await self.show(message)

    async def _receipts(self) -> None:
        async for receipt in self.client.receipts():
            self.say(f"  ({receipt.sender}: {receipt.type} {len(receipt.msg_ids)} message(s))")

    async def show(self, message: Message) -> None:
        """Keep ``message`` in the history (a consent request among those awaiting an
        answer), then print it. Kept first: the inbox lets go of it once the next is read
        or the reader stops, and a business's badge is asked of the relay, which may take
        until /quit."""
        sender = message.sender
        body = message.body
        if not isinstance(body, str):
            body = f"<{len(body)} bytes>"
        self.client.store.keep_chat_line(sender, message.sent_at, False, body)
        categories = list(message.categories or ())
        if message.is_consent_request:
            self.client.store.set_consent_request(sender, tuple(categories))
        name = f"{sender} {await self.badge(sender)}" if message.from_business else sender
        if message.is_consent_request:
            self.say_body(f"[consent request] {name} asks for {','.join(categories)}: ", body)
            self.say("  a business is not a private person: it keeps what you send it")
            self.say(f"  answer with /grant {sender} {','.join(categories)} or /deny {sender}")
            return
        if message.is_request:  # SPEC §7.3: a stranger; no receipt has been sent
            self.say_body(f"[message request] {name}: ", body)
            if sender not in self._requesters:
                self._requesters.add(sender)
                self.say(
                    f"  {sender} is not one of your contacts: /accept {sender} (or a reply) "
                    f"accepts, /block {sender} blocks; until then {sender} does not learn "
                    "that it arrived"
                )
        else:
            prefix = f"[{message.category}] " if message.category else ""
            self.say_body(f"{prefix}{name}: ", body)
        if message.identity == "new":
            self.say(f"  (first message from {sender}; compare /safety {sender} to verify)")

    async def badge(self, handle: str) -> str:
        """How ``handle`` is shown: its badge's name if that verifies, else why not; asked
        of the relay again once the last answer is :data:`BADGE_RECHECK_MS` old."""
        now = self.client.clock()
        kept = self._badges.get(handle)
        if kept is not None and now - kept[0] < BADGE_RECHECK_MS:
            info = kept[1]
        else:
            try:
                info = await self.client.business_info(handle)
            except BlindrelayError as exc:
                return f"[business, profile unreadable: {type(exc).__name__}]"
            self._badges[handle] = (now, info)
        # SPEC §8.1: only the badge's name is shown as verified; the profile's name is
        # the business's own claim, shown only marked as unverified.
        claimed = info.claimed_name
        if info.verified_name is not None:
            mark = f"[✔ verified: {display.name(info.verified_name)}]"
            if info.name_mismatch and claimed is not None:
                mark += f' [!! its profile says "{display.name(claimed)}": NOT verified]'
            return mark
        calls_itself = f', its profile says "{display.name(claimed)}"' if claimed else ""
        if info.key_changed:
            return f"[business, KEY CHANGED: not verified{calls_itself}]"
        status = "no badge" if info.badge.status is BadgeStatus.ABSENT else info.badge.status.value
        return f"[business, not verified: {status}{calls_itself}]"

    # --- Commands -----------------------------------------------------------------------

    async def command(self, line: str) -> bool:
        """Run one input line; False once the person quits."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            if self.current is None:
                self.say("whom to? /to HANDLE first (or /msg HANDLE TEXT); /help lists commands")
            else:
                await self._send(self.current, line)
            return True
        name, _, rest = line[1:].partition(" ")
        if name in ("quit", "exit"):
            return False
        handler = self._commands().get(name)
        if handler is None:
            self.say(f"unknown command /{name}; /help lists them")
            return True
        try:
            await handler(rest.strip())
        except Usage as exc:
            self.say(f"usage: {exc}")
        except UntrustedIdentity as exc:
            self.warn_identity_change(str(exc.args[0]) if exc.args else rest.split()[0])
        except (BlindrelayError, KeyError, ConnectionLost) as exc:
            self.say(f"refused: {self.explain(exc, _first_word(rest))}")
        return True

    def explain(self, exc: BaseException, handle: str) -> str:
        """A refusal in plain words, and what to do about it."""
        if isinstance(exc, TargetBlocked):  # a grant, deny or revoke (SPEC §7.4)
            return f"you blocked {handle}; /unblock {handle} first"
        if isinstance(exc, RecipientUnavailable):
            if handle and self.client.blocked(handle):
                return f"you blocked {handle}; /unblock {handle} first"
            return (f"no such user as {handle}, or you cannot write to them (they blocked you, "
                    "or a business has no consent from you)")  # fmt: skip
        if isinstance(exc, KeyError):
            return f"you have not met {handle} yet: no key to compare (send them a message first)"
        if isinstance(exc, RateLimited):
            return f"too fast: try again in {max(1, exc.retry_after_ms // 1000)} s"
        if isinstance(exc, KeyNotLogged):
            return (f"{handle}'s key is not proven in the relay's transparency log; nothing "
                    "was sent (the relay may be handing out a key of its own)")  # fmt: skip
        if isinstance(exc, LogForked):
            return ("ALARM: the relay showed you and a contact two different histories of its "
                    "log; stop trusting this relay")  # fmt: skip
        if isinstance(exc, LogUnchecked):
            return (f"the relay keeps refusing to prove that {exc.contact} sees the same log "
                    "as you; nothing was sent (compare safety numbers with /safety)")  # fmt: skip
        if isinstance(exc, InvalidStatement):
            return f"that changes nothing: {exc.detail or exc}"
        if isinstance(exc, NoAnswer):
            return (f"the relay did not answer ({exc}) on several connections: it "
                    "is failing or refusing service; try again later")  # fmt: skip
        if isinstance(exc, ConnectionLost):
            return f"not connected to the relay ({exc}); try again when it is back"
        if isinstance(exc, RelayKeyChanged):
            return ("the relay now presents another key than the one this profile pinned "
                    "(another server, or an attack); nothing was sent")  # fmt: skip
        if isinstance(exc, Forbidden):
            return "only a business account can do that"
        return f"{type(exc).__name__} {exc}".rstrip()

    def _commands(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        commands: dict[str, Callable[[str], Awaitable[None]]] = {
            "help": self.help, "to": self.to, "msg": self.msg, "history": self.history,
            "accept": self.accept, "contacts": self.contacts, "safety": self.safety,
            "verify": self.verify, "approve": self.approve,
        } | self._consent.commands()  # fmt: skip
        if self.business is not None:
            if self._business_commands is None:
                self._business_commands = BusinessCommands(self.business, self.say, self.remember)
            commands |= self._business_commands.commands()
        return commands

    async def help(self, rest: str) -> None:
        table = COMMANDS | (BUSINESS_COMMANDS if self.business is not None else {})
        name = rest.strip().lstrip("/")
        if name:
            found = table.get(name)
            self.say(f"{found[0]}: {found[1]}" if found else f"no command /{name}; /help")
            return
        self.say("commands (plain lines go to the contact you talk to):")
        for usage, what in table.values():
            self.say(f"  {usage:<32}{what}")

    async def to(self, rest: str) -> None:
        self.current = one_handle(rest, "/to HANDLE")
        self.remember(self.current)
        self.say(f"talking to {self.current}")

    async def history(self, rest: str) -> None:
        words = rest.split()
        handle = words[0] if words and not words[0].isdigit() else self.current
        count = next((int(w) for w in words if w.isdigit()), 20)
        if handle is None:
            raise Usage("/history HANDLE [N]")
        lines = self.client.store.chat_lines(handle, count)
        if not lines:
            self.say(f"no history with {handle}")
        for at, outgoing, text in lines:
            when = datetime.fromtimestamp(at / 1000).strftime("%Y-%m-%d %H:%M")
            self.say_body(f"  {when} {'you' if outgoing else handle}: ", text, "  ")

    async def msg(self, rest: str) -> None:
        handle, _, text = rest.partition(" ")
        if not handle or not text:
            raise Usage("/msg HANDLE TEXT")
        self.current = handle
        await self._send(handle, text)

    async def _send(self, handle: str, text: str) -> None:
        """Send in the background: the prompt stays usable while the relay is away (the
        message waits in the outbox), and its outcome is said when it comes."""
        if self.client.identity_change_pending(handle):
            self.warn_identity_change(handle)
            return
        if self.client.blocked(handle):
            self.say(f"refused: you blocked {handle}; /unblock {handle} first")
            return
        task = asyncio.create_task(self._deliver(handle, text))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        if not self.client.online:
            self.say(f"-> {handle}: waiting for the relay")
        await asyncio.sleep(0)  # let it start: the outbox keeps the order typed

    async def _deliver(self, handle: str, text: str) -> None:
        try:  # a 402 is the relay's pacing, not a refusal: the SDK sends it again after
            await self.client.send(handle, text, rate_limit_retries=SEND_RATE_RETRIES)
        except UntrustedIdentity:
            self.warn_identity_change(handle)
            return
        except (BlindrelayError, KeyError, ConnectionLost) as exc:
            self.say(f"refused: {self.explain(exc, handle)}")
            return
        except Exception as exc:  # a background send must never fail in silence
            self.say(f"-> {handle}: not sent ({type(exc).__name__}: {exc}); try again")
            return
        self.client.store.keep_chat_line(handle, self.client.relay_now(), True, text)
        self.remember(handle)
        self.say(f"-> {handle}: sent")

    async def settled(self) -> None:
        """Until every send typed so far has its outcome (before quitting)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def accept(self, rest: str) -> None:
        handle = one_handle(rest, "/accept HANDLE")
        await self.client.accept_request(handle)
        self._requesters.discard(handle)
        self.remember(handle)
        self.say(f"accepted {handle}'s message request")

    async def contacts(self, _rest: str) -> None:
        contacts = self.client.store.chat_contacts()
        if not contacts:
            self.say("no contacts yet")
        for handle, kind in sorted(contacts.items()):
            state = self.client.trust.state(handle)
            trust = "not yet met" if state is None else str(state)
            if self.client.identity_change_pending(handle):
                trust = "KEY CHANGED, /approve after comparing"
            badge = f" {await self.badge(handle)}" if kind == "business" else ""
            blocked = ", BLOCKED by you" if self.client.blocked(handle) else ""
            granted = self.client.granted_to(handle) if kind == "business" else frozenset()
            consent = f", you granted {','.join(sorted(granted))}" if granted else ""
            self.say(f"  {handle} ({kind or '?'}) {trust}{blocked}{consent}{badge}")

    async def safety(self, rest: str) -> None:
        handle = one_handle(rest, "/safety HANDLE")
        digits = self.client.safety_number(handle)
        groups = " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
        self.say(f"safety number with {handle}: {groups}")

    async def verify(self, rest: str) -> None:
        handle = one_handle(rest, "/verify HANDLE")
        if self.client.identity_change_pending(handle):
            self.say(f"{handle}'s key changed: compare /safety {handle}, then /approve {handle}")
            return
        self.client.approve_identity(handle, verified=True)
        self.say(f"{handle} marked verified")

    async def approve(self, rest: str) -> None:
        handle = one_handle(rest, "/approve HANDLE")
        if not self.client.identity_change_pending(handle):
            self.say(f"no key change pending for {handle}")
            return
        dropped = self.client.held_messages(handle).dropped
        self.client.approve_identity(handle)
        self._badges.pop(handle, None)
        self.say(f"accepted {handle}'s new key; messages to {handle} allowed again")
        if dropped:
            self.say(
                f"  {dropped} message(s) from {handle} were dropped while the change waited "
                f"(at most {MAX_HELD_PER_SENDER} are kept): ask {handle} to resend them"
            )


def _first_word(rest: str) -> str:
    return rest.split()[0] if rest.split() else ""
