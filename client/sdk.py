"""The asyncio client an application uses: connect, send, receive, all end-to-end encrypted.

A dozen lines::

    client = Client.open("alice.db", passphrase)      # or Client.open(None) in memory
    await client.connect("ws://127.0.0.1:8765")
    await client.register("alice")                   # later runs: await client.login()
    await client.send("bob", "hello")                # returns after the relay's SENT
    async for message in client.messages():           # receipts: client.receipts()
        print(message.sender, message.body, message.identity)

:class:`Client` is a facade over parts that each own one thing and say in
their docstrings what they guarantee (made and wired in ``parts``):

- ``link`` (:class:`.link.RelayLink`, over one :class:`.connection.Connection`
  at a time): connect, reconnect with backoff, requests;
- ``account``: register, log in (again after each drop), catch up at each
  WELCOME, rotate our identity key (SPEC §3.4, §4; the steps: ``rotation``);
- ``sender`` and ``outbox``: encrypt and enqueue, then transmit, retry and
  retire until the relay's SENT (SPEC §6.1–6.3);
- ``inbox``: decrypt and persist each DELIVER (or hold it for a key
  decision), acknowledge it, serve :meth:`Client.messages` and
  :meth:`Client.receipts` (SPEC §6.4–6.5; when an item is acknowledged:
  ``reading``);
- ``requests``: message requests between users (SPEC §7.3);
- ``consent``: the statements we make, keep and check (SPEC §7.4–7.6); its
  records (``records``, ``counts``, ``check``, listeners) are public API;
- ``trust`` and ``relay_key_pin``: contacts' identity keys and the relay's
  key (SPEC §3.3, §4.1, §13.9);
- ``prekeys``: keeping our prekeys published (SPEC §5.4);
- ``log``: reading the relay's transparency log, and publishing our key in it
  (SPEC §15.6; ``transparency``);
- ``sessions`` and ``store``: cryptography and key custody.

A message out: :meth:`Client.send` → :meth:`.sending.Sender.send_content` →
:meth:`.outbox.Outbox.add` → :meth:`.connection.Connection.send_message`. A
message in: :meth:`.connection.Connection.read` →
:meth:`.inbox.Inbox.deliver_received` → the keystore →
:meth:`.reading.InboxStream.put` → :meth:`Client.messages` (a receipt:
:meth:`Client.receipts`). What the link reports (a DELIVER, a SEND's answer,
a WELCOME) reaches the parts as :meth:`.parts.Parts.link_handlers` names.

Not here: cryptography and key custody (``sessions``, ``keystore``), the
socket itself (``transport``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from blindrelay.protocol import frames
from blindrelay.protocol.content import Receipt, ReceiptType
from blindrelay.protocol.errors import LogForked, LogUnchecked
from blindrelay.protocol.signed import Action, ConsentStatement

from .connection import ANSWER_TIMEOUT_S, NoAnswer
from .gossip import DEFAULT_RECHECK, RecheckPolicy
from .inbox import MAX_HELD_FROM_STRANGERS, MAX_HELD_PER_SENDER, HeldMessages
from .keystore import DEFAULT_MEMLIMIT, DEFAULT_OPSLIMIT, AccountKind, KeyStore, open_profile
from .link import DEFAULT_BACKOFF, Backoff
from .logcheck import DEFAULT_WAIT_S
from .outbox import Outcome
from .parts import Parts
from .profiles import BusinessInfo, business_info, same_name
from .reading import MAX_UNREAD_RECEIPTS, InboxReader, Message, ReceiptEvent
from .sending import SEND_MANY_WINDOW, Labels, as_content
from .sessions import Clock, Rng, wall_clock_ms
from .statements import MAX_IN_FORCE, HeldStatement, StatementListener, TargetBlocked
from .transport import ConnectionLost, OpenTransport, WebSocketTransport
from .trust import IdentityState, RelayKeyChanged

Categories = tuple[str, ...] | list[str]
"""Notification categories (``limits.CATEGORIES``) a consent statement names."""


class Client:
    """An end-to-end encrypted messaging client for one account (module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        *,
        rng: Rng = os.urandom,
        clock: Clock = wall_clock_ms,
        backoff: Backoff = DEFAULT_BACKOFF,
        jitter: Callable[[], float] = random.random,
        auto_delivered_receipts: bool = True,
        on_connected: Callable[[frames.Welcome], None] | None = None,
        on_identity_change: Callable[[str], None] | None = None,
        on_statement: StatementListener | None = None,
        on_log_forked: Callable[[LogForked], None] | None = None,
        on_log_unchecked: Callable[[LogUnchecked], None] | None = None,
        operator_key: bytes | None = None,
        owns_store: bool = False,
        open_transport: OpenTransport = WebSocketTransport.open,
        log_wait_s: float = DEFAULT_WAIT_S,
        log_recheck: RecheckPolicy = DEFAULT_RECHECK,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        """The options: docs/sdk.md, "Opening a profile"."""
        self.store = store
        self.on_connected = on_connected
        """Called with each WELCOME: the account is online (again)."""
        self.on_identity_change = on_identity_change
        """Called with a contact's handle when it presents a new identity key (SPEC §3.3)."""
        self.on_log_forked = on_log_forked
        """Called once a run with the split-view alarm: the relay showed two histories
        (§15.6). Kept in the profile, it is told again in every later run."""
        self.on_log_unchecked = on_log_unchecked
        """Called once a run per contact whose tree head the relay has not proven
        consistent with ours within ``log_recheck``'s bounds (§15.6 rule 5)."""
        self.operator_key = operator_key
        """The relay operator's Ed25519 key, pinned from configuration (SPEC §8.1)."""
        self._clock = clock
        self._owns_store = owns_store
        parts = Parts.assemble(
            store, self,
            rng=rng, clock=clock, backoff=backoff, jitter=jitter, open_transport=open_transport,
            auto_delivered_receipts=auto_delivered_receipts, on_statement=on_statement,
            log_wait_s=log_wait_s, log_recheck=log_recheck, answer_timeout_s=answer_timeout_s,
        )  # fmt: skip
        self.sessions, self.trust = parts.sessions, parts.trust
        self.link, self.account = parts.link, parts.account
        self.sender, self.outbox, self.inbox = parts.sender, parts.outbox, parts.inbox
        self.requests, self.consent = parts.requests, parts.consent
        self.relay_key_pin, self.prekeys = parts.relay_key_pin, parts.prekeys
        self.log, self.log_check = parts.log, parts.log_check

    @classmethod
    def open(
        cls,
        path: str | Path | None,
        passphrase: str | None = None,
        *,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
        **options: Any,
    ) -> Client:
        """Open (or create) the profile at ``path``, ``None`` for one in memory, with a
        client that closes it. Argon2 costs apply when the file is created (``keystore``)."""
        store = open_profile(path, passphrase, opslimit=opslimit, memlimit=memlimit)
        return cls(store, owns_store=True, **options)

    @property
    def clock(self) -> Clock:
        """Our injected wall clock (Unix ms); :meth:`relay_now` is the relay's."""
        return self._clock

    @property
    def handle(self) -> str | None:
        """Our handle: the registered one, or the one a REGISTER not accepted yet asked for."""
        identity = self.store.get_identity()
        return identity.handle if identity is not None else None

    @property
    def online(self) -> bool:
        """Authenticated on a live connection now (sends go at once; else they wait in
        the outbox and the link reconnects by itself)."""
        return self.link.online is not None

    @property
    def registered(self) -> bool:
        """Whether the relay accepted this profile's REGISTER: then :meth:`login`, else
        :meth:`register` (again, with any handle, after a refusal)."""
        return self.store.is_registered()

    # --- Connection and authentication (SPEC §1, §4) ---------------------------

    async def connect(self, url: str) -> None:
        """Open a connection to the relay at ``url`` and wait for its HELLO; later drops are
        retried in the background. Raises ConnectionLost if this first one fails, and
        :class:`RelayKeyChanged` (nothing sent) until :meth:`accept_relay_key`."""
        await self.link.connect(url)

    def accept_relay_key(self, relay_key: bytes) -> None:
        """Pin ``relay_key`` after :class:`RelayKeyChanged`, once the person learnt it
        out of band. Statements we hold stay verifiable against the key they name."""
        self.relay_key_pin.accept(relay_key)

    @property
    def relay_key(self) -> bytes | None:
        """The relay key pinned at our first login (or accepted since): statements are bound
        to it, and a relay presenting another one is :class:`RelayKeyChanged`."""
        return self.relay_key_pin.key

    def relay_now(self) -> int:
        """The relay's clock as estimated from the last HELLO's ``now`` (SPEC §4.1): our
        statements are dated with it, so a device whose clock is off still makes valid ones."""
        return self.link.relay_now()

    async def register(
        self, handle: str, kind: AccountKind = "user", *, invite: bytes | None = None
    ) -> None:
        """Create the account ``handle`` on the relay and publish prekeys (SPEC §4.2, §5.2),
        solving the relay's proof of work off the event loop if it asks, with the operator's
        ``invite`` if given (SPEC §4.6). Raises HandleTaken (another handle may be tried at
        once), RegistrationRefused, or the named error of another refusal."""
        await self.account.register(handle, kind, invite)

    async def login(self) -> None:
        """Log in as this profile's account (SPEC §4.3), completing an interrupted
        :meth:`rotate_identity` first; reconnects log in by themselves."""
        await self.account.login()

    async def rotate_identity(self) -> None:
        """Replace our identity key (SPEC §3.4): returns once the relay and our profile hold
        the new key and prekeys signed with it are published. A crash at any step loses
        neither key: the next login completes the rotation (``rotation``), as does calling
        this again. A refusal (e.g. RateLimited) is raised and the rotation stays pending."""
        await self.account.rotate()

    async def wait_online(self) -> None:
        """Return once the client is authenticated on a live connection."""
        await self.link.wait_online()

    @property
    def welcome(self) -> frames.Welcome | None:
        """The relay's WELCOME on the current or last connection (queued, prekey counts)."""
        return self.account.welcome

    @property
    def connection_count(self) -> int:
        """Authenticated connections so far (reconnects included)."""
        return self.account.connection_count

    async def close(self) -> None:
        """Flush and close the connection, fail waiting sends, acknowledge the message
        and receipt in hand (:meth:`messages`), close a store we opened. Contacts' tree
        heads not proven yet stay in the profile, tried again at the next connection."""
        await self.log_check.close()
        self.prekeys.close()
        await self.link.close()
        self.outbox.delete_retired()
        self.outbox.fail_waiting(ConnectionLost("client closed"))
        self.inbox.close()
        if self._owns_store:
            self.store.close()

    # --- Sending (SPEC §6.1–6.3) ----------------------------------------------

    async def send(
        self,
        handle: str,
        body: str | bytes,
        *,
        intent: str = frames.Intent.CHAT,
        category: str | None = None,
        categories: tuple[str, ...] | None = None,
        rate_limit_retries: int = 0,
    ) -> bytes:
        """Encrypt ``body`` for ``handle`` and return its msg_id once the relay holds it (SENT),
        waiting for a connection if there is none. ``intent``: ``chat``, or a business's
        ``notification`` (a ``category``) or ``consent_request`` (``categories``) (SPEC §6.2).
        RATE_LIMITED is retried ``rate_limit_retries`` times (the SEND's, and the bundle
        fetch's that a first message to ``handle`` starts with). Raises UntrustedIdentity while
        the contact's key change awaits approval, and the relay's named errors."""
        labels = Labels(intent, category, categories)
        return await self.sender.send_content(handle, as_content(body), labels, rate_limit_retries)

    async def send_read_receipt(self, handle: str, msg_ids: list[bytes]) -> bytes:
        """Tell ``handle`` its messages were read (an encrypted receipt, SPEC §6.2)."""
        return await self.sender.send_content(handle, Receipt(ReceiptType.READ, tuple(msg_ids)))

    async def send_many(
        self,
        handles: Iterable[str],
        body: str | bytes,
        *,
        intent: str = frames.Intent.CHAT,
        category: str | None = None,
        categories: tuple[str, ...] | None = None,
        rate_limit_retries: int = 0,
        window: int = SEND_MANY_WINDOW,
    ) -> list[tuple[str, Outcome]]:
        """:meth:`send` to each of ``handles`` in its own envelope, ``window`` SENDs in flight
        (SPEC §8.3): each recipient in the order given with its msg_id or the error it ended
        with. Raises what stops the whole call (ConnectionLost, MalformedFrame…)."""
        labels = Labels(intent, category, categories)
        return await self.sender.send_many(
            handles, as_content(body), labels, rate_limit_retries=rate_limit_retries, window=window
        )

    # --- Receiving (SPEC §6.4, §6.5, §7.3) -------------------------------------

    def messages(self) -> InboxReader[Message]:
        """Every incoming message (never a receipt), oldest first, those stored before a
        restart included, each yielded once. The one in hand is acknowledged at the next
        step: the next item, leaving the loop, a new iterator, close (``reading``)."""
        return self.inbox.messages()

    def receipts(self) -> InboxReader[ReceiptEvent]:
        """Delivered and read receipts for our messages, oldest first, acknowledged as
        :meth:`messages` are; the oldest unread beyond ``MAX_UNREAD_RECEIPTS`` are dropped."""
        return self.inbox.receipts()

    async def accept_request(self, handle: str) -> bytes | None:
        """Accept ``handle``'s message request (SPEC §7.3): send the delivered receipt
        its requests were owed and return its msg_id at SENT; None when none was owed
        (the relay learns it from our next chat). Replying with any chat accepts too."""
        owed = self.requests.owed_receipts(handle)
        if not owed:
            self.requests.accept(handle)
            return None
        receipt = Receipt(ReceiptType.DELIVERED, tuple(owed))
        msg_id = await self.sender.send_content(handle, receipt)
        self.requests.forget_owed(handle)
        return msg_id

    # --- Trust (SPEC §3.3, §13.9) -----------------------------------------------

    def safety_number(self, handle: str) -> str:
        """The 60 digits to compare with ``handle`` out of band (SPEC §13.9)."""
        return self.trust.safety_number(handle)

    def identity_change_pending(self, handle: str) -> bool:
        """Whether ``handle`` presented a new identity key that awaits approval."""
        return self.trust.pending_change(handle) is not None

    def held_messages(self, handle: str) -> HeldMessages:
        """How many of ``handle``'s messages wait for :meth:`approve_identity` (or were
        dropped beyond ``MAX_HELD_PER_SENDER``, or ``MAX_HELD_FROM_STRANGERS`` from strangers
        in all) since its key changed."""
        return self.inbox.held_messages(handle)

    def approve_identity(self, handle: str, *, verified: bool = False) -> None:
        """Accept ``handle``'s new key (or mark the current one verified); its held
        messages are then decrypted into the inbox, in order. Call it on the event loop."""
        self.trust.approve(handle, verified=verified)
        self.inbox.release_held(handle)

    # --- Consent and blocking (SPEC §7.4–7.6) -----------------------------------

    async def grant(self, business: str, categories: Categories) -> ConsentStatement:
        """Consent to ``business``'s notifications in ``categories`` (no request needed).

        Those already granted are left out of the statement (SPEC §7.4); returns the
        statement sent, whose ``categories`` are the ones that changed."""
        return await self.consent.make(Action.GRANT, business, tuple(categories))

    async def deny(self, business: str, categories: Categories) -> ConsentStatement:
        """Refuse a consent request; the business may not ask again during the cooldown."""
        return await self.consent.make(Action.DENY, business, tuple(categories))

    async def revoke(self, business: str, categories: Categories) -> ConsentStatement:
        """Withdraw consent; from the OK on nothing in those categories is delivered.

        Those not granted are left out of the statement, as with :meth:`grant`."""
        return await self.consent.make(Action.REVOKE, business, tuple(categories))

    async def block(self, handle: str) -> ConsentStatement:
        """Block any account: from the OK on nothing of theirs reaches us (SPEC §7.4).

        Their messages held for a key decision are discarded, and no receipt is owed."""
        statement = await self.consent.make(Action.BLOCK, handle, None)
        self.inbox.discard_held(handle)
        self.requests.forget_owed(handle)
        return statement

    async def unblock(self, handle: str) -> ConsentStatement:
        """Lift our block; a revoked business's consent stays revoked."""
        return await self.consent.make(Action.UNBLOCK, handle, None)

    def granted_to(self, business: str) -> frozenset[str]:
        """The categories we have granted ``business`` and not withdrawn (a deny, a
        revoke or our block), by the statements we made from this keystore."""
        return self.consent.granted_to(business)

    def blocked(self, handle: str) -> bool:
        """Whether we block ``handle`` (our newest block or unblock of it is a block)."""
        return self.consent.blocked(handle)

    async def statements(self, max_statements: int = MAX_IN_FORCE) -> list[HeldStatement]:
        """The statements in force that we signed or that name us, from the relay (SPEC §7.6),
        each verified offline (``verified=False`` if altered); a listing of more than
        ``max_statements`` is the relay's fault (UnexpectedFrame, T56)."""
        return await self.consent.in_force(max_statements)

    # --- Businesses (SPEC §8.1–8.2) ---------------------------------------------

    async def business_info(self, handle: str) -> BusinessInfo:
        """Fetch a business's profile and badge and check both offline (``profiles``):
        without an operator key nothing shows as verified."""
        return await business_info(
            self.link, self.trust, handle, operator_key=self.operator_key, clock=self._clock,
            log_check=self.log_check,
        )  # fmt: skip


__all__ = [  # the names an application imports from here (docs/sdk.md)
    "ANSWER_TIMEOUT_S", "MAX_HELD_FROM_STRANGERS", "MAX_HELD_PER_SENDER", "MAX_UNREAD_RECEIPTS",
    "Backoff", "BusinessInfo", "Client", "ConnectionLost", "HeldMessages", "HeldStatement",
    "IdentityState", "InboxReader", "Message", "NoAnswer", "Outcome", "Receipt", "ReceiptEvent",
    "RecheckPolicy", "RelayKeyChanged", "TargetBlocked", "same_name",
]  # fmt: skip
