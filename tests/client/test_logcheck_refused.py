"""A relay cannot escape the split-view check by refusing to answer it (SPEC §15.6 rule
5, client/logcheck.py).

The attack (found in review): a contact's tree head, heard inside its message, is
checked against ours with a LOG_CONSISTENCY_FETCH. A relay that showed the two of us
two histories has no proof joining them — but it did not need one: the SDK caught
the refusal (ERROR 402 past the reader's patience, 900, a dropped connection) as "could
not check", logged it at info and forgot the head. The head rides along once per
change, so it was never checked again, and no alarm ever went off.

Over the in-memory relay of :mod:`.log_relay`: alice keeps the head the relay showed
her, and carol's message brings a head of another history (or of the same one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from blindrelay.client.keystore import HeardHead, MemoryKeyStore
from blindrelay.client.logcheck import LogCheck
from blindrelay.client.sdk import Client, RecheckPolicy
from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.errors import (
    InternalError,
    LogForked,
    LogUnchecked,
    NotFound,
    RateLimited,
)
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import StatementLogged
from blindrelay.protocol.transparency.treehead import sign_tree_head

from ..relays import T0
from .fake_relay import OTHER_RELAY_KEY, RELAY_KEY, URL, RelayEnd, signer
from .harness import FAST, LOW_COST, Inbox, bundle, run, within
from .log_relay import LoggingRelay, Writer, filler

T = TypeVar("T")

CAROL_SEED = b"\x43" * 32
DAVE_SEED = b"\x44" * 32

REFUSALS = ["402", "900", "drop"]

QUICK = RecheckPolicy(first_wait_s=0.001, max_wait_s=0.005)
"""The SDK's bounds (six tries and ten minutes before a head is overdue), with waits
between tries short enough for a test."""


def two_histories(relay: LoggingRelay) -> tuple[bytes, bytes]:
    """The head the relay showed alice (4 entries) and the one it showed carol (6, the
    second entry rewritten): no consistency proof joins them."""
    relay.append(*filler(4))
    ours = relay.sign_head()
    theirs = [merkle.leaf_hash(e) for e in filler(6)]
    theirs[1] = merkle.leaf_hash(StatementLogged(v=1, commitment=b"\x99" * 32, at=T0).to_bytes())
    return ours, sign_tree_head(signer(RELAY_KEY), 6, merkle.root_of(theirs), T0 + 10)


class Seen(list[T]):
    """What a test hears (reports, fetches), in order, and a wait for more."""

    def __init__(self) -> None:
        super().__init__()
        self._more = asyncio.Event()

    def __call__(self, item: T) -> None:
        self.append(item)
        self._more.set()

    async def wait(self, count: int = 1) -> None:
        async def enough() -> None:
            while len(self) < count:
                self._more.clear()
                await self._more.wait()

        await within(enough())


def refusing(
    relay: LoggingRelay, how: str, times: int | None, retry_after_ms: int = 3_600_000
) -> Seen[frames.LogConsistencyFetch]:
    """The relay refuses the first ``times`` consistency fetches (None: all) ``how``, then
    tells the truth: for two heads of two histories it has no proof (NOT_FOUND). A 402
    names ``retry_after_ms``: by default past the reader's patience, so each is a try's
    end; a short one is waited out within the try, up to the reader's retries."""
    fetches: Seen[frames.LogConsistencyFetch] = Seen()
    honest = relay.answer

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.LogConsistencyFetch):
            honest(end, frame)
            return
        fetches(frame)
        if times is not None and len(fetches) > times:
            end.refuse(NotFound(), frame.id)
        elif how == "402":
            end.refuse(RateLimited(retry_after_ms=retry_after_ms), frame.id)
        elif how == "900":
            end.refuse(InternalError(), frame.id)
        else:
            end.drop()

    relay.answer = answer
    return fetches


async def client(relay: LoggingRelay, path: Path | None = None, **options: object) -> Client:
    alice = Client.open(path, "pass", open_transport=relay.open, backoff=FAST, **LOW_COST,
                        **options)  # fmt: skip
    await within(alice.connect(URL))
    if alice.registered:
        await within(alice.login())
    else:
        await within(alice.register("alice"))
    return alice


