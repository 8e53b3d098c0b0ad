"""Skipped message keys across all of a profile's sessions: one budget (SPEC §13.4).

The Double Ratchet bounds one session: a header makes its receiver derive at most
``MAX_FORWARD_JUMP`` message keys and a session keeps at most ``MAX_SKIPPED_KEYS`` of
those not used yet. Nothing bounded how many sessions keep them, and anyone can start
one: a stranger's first message is decrypted, and its session stored, before the person
has seen it (a message request, SPEC §7.3). Measured before this module (2026-12-06,
real relay): each throwaway account made its victim keep 1,000 keys with one message —
~72 KB sealed on disk and ~250 KB decoded in memory, where up to ``SESSION_CACHE_SIZE``
(16,384) decoded sessions stay — for ever.

The rules, applied in the transaction that stores a message's session:

- at most :data:`MAX_SKIPPED_KEYS_TOTAL` skipped keys in all, held by at most
  :data:`MAX_SESSIONS_WITH_SKIPPED_KEYS` sessions; past either, a stranger's session
  loses all of them, the one that gained skipped keys least recently first — the one
  just stored last — and a contact's (an account we wrote to, or a business) only when
  no stranger's holds any, likewise. Strangers' forged gaps, however many accounts send
  them, cannot push out a contact's keys; a contact's session holds at most the
  ratchet's cap (a tenth of the total), so it takes ten contacts' gaps to push out
  another contact's;
- a session that has gained none for :data:`SKIPPED_KEYS_TTL_MS` loses them (checked
  whenever the list changes and at each login).

Which sessions hold how many is one keystore row (:class:`SkippedKeyHolder`, oldest
first), so a decision opens no other session; only a session that loses its keys is
read and rewritten here, and its decoded copy forgotten (``session_cache``), so what is
held in memory stays within the same bounds.

Not here: deriving and using the keys (``blindrelay.protocol.crypto.ratchet``), decrypting
and what a message's commit means (``sessions``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.ratchet import SkippedKeys
from blindrelay.protocol.crypto.session import Session, without_skipped_keys

from .keystore import IncomingMessage, KeyStore, SkippedKeyHolder
from .session_cache import SessionCache

MAX_SKIPPED_KEYS_TOTAL = 10_000
"""Skipped message keys kept across all sessions: ten sessions at the ratchet's cap, or
one out-of-order message for each of ten thousand contacts; ~720 KB sealed and ~2.5 MB
decoded. Honest use keeps a handful (a message overtaken by the next is read seconds
later). More keeps a message delayed past a flood of forged gaps readable; each kept key
is a standing decryption capability and ~250 bytes of memory."""

MAX_SESSIONS_WITH_SKIPPED_KEYS = 256
"""Sessions that may hold skipped keys at once: the list of them is one keystore row,
rewritten when it changes (~50 bytes a session)."""

DAY_MS = 24 * 3600 * 1000

SKIPPED_KEYS_TTL_MS = limits.QUEUE_TTL_MS + DAY_MS
"""A session's skipped keys go once it has gained none for this long (the Double Ratchet
specification asks for keys to be deleted after some time): the relay purges a message
queued for ``QUEUE_TTL_MS`` (SPEC §6.4 rule 4), and the one a skipped key is for was sent before
the message that skipped it; a day more for a sender that held it back and for clocks."""

Clock = Callable[[], int]


class SkippedKeyBudget:
    """Which sessions hold skipped keys, and which must lose them (module docstring)."""

    def __init__(self, store: KeyStore, clock: Clock, decoded: SessionCache) -> None:
        self._store = store
        self._clock = clock
        self._decoded = decoded

    def commit_incoming(
        self,
        record: IncomingMessage,
        session: Session,
        before: SkippedKeys,
        used: int | None,
    ) -> bool:
        """Store a message with its sender's ``session`` (:meth:`KeyStore.commit_incoming`,
        ``used`` the one-time prekey it spent), whose stored predecessor held ``before``'s
        skipped keys, and keep the session as stored decoded; False if the message was
        processed already. When either session holds skipped keys, :meth:`stored` runs in
        the same transaction; an honest message holds none: one commit, no ledger work."""
        handle, blob, after = record.sender, session.to_bytes(), session.ratchet.skipped
        with self._store.atomic() if before or after else nullcontext():
            if not self._store.commit_incoming(record, blob, used_one_time_prekey=used):
                return False
            as_stored = self.stored(handle, before, after)  # no note when neither holds any
        if as_stored:  # else rewritten without its keys, and forgotten: decoded when used
            self._decoded.put(handle, blob, session)
        return True

    def stored(self, handle: str, before: SkippedKeys, after: SkippedKeys) -> bool:
        """``handle``'s session was just stored holding ``after``'s skipped keys instead of
        ``before``'s (the caller's transaction): note it, and rewrite the sessions the
        budget drops without theirs. False if that took ``handle``'s own: a stranger's
        keys that only contacts' would have made room for."""
        dropped = self._note(handle, before, after)
        for holder in dropped:
            self._drop(holder)
        return handle not in dropped

    def expire(self) -> None:
        """Drop the skipped keys of sessions that gained none for ``SKIPPED_KEYS_TTL_MS``."""
        with self._store.atomic():
            for handle in self._expired():
                self._drop(handle)

    def _drop(self, handle: str) -> None:
        """Rewrite ``handle``'s stored session without its skipped keys (and forget any
        decoded copy): a message of one of them is refused as DuplicatedMessage."""
        self._decoded.forget(handle)
        blob = self._store.load_session(handle)
        if blob is None:
            return
        try:
            session = Session.from_bytes(blob)
        except ValueError:  # of an earlier version (OutdatedSession): replaced when used
            return
        if session.ratchet.skipped:
            self._store.store_session(handle, without_skipped_keys(session).to_bytes())

    def _note(self, handle: str, before: SkippedKeys, after: SkippedKeys) -> list[str]:
        """``handle``'s session is stored holding ``after``'s keys instead of ``before``'s
        (the caller's transaction); returns the sessions that must lose theirs, off the
        list already (``handle``'s own only if it is a stranger's). A session that gained
        keys becomes the newest holder."""
        gained = not after.keys() <= before.keys()
        if not gained and len(after) == len(before):  # the same keys: nothing to note
            return []
        now = self._clock()
        holders = self._store.skipped_key_holders()
        mine = next((h for h in holders if h.handle == handle), None)
        kept: list[SkippedKeyHolder] = []
        dropped: list[str] = []
        for holder in holders:
            if holder.handle == handle:
                if after and not gained:  # keys used or trimmed: its place stays
                    kept.append(SkippedKeyHolder(handle, len(after), holder.gained_at_ms))
            elif now - holder.gained_at_ms >= SKIPPED_KEYS_TTL_MS:
                dropped.append(holder.handle)
            else:
                kept.append(holder)
        if after and (gained or mine is None):
            kept.append(SkippedKeyHolder(handle, len(after), now))
        total = sum(holder.count for holder in kept)
        order = self._eviction_order(handle, list(kept))  # lazy: asks only when over
        while total > MAX_SKIPPED_KEYS_TOTAL or len(kept) > MAX_SESSIONS_WITH_SKIPPED_KEYS:
            evicted = next(order, None)
            if evicted is None:  # a contact's own keys alone: within the ratchet's cap
                break
            kept.remove(evicted)
            total -= evicted.count
            dropped.append(evicted.handle)
        self._store.set_skipped_key_holders(kept)
        return dropped

    def _eviction_order(
        self, handle: str, holders: list[SkippedKeyHolder]
    ) -> Iterator[SkippedKeyHolder]:
        """Who loses skipped keys first: strangers' sessions, the least recently grown
        first and ``handle``'s (just stored) last of them; only then contacts', likewise,
        never ``handle``'s own if it is a contact (one session holds at most the ratchet's
        cap, a tenth of the budget). So strangers' gaps push out each other's keys, then
        their own, and never a contact's."""
        contacts: list[SkippedKeyHolder] = []
        mine: SkippedKeyHolder | None = None
        for holder in holders:
            if holder.handle == handle:
                mine = holder
            elif self._is_contact(holder.handle):
                contacts.append(holder)
            else:
                yield holder
        if mine is not None and not self._is_contact(handle):
            yield mine
        yield from contacts

    def _is_contact(self, handle: str) -> bool:
        """A contact is an account we wrote to (a chat, or accepting its message request,
        SPEC §7.3) or a business (published, §15.6): the relay lets a business write to a
        user only with the user's consent or in a window the user opened, or, verified, to
        ask for consent. Anyone else is a stranger: any user may start a session with us.
        (A business account keeps no list of whom it wrote to: its customers are all
        strangers here.)"""
        return self._store.is_published(handle) or self._store.has_written_to(handle)

    def _expired(self) -> list[str]:
        """The sessions that have gained no skipped key for :data:`SKIPPED_KEYS_TTL_MS`, off
        the list already (the caller's transaction): they must lose theirs."""
        now = self._clock()
        holders = self._store.skipped_key_holders()
        kept = [h for h in holders if now - h.gained_at_ms < SKIPPED_KEYS_TTL_MS]
        if len(kept) == len(holders):
            return []
        self._store.set_skipped_key_holders(kept)
        return [h.handle for h in holders if now - h.gained_at_ms >= SKIPPED_KEYS_TTL_MS]


__all__ = [
    "MAX_SESSIONS_WITH_SKIPPED_KEYS",
    "MAX_SKIPPED_KEYS_TOTAL",
    "SKIPPED_KEYS_TTL_MS",
    "SkippedKeyBudget",
]
