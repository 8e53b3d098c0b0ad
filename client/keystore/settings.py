"""Profile settings, and what the business and chat front ends keep.

Settings are one value each: the relay key pinned at the first login (SPEC §4.1),
whether the account is registered, the identity seed of a rotation in progress
(SPEC §3.4), a business's profile and whether the relay holds it (SPEC §8.2) and the
newest tree head of the relay's log we verified (SPEC §15.6), with the contacts' heads
not checked against it yet (one row each) and the evidence of a fork (one row per relay
key). The front ends
keep per-account rows: when a customer last got the automatic away reply, the
chat's contact list and the consent requests awaiting an answer.

What it is not: what any of these mean (the SDK, ``business`` and ``chat`` decide).
"""

from __future__ import annotations

import msgpack

from .base import handle_key
from .conversations import ConversationRecords
from .records import (
    IDENTITY_KEY_BYTES,
    IDENTITY_SEED_BYTES,
    HeardHead,
    LogFork,
    require_bytes,
    require_count,
    require_handle,
)

MAX_CHAT_LINES = 1_000
"""Lines of the chat's history kept per contact; the oldest go (threat model T40). Every
message a contact, or a stranger as a message request, sends is a line, and kept for
ever a stranger at the relay's send rate (50 a second, up to 32 KiB each) grew the
profile by 1.6 MB a second. 1,000 lines are days of a conversation (``/history``), at
most ~32 MB per contact; more keeps more for whoever writes most."""

_RELAY_KEY = b"relay_key"
_REGISTERED = b"registered"
_ROTATING_SEED = b"rotating_identity_seed"
_BUSINESS_PROFILE = b"business_profile"
_PROFILE_UNPUBLISHED = b"business_profile_unpublished"
_TREE_HEAD = b"tree_head"


