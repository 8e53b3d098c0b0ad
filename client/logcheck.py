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
without a proof, does not skip the check (``trust``).

A binding newer than the relay's newest head (a business that registered or rotated
within ``STH_INTERVAL``) is waited for, up to :attr:`LogCheck.wait_s`, by watching
for a newer head and fetching the bundle again. Anything else is
:class:`KeyNotLogged`, raised before anything is encrypted to the key.

Every head seen is held against the newest one this profile verified before (kept
in the keystore, so across restarts): the newer must extend the older (SPEC §15.3 rule
3: not smaller, not earlier, and a consistency proof the relay must produce, RFC 9162;
a relay that has none, NOT_FOUND, for two heads it signed has forked). Heads that
cannot both be true raise :class:`LogForked`, carrying both signed heads — evidence
that the relay showed two histories. The heads seen include the contacts': our newest
head rides inside the end-to-end content of our first message to each contact, and of
the next one after it changes (:meth:`LogCheck.gossip`), and every head a contact
sends us is checked against ours (:meth:`LogCheck.heard`), so a relay that shows two
people two histories is caught by the first message between them. (One body sent to
many, a business's notifications, carries none: the business checks its own heads on
every bundle.)
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

A contact's head is checked with a consistency proof only the relay can give, so a
relay that forked could refuse that one fetch (a 402, a 900, a dropped connection)
and the head, told once per change, was forgotten (found in review: T50). A head
heard is kept in the profile (``heard_heads``, one per contact: a contact's newer
head takes its place, as the contact's client holds its own heads consistent, but
not its age; a head proven once in a run is not checked again, whoever sends it)
until the relay proves it consistent or it shows a fork, and tried again
after every refusal: after the 402's ``retry_after`` (the reader's :class:`~.pacing.
Pacer` waits out short ones within a try), with backoff after a 900, on the next
connection after a drop, on the first connection of the next run. Those tries go
through a reader whose requests fail on a drop instead of waiting for the next
connection, and each is bounded in time, so a drop or a silence is a refusal too. A
head still unproven after :attr:`RecheckPolicy.refusals` tries *and*
:attr:`RecheckPolicy.after_ms` since it was heard is **overdue** (SPEC §15.6 rule 5):
the application's ``on_log_unchecked`` hears :class:`LogUnchecked` once a run, and
every send to that contact tries once more and raises it if that fails too. Both
bounds, so an honest relay's transient refusal (one 402, a restart) alarms nobody and
a client offline for a day is not reported for that. At most
:attr:`RecheckPolicy.max_heads` contacts' heads are kept; past them a new one is
reported at once.

A badge is shown as verified only once the relay proves it logged (:meth:`LogCheck.
badge_logged`, ``profiles.business_info``): the operator's signature says who is
verified; the log says the relay holds itself to that badge, the same one everyone sees.

