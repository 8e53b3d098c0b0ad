"""The tree heads contacts exchange inside their messages, and the re-checking of
theirs until the relay proves them (SPEC §15.6 rule 5).

Why a module of its own: checking the log (``logcheck``) holds one head against
another with one proof, at once. A contact's head is different: it comes from
someone else, the relay may refuse the proof that decides it, and so it is kept in
the profile and asked about again, in the background and across restarts, with
bounds on how long and how many. That is state and a retry loop ``logcheck`` need not
know; it needs only :meth:`ContactHeads.heard` to be called, and the proofs go through
``logcheck``'s own comparison (:class:`HeadCheck`), one at a time.

What we tell: our newest head rides inside the end-to-end content of our first message
to each contact, and of the next one after it changes (:meth:`ContactHeads.to_tell`),
so a relay that shows two people two histories is caught by the first message between
them. (One body sent to many, a business's notifications, carries none: the business
checks its own heads on every bundle.)

What we hear: every head a contact sends us is held against ours (:meth:`ContactHeads.
heard`), which needs a consistency proof only the relay can give. A relay that forked
could refuse that one fetch (a 402, a 900, a dropped connection) and the head, told
once per change, was forgotten (found in review: T50). So a head heard is kept in the
profile (``heard_heads``, one per contact: a contact's newer head takes its place, as
the contact's client holds its own heads consistent, but not its age; a head proven
once in a run is not checked again, whoever sends it) until the relay proves it
consistent or it shows a fork, and tried again after every refusal: after the 402's
``retry_after`` (the reader's :class:`~.pacing.Pacer` waits out short ones within a
try), with backoff after a 900, on the next connection after a drop, on the first
connection of the next run. Those tries go through a reader whose requests fail on a
drop instead of waiting for the next connection, and each is bounded in time, so a
drop or a silence is a refusal too. A head still unproven after
:attr:`RecheckPolicy.refusals` tries *and* :attr:`RecheckPolicy.after_ms` since it was
heard is **overdue**: the application's ``on_log_unchecked`` hears
:class:`LogUnchecked` once a run, and every send to that contact tries once more and
raises it if that fails too. Both bounds, so an honest relay's transient refusal (one
402, a restart) alarms nobody and a client offline for a day is not reported for
that. At most :attr:`RecheckPolicy.max_heads` contacts' heads are kept; past them a new
one is reported at once.

Not here: holding heads against each other and the split-view alarm (``logcheck``),
reading the log (``transparency``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from blindrelay.protocol.errors import (
    BlindrelayError,
    KeyNotLogged,
    LogForked,
    LogUnchecked,
    RateLimited,
    StoreUnavailable,
    TransparencyError,
)
from blindrelay.protocol.transparency.treehead import TreeHead, open_tree_head

from .keystore import HeardHead, KeyStore
from .sessions import wall_clock_ms
from .transparency import LOG_ANSWER_TIMEOUT_S, LOG_FETCH_PATIENCE_MS, LogReader

log = logging.getLogger("blindrelay.client")

MAX_TOLD = 10_000
"""Contacts whose last head we remember; past it the oldest is told again."""


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


class HeadCheck(Protocol):
    """What a contact's head is checked with: ``logcheck.LogCheck``."""

    @property
    def forked(self) -> LogForked | None:
        """The split-view alarm, once it has gone off: nothing is checked any more."""

    def raise_if_forked(self) -> None:
        """Raise the split-view alarm if it has gone off."""

    def proven(self, signed: bytes) -> bool:
        """Whether ``signed`` was proven consistent with our head in this run."""

    async def observe(self, head: TreeHead, signed: bytes, reader: LogReader | None = None) -> None:
        """Hold ``head`` against ours with proofs read through ``reader``; raises
        :class:`LogForked`, or the reader's refusal."""


class ContactHeads:
    """Our head told to contacts, and theirs kept and checked until proven (module
    docstring)."""

    def __init__(
        self,
        store: KeyStore,
        check: HeadCheck,
        relay_key: Callable[[], bytes | None],
        reader: LogReader,
        *,
        unchecked: Callable[[LogUnchecked], None] = lambda _exc: None,
        recheck: RecheckPolicy = DEFAULT_RECHECK,
        online: Callable[[], Awaitable[object]] | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """``reader`` asks the relay for the proofs: its requests should fail on a drop
        (``RelayLink.request_once``), not wait for the next connection; ``online``
        returns once there is a connection to try on; ``clock`` is Unix ms."""
        self._store = store
        self._check = check
        self._relay_key = relay_key
        self._reader = reader
        self.recheck = recheck
        self._unchecked = unchecked
        self._online = online
        self._clock = clock
        self._heard: dict[str, HeardHead] = {h.contact: h for h in store.heard_heads()}
        """Contact → its head not proven yet, as the keystore keeps it."""
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        self._trying = 0
        """Rechecks not sleeping between tries (:meth:`settled`)."""
        self._idle = asyncio.Event()
        self._reported: set[str] = set()
        """Contacts whose overdue head the application heard of in this run."""
        self._told: dict[str, bytes] = {}
        """Contact → the head it last got from us, in this run."""

    def to_tell(self, handle: str) -> bytes | None:
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

    def heard(self, signed: bytes, contact: str) -> None:
        """A contact's head, from inside an end-to-end message: kept, then checked in the
        background against ours (the relay must prove one extends the other), again and
        again until it is proven or shows a fork (module docstring)."""
        if (
            self._check.forked is not None
            or signed == self._store.tree_head()
            or self._check.proven(signed)
        ):
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
        """A connection is online: every kept head without a try under way is tried now
        (those a previous run kept, those waiting since a drop)."""
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
        self._check.raise_if_forked()
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
        if held is None or self._check.forked is not None:
            return None
        try:
            head = open_tree_head(held.signed, self._key())
        except (TransparencyError, KeyNotLogged):
            self._forget(contact)  # a relay key accepted since (§4.1): no history of ours
            return None
        try:
            async with asyncio.timeout(self.recheck.answer_timeout_s):
                await self._check.observe(head, held.signed, self._reader)
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

    def _key(self) -> bytes:
        key = self._relay_key()
        if key is None:
            raise KeyNotLogged("?", "no pinned relay key to check the log against")
        return key


__all__ = ["DEFAULT_RECHECK", "MAX_TOLD", "ContactHeads", "HeadCheck", "RecheckPolicy"]