def test_a_402_s_retry_after_is_waited_before_the_head_is_asked_again() -> None:
    """A 402 past the reader's patience ends the try; the next try waits for its
    ``retry_after`` (within ``max_wait_s``), not only the backoff's first step: asking
    sooner only spends the account's bucket again (SPEC §10). Found by mutation
    analysis: the floor could be removed with no test noticing."""

    async def scenario() -> None:
        relay = LoggingRelay()
        ours, theirs = two_histories(relay)
        alarms: Seen[LogForked] = Seen()
        policy = RecheckPolicy(first_wait_s=0.001, max_wait_s=0.5)
        alice = await client(relay, on_log_forked=alarms, log_recheck=policy)
        alice.store.set_tree_head(ours)
        fetches = refusing(relay, "402", times=1)  # retry_after an hour, capped at 0.5 s
        asked_at: list[float] = []
        refuse = relay.answer

        def timed(end: RelayEnd, frame: frames.Frame) -> None:
            if isinstance(frame, frames.LogConsistencyFetch):
                asked_at.append(time.monotonic())
            refuse(end, frame)

        relay.answer = timed
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        assert (await inbox.next()).body == "hi"
        await alarms.wait()
        assert len(fetches) == 2
        assert asked_at[1] - asked_at[0] >= 0.45  # without the floor: ~0.001 s
        await inbox.close()
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("how", ["402", "900"])
def test_a_head_the_relay_refused_to_prove_is_asked_again_until_it_answers(how: str) -> None:
    """The relay refuses the consistency fetch three times, then tells the truth: no
    proof joins the heads. The head was asked about again after each refusal and the
    alarm went off (before the fix: one fetch, the head forgotten, no alarm ever)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        ours, theirs = two_histories(relay)
        alarms: Seen[LogForked] = Seen()
        alice = await client(relay, on_log_forked=alarms, log_recheck=QUICK)
        alice.store.set_tree_head(ours)
        fetches = refusing(relay, how, times=3)
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        assert (await inbox.next()).body == "hi"
        await alarms.wait()
        assert len(fetches) == 4
        assert {alarms[0].first, alarms[0].second} == {ours, theirs}
        await inbox.close()
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("how", REFUSALS)
def test_a_head_not_checked_yet_is_kept_across_a_restart(how: str, tmp_path: Path) -> None:
    """The relay refuses while alice's client runs; she closes it. The next run asks
    again on its first connection, and the relay's truth (no proof) is the alarm."""

    async def scenario() -> None:
        relay = LoggingRelay()
        ours, theirs = two_histories(relay)
        path = tmp_path / "alice.keys"
        alice = await client(relay, path, log_recheck=QUICK)
        alice.store.set_tree_head(ours)
        fetches = refusing(relay, how, times=None)
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        await inbox.next()
        await fetches.wait()
        await inbox.close()
        await alice.close()
        refusing(relay, how, times=0)
        alarms: Seen[LogForked] = Seen()
        alice = await client(relay, path, on_log_forked=alarms)
        await alarms.wait()
        assert {alarms[0].first, alarms[0].second} == {ours, theirs}
        await alice.close()

    run(scenario())


# --- The bound: a relay cannot postpone the check for ever ------------------------------

OVERDUE_AT_ONCE = RecheckPolicy(refusals=3, after_ms=0, first_wait_s=0.001, max_wait_s=0.005)
"""Overdue after three refusals (the SDK's: six, and ten minutes since the head came)."""


