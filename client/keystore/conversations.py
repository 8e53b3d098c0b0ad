"""What a client keeps of its conversations: envelopes in and out, held messages,
owed receipts, whom we wrote to, and the signed statements we keep.

Invariants:

- :meth:`ConversationRecords.commit_incoming` writes the new session state, the
  processed message id and the decrypted message in one transaction, so the SDK
  can ack a delivery as soon as it returns: a crash before it means the relay
  redelivers, a crash after it means nothing is lost, and a redelivery of an
  already committed envelope is recognised by ``(sender, msg_id)`` instead of
  failing to decrypt (SPEC §6.4.3: ids are chosen by senders, so only the pair
  is unique).
- An outbox entry stays until the relay committed it (SENT, SPEC §6.3), so a
  restart resends it with its msg_id, in the order the entries were made.
- Held messages and kept statements are per-counterpart logs, kept in the order
  they came; their counts are written with them, in one transaction.

What it is not: the SDK's decisions (when to hold, whom a receipt is owed,
what a statement means) — it keeps what the SDK decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from blindrelay.protocol.transparency.bills import SentNotification, month_of

from .base import handle_key
from .keys import KeyRecords
from .records import (
    HeldCounts,
    IncomingMessage,
    OutboxEntry,
    require_bytes,
    require_count,
    require_handle,
)


def _outbox_entry(fields: Sequence[Any]) -> OutboxEntry:
    position, msg_id, to, envelope, intent, category, categories = fields
    categories = None if categories is None else tuple(categories)
    return OutboxEntry(position, msg_id, to, envelope, intent, category, categories)


class ConversationRecords(KeyRecords):
    """Inbox and processed ids, outbox, held messages, owed receipts, wrote-to, statements.

    Built on the keys: an incoming message is committed with its sender's session.
    """

    # Incoming messages, identified by (sender, msg_id) (SPEC §6.4.3)

    def mark_processed(self, sender: str, msg_id: bytes) -> None:
        """Remember a sender's envelope id (idempotent); the oldest beyond the cap are forgotten."""
        require_handle(sender)
        require_bytes("msg_id", msg_id)
        with self._transaction():
            if not self.is_processed(sender, msg_id):
                self._add_processed(sender, msg_id)

    def commit_incoming(
        self,
        message: IncomingMessage,
        session_blob: bytes,
        *,
        used_one_time_prekey: int | None = None,
    ) -> bool:
        """Persist a decrypted message, its sender's new session and its id, atomically.

        Returns False, changing nothing, if the id was already processed (a
        redelivery); the SDK acks the delivery in both cases. A prekey message
        names the one-time prekey it used: it is deleted in the same
        transaction, so a crash before the commit leaves it for the
        redelivery, and none after it leaves it for a replay.
        """
        require_bytes("session_blob", session_blob)
        with self._transaction():
            if self.is_processed(message.sender, message.msg_id):
                return False
            if used_one_time_prekey is not None:
                self.take_one_time_prekey(used_one_time_prekey)
            self.store_session(message.sender, session_blob)
            self._add_processed(message.sender, message.msg_id)
            self._add_pending(message)
        return True

    # Outbox (SPEC §6.3)

    def queue_outgoing(self, entry: OutboxEntry) -> None:
        """Keep an encrypted envelope until the relay has committed it."""
        fields = (
            entry.position, entry.msg_id, entry.to, entry.envelope, entry.intent,
            entry.category, entry.categories,
        )  # fmt: skip
        self._put("outbox", entry.msg_id, fields)

    def outgoing(self, msg_id: bytes) -> OutboxEntry | None:
        """The queued envelope ``msg_id``, if it still awaits SENT."""
        require_bytes("msg_id", msg_id)
        fields = self._get("outbox", msg_id)
        return None if fields is None else _outbox_entry(fields)

    def retire_outgoing(self, msg_id: bytes) -> bool:
        """Forget an envelope the relay committed; True if it was queued."""
        require_bytes("msg_id", msg_id)
        return self._delete("outbox", msg_id)

    def outbox(self) -> list[OutboxEntry]:
        """Every envelope awaiting SENT, in the order they were queued."""
        entries = [_outbox_entry(fields) for fields in self._rows("outbox")]
        return sorted(entries, key=lambda entry: (entry.position, entry.msg_id))

    # A business's notifications the relay committed (SPEC §8.5: what a bill is held to)

    def keep_sent_notification(self, sent: SentNotification) -> None:
        """Remember a notification's SENT, filed under its UTC month; the outbox calls it
        in the transaction that retires the envelope, so a SENT is kept exactly once."""
        require_bytes("msg_id", sent.msg_id)
        require_handle(sent.recipient, "recipient")
        record = msgpack.packb([sent.msg_id, sent.recipient, sent.category, sent.at])
        self._append("sent_notifications", month_of(sent.at), record)

    def sent_notifications(self, month: str) -> list[SentNotification]:
        """The notifications of ``month`` (``YYYY-MM``, UTC) the relay committed, in the
        order their SENTs came."""
        kept = []
        for record in self._read("sent_notifications", month, 0):
            msg_id, recipient, category, at = msgpack.unpackb(record, raw=False)
            kept.append(SentNotification(bytes(msg_id), str(recipient), str(category), int(at)))
        return kept

    # Messages held for the user's decision on a new identity key (SPEC §13.8)

    def hold_message(self, sender: str, deliver: bytes) -> HeldCounts:
        """Keep one of ``sender``'s DELIVER frames, after those already held."""
        require_bytes("deliver", deliver)
        with self._transaction():
            counts = self.held_counts_of(sender) or HeldCounts(0, 0)
            counts = HeldCounts(counts.held + 1, counts.dropped)
            self._append("held_messages", sender, deliver)
            self._write_held_counts(sender, counts)
        return counts

    def count_dropped(self, sender: str) -> HeldCounts:
        """Count one of ``sender``'s messages refused beyond the SDK's bound."""
        with self._transaction():
            counts = self.held_counts_of(sender) or HeldCounts(0, 0)
            counts = HeldCounts(counts.held, counts.dropped + 1)
            self._write_held_counts(sender, counts)
        return counts

    def held_messages(self, sender: str) -> list[bytes]:
        """``sender``'s held DELIVER frames, oldest first."""
        require_handle(sender, "sender")
        return self._read("held_messages", sender, 0)

    def release_held_messages(self, sender: str, count: int | None = None) -> None:
        """Forget ``sender``'s ``count`` oldest held messages; all of them, and the
        counts, when ``count`` is None or covers them all."""
        with self._transaction():
            counts = self.held_counts_of(sender)
            if counts is None:
                return
            if count is None or count >= counts.held:
                self._drop("held_messages", sender, None)
                self._write_held_counts(sender, None)
            else:
                require_count("count", count)
                self._drop("held_messages", sender, count)
                self._write_held_counts(sender, HeldCounts(counts.held - count, counts.dropped))

    def held_counts_of(self, sender: str) -> HeldCounts | None:
        """How many of ``sender``'s messages are held and dropped; None if none ever were."""
        require_handle(sender, "sender")
        fields = self._get("held_counts", handle_key(sender))
        return None if fields is None else HeldCounts(fields[1], fields[2])

    def held_counts(self) -> dict[str, HeldCounts]:
        """Every sender with messages held or dropped, and how many."""
        return {str(s): HeldCounts(held, dropped) for s, held, dropped in self._rows("held_counts")}

    def _write_held_counts(self, sender: str, counts: HeldCounts | None) -> None:
        if counts is None:
            self._delete("held_counts", handle_key(sender))
        else:
            self._put("held_counts", handle_key(sender), (sender, counts.held, counts.dropped))

    # Receipts owed to requesters (SPEC §7.3)

    def owed_receipts(self, sender: str) -> list[bytes]:
        """msg_ids of ``sender``'s message requests not receipted yet, oldest first."""
        require_handle(sender, "sender")
        fields = self._get("owed_receipts", handle_key(sender))
        return [] if fields is None else [bytes(msg_id) for msg_id in fields[1]]

    def set_owed_receipts(self, sender: str, msg_ids: list[bytes]) -> None:
        """Replace the list (an empty one forgets ``sender``)."""
        require_handle(sender, "sender")
        for msg_id in msg_ids:
            require_bytes("msg_id", msg_id)
        if msg_ids:
            self._put("owed_receipts", handle_key(sender), (sender, tuple(msg_ids)))
        else:
            self._delete("owed_receipts", handle_key(sender))

    def all_owed_receipts(self) -> dict[str, list[bytes]]:
        return {str(s): [bytes(m) for m in ids] for s, ids in self._rows("owed_receipts")}

    # Accounts we wrote to: their messages are no longer requests (SPEC §7.3)

    def note_wrote_to(self, handle: str) -> None:
        require_handle(handle)
        self._put("wrote_to", handle_key(handle), (handle,))

    def forget_wrote_to(self, handle: str) -> None:
        require_handle(handle)
        self._delete("wrote_to", handle_key(handle))

    def wrote_to(self) -> set[str]:
        return {str(handle) for (handle,) in self._rows("wrote_to")}

    def has_written_to(self, handle: str) -> bool:
        """One row read, for a caller that asks of a few handles, not of every message."""
        require_handle(handle)
        return self._get("wrote_to", handle_key(handle)) is not None

    # Signed statements kept per counterpart (SPEC §7.5)

    def keep_statement(self, counterpart: str, signed: bytes) -> int:
        """Append a signed statement to ``counterpart``'s; returns how many are kept.

        Two small rows however many are kept: the statement and the new count.
        """
        require_handle(counterpart, "counterpart")
        require_bytes("signed", signed)
        with self._transaction():
            count = self.statement_count(counterpart) + 1
            self._append("statements", counterpart, signed)
            self._write_statement_count(counterpart, count)
        return count

    def kept_statements(self, counterpart: str, start: int = 0) -> list[bytes]:
        """``counterpart``'s statements from the ``start``-th on, oldest first."""
        require_handle(counterpart, "counterpart")
        require_count("start", start)
        return self._read("statements", counterpart, start)

    def statement_count(self, counterpart: str) -> int:
        require_handle(counterpart, "counterpart")
        fields = self._get("statement_counts", handle_key(counterpart))
        return 0 if fields is None else int(fields[1])

    def _write_statement_count(self, counterpart: str, count: int | None) -> None:
        if count is None:
            self._delete("statement_counts", handle_key(counterpart))
        else:
            self._put("statement_counts", handle_key(counterpart), (counterpart, count))

    def statement_counts(self) -> dict[str, int]:
        """Per counterpart, how many statements are kept: statements are only ever
        added, so a count says whether there are new ones since a caller last looked."""
        return {str(c): int(count) for c, count in self._rows("statement_counts")}
