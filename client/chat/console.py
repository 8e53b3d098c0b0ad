"""The chat's console: what a person types and what is printed back.

:class:`Chat` runs each line a person types (``/help`` lists the commands) and
prints each message and receipt as it arrives, with what the person needs to
judge it: a changed key in capitals, and ``/msg`` refused until ``/approve``
(SPEC §3.3); a business under its badge's name when the badge verifies, its own
profile's name only as an unverified claim (SPEC §8.1).

Not here: opening the profile, registering and the input loop (``session``),
the protocol and key custody (``sdk``, ``sessions``, ``keystore``).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from typing import IO

from blindrelay.protocol import limits
from blindrelay.protocol.errors import BlindrelayError, UntrustedIdentity

from ..sdk import MAX_HELD_PER_SENDER, BusinessInfo, Client, Message

HELP = """\
commands:
  /msg HANDLE TEXT          send an end-to-end encrypted message
  /accept HANDLE            accept HANDLE's message request (replying accepts too)
  /contacts                 contacts, their trust state and businesses' badges
  /safety HANDLE            the safety number to compare with HANDLE
  /verify HANDLE            mark HANDLE verified (after comparing safety numbers)
  /approve HANDLE           accept HANDLE's new identity key (after comparing)
  /requests                 consent requests from businesses awaiting an answer
  /grant BUSINESS CATS      consent to notifications (CATS: utility,marketing)
  /deny BUSINESS [CATS]     refuse a consent request
  /revoke BUSINESS CATS     withdraw consent
  /block HANDLE             nothing of HANDLE's reaches you any more
  /unblock HANDLE           lift a block
  /help, /quit"""


class Usage(Exception):
    """A command typed wrongly: its one-line explanation is shown."""


class Chat:
    """One person's session: commands in, messages and warnings out."""

    def __init__(self, client: Client, out: IO[str]) -> None:
        self.client = client
        self.out = out
        self._badges: dict[str, BusinessInfo] = {}
        self._requesters: set[str] = set()
        """Strangers whose message request was explained in this session."""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def warn_identity_change(self, handle: str) -> None:
        """SPEC §3.3: surfaced before anything more is sent to ``handle``."""
        self.say(
            f"!!! WARNING: {handle.upper()}'S IDENTITY KEY CHANGED. This can mean a new "
            f"device or an attack. Compare /safety {handle} with them, then /approve {handle}. "
            f"Until then nothing is sent to {handle} and their new messages wait."
        )

    # --- Stored lists --------------------------------------------------------------

    def remember(self, handle: str, kind: str = "") -> None:
        """Keep ``handle`` in the contact list, with its kind once known."""
        contacts = self.client.store.chat_contacts()
        if handle not in contacts or (kind and contacts[handle] != kind):
            self.client.store.set_chat_contact(handle, kind or contacts.get(handle, ""))

    # --- Incoming ---------------------------------------------------------------------

    async def receive(self) -> None:
        """Print messages and receipts as they arrive, each from its own reader."""
        async with asyncio.TaskGroup() as readers:
            readers.create_task(self._messages())
            readers.create_task(self._receipts())

    async def _messages(self) -> None:
        async for message in self.client.messages():
            self.remember(message.sender, message.sender_kind)
            await self.show(message)

    async def _receipts(self) -> None:
        async for receipt in self.client.receipts():
            self.say(f"  ({receipt.sender}: {receipt.type} {len(receipt.msg_ids)} message(s))")

    async def show(self, message: Message) -> None:
        sender = message.sender
        name = sender
        if message.from_business:
            name = f"{sender} {await self.badge(sender)}"
        body = message.body
        if not isinstance(body, str):
            body = f"<{len(body)} bytes>"
        if message.is_consent_request:
            categories = list(message.categories or ())
            self.client.store.set_consent_request(sender, tuple(categories))
            self.say(f"[consent request] {name} asks for {','.join(categories)}: {body}")
            self.say("  a business is not a private person: it keeps what you send it")
            self.say(f"  answer with /grant {sender} {','.join(categories)} or /deny {sender}")
            return
        if message.is_request:  # SPEC §7.3: a stranger; no receipt has been sent
            self.say(f"[message request] {name}: {body}")
            if sender not in self._requesters:
                self._requesters.add(sender)
                self.say(
                    f"  {sender} is not one of your contacts: /accept {sender} (or a reply) "
                    f"accepts, /block {sender} blocks; until then {sender} does not learn "
                    "that it arrived"
                )
        else:
            prefix = f"[{message.category}] " if message.category else ""
            self.say(f"{prefix}{name}: {body}")
        if message.identity == "new":
            self.say(f"  (first message from {sender}; compare /safety {sender} to verify)")

    async def badge(self, handle: str) -> str:
        info = self._badges.get(handle)
        if info is None:
            try:
                info = self._badges[handle] = await self.client.business_info(handle)
            except BlindrelayError as exc:
                return f"[business, profile unreadable: {type(exc).__name__}]"
        # SPEC §8.1: only the badge's name is shown as verified; the profile's name is
        # the business's own claim, shown only marked as unverified.
        claimed = info.claimed_name
        if info.verified_name is not None:
            mark = f"[✔ verified: {_printable(info.verified_name)}]"
            if info.name_mismatch and claimed is not None:
                mark += f' [!! its profile says "{_printable(claimed)}": NOT verified]'
            return mark
        calls_itself = f', its profile says "{_printable(claimed)}"' if claimed else ""
        if info.key_changed:
            return f"[business, KEY CHANGED: not verified{calls_itself}]"
        return f"[business, not verified: {info.badge.status.value}{calls_itself}]"

    # --- Commands -----------------------------------------------------------------------

    async def command(self, line: str) -> bool:
        """Run one input line; False once the person quits."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.say("type /msg HANDLE TEXT to send, /help for commands")
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
        except (BlindrelayError, KeyError) as exc:
            self.say(f"refused: {type(exc).__name__} {exc}".rstrip())
        return True

    def _commands(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        return {
            "help": self.help, "msg": self.msg, "accept": self.accept, "contacts": self.contacts,
            "safety": self.safety, "verify": self.verify, "approve": self.approve,
            "requests": self.requests, "grant": self.grant, "deny": self.deny,
            "revoke": self.revoke, "block": self.block, "unblock": self.unblock,
        }  # fmt: skip

    async def help(self, _rest: str) -> None:
        self.say(HELP)

    async def msg(self, rest: str) -> None:
        handle, _, text = rest.partition(" ")
        if not handle or not text:
            raise Usage("/msg HANDLE TEXT")
        if self.client.identity_change_pending(handle):
            self.warn_identity_change(handle)
            return
        await self.client.send(handle, text)
        self.remember(handle)
        self.say(f"-> {handle}: sent")

    async def accept(self, rest: str) -> None:
        handle = _one_handle(rest, "/accept HANDLE")
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
            self.say(f"  {handle} ({kind or '?'}) {trust}{badge}")

    async def safety(self, rest: str) -> None:
        handle = _one_handle(rest, "/safety HANDLE")
        digits = self.client.safety_number(handle)
        groups = " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
        self.say(f"safety number with {handle}: {groups}")

    async def verify(self, rest: str) -> None:
        handle = _one_handle(rest, "/verify HANDLE")
        if self.client.identity_change_pending(handle):
            self.say(f"{handle}'s key changed: compare /safety {handle}, then /approve {handle}")
            return
        self.client.approve_identity(handle, verified=True)
        self.say(f"{handle} marked verified")

    async def approve(self, rest: str) -> None:
        handle = _one_handle(rest, "/approve HANDLE")
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

    async def requests(self, _rest: str) -> None:
        requests = self.client.store.consent_requests()
        if not requests:
            self.say("no consent requests waiting")
        for business, categories in sorted(requests.items()):
            cats = ",".join(categories)
            self.say(f"  {business} {await self.badge(business)} asks for {cats}")

    def _answered(self, business: str) -> None:
        self.client.store.set_consent_request(business, None)

    def _business_and_categories(
        self, rest: str, usage: str, *, default: bool
    ) -> tuple[str, list[str]]:
        words = rest.replace(",", " ").split()
        if not words:
            raise Usage(usage)
        business, categories = words[0], words[1:]
        if not categories and default:
            categories = list(self.client.store.consent_requests().get(business, ()))
        unknown = [c for c in categories if c not in limits.CATEGORIES]
        if not categories or unknown:
            raise Usage(f"{usage} (categories: {', '.join(limits.CATEGORIES)})")
        return business, categories

    async def grant(self, rest: str) -> None:
        business, categories = self._business_and_categories(
            rest, "/grant BUSINESS CATS", default=True
        )
        granted = await self.client.grant(business, categories)
        self._answered(business)
        self.remember(business, "business")
        self.say(f"granted {business}: {','.join(granted.categories or ())}")

    async def deny(self, rest: str) -> None:
        business, categories = self._business_and_categories(
            rest, "/deny BUSINESS [CATS]", default=True
        )
        await self.client.deny(business, categories)
        self._answered(business)
        self.say(f"denied {business}: {','.join(categories)}")

    async def revoke(self, rest: str) -> None:
        business, categories = self._business_and_categories(
            rest, "/revoke BUSINESS CATS", default=False
        )
        revoked = await self.client.revoke(business, categories)
        self.say(f"revoked {business}: {','.join(revoked.categories or ())}")

    async def block(self, rest: str) -> None:
        handle = _one_handle(rest, "/block HANDLE")
        await self.client.block(handle)
        self._answered(handle)
        self.say(f"blocked {handle}: nothing of theirs reaches you")

    async def unblock(self, rest: str) -> None:
        handle = _one_handle(rest, "/unblock HANDLE")
        await self.client.unblock(handle)
        self.say(f"unblocked {handle}")


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a name must not rewrite the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_handle(rest: str, usage: str) -> str:
    words = shlex.split(rest)
    if len(words) != 1:
        raise Usage(usage)
    return words[0]