class SettingRecords(ConversationRecords):
    """Settings, away replies, chat contacts and consent requests."""

    def _setting(self, name: bytes) -> bytes | None:
        fields = self._get("settings", name)
        return None if fields is None else bytes(fields[0])

    def _set_setting(self, name: bytes, value: bytes | None) -> None:
        if value is None:
            self._delete("settings", name)
        else:
            self._put("settings", name, (value,))

    def relay_key(self) -> bytes | None:
        """The relay key pinned at the first login or accepted since (SPEC §4.1)."""
        return self._setting(_RELAY_KEY)

    def set_relay_key(self, relay_key: bytes | None) -> None:
        """Pin ``relay_key`` (None: pin none, the next login pins what it meets)."""
        if relay_key is not None:
            require_bytes("relay_key", relay_key, IDENTITY_KEY_BYTES)
        self._set_setting(_RELAY_KEY, relay_key)

    def is_registered(self) -> bool:
        """True once the relay accepted our REGISTER: later runs log in instead."""
        return self._setting(_REGISTERED) is not None

    def set_registered(self, registered: bool = True) -> None:
        self._set_setting(_REGISTERED, b"\x01" if registered else None)

    def rotating_identity_seed(self) -> bytes | None:
        """The new identity seed of a rotation not known to be finished (SPEC §3.4)."""
        return self._setting(_ROTATING_SEED)

    def set_rotating_identity_seed(self, seed: bytes | None) -> None:
        """Keep the new seed before the rotation leaves; None once it is done."""
        if seed is not None:
            require_bytes("seed", seed, IDENTITY_SEED_BYTES)
        self._set_setting(_ROTATING_SEED, seed)

    def business_profile(self) -> bytes | None:
        """Our signed profile (SPEC §8.2): the one we last published, or re-signed at a
        rotation (:meth:`business_profile_published`)."""
        return self._setting(_BUSINESS_PROFILE)

    def business_profile_published(self) -> bool:
        """False while the relay may not hold :meth:`business_profile`: a rotation
        re-signed it and the relay dropped the old key's (SPEC §3.4)."""
        return self._setting(_PROFILE_UNPUBLISHED) is None

    def set_business_profile(self, signed: bytes | None, *, published: bool = True) -> None:
        if signed is not None:
            require_bytes("signed", signed)
        with self._transaction():
            self._set_setting(_BUSINESS_PROFILE, signed)
            unpublished = signed is not None and not published
            self._set_setting(_PROFILE_UNPUBLISHED, b"\x01" if unpublished else None)

    def tree_head(self) -> bytes | None:
        """The newest signed tree head of the relay's log we verified (SPEC §15.6)."""
        return self._setting(_TREE_HEAD)

    def set_tree_head(self, signed: bytes | None) -> None:
        if signed is not None:
            require_bytes("signed", signed)
        self._set_setting(_TREE_HEAD, signed)

    def heard_heads(self) -> list[HeardHead]:
        """Contacts' heads the relay has not proven consistent with ours yet (SPEC §15.6)."""
        return [
            HeardHead(str(contact), bytes(signed), int(heard_at), int(refusals))
            for contact, signed, heard_at, refusals in self._rows("heard_heads")
        ]

    def keep_heard_head(self, head: HeardHead) -> None:
        """Keep ``head`` in place of its contact's (the bound is ``gossip``'s)."""
        if not isinstance(head, HeardHead):
            raise TypeError("head must be a HeardHead")
        row = (head.contact, head.signed, head.heard_at_ms, head.refusals)
        self._put("heard_heads", handle_key(head.contact), row)

    def forget_heard_head(self, contact: str) -> None:
        """The contact's head was proven, or shown a fork, or is no head of our relay."""
        require_handle(contact, "contact")
        self._delete("heard_heads", handle_key(contact))

    def log_forks(self) -> list[LogFork]:
        """The split-view alarms raised, one per relay key: kept for good (SPEC §15.6)."""
        return [
            LogFork(bytes(relay_key), bytes(first), bytes(second), str(detail))
            for relay_key, first, second, detail in self._rows("log_forks")
        ]

    def keep_log_fork(self, fork: LogFork) -> None:
        """Keep ``fork`` in place of its relay key's (which one to keep is ``logcheck``'s)."""
        if not isinstance(fork, LogFork):
            raise TypeError("fork must be a LogFork")
        row = (fork.relay_key, fork.first, fork.second, fork.detail)
        self._put("log_forks", fork.relay_key, row)

    # Automatic away replies: one per customer per closed period

    def away_reply_period(self, customer: str) -> int | None:
        """The closed period in which ``customer`` last got the away reply."""
        require_handle(customer, "customer")
        fields = self._get("away_replies", handle_key(customer))
        return None if fields is None else int(fields[1])

    def set_away_reply_period(self, customer: str, period: int | None) -> None:
        require_handle(customer, "customer")
        if period is None:
            self._delete("away_replies", handle_key(customer))
        else:
            require_count("period", period)
            self._put("away_replies", handle_key(customer), (customer, period))

    def away_reply_periods(self) -> dict[str, int]:
        return {str(customer): int(period) for customer, period in self._rows("away_replies")}

    # The chat's conversation history, per contact, in the encrypted profile

    def keep_chat_line(self, contact: str, at: int, outgoing: bool, text: str) -> None:
        """One line of the conversation with ``contact``: sealed like every record; the
        oldest beyond :data:`MAX_CHAT_LINES` go."""
        require_handle(contact, "contact")
        record = msgpack.packb([at, outgoing, text])
        with self._transaction():
            self._append("chat_history", contact, record)
            excess = self._count("chat_history", contact) - MAX_CHAT_LINES
            if excess > 0:
                self._drop("chat_history", contact, excess)

    def chat_lines(self, contact: str, last: int) -> list[tuple[int, bool, str]]:
        """The ``last`` lines with ``contact``, oldest first: (at ms, outgoing, text).
        Only those are opened."""
        require_handle(contact, "contact")
        start = max(0, self._count("chat_history", contact) - max(0, last))
        lines = [msgpack.unpackb(r, raw=False) for r in self._read("chat_history", contact, start)]
        return [(int(at), bool(out), str(text)) for at, out, text in lines]

    # The chat's contact list and the consent requests awaiting an answer

    def chat_contacts(self) -> dict[str, str]:
        """Handle → account kind ("user", "business", or "" while not known)."""
        return {str(handle): str(kind) for handle, kind in self._rows("chat_contacts")}

    def set_chat_contact(self, handle: str, kind: str | None) -> None:
        """Remember ``handle`` with its kind (None forgets it)."""
        require_handle(handle)
        if kind is None:
            self._delete("chat_contacts", handle_key(handle))
            return
        if not isinstance(kind, str):
            raise TypeError("kind must be a str")
        self._put("chat_contacts", handle_key(handle), (handle, kind))

    def consent_requests(self) -> dict[str, tuple[str, ...]]:
        """Business → the categories it asked consent for, not answered yet (SPEC §7)."""
        return {str(b): tuple(cats) for b, cats in self._rows("consent_requests")}

    def set_consent_request(self, business: str, categories: tuple[str, ...] | None) -> None:
        """Record ``business``'s request (None: answered, forget it)."""
        require_handle(business, "business")
        if categories is None:
            self._delete("consent_requests", handle_key(business))
            return
        if not isinstance(categories, tuple) or not all(isinstance(c, str) for c in categories):
            raise TypeError("categories must be a tuple of str")
        self._put("consent_requests", handle_key(business), (business, categories))
