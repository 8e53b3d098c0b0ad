"""The split-view alarm outlives the run that raised it (SPEC §15.6 rule 5,
client/logcheck.py).

The attack (found in review): once a client had caught the relay showing two histories
(:class:`LogForked`, carrying the two signed heads that cannot both be true), the alarm
lived in ``LogCheck.forked``, in memory only. The head a contact brought was dropped
once it had forked, and the kept head is ours alone, so a restart of the application
forgot everything: sends went again and ``on_log_forked`` was never told again, while
the relay that forked was the same. A forking relay only had to wait for a restart.

Over the in-memory relay of :mod:`.log_relay`: alice keeps the head the relay showed
her, carol's message brings a head of another history, and the relay has no proof
joining them (NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from blindrelay.client.keystore import HeardHead, KeyStore, LogFork, MemoryKeyStore
from blindrelay.client.logcheck import LogCheck
from blindrelay.client.sdk import Client
from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.errors import LogForked, NotFound
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import StatementLogged
from blindrelay.protocol.transparency.treehead import sign_tree_head

from ..relays import T0
from .fake_relay import OTHER_RELAY_KEY, RELAY_KEY, URL, RelayEnd, signer
from .harness import FAST, LOW_COST, Inbox, bundle, run, within
from .log_relay import LoggingRelay, Writer, filler

CAROL_SEED = b"\x43" * 32
DAVE_SEED = b"\x44" * 32


def two_histories(relay: LoggingRelay) -> tuple[bytes, bytes]:
    """The head the relay showed alice (4 entries) and the one it showed carol (6, the
    second entry rewritten); asked for a proof joining them, the relay has none."""
    relay.append(*filler(4))
    ours = relay.sign_head()
    theirs = [merkle.leaf_hash(e) for e in filler(6)]
    theirs[1] = merkle.leaf_hash(StatementLogged(v=1, commitment=b"\x99" * 32, at=T0).to_bytes())
    honest = relay.answer

    def no_proof(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.LogConsistencyFetch):
            end.refuse(NotFound(), frame.id)
        else:
            honest(end, frame)

    relay.answer = no_proof
    return ours, sign_tree_head(signer(RELAY_KEY), 6, merkle.root_of(theirs), T0 + 10)


class Profile:
    """Alice's profile, run after run: a file, or one in-memory store the test keeps."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.path = tmp_path / "alice.keys" if kind == "sqlite" else None
        self.memory = MemoryKeyStore() if kind == "memory" else None

    def open(self, relay: LoggingRelay, **options: object) -> Client:
        common = {"open_transport": relay.open, "backoff": FAST, **options}
        if self.memory is not None:
            return Client(self.memory, **common)  # type: ignore[arg-type]
        return Client.open(self.path, "pass", **LOW_COST, **common)  # type: ignore[arg-type]


async def started(client: Client) -> Client:
    await within(client.connect(URL))
    if client.registered:
        await within(client.login())
    else:
        await within(client.register("alice"))
    return client


def sends(relay: LoggingRelay) -> list[str]:
    return [send.to for end in relay.ends for send in end.received(frames.Send)]


