"""What the SDK checks in the relay's transparency log before it trusts a key (SPEC §15.6).

A business's key — every published account's — is trusted only with proof that the
relay logged it: before the first message to a business, and after every change of
its key, the bundle's ``log`` must hold the account's key binding, an inclusion proof
of it and a signed tree head that verifies with the pinned relay key
(:meth:`LogCheck.bundle`). Every bundle fetched to start a session goes through it;
so does the key a business's own message brought (its first message, or a key
change in a prekey message): ``sending`` fetches the bundle for its proof before the
first message to that key, as the log proves keys only by their binding, whose
bytes (the time it was logged, the key it replaced) only the relay knows. Each
handle seen published is kept so for good, with the key last proven logged
(``keystore``): a relay that later calls a business a user, or serves its bundle
without a proof, does not skip the check (``trust``). Where the log holds that key's
binding is kept too, and a binding earlier in the log is refused: the log keeps every
binding a rotation replaced, so the relay could prove a key the business rotated away
from — one that leaked — with its old binding (T60).

A binding newer than the relay's newest head (a business that registered or rotated
within ``STH_INTERVAL``) is waited for, up to :attr:`LogCheck.wait_s`, by watching
for a newer head and fetching the bundle again. Anything else is
:class:`KeyNotLogged`, raised before anything is encrypted to the key.

Every head seen is held against the newest one this profile verified before (kept
in the keystore, so across restarts): the newer must extend the older (SPEC §15.3 rule
3: not smaller, not earlier, and a consistency proof the relay must produce, RFC 9162;
a relay that has none, NOT_FOUND, for two heads it signed has forked). Heads that
cannot both be true raise :class:`LogForked`, carrying both signed heads — evidence
that the relay showed two histories. The heads seen include the contacts': ours
rides inside our messages to them and theirs inside their messages to us, each held
against ours until the relay proves it (``gossip``: kept in the profile and asked
again while the relay refuses; :meth:`LogCheck.gossip`, :meth:`LogCheck.heard` and
the methods after them hand on to it), so a relay that shows two people two
histories is caught by the first message between them.
Once raised, the alarm is kept: every later send raises it, and the application's
``on_log_forked`` hears it once a run. It is kept in the profile too (``log_forks``,
both signed heads and why, under the relay key that signed them): it lived in memory
only, and a restart forgot it — sends went again, nobody was told again, and the
relay that forked was the same (found in review). Each run raises it from the start
and tells the application at its first connection (or first send, if sooner).
Nothing the relay does lifts it; it stands while that relay key is pinned. A relay
key the person accepts in its place (SPEC §4.1) starts a new log, so the old key's
alarm is set aside — the evidence stays in the profile, and the alarm is back if that
key is pinned again.
After the alarm nothing is taken on the log's word (T75): :meth:`LogCheck.observe`
raises it instead of holding a head against ours, ours being one side of the fork,
so no key is proven by a bundle, and the callers that rest on the log say "forked"
instead of "ok": a badge (``LOG_FORKED``), a business's bill and its consent evidence
before they ask the relay anything, a user's consent evidence before it is handed on.
Before (found in review 2026-12-07) only sends were refused, and the rest went on
saying "ok" for whatever the relay proved under our side.

A badge is shown as verified only once the relay proves it logged (:meth:`LogCheck.
badge_logged`, ``profiles.business_info``): the operator's signature says who is
verified; the log says the relay holds itself to that badge, the same one everyone sees.

Not here: contacts' heads, told and heard (``gossip``), reading the log
(``transparency``), starting the session (``sessions``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from blindrelay.protocol import frames
from blindrelay.protocol.business import Badge
from blindrelay.protocol.errors import (
    InvalidProof,
    KeyNotLogged,
    LogForked,
    LogUnchecked,
    MalformedLogEntry,
    NotFound,
    TransparencyError,
)
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, decode_entry
from blindrelay.protocol.transparency.evidence import badge_entry
from blindrelay.protocol.transparency.treehead import TreeHead, check_extends, open_tree_head

from .gossip import DEFAULT_RECHECK, ContactHeads, RecheckPolicy
from .keystore import KeyStore, LogFork
from .sessions import wall_clock_ms
from .transparency import LogReader

DEFAULT_WAIT_S = 25.0
"""Longest wait for a head that covers a fresh binding: twice the default
``STH_INTERVAL`` (10 s) and a margin."""

POLL_S = 0.25

BADGE_LOG_MARGIN_MS = 10 * 60 * 1000
"""A head signed this long after a badge's ``issued_at`` holds the badge's entry (the
operator's command appends it with the badge, SPEC §15.1), whatever the delay between
heads and any plausible skew between the operator's clock and the relay's."""

MAX_PROVEN = 1_000
"""Heads proven consistent with ours remembered in a run, so that the same head from
many contacts (the relay's newest, most often) is checked once; past it the oldest is
forgotten (and checked again if heard again)."""


class LogCheck:
    """Bundles proven in the log, and the log's heads kept consistent (module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        reader: LogReader,
        relay_key: Callable[[], bytes | None],
        *,
        wait_s: float = DEFAULT_WAIT_S,
        alarm: Callable[[LogForked], None] = lambda _exc: None,
        unchecked: Callable[[LogUnchecked], None] = lambda _exc: None,
        recheck: RecheckPolicy = DEFAULT_RECHECK,
        recheck_reader: LogReader | None = None,
        online: Callable[[], Awaitable[object]] | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """``unchecked``, ``recheck``, ``recheck_reader``, ``online`` and ``clock`` are
        for the contacts' heads (:class:`~.gossip.ContactHeads`; ``recheck_reader``
        defaults to ``reader``)."""
        self._store = store
        self._reader = reader
        self._relay_key = relay_key
        self.wait_s = wait_s
        self._alarm = alarm
        self._forks: dict[bytes, LogForked] = {
            fork.relay_key: LogForked(fork.first, fork.second, fork.detail)
            for fork in store.log_forks()
        }
        """Relay key → the split-view alarm raised for it, in this run or an earlier one."""
        self._alarmed: set[bytes] = set()
        """Relay keys whose alarm the application heard in this run."""
        self._proven: dict[bytes, None] = {}
        """Heads proven consistent with ours in this run, oldest first: each is a prefix
        of the kept head (a proven larger head is kept), so it needs no check again."""
        self._observing = asyncio.Lock()
        """One observation at a time, each against the newest kept head: two at once were
        each proven against the head both had read, never against each other, and the
        one answered last was kept even when smaller (found in review)."""
        self.contacts = ContactHeads(
            store, self, relay_key, recheck_reader or reader,
            unchecked=unchecked, recheck=recheck, online=online, clock=clock,
        )  # fmt: skip
        """Our head told to contacts and theirs re-checked until proven (``gossip``)."""

    def gossip(self, handle: str) -> bytes | None:
        """The head to put inside our next message to ``handle``
        (:meth:`~.gossip.ContactHeads.to_tell`)."""
        return self.contacts.to_tell(handle)

    @property
    def forked(self) -> LogForked | None:
        """The split-view alarm for the relay key pinned now, raised in this run or kept
        from an earlier one: kept, and raised again by every send (module docstring)."""
        if not self._forks:
            return None
        key = self._relay_key()
        return None if key is None else self._forks.get(key)

    def raise_if_forked(self) -> None:
        """Raise the split-view alarm if it has gone off (the application hears it then,
        if it has not in this run)."""
        forked = self.forked
        if forked is not None:
            self._tell_forked()
            raise forked

    def heard(self, signed: bytes, contact: str) -> None:
        """A contact's head, from inside an end-to-end message: kept and checked until
        proven or forked (:meth:`~.gossip.ContactHeads.heard`)."""
        self.contacts.heard(signed, contact)

    def resume(self) -> None:
        """A connection is online: the application hears the alarm kept from an earlier
        run (once a run), and the contacts' heads kept are tried now."""
        self._tell_forked()
        self.contacts.resume()

    def overdue(self, contact: str) -> bool:
        """Whether sends to ``contact`` raise :class:`LogUnchecked`
        (:meth:`~.gossip.ContactHeads.overdue`)."""
        return self.contacts.overdue(contact)

    async def require_checked(self, contact: str) -> None:
        """Before a send to ``contact``: one more try of its overdue head
        (:meth:`~.gossip.ContactHeads.require_checked`)."""
        await self.contacts.require_checked(contact)

    async def settled(self) -> None:
        """Until every contact's head heard so far was tried (for tests and shutdown)."""
        await self.contacts.settled()

    async def close(self) -> None:
        """Stop trying contacts' heads (the client closes): they stay kept for the next run."""
        await self.contacts.close()

    def proven(self, signed: bytes) -> bool:
        """Whether ``signed`` was proven consistent with our head in this run."""
        return signed in self._proven

    async def bundle(
        self, bundle: frames.Bundle, fetch_again: Callable[[], Awaitable[frames.Bundle]]
    ) -> frames.Bundle:
        """``bundle``, or the one fetched again once a head covers its key; raises
        :class:`KeyNotLogged` or :class:`LogForked`. A user's bundle without ``log`` is
        not published and passes: its key is protected by safety numbers (§15.4) —
        unless its handle was seen published before. Marks the handle published, and
        the key proven logged once it is."""
        handle = bundle.handle
        if bundle.log is not None or bundle.kind == AccountKind.BUSINESS:
            self._store.mark_published(handle)  # before the proof: a failure keeps it
        elif not self._store.is_published(handle):
            return bundle
        deadline = time.monotonic() + self.wait_s
        # The newest head's size read *before* the last fetch: a bundle fetched after a
        # head of that size that still has no proof binds a key newer than that head, so
        # it is fetched again once a larger head is signed. The first head is read after
        # the bundle came: a head signed in between may already cover the binding, so the
        # bundle is fetched once more at once (a head is signed only when the log grows:
        # waiting for a larger one could wait for ever).
        # The deadline is checked at every turn, also after a larger head: a relay that
        # signs a larger one at every look and never proves the key kept the send
        # asking for ever (T55).
        read_before: int | None = None
        while bundle.log is None:
            if read_before is not None and time.monotonic() >= deadline:
                raise KeyNotLogged(bundle.handle, f"no signed tree head within {self.wait_s} s")
            head = await self._reader.head()
            size = 0 if head is None else head.size
            if read_before is None or size > read_before:
                if read_before is not None or size > 0:
                    bundle = await fetch_again()
                read_before = size
                continue
            await asyncio.sleep(POLL_S)
        await self._verify(bundle)
        assert bundle.log is not None
        self._store.mark_logged(
            handle, bundle.identity_key, index=bundle.log.index, relay_key=self._key()
        )
        return bundle

    async def _verify(self, bundle: frames.Bundle) -> None:
        proof = bundle.log
        assert proof is not None
        handle = bundle.handle
        try:
            head = open_tree_head(proof.sth, self._key())
            binding = decode_entry(proof.entry)
            merkle.verify_inclusion(
                merkle.leaf_hash(proof.entry), proof.index, head.size, proof.proof, head.root
            )
        except (TransparencyError, MalformedLogEntry) as exc:
            raise KeyNotLogged(handle, str(exc)) from exc
        if not isinstance(binding, KeyBinding) or (
            binding.handle, binding.kind, binding.identity_key
        ) != (handle, bundle.kind, bundle.identity_key):  # fmt: skip
            raise KeyNotLogged(handle, "the logged binding is of another key")
        await self.observe(head, proof.sth)  # a fork is reported as one, first
        # T60: a binding is the key's proof only while it is the handle's newest (§15.6
        # rule 3). The log keeps the ones a rotation replaced, proofs and all: the relay
        # served the binding of the key a business rotated away from (it leaked, say)
        # and every check above passed. Where the log holds the newest binding proven
        # before is kept; an honest relay never serves one earlier than that.
        newest = self._store.logged_index(handle, self._key())
        if newest is not None and proof.index < newest:
            raise KeyNotLogged(
                handle,
                f"the log holds a newer key binding of it (entry {newest}) than this one "
                f"(entry {proof.index}): a key it replaced",
            )

    async def badge_logged(self, badge: Badge, signed_badge: bytes) -> bool:
        """Whether the relay proves the operator's badge is in its log (SPEC §15.6 rule
        6): the badge's entry, rebuilt from the badge, is found under a signed head that
        verifies and extends the newest kept (``LogForked`` otherwise). A badge issued
        within ``BADGE_LOG_MARGIN_MS`` of the newest head may not be under one yet: larger
        heads are waited for, up to :attr:`wait_s`; an older badge is decided at once."""
        entry = badge_entry(signed_badge)
        deadline = time.monotonic() + self.wait_s
        tried = 0
        while True:
            found = await self._reader.signed_head()
            if found is not None and found[0].size > tried:
                head, head_bytes = found
                tried = head.size
                try:
                    index, proof = await self._reader.inclusion(entry, head.size)
                except NotFound:
                    if head.timestamp >= badge.issued_at + BADGE_LOG_MARGIN_MS:
                        return False  # signed long after the badge: it would be in it
                else:
                    try:
                        merkle.verify_inclusion(
                            merkle.leaf_hash(entry), index, head.size, proof, head.root
                        )
                    except InvalidProof:
                        return False
                    await self.observe(head, head_bytes)
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)

    async def observe(self, head: TreeHead, signed: bytes, reader: LogReader | None = None) -> None:
        """Hold a verified head against the newest kept, with proofs read through
        ``reader`` (ours by default); keep it if it is newer. After the split-view alarm
        it raises the alarm instead (T75): the kept head is one side of the fork, so a
        head proven consistent with it shows only what the relay shows us, and every
        verdict resting on that (a badge, a bill, consent evidence, a key) would be
        taken on the word of a relay caught equivocating."""
        async with self._observing:
            self.raise_if_forked()  # under the lock: an alarm the one before us raised
            await self._observe(head, signed, reader or self._reader)

    async def _observe(self, head: TreeHead, signed: bytes, reader: LogReader) -> None:
        kept = self._store.tree_head()
        if kept is None:
            self._store.set_tree_head(signed)
            return
        older = open_tree_head(kept, self._key())
        (first, first_signed), (second, second_signed) = sorted(
            [(older, kept), (head, signed)], key=lambda pair: (pair[0].size, pair[0].timestamp)
        )
        try:
            proof: list[bytes] = []
            if 0 < first.size < second.size:
                try:
                    proof = await reader.consistency(first.size, second.size)
                except NotFound:
                    # 601 is only for a size past the newest signed head (SPEC §15.6 rule
                    # 1); both heads are signed: a refusal is no proof joining them.
                    raise InvalidProof("the relay has no proof joining two of its heads") from None
            check_extends(first, second, proof)  # §15.3 rule 3: sizes, times, the proof
        except InvalidProof as exc:
            forked = LogForked(first_signed, second_signed, str(exc))
            self._keep_fork(forked)
            raise forked from exc
        if head.size > older.size or (head.size == older.size and head.timestamp > older.timestamp):
            self._store.set_tree_head(signed)
        self._proven[signed] = None
        if len(self._proven) > MAX_PROVEN:
            del self._proven[next(iter(self._proven))]

    def _keep_fork(self, forked: LogForked) -> None:
        """The alarm goes off: its evidence is kept in the profile before anyone hears of
        it (the first fork of a relay key stays: it is as good as any later one)."""
        key = self._key()
        if key not in self._forks:
            self._forks[key] = forked
            self._store.keep_log_fork(LogFork(key, forked.first, forked.second, forked.detail))
        self._tell_forked()

    def _tell_forked(self) -> None:
        """The application hears the alarm of the relay key pinned now, once a run."""
        key = self._relay_key()
        if key is None or key not in self._forks or key in self._alarmed:
            return
        self._alarmed.add(key)
        self._alarm(self._forks[key])

    def _key(self) -> bytes:
        key = self._relay_key()
        if key is None:
            raise KeyNotLogged("?", "no pinned relay key to check the log against")
        return key


__all__ = ["DEFAULT_WAIT_S", "LogCheck"]
