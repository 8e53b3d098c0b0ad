"""The inbox: from a DELIVER to :meth:`Client.messages` and :meth:`Client.receipts`
(SPEC §6.4, §6.5).

A message from the wire to the application: the connection hands each
DELIVER to :meth:`Inbox.deliver_received`, which decrypts and persists it
(``sessions``: message, session and msg_id in one keystore transaction) — or
holds it — and only then writes its ACK. :meth:`Inbox.messages` and
:meth:`Inbox.receipts` read the persisted inbox (``reading``: what they yield and
when an item is acknowledged), so an item survives a crash between arrival and
display.

- **Ack after persistence** (SPEC §6.5); duplicates are dropped by
  ``(sender, msg_id)`` and acked again. One that can never be decrypted, or whose
  content is refused (its id or labels are not the DELIVER's: relabelled by the
  relay, SPEC §13.11), is logged — what was refused, never the text — and acked:
  acknowledging is the only way on.
- **Key changes hold messages** (SPEC §3.3). A sender whose new identity key
  awaits the user has its messages kept in the keystore, in order, and
  acknowledged — left unacknowledged they would keep slots of the relay's
  delivery window (SPEC §6.4), and one sender could stall delivery from
  everyone — up to :data:`MAX_HELD_PER_SENDER`, and from strangers up to
  :data:`MAX_HELD_FROM_STRANGERS` in all (T66). Approving the key releases
  them in order (:meth:`Inbox.release_held`), blocking the sender discards them.
- **Receipts** (SPEC §6.2): a user's message from a contact gets an automatic
  delivered receipt; from a requester (``message_requests``) none, as a
  receipt is a chat and would accept them. None to or from a business: a chat
  opens the business's service window (SPEC §7.3).
- A forwarded statement (intent ``statement``) goes to ``statements``.

Not here: decryption (``sessions``), the reading contract (``reading``), sending
receipts (``sending``), trust decisions (``trust``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from blindrelay.protocol import codec, frames
from blindrelay.protocol.content import MalformedContent, Receipt, ReceiptType
from blindrelay.protocol.errors import (
    BlindrelayError,
    CryptoError,
    MalformedFrame,
    ProtocolError,
    UntrustedIdentity,
)

from .connection import Connection
from .incoming import Incoming
from .keystore import KeyStore
from .message_requests import MessageRequests
from .reading import (
    MAX_UNREAD_RECEIPTS,
    InboxReader,
    InboxStream,
    Message,
    ReceiptEvent,
    is_receipt,
)
from .sending import Sender
from .sessions import SessionManager
from .statements import Statements
from .trust import RelayKeyPin

log = logging.getLogger("blindrelay.client")

MAX_HELD_PER_SENDER = 100
"""Messages kept per sender while its identity key change awaits the user (SPEC
§3.3). Held messages are acknowledged, so they never occupy the relay's delivery
window; this bounds what one sender can make us store (up to 100 envelopes of at
most 64 KiB). A contact on a new phone rarely sends more before the user decides;
beyond it messages are dropped, acknowledged and counted
(:meth:`Client.held_messages`), so the application can ask them to resend.
Larger keeps more of a real backlog and gives a forger more disk."""

MAX_HELD_FROM_STRANGERS = 200
"""Messages held from strangers in all — senders that are not contacts
(:meth:`MessageRequests.is_contact`) — while their key changes await the user (T66).
Any throwaway account is a stranger: its first message pins a key, the next names
another, and from then on it needs no valid envelope to be held, so per sender alone
(``MAX_HELD_PER_SENDER``, of up to 40 KiB each) the accounts together could fill the
profile without bound, for good. 200 keeps up to ~8 MB on disk; a stranger's message
past it is dropped, acknowledged and counted like one past the per-sender bound.
Contacts' messages are never dropped for strangers'. Larger keeps more of strangers'
backlogs (a business's customers are all strangers) and gives forgers more disk."""

RECEIPT_RATE_LIMIT_RETRIES = 5
"""402s a delivered receipt the SDK sends by itself waits out (SPEC §10), as a send
told ``rate_limit_retries`` does: right after a relay restart an account's SEND bucket
counts as emptied when its last connection ended, so the receipts of what arrives at
the reconnect met 402 and were given up at once, never sent."""


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
        relay_key: RelayKeyPin,
        *,
        sender: Sender,
        statements: Statements,
        requests: MessageRequests,
        identity_changed: Callable[[str], None],
        raise_if_stopped: Callable[[], None],
        auto_delivered_receipts: bool,
        heard_tree_head: Callable[[bytes, str], None] = lambda _signed, _sender: None,
    ) -> None:
        """``sender``, ``statements`` and ``requests`` are where receipts, statements and
        requests go; readers call ``raise_if_stopped`` (the link's) before they wait."""
        self._store = store
        self._sessions = sessions
        self._sender = sender
        self._statements = statements
        self._requests = requests
        self._relay_key = relay_key
        self._identity_changed = identity_changed
        self._heard_tree_head = heard_tree_head
        """Where the relay log's head a contact sent inside a message goes (SPEC §15.6)."""
        self.auto_delivered_receipts = auto_delivered_receipts
        self._messages = InboxStream(store, self._message, raise_if_stopped=raise_if_stopped)
        self._receipts = InboxStream(
            store, ReceiptEvent.from_incoming, raise_if_stopped=raise_if_stopped,
            unread_limit=MAX_UNREAD_RECEIPTS,
        )  # fmt: skip
        self._load_pending()
        self._held: dict[str, HeldMessages] = {
            sender: HeldMessages(counts.held, counts.dropped)
            for sender, counts in store.held_counts().items()
        }
        """Mirror of the keystore's held counts: every DELIVER asks whether its sender
        has messages held (then it is held behind them, in order)."""
        self._held_ids: dict[str, set[tuple[bool, bytes]]] = {}
        """Per sender, which messages it has held: (is a statement, msg_id), read from the
        keystore at its first DELIVER held after a start or a release, so a redelivery
        (its ACK lost, SPEC §6.4.3) is told from a new message without reading them all."""
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
        except MalformedContent as exc:  # decrypted, refused (SPEC §13.11): never shown
            log.warning("refused a message from %s: %s", deliver.sender, exc)
            return
        except CryptoError as exc:
            if isinstance(exc, UntrustedIdentity):
                raise
            # Can never be decrypted (or shown): acknowledging is the only way on.
            log.warning("dropped undecryptable message from %s: %s", deliver.sender, exc)
            return
        if incoming is None:
            return
        self._queue(incoming)
        if incoming.content.sth is not None:
            self._heard_tree_head(incoming.content.sth, incoming.sender)
        if (
            is_receipt(incoming)
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
                _, sent = self._sender.queue_content(
                    deliver.sender, receipt, rate_limit_retries=RECEIPT_RATE_LIMIT_RETRIES
                )
            except (BlindrelayError, LookupError) as exc:
                log.info("no delivered receipt to %s: %r", deliver.sender, exc)
            else:
                sent.add_done_callback(_ignore_outcome)

    # --- Reading (the contract is ``reading``'s) -----------------------------------------

    def messages(self) -> InboxReader[Message]:
        """:meth:`Client.messages`: the persisted messages, oldest first."""
        return self._messages.reader()

    def receipts(self) -> InboxReader[ReceiptEvent]:
        """:meth:`Client.receipts`: the persisted receipts, oldest first."""
        return self._receipts.reader()

    def wake(self) -> None:
        """Wake waiting readers (to raise why the client stopped)."""
        self._messages.wake()
        self._receipts.wake()

    def close(self) -> None:
        """The client closes: what the application has in hand is done with."""
        self._messages.close()
        self._receipts.close()

    def _message(self, incoming: Incoming) -> Message:
        """Whether it is a message request is decided when it is read: a reply since
        arrival accepted its sender (SPEC §7.3)."""
        is_request = self._requests.is_request(incoming.sender, incoming.sender_kind)
        return Message.from_incoming(incoming, is_request=is_request)

    def _queue(self, incoming: Incoming) -> None:
        if is_receipt(incoming):
            self._receipts.put(incoming)
        else:
            self._messages.put(incoming)

    def _load_pending(self) -> None:
        """Queue what an earlier run left unacknowledged; drop what we cannot read."""
        for record in self._store.pending_messages():
            try:
                incoming = Incoming.from_record(record)
            except MalformedContent as exc:
                log.warning("dropped an unreadable inbox record from %s: %s", record.sender, exc)
                self._store.consume(record.sender, record.msg_id)
                continue
            self._queue(incoming)

    # --- Held for a trust decision (SPEC §3.3) ------------------------------------------

    def _hold(self, deliver: frames.Deliver) -> None:
        """Keep ``deliver`` for the user's decision on its sender's key, or count it dropped.

        A redelivery (its ACK lost, SPEC §6.4.3) of one held or processed already is
        dropped: held again, it took one more of the sender's held slots (and of the
        strangers', T66), to be dropped as a duplicate only once released.
        """
        sender = deliver.sender
        held_ids = self._held_ids_of(sender)
        key = _held_id(deliver)
        if key in held_ids or self._processed(deliver):
            log.info("dropped a redelivery of a message from %s held or read already", sender)
            self._announce(sender)
            return
        counts = self._held.get(sender, HeldMessages(0, 0))
        if counts.held >= MAX_HELD_PER_SENDER or self._strangers_full(sender):
            counts = HeldMessages(counts.held, counts.dropped + 1)
            log.warning(
                "dropped a message from %s: %d already held awaiting approval of its new key",
                sender, counts.held,
            )  # fmt: skip
            self._store.count_dropped(sender)
        else:
            counts = HeldMessages(counts.held + 1, counts.dropped)
            self._store.hold_message(sender, codec.encode(deliver))
            held_ids.add(key)
        self._held[sender] = counts
        self._announce(sender)

    def _announce(self, sender: str) -> None:
        """Tell ``identity_changed`` of ``sender``'s key change, once per run."""
        if sender not in self._announced:
            self._announced.add(sender)
            self._identity_changed(sender)

    def _held_ids_of(self, sender: str) -> set[tuple[bool, bytes]]:
        """``sender``'s entry of ``_held_ids``, read from the keystore if not yet."""
        held_ids = self._held_ids.get(sender)
        if held_ids is None:
            held_ids = self._held_ids[sender] = set()
            for record in self._store.held_messages(sender):
                try:
                    frame = codec.decode(record)
                except ProtocolError:  # unreadable: dropped when released
                    continue
                if isinstance(frame, frames.Deliver):
                    held_ids.add(_held_id(frame))
        return held_ids

    def _processed(self, deliver: frames.Deliver) -> bool:
        """Whether ``deliver`` was processed already, as releasing it would find: a
        statement by its bytes (``Statements``), a message by its msg_id (``sessions``)."""
        if deliver.intent == frames.Intent.STATEMENT:
            return self._statements.kept_already(deliver)
        return self._store.is_processed(deliver.sender, deliver.msg_id)

    def _strangers_full(self, sender: str) -> bool:
        """Whether ``sender`` is a stranger and strangers' held messages are at
        :data:`MAX_HELD_FROM_STRANGERS` already (T66). Looks only at senders holding some:
        at most that many strangers, and the contacts."""
        is_contact = self._requests.is_contact
        if is_contact(sender):
            return False
        held = sum(c.held for h, c in self._held.items() if c.held and not is_contact(h))
        return held >= MAX_HELD_FROM_STRANGERS

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
        self._held_ids.pop(handle, None)  # read again at the next one held
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
        self._held_ids.pop(handle, None)
        if counts is None:
            return
        self._store.release_held_messages(handle)
        self._announced.discard(handle)
        log.info("discarded %d held message(s) of blocked %s", counts.held, handle)


def _held_id(deliver: frames.Deliver) -> tuple[bool, bytes]:
    """What tells a held message from its sender's others: its msg_id among statements or
    among the rest. A statement's msg_id is its nonce, chosen apart from its signer's
    SENDs (SPEC §7.5), so a chat may share it and is another message."""
    return deliver.intent == frames.Intent.STATEMENT, deliver.msg_id


def _ignore_outcome(future: asyncio.Future[int]) -> None:
    """Background sends (auto receipts) have nobody awaiting them; retrieve the outcome."""
    if not future.cancelled() and future.exception() is not None:
        log.info("background send failed: %r", future.exception())


__all__ = ["MAX_HELD_FROM_STRANGERS", "MAX_HELD_PER_SENDER", "HeldMessages", "Inbox"]