async def fork_seen(relay: LoggingRelay, profile: Profile) -> tuple[bytes, bytes]:
    """The first run: carol's head forks from alice's; the alarm goes off once and a send
    raises it. Returns the two heads."""
    ours, theirs = two_histories(relay)
    alarms: list[LogForked] = []
    alice = await started(profile.open(relay, on_log_forked=alarms.append))
    alice.store.set_tree_head(ours)
    Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
    inbox = Inbox(alice)
    assert (await inbox.next()).body == "hi"
    await within(alice.log_check.settled())
    assert len(alarms) == 1 and {alarms[0].first, alarms[0].second} == {ours, theirs}
    with pytest.raises(LogForked):
        await within(alice.send("carol", "are you seeing what I see?"))
    await inbox.close()
    await alice.close()
    return ours, theirs


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_the_split_view_alarm_is_kept_across_a_restart(kind: str, tmp_path: Path) -> None:
    """Fork, alarm, close; the next run on the same profile tells the application again,
    once (not again at a reconnection), with both signed heads, and every send raises
    it — to the contact that brought the head and to anyone else — nothing sent. Before
    the fix the second run heard nothing and its sends went out."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [bundle("dave", DAVE_SEED, "user")]
        profile = Profile(kind, tmp_path)
        ours, theirs = await fork_seen(relay, profile)
        alarms: list[LogForked] = []
        alice = await started(profile.open(relay, on_log_forked=alarms.append))
        assert len(alarms) == 1, "the next run was not told of the fork"
        assert {alarms[0].first, alarms[0].second} == {ours, theirs}
        for contact in ("carol", "dave"):
            with pytest.raises(LogForked) as raised:
                await within(alice.send(contact, "hello"))
            assert {raised.value.first, raised.value.second} == {ours, theirs}
        assert sends(relay) == []
        relay.ends[-1].drop()  # a reconnection is no new run
        await relay.connection(len(relay.ends))
        await within(alice.link.wait_online())
        with pytest.raises(LogForked):
            await within(alice.send("dave", "hello"))
        assert len(alarms) == 1 and sends(relay) == []
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_restart_that_sends_before_connecting_is_told_too(kind: str, tmp_path: Path) -> None:
    """The application of the next run sends before it connects: the send raises the
    alarm, and ``on_log_forked`` hears it then (once)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        profile = Profile(kind, tmp_path)
        ours, theirs = await fork_seen(relay, profile)
        alarms: list[LogForked] = []
        alice = profile.open(relay, on_log_forked=alarms.append)
        for _ in range(2):
            with pytest.raises(LogForked):
                await within(alice.send("carol", "hello"))
        assert len(alarms) == 1 and {alarms[0].first, alarms[0].second} == {ours, theirs}
        await started(alice)
        assert len(alarms) == 1
        await alice.close()

    run(scenario())


def test_a_relay_key_the_person_accepts_starts_without_the_old_keys_alarm(
    tmp_path: Path,
) -> None:
    """The evidence is about the relay key that signed both heads. Once the person
    accepts another key (SPEC §4.1: a new log, ``accept_relay_key``), sends go and nothing
    is told; the evidence stays in the profile."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [bundle("dave", DAVE_SEED, "user")]
        profile = Profile("sqlite", tmp_path)
        ours, theirs = await fork_seen(relay, profile)
        relay.key = OTHER_RELAY_KEY
        alarms: list[LogForked] = []
        alice = profile.open(relay, on_log_forked=alarms.append)
        alice.accept_relay_key(OTHER_RELAY_KEY.verify_key.encode())
        await started(alice)
        await within(alice.send("dave", "hello"))
        assert alarms == [] and sends(relay) == ["dave"]
        (kept,) = alice.store.log_forks()
        assert kept.relay_key == RELAY_KEY.verify_key.encode()
        assert {kept.first, kept.second} == {ours, theirs}
        await alice.close()

    run(scenario())


def test_a_bulk_send_raises_the_kept_alarm_and_sends_nothing(tmp_path: Path) -> None:
    """``send_many`` raises the alarm as ``send`` does, before any recipient's envelope
    is encrypted: carol, whose session is there, is not sent to either."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [bundle("dave", DAVE_SEED, "user")]
        profile = Profile("sqlite", tmp_path)
        await fork_seen(relay, profile)
        alice = await started(profile.open(relay))
        assert alice.sessions.has_session("carol")
        with pytest.raises(LogForked):
            await within(alice.send_many(["carol", "dave"], "hello"))
        assert sends(relay) == [] and alice.store.outbox() == []
        await alice.close()

    run(scenario())


# --- On LogCheck alone -------------------------------------------------------------------


def _never(relay_key: bytes) -> LogReader:
    async def ask(_make: object) -> frames.Frame:
        raise AssertionError("a kept alarm asks the relay nothing")

    return LogReader(ask, lambda: relay_key)