Not here: reading the log (``transparency``), starting the session (``sessions``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from blindrelay.protocol import frames
from blindrelay.protocol.business import Badge
from blindrelay.protocol.errors import (
    BlindrelayError,
    InvalidProof,
    KeyNotLogged,
    LogForked,
    LogUnchecked,
    MalformedLogEntry,
    NotFound,
    RateLimited,
    StoreUnavailable,
    TransparencyError,
)
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, decode_entry
from blindrelay.protocol.transparency.evidence import badge_entry
from blindrelay.protocol.transparency.treehead import TreeHead, check_extends, open_tree_head

from .keystore import HeardHead, KeyStore, LogFork
from .transparency import LOG_ANSWER_TIMEOUT_S, LOG_FETCH_PATIENCE_MS, LogReader

log = logging.getLogger("blindrelay.client")

DEFAULT_WAIT_S = 25.0
"""Longest wait for a head that covers a fresh binding: twice the default
``STH_INTERVAL`` (10 s) and a margin."""

POLL_S = 0.25

BADGE_LOG_MARGIN_MS = 10 * 60 * 1000
"""A head signed this long after a badge's ``issued_at`` holds the badge's entry (the
operator's command appends it with the badge, SPEC §15.1), whatever the delay between
heads and any plausible skew between the operator's clock and the relay's."""

MAX_TOLD = 10_000
"""Contacts whose last head we remember; past it the oldest is told again."""
MAX_PROVEN = 1_000
"""Heads proven consistent with ours remembered in a run, so that the same head from
many contacts (the relay's newest, most often) is checked once; past it the oldest is
forgotten (and checked again if heard again)."""


@dataclass(frozen=True, slots=True)
class RecheckPolicy:
    """How a contact's head the relay has not proven is tried again, and when that is
    reported (SPEC §15.6 rule 5; module docstring). The defaults are the SDK's."""

    refusals: int = 6
    """Tries without a proof before a head can be overdue: a client offline while it
    was heard is not reported for the time alone."""
    after_ms: int = 10 * 60 * 1000
    """Time since the head was heard before it can be overdue: an honest relay answers a
    consistency fetch in milliseconds, and its outages (a restart, its store failing
    over) last less; one that refuses for ten minutes while we are online is reported."""
    first_wait_s: float = 1.0
    """The wait after the first refusal, doubled after each one ..."""
    max_wait_s: float = 60.0
    """... up to this, which a 402's or 902's longer ``retry_after`` does not exceed: a
    relay naming a wait of a day is asked again in a minute."""
    answer_timeout_s: float = LOG_FETCH_PATIENCE_MS / 1000 + LOG_ANSWER_TIMEOUT_S
    """The longest one try waits: the reader's patience with 402s and an answer's time;
    a relay that says nothing is refusing too."""
    max_heads: int = 1_000
    """Contacts whose unchecked head is kept; a head past them is reported at once. An
    honest relay proves each in one round trip, and a head proven (or equal to one
    waiting) is not checked again, so a backlog this large is a relay withholding or
    slowing its proofs."""


DEFAULT_RECHECK = RecheckPolicy()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


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
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        """``recheck_reader`` checks contacts' heads: its requests should fail on a drop
        (``RelayLink.request_once``), not wait for the next connection; ``online``
        returns once there is a connection to try on; ``clock`` is Unix ms."""
        self._store = store
        self._reader = reader
        self._recheck_reader = recheck_reader or reader
        self._relay_key = relay_key
        self.wait_s = wait_s
        self.recheck = recheck
        self._alarm = alarm
        self._unchecked = unchecked
        self._online = online
        self._clock = clock
        self._forks: dict[bytes, LogForked] = {
            fork.relay_key: LogForked(fork.first, fork.second, fork.detail)
            for fork in store.log_forks()
        }
        """Relay key → the split-view alarm raised for it, in this run or an earlier one."""
        self._alarmed: set[bytes] = set()
        """Relay keys whose alarm the application heard in this run."""
        self._heard: dict[str, HeardHead] = {h.contact: h for h in store.heard_heads()}
        """Contact → its head not proven yet, as the keystore keeps it."""
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        self._trying = 0
        """Rechecks not sleeping between tries (:meth:`settled`)."""
        self._idle = asyncio.Event()
        self._reported: set[str] = set()
        """Contacts whose overdue head the application heard of in this run."""
        self._proven: dict[bytes, None] = {}
        """Heads proven consistent with ours in this run, oldest first: each is a prefix
        of the kept head (a proven larger head is kept), so it needs no check again."""
        self._told: dict[str, bytes] = {}
        """Contact → the head it last got from us, in this run."""
        self._observing = asyncio.Lock()
        """One observation at a time, each against the newest kept head: two at once were
        each proven against the head both had read, never against each other, and the
        one answered last was kept even when smaller (found in review)."""

    def gossip(self, handle: str) -> bytes | None:
        """The head to put inside our next message to ``handle`` (SPEC §15.6 rule 5):
        ours, the first time in this run and whenever it changed since that contact last
        got it; None otherwise. A head costs ~150 bytes of a message's padding bucket
        (a 60-character text would move from 256 to 512 bytes), so it rides along once
        per change, not on every message."""
        head = self._store.tree_head()
        if head is None or self._told.get(handle) == head:
            return None
        if handle not in self._told and len(self._told) >= MAX_TOLD:
            del self._told[next(iter(self._told))]  # the oldest contact told
        self._told[handle] = head
        return head

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
        """A contact's head, from inside an end-to-end message: kept, then checked in the
        background against ours (the relay must prove one extends the other), again and
        again until it is proven or shows a fork (module docstring)."""
        if self.forked is not None or signed == self._store.tree_head() or signed in self._proven:
            return
        try:
            head = open_tree_head(signed, self._key())
        except (TransparencyError, KeyNotLogged) as exc:
            # Not a head of our relay: a contact's bug or forgery, no evidence of a fork.
            log.info("ignored a tree head from a contact: %s", exc)
            return
        held = self._heard.get(contact)
        if held is None and len(self._heard) >= self.recheck.max_heads:
            detail = f"{len(self._heard)} contacts' heads wait for a check already"
            self._report(LogUnchecked(contact, signed, self._store.tree_head(), 0, detail))
            return
        if held is None:
            self._keep(HeardHead(contact, signed, self._clock()))
        elif held.signed != signed and self._newer(head, held.signed):
            self._keep(replace(held, signed=signed))
        self._start(contact)

    def resume(self) -> None:
        """A connection is online: the application hears the alarm kept from an earlier
        run (once a run); every kept head without a try under way is tried now (those a
        previous run kept, those waiting since a drop)."""
        self._tell_forked()
        for contact in list(self._heard):
            self._start(contact)

    def overdue(self, contact: str) -> bool:
        """Whether ``contact``'s head has waited for a proof past both bounds of
        :attr:`recheck` (SPEC §15.6 rule 5): sends to it raise :class:`LogUnchecked`."""
        held = self._heard.get(contact)
        return (
            held is not None
            and held.refusals >= self.recheck.refusals
            and self._clock() - held.heard_at_ms >= self.recheck.after_ms
        )

    async def require_checked(self, contact: str) -> None:
        """Before a send to ``contact``: if its head is overdue, one more try now; raises
        :class:`LogUnchecked` if that is refused too, :class:`LogForked` if it forks."""
        if not self.overdue(contact):
            return
        if self._online is not None:
            await self._online()
        await self._try(contact)
        self.raise_if_forked()
        held = self._heard.get(contact)
        if held is not None and self.overdue(contact):
            raise self._unchecked_error(held, "refused again")

    async def settled(self) -> None:
        """Until every head heard so far was tried: proven, forked, or refused and waiting
        to be tried again (for tests and orderly shutdown; waits while offline)."""
        while self._trying:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """Stop trying (the client closes): what is not proven stays kept for the next run."""
        tasks = list(self._rechecks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _newer(self, head: TreeHead, than: bytes) -> bool:
        try:
            older = open_tree_head(than, self._key())
        except (TransparencyError, KeyNotLogged):
            return True  # no head of the relay key now pinned: replaced
        return (head.size, head.timestamp) > (older.size, older.timestamp)

    def _keep(self, held: HeardHead) -> None:
        self._store.keep_heard_head(held)
        self._heard[held.contact] = held

    def _forget(self, contact: str) -> None:
        if self._heard.pop(contact, None) is not None:
            self._store.forget_heard_head(contact)
        self._reported.discard(contact)

    def _start(self, contact: str) -> None:
        running = self._rechecks.get(contact)
        if running is not None and not running.done():
            return
        self._trying += 1
        self._rechecks[contact] = asyncio.get_running_loop().create_task(self._recheck(contact))

    async def _recheck(self, contact: str) -> None:
        """Try ``contact``'s head until it is settled; sleep between refusals."""
        try:
            while True:
                if self._online is not None:
                    try:
                        await self._online()
                    except (BlindrelayError, ConnectionError, RuntimeError):
                        return  # closed or stopped: the head stays kept for the next run
                wait = await self._try(contact)
                if wait is None:
                    return
                self._trying -= 1
                self._wake_settled()
                try:
                    await asyncio.sleep(wait)
                finally:
                    self._trying += 1
        finally:
            self._trying -= 1
            self._wake_settled()
            if self._rechecks.get(contact) is asyncio.current_task():
                del self._rechecks[contact]

    def _wake_settled(self) -> None:
        if self._trying == 0:
            self._idle.set()

    async def _try(self, contact: str) -> float | None:
        """One try of ``contact``'s head: None once it is settled (proven, forked, or no
        head of our relay key), else how long to wait before the next."""
        held = self._heard.get(contact)
        if held is None or self.forked is not None:
            return None
        try:
            head = open_tree_head(held.signed, self._key())
        except (TransparencyError, KeyNotLogged):
            self._forget(contact)  # a relay key accepted since (§4.1): no history of ours
            return None
        try:
            async with asyncio.timeout(self.recheck.answer_timeout_s):
                async with self._observing:
                    await self._observe(head, held.signed, self._recheck_reader)
        except LogForked:
            self._forget(contact)  # the alarm has gone off with both heads as evidence
            return None
        except (BlindrelayError, ConnectionError, TimeoutError) as exc:
            return self._refused(held, exc)
        for other, waiting in list(self._heard.items()):
            if waiting.signed == held.signed:
                self._forget(other)  # the same head from another contact: proven too
        return None if contact not in self._heard else 0.0  # a newer one came meanwhile

    def _refused(self, tried: HeardHead, exc: BaseException) -> float | None:
        """Count a try without a proof, report the head once overdue; the wait before
        the next try (after a 402's or 902's ``retry_after``, within the policy)."""
        held = self._heard.get(tried.contact)
        if held is None:
            return None  # settled meanwhile (a send's own try)
        held = replace(held, refusals=held.refusals + 1)
        self._keep(held)
        log.info("the relay did not prove %s's tree head (%d): %r", held.contact,
                 held.refusals, exc)  # fmt: skip
        if self.overdue(held.contact) and held.contact not in self._reported:
            self._reported.add(held.contact)
            self._report(self._unchecked_error(held, repr(exc)))
        policy = self.recheck
        wait: float = policy.first_wait_s * 2.0 ** min(held.refusals - 1, 32)
        if isinstance(exc, RateLimited | StoreUnavailable):
            wait = max(wait, exc.retry_after_ms / 1000)
        return min(wait, policy.max_wait_s)

    def _unchecked_error(self, held: HeardHead, detail: str) -> LogUnchecked:
        kept = self._store.tree_head()
        return LogUnchecked(held.contact, held.signed, kept, held.refusals, detail)

    def _report(self, exc: LogUnchecked) -> None:
        log.warning("%s", exc)
        self._unchecked(exc)

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
        read_before: int | None = None
        while bundle.log is None:
            head = await self._reader.head()
            size = 0 if head is None else head.size
            if read_before is None or size > read_before:
                if read_before is not None or size > 0:
                    bundle = await fetch_again()
                read_before = size
                continue
            if time.monotonic() >= deadline:
                raise KeyNotLogged(bundle.handle, f"no signed tree head within {self.wait_s} s")
            await asyncio.sleep(POLL_S)
        await self._verify(bundle)
        self._store.mark_logged(handle, bundle.identity_key)
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
        await self.observe(head, proof.sth)

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

    async def observe(self, head: TreeHead, signed: bytes) -> None:
        """Hold a verified head against the newest kept; keep it if it is newer."""
        async with self._observing:
            await self._observe(head, signed, self._reader)

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


__all__ = ["DEFAULT_RECHECK", "DEFAULT_WAIT_S", "LogCheck", "RecheckPolicy"]
