"""Message requests, as a user sees them (SPEC §7.3): whom we wrote to, what we owe the rest.

A user accepts another user by sending them any chat (a message or a
receipt). Until we have, their messages are *requests*
(``Message.is_request``) and get no automatic delivered receipt — a receipt is
a chat and would accept them silently; the msg_ids such a receipt would have
named are kept instead, for the one receipt :meth:`Client.accept_request`
sends. Whom we have written to is recorded when a chat to them is queued, in
the transaction of its outbox entry, not when the relay commits it. A business
has no message requests.

Not here: the relay's side of the rule (``protocol.consent``), sending the
receipt (``sending``), telling a request apart on arrival (``inbox``).
"""

from __future__ import annotations

from collections.abc import Iterable

from blindrelay.protocol import frames
from blindrelay.protocol.content import MAX_RECEIPT_REFS

from .keystore import KeyStore


class MessageRequests:
    """Whom we (a user) have written to, and the receipts owed to the others."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._wrote_to: set[str] = store.wrote_to()
        """Mirror of the keystore's accounts we have written to (read once: asked per
        incoming message)."""
        self._account_kind: str | None = None

    def account_changed(self) -> None:
        """Our identity (and maybe our account kind) was just made or replaced."""
        self._account_kind = None

    def we_are_user(self) -> bool:
        if self._account_kind is None:
            identity = self._store.get_identity()
            if identity is None:
                return False
            self._account_kind = identity.account_kind
        return self._account_kind == "user"

    def is_request(self, sender: str, sender_kind: str) -> bool:
        """Whether a message from ``sender`` is a message request to us."""
        return (
            sender_kind == frames.AccountKind.USER
            and sender not in self._wrote_to
            and self.we_are_user()
        )

    def is_contact(self, handle: str) -> bool:
        """An account we wrote to (a chat, or accepting its request) or a published one (a
        business): the relay lets a business write to a user only under the consent rules
        (SPEC §7.3). Anyone else is a stranger, whom any throwaway account can be. A
        business keeps no list of whom it wrote to: its customers are strangers here."""
        return handle in self._wrote_to or self._store.is_published(handle)

    def note_chat(self, handle: str) -> bool:
        """Record, inside the caller's transaction, that we queue a chat to ``handle``.

        True if it was new: the caller passes it to :meth:`noted` once committed.
        Only a user account keeps the list (a business has no message requests).
        """
        if handle in self._wrote_to or not self.we_are_user():
            return False
        self._store.note_wrote_to(handle)
        return True

    def noted(self, handles: Iterable[str]) -> None:
        """The chats :meth:`note_chat` recorded are committed."""
        self._wrote_to.update(handles)

    def accept(self, handle: str) -> None:
        """``handle`` is no longer a requester, though nothing was sent to them."""
        if self.note_chat(handle):
            self.noted((handle,))

    def owe_receipt(self, sender: str, msg_id: bytes) -> None:
        """Remember the request ``msg_id`` for the receipt that accepting it sends."""
        owed = self.owed_receipts(sender)
        if len(owed) < MAX_RECEIPT_REFS and msg_id not in owed:
            owed.append(msg_id)
            self._store.set_owed_receipts(sender, owed)

    def owed_receipts(self, sender: str) -> list[bytes]:
        """The msg_ids of ``sender``'s requests not receipted (at most
        ``MAX_RECEIPT_REFS``): what :meth:`Client.accept_request` receipts."""
        return self._store.owed_receipts(sender)

    def forget_owed(self, sender: str) -> None:
        """The receipt was sent, or the sender blocked: nothing is owed any more."""
        self._store.set_owed_receipts(sender, [])


__all__ = ["MessageRequests"]
