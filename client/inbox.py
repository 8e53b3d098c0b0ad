"""The inbox: from a DELIVER to :meth:`Client.messages` (SPEC §6.4, §6.5).

A message from the wire to the application: the connection hands each
DELIVER to :meth:`Inbox.deliver_received`, which decrypts and persists it
(``sessions``: message, session and msg_id in one keystore transaction) — or
holds it — and only then writes its ACK. :meth:`Inbox.messages` reads the
persisted inbox, so a message survives a crash between arrival and display.

- **Ack after persistence** (SPEC §6.5); duplicates are dropped by
  ``(sender, msg_id)`` and acked again. One that can never be decrypted is
  logged and acked: acknowledging is the only way on.
- **Key changes hold messages** (SPEC §3.3). A sender whose new identity key
  awaits the user has its messages kept in the keystore, in order, and
  acknowledged — left unacknowledged they would keep slots of the relay's
  delivery window (SPEC §6.4), and one sender could stall delivery from
  everyone — up to :data:`MAX_HELD_PER_SENDER`. Approving the key releases
  them in order (:meth:`Inbox.release_held`), blocking the sender discards them.
- **Receipts** (SPEC §6.2): a user's message from a contact gets an automatic
  delivered receipt; from a requester (``message_requests``) none, as a
  receipt is a chat and would accept them. None to or from a business: a chat
  opens the business's service window (SPEC §7.3).
- A forwarded statement (intent ``statement``) goes to ``statements``.

Not here: decryption (``sessions``), sending receipts (``sending``), trust
decisions (``trust``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from blindrelay.protocol import codec, frames
from blindrelay.protocol.content import (
    Data,
    MalformedContent,
    Receipt,
    ReceiptType,
    Text,
)
from blindrelay.protocol.errors import (
    BlindrelayError,
    CryptoError,
    MalformedFrame,
    ProtocolError,
    UntrustedIdentity,
)

from .connection import Connection
from .keystore import KeyStore
from .link import RelayLink
from .message_requests import MessageRequests
from .sending import Sender
from .sessions import Incoming, SessionManager
from .statements import Statements
from .trust import IdentityState, RelayKeyPin

log = logging.getLogger("blindrelay.client")

MAX_HELD_PER_SENDER = 100
"""Messages kept per sender while its identity key change awaits the user (SPEC
§3.3). Held messages are acknowledged, so they never occupy the relay's delivery
window; this bounds what one sender can make us store (up to 100 envelopes of at
most 64 KiB). A contact on a new phone rarely sends more before the user decides;
beyond it messages are dropped, acknowledged and counted
(:meth:`Client.held_messages`), so the application can ask them to resend.
Larger keeps more of a real backlog and gives a forger more disk."""


@dataclass(frozen=True, slots=True)
class Message:
    """A decrypted incoming message as the application sees it.

    ``body`` is a str (kind text) or bytes (kind bytes); for a receipt it is
    None and ``receipt`` names the confirmed msg_ids. ``sent_at`` is the relay's
    acceptance time (SPEC §6.3); ``identity`` how far the sender's key is trusted.
    """

    msg_id: bytes
    sender: str
    sender_kind: str
    sent_at: int
    identity: IdentityState
    body: str | bytes | None
    receipt: Receipt | None = None
    intent: str = "chat"
    category: str | None = None
    """A notification's category (SPEC §7.1)."""
    categories: tuple[str, ...] | None = None
    """What a consent request asks for; answer with :meth:`Client.grant` or ``deny``."""
    is_request: bool = False
    """A message request (SPEC §7.3): from a user we (a user) have never written to.
    Show it apart; :meth:`Client.accept_request` (or any reply) accepts, ``block`` refuses."""

    @property
    def from_business(self) -> bool:
        """Sent by a business account (check its badge with :meth:`Client.business_info`)."""
        return self.sender_kind == frames.AccountKind.BUSINESS

    @property
    def from_user(self) -> bool:
        return self.sender_kind == frames.AccountKind.USER

    @property
    def is_consent_request(self) -> bool:
        """A business asks for consent to ``categories``; ``body`` is its explanation."""
        return self.intent == frames.Intent.CONSENT_REQUEST

    @classmethod
    def from_incoming(cls, incoming: Incoming, *, is_request: bool = False) -> Message:
        body = incoming.content.body
        data = body.data if isinstance(body, Data) else None
        return cls(
            msg_id=incoming.msg_id,
            sender=incoming.sender,
            sender_kind=incoming.sender_kind,
            sent_at=incoming.sent_at,
            identity=incoming.identity,
            body=body.text if isinstance(body, Text) else data,
            receipt=body if isinstance(body, Receipt) else None,
            intent=incoming.intent,
            category=incoming.category,
            categories=incoming.categories,
            is_request=is_request,
        )