@pytest.mark.parametrize("how", REFUSALS)
def test_a_head_the_relay_never_proves_is_reported_and_sends_to_its_contact_fail(
    how: str,
) -> None:
    """SPEC §15.6 rule 5's bound: the relay refuses every try. Past the bound the
    application hears LogUnchecked once, with both heads; a send to carol tries once more
    and raises it, nothing sent; a send to anyone else goes. When the relay at last
    answers, with the truth, the alarm goes off."""

    async def scenario() -> None:
        relay = LoggingRelay()
        ours, theirs = two_histories(relay)
        relay.bundles = [bundle("dave", DAVE_SEED, "user")]
        reports: Seen[LogUnchecked] = Seen()
        alarms: Seen[LogForked] = Seen()
        alice = await client(
            relay, on_log_unchecked=reports, on_log_forked=alarms, log_recheck=OVERDUE_AT_ONCE
        )
        alice.store.set_tree_head(ours)
        fetches = refusing(relay, how, times=None, retry_after_ms=1)
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        await inbox.next()
        await reports.wait()
        await fetches.wait(2 * len(fetches))  # tried on, reported once
        assert len(reports) == 1 and alarms == []
        report = reports[0]
        assert (report.contact, report.heard, report.kept) == ("carol", theirs, ours)
        assert report.refusals >= 3
        tried = len(fetches)
        with pytest.raises(LogUnchecked):
            await within(alice.send("carol", "are you seeing what I see?"))
        assert len(fetches) > tried  # the send asked once more
        assert all(end.received(frames.Send) == [] for end in relay.ends)
        await within(alice.send("dave", "hello"))
        assert [send.to for end in relay.ends for send in end.received(frames.Send)] == ["dave"]
        refusing(relay, how, times=0)  # the relay answers: it has no proof
        await alarms.wait()
        assert {alarms[0].first, alarms[0].second} == {ours, theirs}
        with pytest.raises(LogForked):
            await within(alice.send("carol", "hi"))
        assert alice.store.heard_heads() == []
        await inbox.close()
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("how", REFUSALS)
def test_an_honest_relay_that_fails_once_raises_nothing(how: str) -> None:
    """One 402 (a short ``retry_after``, waited out within the try), one 900 or one drop,
    then the proof: carol's newer head of the same history is kept, nothing reported,
    nothing left pending."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(4))
        ours = relay.sign_head()
        relay.append(*filler(6)[4:])
        theirs = relay.sign_head()
        reports: Seen[LogUnchecked] = Seen()
        alarms: Seen[LogForked] = Seen()
        alice = await client(relay, on_log_unchecked=reports, on_log_forked=alarms,
                             log_recheck=QUICK)  # fmt: skip
        alice.store.set_tree_head(ours)
        fetches = Seen[frames.LogConsistencyFetch]()
        honest = relay.answer

        def once(end: RelayEnd, frame: frames.Frame) -> None:
            if isinstance(frame, frames.LogConsistencyFetch):
                fetches(frame)
                if len(fetches) == 1:
                    if how == "402":
                        end.refuse(RateLimited(retry_after_ms=5), frame.id)
                    elif how == "900":
                        end.refuse(InternalError(), frame.id)
                    else:
                        end.drop()
                    return
            honest(end, frame)

        relay.answer = once
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        await inbox.next()
        await fetches.wait(2)
        await within(alice.log_check.settled())
        assert alice.store.tree_head() == theirs and alice.store.heard_heads() == []
        assert reports == [] and alarms == []
        await within(alice.send("carol", "fine"))
        await inbox.close()
        await alice.close()

    run(scenario())


# --- The rule's parts, on LogCheck alone ------------------------------------------------


class Refusing:
    """A relay that answers every request with ``refusal``, counting them; ``now`` is
    the clock the LogCheck reads (Unix ms)."""

    def __init__(self, refusal: Exception) -> None:
        self.refusal = refusal
        self.asked: Seen[frames.Frame] = Seen()
        self.now = T0

    async def __call__(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        self.asked(make(1))
        raise self.refusal

    def check(self, store: MemoryKeyStore, **policy: Any) -> tuple[LogCheck, Seen[LogUnchecked]]:
        reports: Seen[LogUnchecked] = Seen()
        key = RELAY_KEY.verify_key.encode()
        recheck = RecheckPolicy(**{"first_wait_s": 0.001, "max_wait_s": 0.001, **policy})
        check = LogCheck(
            store, LogReader(self, lambda: key), lambda: key,
            unchecked=reports, recheck=recheck, clock=lambda: self.now,
        )  # fmt: skip
        return check, reports


def heads(count: int) -> list[bytes]:
    """``count + 1`` heads of one history, of 1 to ``count + 1`` entries (the first for
    the head kept, the others for contacts)."""
    entries = filler(count + 1)
    leaves = [merkle.leaf_hash(e) for e in entries]
    return [
        sign_tree_head(signer(RELAY_KEY), n, merkle.root_of(leaves[:n]), T0 + n)
        for n in range(1, count + 2)
    ]


def test_a_head_is_overdue_only_past_both_bounds() -> None:
    """Many refusals within the time are not reported (an honest relay's bad minute, or
    the client offline since: SPEC §15.6 rule 5 asks for both); the first refusal once
    the time has passed too is, once."""

    async def scenario() -> None:
        relay = Refusing(InternalError())
        store = MemoryKeyStore()
        kept, heard = heads(1)
        store.set_tree_head(kept)
        check, reports = relay.check(store, refusals=3, after_ms=60_000)
        check.heard(heard, "carol")
        await relay.asked.wait(10)
        assert reports == [] and not check.overdue("carol")
        assert store.heard_heads()[0].refusals >= 9
        relay.now += 60_000
        await reports.wait()
        asked = len(relay.asked)
        await relay.asked.wait(asked + 5)
        assert len(reports) == 1 and check.overdue("carol")
        assert (reports[0].contact, reports[0].heard, reports[0].kept) == ("carol", heard, kept)
        await check.close()

    run(scenario())


def test_a_contacts_newer_head_takes_the_place_of_its_older_but_not_its_age() -> None:
    """One kept head per contact: a newer one replaces the older (the contact's client
    holds its own heads consistent), keeping when the first came and the refusals, so a
    contact that keeps writing does not restart the relay's clock; an older one is
    ignored."""

    async def scenario() -> None:
        relay = Refusing(InternalError())
        store = MemoryKeyStore()
        kept, first, second = heads(2)
        store.set_tree_head(kept)
        check, _ = relay.check(store, refusals=1000)
        check.heard(first, "carol")
        await relay.asked.wait(3)
        relay.now += 5
        check.heard(second, "carol")
        check.heard(first, "carol")
        (held,) = store.heard_heads()
        assert (held.contact, held.signed, held.heard_at_ms) == ("carol", second, T0)
        assert held.refusals >= 3
        await check.close()

    run(scenario())


def test_the_heads_kept_are_bounded_and_one_past_the_bound_is_reported_at_once() -> None:
    async def scenario() -> None:
        relay = Refusing(InternalError())
        store = MemoryKeyStore()
        kept, *heard = heads(3)
        store.set_tree_head(kept)
        check, reports = relay.check(store, max_heads=2, refusals=1000)
        for contact, head in zip(["bob", "carol", "dave"], heard, strict=True):
            check.heard(head, contact)
        assert [report.contact for report in reports] == ["dave"]
        assert sorted(held.contact for held in store.heard_heads()) == ["bob", "carol"]
        check.heard(heard[2], "carol")  # a kept contact's newer head is no new one
        assert len(reports) == 1
        await check.close()

    run(scenario())


def test_a_kept_head_of_a_relay_key_no_longer_pinned_is_dropped() -> None:
    """The person accepted a new relay key (SPEC §4.1): a head the old key signed, kept
    since the last run, is no history of the new key's log; it is dropped at its next
    try, not reported, and no longer stands between us and the contact."""

    async def scenario() -> None:
        relay = Refusing(InternalError())
        store = MemoryKeyStore()
        stale = sign_tree_head(signer(OTHER_RELAY_KEY), 3, b"\x01" * 32, T0)
        store.keep_heard_head(HeardHead("carol", stale, T0 - 3_600_000, refusals=50))
        check, reports = relay.check(store, after_ms=0)
        assert check.overdue("carol")
        await check.require_checked("carol")  # a send's try: nothing raised
        assert store.heard_heads() == [] and reports == [] and relay.asked == []
        await check.close()

    run(scenario())


def test_a_head_proven_once_is_not_checked_again_whoever_sends_it() -> None:
    """A business hears the relay's newest head from many customers: one proof settles
    every contact that sent it, and the same head heard later asks nothing (so a burst
    of customers does not fill the bound with one head)."""

    async def scenario() -> None:
        entries = filler(3)
        frontier, nodes = merkle.Frontier(), {}
        for entry in entries:
            nodes.update(frontier.append(merkle.leaf_hash(entry)))
        asked: Seen[frames.Frame] = Seen()

        async def prove(make: Callable[[int], frames.Frame]) -> frames.Frame:
            frame = make(1)
            asked(frame)
            assert isinstance(frame, frames.LogConsistencyFetch)
            proof = merkle.consistency_proof(
                frame.first, frame.second, lambda wanted: {n: nodes[n] for n in wanted}
            )
            return frames.LogConsistency(re=1, proof=tuple(proof))

        store = MemoryKeyStore()
        kept, middle, newest = heads(2)
        store.set_tree_head(kept)
        key = RELAY_KEY.verify_key.encode()
        check = LogCheck(store, LogReader(prove, lambda: key), lambda: key)
        for contact in ["bob", "carol", "dave"]:
            check.heard(middle, contact)
        await within(check.settled())
        assert len(asked) == 1 and store.heard_heads() == []
        check.heard(newest, "erin")
        await within(check.settled())
        check.heard(middle, "frank")  # older than the kept head now, proven before
        await within(check.settled())
        assert len(asked) == 2 and store.heard_heads() == [] and store.tree_head() == newest
        await check.close()

    run(scenario())


def test_a_send_whose_own_try_shows_the_fork_raises_it() -> None:
    """The overdue head's one more try before a send (``require_checked``) is the one the
    relay answers, with the truth: that very send raises LogForked and nothing leaves
    for carol; it does not go out because the head it waited on is settled now."""

    async def scenario() -> None:
        relay = LoggingRelay()
        ours, theirs = two_histories(relay)
        reports: Seen[LogUnchecked] = Seen()
        alarms: Seen[LogForked] = Seen()
        one_and_an_hour = RecheckPolicy(refusals=1, after_ms=0, first_wait_s=3600, max_wait_s=3600)
        alice = await client(
            relay, on_log_unchecked=reports, on_log_forked=alarms, log_recheck=one_and_an_hour
        )
        alice.store.set_tree_head(ours)
        refusing(relay, "900", times=None)
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        await inbox.next()
        await reports.wait()  # overdue; the next background try is an hour away
        assert alarms == []
        refusing(relay, "900", times=0)  # the relay answers: it has no proof
        with pytest.raises(LogForked):
            await within(alice.send("carol", "are you seeing what I see?"))
        assert all(end.received(frames.Send) == [] for end in relay.ends)
        assert len(alarms) == 1 and {alarms[0].first, alarms[0].second} == {ours, theirs}
        await inbox.close()
        await alice.close()

    run(scenario())


def test_a_contacts_head_replaces_its_older_of_one_size_and_one_of_an_old_relay_key() -> None:
    """Newer is (size, time): the relay's head signed again over the same tree replaces
    the earlier one; and a head of the key pinned now replaces one the old key signed
    (kept from before the person accepted a new relay key, SPEC §4.1), which is no
    history of this log."""

    async def scenario() -> None:
        relay = Refusing(InternalError())
        store = MemoryKeyStore()
        kept, first = heads(1)
        leaves = [merkle.leaf_hash(e) for e in filler(2)]
        again = sign_tree_head(signer(RELAY_KEY), 2, merkle.root_of(leaves), T0 + 99)
        stale = sign_tree_head(signer(OTHER_RELAY_KEY), 3, b"\x01" * 32, T0)
        store.set_tree_head(kept)
        store.keep_heard_head(HeardHead("dave", stale, T0, refusals=0))
        check, _ = relay.check(store, refusals=1000)
        check.heard(first, "carol")
        check.heard(again, "carol")
        check.heard(first, "dave")
        held = {h.contact: h.signed for h in store.heard_heads()}
        assert held == {"carol": again, "dave": first}
        await check.close()

    run(scenario())
