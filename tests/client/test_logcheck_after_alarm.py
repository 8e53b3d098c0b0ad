"""After the split-view alarm, nothing is taken on the log's word (SPEC §15.6 rule 5,
docs/transparency.md "After the alarm", T75).

The weakness (found in review 2026-12-07): once the relay was caught signing two
histories, only sends were refused. Everything else that rests on log evidence went on
checking it against "our side" of the fork — the kept head, one of the two the relay
signed — and said "ok": a badge was shown verified because the relay proved it logged,
a business's bill "matched", consent evidence was exported, a bundle's key was marked
proven logged. An equivocating relay shows each side what it likes, so "included under
a head we hold" no longer means everyone is shown the same: each of these now fails
closed and says why (``LogForked``, or ``BadgeStatus.LOG_FORKED`` where a status is
what the caller shows). What needs no log goes on: a message is still read.

Every scenario starts from a profile whose alarm is kept (as after a restart, the
alarm's evidence in the profile) and whose kept head is the one an honest-looking relay
now proves everything under: the relay is consistent with our side, so before the fix
each feature said "ok".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from blindrelay.client.business import Business
from blindrelay.client.keystore import KeyStore, LogFork, MemoryKeyStore
from blindrelay.client.logcheck import LogCheck
from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.business import BadgeStatus
from blindrelay.protocol.errors import LogForked, NotFound
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.bills import SentNotification, close_bill
from blindrelay.protocol.transparency.treehead import open_tree_head, sign_tree_head

from ..relays import T0, FakeClock
from .fake_relay import RELAY_KEY, URL, FakeLog, FakeRelay, RelayEnd, answer_plainly, signer
from .harness import Inbox, bundle, online, run, within
from .log_relay import (
    AIRLINE_SEED,
    LoggingRelay,
    Writer,
    alices_statement,
    answering,
    binding,
    filler,
    log_holding,
)
from .profile_directory import OPERATOR, Directory, badge, signed_profile

MONTH = "2027-01"


def forked(ours: bytes) -> MemoryKeyStore:
    """A profile whose split-view alarm is kept: ``ours`` (the head kept, a head of the
    relay's log as the test serves it) and another head of the same size the relay
    signed for someone else."""
    head = open_tree_head(ours, RELAY_KEY.verify_key.encode())
    other = sign_tree_head(signer(RELAY_KEY), head.size, bytes(32), head.timestamp + 1)
    store = MemoryKeyStore()
    store.set_tree_head(ours)
    store.keep_log_fork(
        LogFork(RELAY_KEY.verify_key.encode(), ours, other, "equal sizes, different roots")
    )
    return store


def log_fetches(end: RelayEnd) -> list[frames.Frame]:
    kinds = (
        frames.LogHeadFetch, frames.LogInclusionFetch, frames.LogConsistencyFetch,
        frames.LogEntriesFetch,
    )  # fmt: skip
    return [frame for kind in kinds for frame in end.received(kind)]


# --- A key: not proven by the log, no head held against ours -----------------------------


def _reader(relay: LoggingRelay, store: KeyStore) -> LogReader:
    async def ask(make: Callable[[int], frames.Frame]) -> frames.Frame:
        raise AssertionError(f"the relay was asked {make(1).TYPE.name} after the alarm")

    return LogReader(ask, store.relay_key)


def _nodes(leaves: list[bytes]) -> merkle.NodeHashes:
    frontier, nodes = merkle.Frontier(), {}
    for leaf in leaves:
        nodes.update(frontier.append(leaf))
    return lambda wanted: {node: nodes[node] for node in wanted}


def test_a_bundle_proof_after_the_alarm_proves_no_key() -> None:
    """On ``LogCheck`` alone (a send reaches it only if the alarm went off while the send
    waited for another's bundle): a bundle whose binding the relay proves under our kept
    head passed and its key was marked proven logged. Now ``LogForked``, and the key is
    not marked: nothing the relay proves after the alarm makes a key usable."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        index = relay.append(binding("airline", AIRLINE_SEED))
        head = relay.sign_head()
        proven = relay.proven(bundle("airline", AIRLINE_SEED, "business"), index)
        store = forked(head)
        store.set_relay_key(RELAY_KEY.verify_key.encode())
        check = LogCheck(store, _reader(relay, store), store.relay_key)

        async def again() -> frames.Bundle:
            raise AssertionError("fetched again after the alarm")

        with pytest.raises(LogForked):
            await within(check.bundle(proven, again))
        assert store.logged_key("airline") is None
        assert store.tree_head() == head
        await check.close()

    run(scenario())


def test_no_head_is_held_against_ours_after_the_alarm() -> None:
    """``LogCheck.observe``, which every feature above holds its head against ours with:
    after the alarm it raises the alarm, asks the relay nothing and keeps nothing, even
    for a head that would extend ours."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        ours = relay.sign_head()
        relay.append(*filler(4)[2:])
        newer = relay.sign_head()
        store = forked(ours)
        store.set_relay_key(RELAY_KEY.verify_key.encode())
        check = LogCheck(store, _reader(relay, store), store.relay_key)
        with pytest.raises(LogForked):
            await within(check.observe(open_tree_head(newer, store.relay_key() or b""), newer))
        assert store.tree_head() == ours and not check.proven(newer)
        await check.close()

    run(scenario())


def test_a_head_waiting_while_the_alarm_goes_off_is_not_held_against_ours() -> None:
    """Two heads met at once: the first finds the fork, the second waited for it (one
    observation at a time). The second raises the alarm too, and is neither asked about
    nor kept, though the relay would prove it extends ours: the check is made once the
    wait is over, not before it."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        ours = relay.sign_head()
        relay.append(*filler(4)[2:])
        newer = relay.sign_head()
        other = sign_tree_head(signer(RELAY_KEY), 3, bytes(32), T0 + 9)
        store = MemoryKeyStore()
        store.set_relay_key(RELAY_KEY.verify_key.encode())
        store.set_tree_head(ours)
        answer = asyncio.Event()
        asked: list[frames.Frame] = []

        async def ask(make: Callable[[int], frames.Frame]) -> frames.Frame:
            frame = make(1)
            asked.append(frame)
            assert isinstance(frame, frames.LogConsistencyFetch)
            if frame.second == 3:
                await answer.wait()
                raise NotFound()  # no proof joins ours and the other history's head
            leaves = [merkle.leaf_hash(e) for e in relay.entries]
            proof = merkle.consistency_proof(frame.first, frame.second, _nodes(leaves))
            return frames.LogConsistency(re=1, proof=tuple(proof))

        key = RELAY_KEY.verify_key.encode()
        check = LogCheck(store, LogReader(ask, store.relay_key), store.relay_key)
        forking = asyncio.create_task(check.observe(open_tree_head(other, key), other))
        while not asked:
            await asyncio.sleep(0)
        waiting = asyncio.create_task(check.observe(open_tree_head(newer, key), newer))
        await asyncio.sleep(0)
        answer.set()
        for task in (forking, waiting):
            with pytest.raises(LogForked):
                await within(task)
        assert len(asked) == 1 and store.tree_head() == ours and not check.proven(newer)
        await check.close()

    run(scenario())


# --- What needs no log goes on -----------------------------------------------------------


def test_a_message_after_the_alarm_is_read_and_its_key_stays_unproven() -> None:
    """Reading needs no log: the airline's message is decrypted and shown, as ``unlogged``
    (nothing proved its key). The reply raises the alarm with no bundle fetched, so the
    key is not proven on the relay's word and stays ``unlogged``."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        index = relay.append(binding("airline", AIRLINE_SEED))
        head = relay.sign_head()
        relay.bundles = [relay.proven(bundle("airline", AIRLINE_SEED, "business"), index)]
        alice = await online(URL, "alice", store=forked(head), open_transport=relay.open)
        Writer(relay, alice, "airline", AIRLINE_SEED).deliver("Your boarding pass")
        inbox = Inbox(alice)
        shown = await inbox.next()
        assert (shown.sender, shown.body, shown.identity) == (
            "airline", "Your boarding pass", "unlogged"
        )  # fmt: skip
        with pytest.raises(LogForked):
            await within(alice.send("airline", "thanks"))
        assert relay.fetches == 0 and relay.ends[-1].received(frames.Send) == []
        assert alice.store.logged_key("airline") is None
        await inbox.close()
        await alice.close()

    run(scenario())


# --- A badge: signed by the operator, not shown verified ---------------------------------


def test_a_badge_after_the_alarm_is_signed_but_not_shown_verified() -> None:
    """Before: the relay proved the badge under our kept head and it showed VERIFIED.
    Now it is ``LOG_FORKED``: the operator's signature still checks (the badge is kept in
    the status, for an application that says "signed by the operator, but this relay's
    log cannot be trusted"), it is not verified, and the relay is asked nothing."""

    async def scenario() -> None:
        relay = Directory(signed_profile("Example Air"), badge("Example Air"))
        store = forked(relay.log.heads[-1])
        alarms: list[LogForked] = []
        alice = await online(
            URL, "alice", store=store, open_transport=relay.open,
            operator_key=OPERATOR.public, clock=FakeClock(T0), on_log_forked=alarms.append,
        )  # fmt: skip
        info = await within(alice.business_info("airline"))
        assert info.badge.status is BadgeStatus.LOG_FORKED
        assert not info.verified and info.verified_name is None
        assert info.badge.badge is not None and info.badge.badge.display_name == "Example Air"
        assert log_fetches(relay.ends[-1]) == []
        assert len(alarms) == 1
        await alice.close()

    run(scenario())


# --- A bill: not "matches" ---------------------------------------------------------------


def bill_served() -> tuple[FakeRelay, FakeLog, list[SentNotification], list[int]]:
    """An honest relay that logged ``shop``'s bill of three notifications and serves it;
    the SENTs the business kept; the starts of the BILL_FETCHes it is asked."""
    sent = [
        SentNotification(n.to_bytes(16, "big"), f"customer{n}", "utility", T0 + n)
        for n in range(3)
    ]
    entry, items = close_bill("shop", MONTH, sent, bytes(16), T0)
    log = FakeLog()
    log.append(entry.to_bytes())
    sth = log.sign_head(T0)
    pages: list[int] = []

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.BillFetch):
            pages.append(frame.start)
            end.send(frames.Bill(
                re=frame.id, month=MONTH, entry=entry.to_bytes(), index=0, proof=(), sth=sth,
                salt=bytes(16), start=frame.start,
                items=tuple(item.to_bytes() for item in items[frame.start :]),
            ))  # fmt: skip
        elif not log.answer(end, frame):
            answer_plainly(end, frame)

    relay = FakeRelay()
    relay.answer = answer
    return relay, log, sent, pages


@pytest.mark.parametrize("call", ["check_bill", "bill"])
def test_a_bill_after_the_alarm_raises_the_alarm_and_fetches_nothing(call: str) -> None:
    """Before: ``check_bill`` said "every one matches" (the bill under a head consistent
    with our side). Now both ``check_bill`` and ``bill`` raise the kept ``LogForked``
    before any BILL_FETCH: a logged bill is one everyone is shown, which a relay caught
    equivocating no longer shows."""

    async def scenario() -> None:
        relay, log, sent, pages = bill_served()
        shop = Business(
            await online(URL, "shop", "business", store=forked(log.heads[-1]),
                         open_transport=relay.open)
        )  # fmt: skip
        for notification in sent:
            shop.client.store.keep_sent_notification(notification)
        with pytest.raises(LogForked):
            await within(getattr(shop, call)(MONTH))
        assert pages == [] and log_fetches(relay.ends[-1]) == []
        await shop.client.close()

    run(scenario())


# --- Consent evidence: not handed on -----------------------------------------------------


def test_consent_evidence_after_the_alarm_raises_the_alarm_and_asks_nothing() -> None:
    """Before: the evidence was exported, its head consistent with our side. Now
    ``consent_evidence`` raises the kept ``LogForked`` before asking the relay: evidence a
    third party would check against a log the relay keeps two of proves nothing."""
    statement = alices_statement()
    log = log_holding(statement)

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answering(log)
        shop = Business(
            await online(URL, "shop", "business", store=forked(log.heads[-1]),
                         open_transport=relay.open)
        )  # fmt: skip
        shop.client.store.keep_statement("alice", statement)
        with pytest.raises(LogForked):
            await within(shop.consent_evidence("alice"))
        assert log_fetches(relay.ends[-1]) == []
        await shop.client.close()

    run(scenario())


def test_a_users_consent_evidence_after_the_alarm_raises_the_alarm() -> None:
    """The user's side of the same export (``client.log.consent_evidence``, a revocation
    proven to a third party). Before: evidence under a head that was never held against
    ours, after the alarm as before it. Now the head is held against ours before the
    evidence is handed on, so after the alarm it raises the kept ``LogForked``."""
    statement = alices_statement("revoke")
    log = log_holding(statement)

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answering(log)
        client = await online(URL, "alice", store=forked(log.heads[-1]), open_transport=relay.open)
        with pytest.raises(LogForked):
            await within(client.log.consent_evidence(statement))
        await client.close()

    run(scenario())