def test_a_kept_fork_is_the_alarm_while_its_relay_key_is_pinned() -> None:
    """Nothing the relay does lifts it; pinning another key sets it aside, pinning the
    old key again brings it back (the relay that forked is that key's)."""
    store: KeyStore = MemoryKeyStore()
    old, new = RELAY_KEY.verify_key.encode(), OTHER_RELAY_KEY.verify_key.encode()
    store.set_relay_key(old)
    store.keep_log_fork(LogFork(old, b"first head", b"second head", "a detail"))
    alarms: list[LogForked] = []
    check = LogCheck(store, _never(old), store.relay_key, alarm=alarms.append)
    assert check.forked is not None
    assert (check.forked.first, check.forked.second) == (b"first head", b"second head")
    assert "a detail" in str(check.forked)
    check.resume()
    check.resume()
    with pytest.raises(LogForked):
        check.raise_if_forked()
    assert len(alarms) == 1
    store.set_relay_key(new)
    assert check.forked is None
    check.raise_if_forked()
    store.set_relay_key(old)
    with pytest.raises(LogForked):
        check.raise_if_forked()
    assert len(alarms) == 1  # told once a run


# --- After the alarm: heads heard from contacts ------------------------------------------


def consistency_fetches(relay: LoggingRelay) -> int:
    return sum(len(end.received(frames.LogConsistencyFetch)) for end in relay.ends)


def test_a_head_heard_after_the_alarm_is_neither_checked_nor_kept(tmp_path: Path) -> None:
    """By design (docs/transparency.md, "After the alarm"): once the alarm is kept, a
    contact's head is not held against ours. The relay is honest again here and would
    prove carol's new head (it extends ours): checked, it would move our kept head on and
    ask the relay for a proof. Instead nothing is asked, nothing kept or reported, the
    evidence is the first fork's, the message is read and every send still raises."""

    async def scenario() -> None:
        relay = LoggingRelay()
        honest = relay.answer
        profile = Profile("sqlite", tmp_path)
        ours, theirs = await fork_seen(relay, profile)
        relay.answer = honest
        relay.append(*filler(6)[4:])
        extends_ours = relay.sign_head()
        alarms: list[LogForked] = []
        reports: list[object] = []
        alice = await started(
            profile.open(relay, on_log_forked=alarms.append, on_log_unchecked=reports.append)
        )
        asked = consistency_fetches(relay)
        Writer(relay, alice, "carol", CAROL_SEED).deliver("again", "user", sth=extends_ours)
        inbox = Inbox(alice)
        assert (await inbox.next()).body == "again"
        await within(alice.log_check.settled())
        assert consistency_fetches(relay) == asked, "a head was checked after the alarm"
        assert alice.store.tree_head() == ours and alice.store.heard_heads() == []
        assert reports == [] and len(alarms) == 1
        (kept,) = alice.store.log_forks()
        assert {kept.first, kept.second} == {ours, theirs}
        with pytest.raises(LogForked):
            await within(alice.send("carol", "hello"))
        assert sends(relay) == []
        await inbox.close()
        await alice.close()

    run(scenario())


def test_heads_kept_before_the_alarm_are_not_tried_after_it() -> None:
    """On ``LogCheck`` alone: a contact's head kept unproven when the alarm went off stays
    kept and is not tried (the relay is asked nothing), and a new one is not kept: the
    alarm stands whatever they would show. Under a relay key accepted since (a new log),
    the kept head is no head of that key and is dropped at its first try."""

    async def scenario() -> None:
        store: KeyStore = MemoryKeyStore()
        old = RELAY_KEY.verify_key.encode()
        store.set_relay_key(old)
        relay = LoggingRelay()
        relay.append(*filler(4))
        ours = relay.sign_head()
        relay.append(*filler(6)[4:])
        waiting = relay.sign_head()
        relay.append(*filler(8)[6:])
        newer = relay.sign_head()
        store.set_tree_head(ours)
        store.keep_heard_head(HeardHead("bob", waiting, T0))
        store.keep_log_fork(LogFork(old, ours, b"the other head", "no proof joins them"))
        asked: list[frames.Frame] = []

        async def ask(make: Callable[[int], frames.Frame]) -> frames.Frame:
            asked.append(make(1))
            raise NotFound()

        check = LogCheck(store, LogReader(ask, store.relay_key), store.relay_key)
        check.resume()
        check.heard(newer, "carol")
        await within(check.settled())
        assert asked == [] and [held.signed for held in store.heard_heads()] == [waiting]
        assert store.tree_head() == ours and not check.overdue("bob")
        store.set_relay_key(OTHER_RELAY_KEY.verify_key.encode())
        check.resume()
        await within(check.settled())
        assert store.heard_heads() == [] and asked == []
        await check.close()

    run(scenario())