@dataclass(frozen=True, slots=True)
class HeldMessages:
    """A sender's messages waiting for the user's decision on its new identity key."""

    held: int
    """Kept, acknowledged, decrypted in order once the key is approved."""
    dropped: int
    """Refused beyond ``MAX_HELD_PER_SENDER``: gone; the sender must resend them."""


class Inbox:
    """What arrives: decrypted, persisted or held, acknowledged, read (module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        sessions: SessionManager,
        link: RelayLink,
        relay_key: RelayKeyPin,
        *,
        sender: Sender,
        statements: Statements,
        requests: MessageRequests,
        identity_changed: Callable[[str], None],
        auto_delivered_receipts: bool,
    ) -> None:
        """``sender``, ``statements`` and ``requests`` are where receipts, statements and
        requests go."""
        self._store = store
        self._sessions = sessions
        self._sender = sender
        self._statements = statements
        self._requests = requests
        self._link = link
        self._relay_key = relay_key
        self._identity_changed = identity_changed
        self.auto_delivered_receipts = auto_delivered_receipts
        self._changed = asyncio.Event()
        self._held: dict[str, HeldMessages] = {
            sender: HeldMessages(counts.held, counts.dropped)
            for sender, counts in store.held_counts().items()
        }
        """Mirror of the keystore's held counts: every DELIVER asks whether its sender
        has messages held (then it is held behind them, in order)."""
        self._announced: set[str] = set()
        """Senders whose key change ``identity_changed`` heard of in this run."""

    # --- Receiving ------------------------------------------------------------------

    def deliver_received(self, conn: Connection, deliver: frames.Deliver) -> None:
        """Decrypt and persist, or hold; then ack (SPEC §6.5)."""
        if deliver.sender in self._held:
            self._hold(deliver)  # keep the sender's order behind the held ones
        else:
            try:
                self._receive(deliver, conn.relay_key)
            except UntrustedIdentity:
                self._hold(deliver)
        if not conn.lost:
            conn.send(frames.Ack(delivery_ids=(deliver.delivery_id,)))

    def _receive(self, deliver: frames.Deliver, relay_key: bytes) -> None:
        """Decrypt and persist one DELIVER (or a statement); once it returns, ack.

        Raises UntrustedIdentity for a sender whose key change awaits the user
        (nothing kept), or what the keystore raises (nothing may be acked).
        """
        try:
            if deliver.intent == frames.Intent.STATEMENT:
                self._statements.receive(deliver, relay_key)
                return
            incoming = self._sessions.receive(deliver)
        except CryptoError as exc:
            if isinstance(exc, UntrustedIdentity):
                raise
            # Can never be decrypted (or shown): acknowledging is the only way on.
            log.warning("dropped undecryptable message from %s: %s", deliver.sender, exc)
            return
        if incoming is None:
            return
        self._changed.set()
        if (
            isinstance(incoming.content.body, Receipt)
            or deliver.sender_kind != frames.AccountKind.USER
            or not self._requests.we_are_user()
        ):
            return
        if self._requests.is_request(deliver.sender, deliver.sender_kind):
            # A message request: a receipt is a chat and would accept it (SPEC §7.3).
            self._requests.owe_receipt(deliver.sender, deliver.msg_id)
        elif self.auto_delivered_receipts:
            receipt = Receipt(ReceiptType.DELIVERED, (deliver.msg_id,))
            try:
                _, sent = self._sender.queue_content(deliver.sender, receipt)
            except (BlindrelayError, LookupError) as exc:
                log.info("no delivered receipt to %s: %r", deliver.sender, exc)
            else:
                sent.add_done_callback(_ignore_outcome)

    # --- Reading --------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[Message]:
        """:meth:`Client.messages`: the persisted inbox, oldest first, each removed
        when the next one is asked for or the iterator is closed — so one the
        application had not finished with when the process died comes back."""
        while True:
            self._link.raise_if_fatal()
            pending = self._store.pending_messages()
            if not pending:
                self._changed.clear()
                await self._changed.wait()
                continue
            record = pending[0]
            try:
                incoming = Incoming.from_record(record)
                is_request = self._requests.is_request(incoming.sender, incoming.sender_kind)
                message = Message.from_incoming(incoming, is_request=is_request)
            except MalformedContent:
                self._store.consume(record.sender, record.msg_id)
                continue
            try:
                yield message
            finally:  # the application asked for the next one, or stopped reading
                self._store.consume(record.sender, record.msg_id)

    def wake(self) -> None:
        """Wake a waiting :meth:`messages` (to raise why the client stopped)."""
        self._changed.set()

    # --- Held for a trust decision (SPEC §3.3) ------------------------------------------

    def _hold(self, deliver: frames.Deliver) -> None:
        """Keep ``deliver`` for the user's decision on its sender's key, or count it dropped."""
        sender = deliver.sender
        counts = self._held.get(sender, HeldMessages(0, 0))
        if counts.held >= MAX_HELD_PER_SENDER:
            counts = HeldMessages(counts.held, counts.dropped + 1)
            log.warning(
                "dropped a message from %s: %d already held awaiting approval of its new key",
                sender, counts.held,
            )  # fmt: skip
            self._store.count_dropped(sender)
        else:
            counts = HeldMessages(counts.held + 1, counts.dropped)
            self._store.hold_message(sender, codec.encode(deliver))
        self._held[sender] = counts
        if sender not in self._announced:
            self._announced.add(sender)
            self._identity_changed(sender)

    def held_messages(self, handle: str) -> HeldMessages:
        return self._held.get(handle, HeldMessages(0, 0))

    def release_approved(self) -> None:
        """Release the messages of senders approved before a crash stopped their release."""
        for handle in list(self._held):
            if self._sessions.trust.pending_change(handle) is None:
                self.release_held(handle)

    def release_held(self, handle: str) -> None:
        """Decrypt ``handle``'s held messages in order, now that the user trusts its key.

        Stops at one that names yet another key: it and the rest stay held for
        the next decision. Works offline: they were acknowledged when held (but
        on the event loop: a released message may queue a delivered receipt). A
        crash midway is safe, as each message is deduplicated by its id and
        what remains is released again at the next login.
        """
        if handle not in self._held:
            return
        relay_key = self._relay_key.key
        assert relay_key is not None  # pinned at the login that received them
        records = self._store.held_messages(handle)
        released = 0
        for record in records:
            try:
                deliver = codec.decode(record)
                if not isinstance(deliver, frames.Deliver):
                    raise MalformedFrame("not a DELIVER")
            except ProtocolError as exc:  # not what we wrote: nothing to show
                log.warning("dropped an unreadable held message from %s: %s", handle, exc)
            else:
                try:
                    self._receive(deliver, relay_key)
                except UntrustedIdentity:
                    break
            released += 1
        if released == len(records):
            self._store.release_held_messages(handle)
        else:
            self._store.release_held_messages(handle, released)
            counts = HeldMessages(len(records) - released, self._held[handle].dropped)
        if released == len(records):
            del self._held[handle]
            self._announced.discard(handle)
        else:
            self._held[handle] = counts

    def discard_held(self, handle: str) -> None:
        """The user blocked ``handle``: its held messages are never shown."""
        counts = self._held.pop(handle, None)
        if counts is None:
            return
        self._store.release_held_messages(handle)
        self._announced.discard(handle)
        log.info("discarded %d held message(s) of blocked %s", counts.held, handle)


def _ignore_outcome(future: asyncio.Future[int]) -> None:
    """Background sends (auto receipts) have nobody awaiting them; retrieve the outcome."""
    if not future.cancelled() and future.exception() is not None:
        log.info("background send failed: %r", future.exception())


__all__ = ["MAX_HELD_PER_SENDER", "HeldMessages", "Inbox", "Message"]
