"""The SDK refuses a business key the relay has not proven logged, and a log that forks
(client/logcheck.py, SPEC §15.6): the attack is a relay handing out a key of its own
for a business (a fake "airline" key would read the chat).

Over the in-memory relay of :mod:`.log_relay`, which plays an honest or a lying relay
frame by frame: it keeps a log of entries the test appends, signs heads with its key,
and answers BUNDLE_FETCH with whatever bundle and proof the test chose. A key that
arrives in a message rather than a bundle: tests/client/test_logcheck_incoming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.logcheck import LogCheck
from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.errors import KeyNotLogged, LogForked, NotFound
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import StatementLogged
from blindrelay.protocol.transparency.treehead import open_tree_head, sign_tree_head

from ..relays import T0, FakeClock, relay_at
from .fake_relay import OTHER_RELAY_KEY, RelayEnd
from .harness import Inbox, bundle, make_client, online, replace_relay_key, run, within
from .log_relay import AIRLINE_SEED, FAKE_SEED, LoggingRelay, binding, customer, filler


def test_a_logged_business_key_is_trusted_and_the_head_kept() -> None:
    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(3))
        index = relay.append(binding("airline", AIRLINE_SEED))
        head = relay.sign_head()
        relay.bundles = [relay.proven(bundle("airline", AIRLINE_SEED, "business"), index)]
        alice = await customer(relay)
        await within(alice.send("airline", "hello"))
        assert alice.store.tree_head() == head
        await alice.close()

    run(scenario())


@pytest.mark.parametrize(
    "lie",
    [
        "no proof",
        "proof of the real key",
        "head signed by another key",
        "path that misses",
        "binding of another handle",
        "binding as a user",
        "an entry that is no binding",
    ],
)
def test_a_key_the_relay_did_not_log_is_refused_before_anything_is_encrypted(lie: str) -> None:
    """The attack: the relay serves its own key as the airline's. Whatever it shows
    with it, the send raises KeyNotLogged and nothing leaves for that key."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        real = relay.append(binding("airline", AIRLINE_SEED))
        relay.sign_head()
        fake = bundle("airline", FAKE_SEED, "business")
        if lie == "no proof":
            relay.bundles = [fake]
        elif lie == "proof of the real key":
            relay.bundles = [relay.proven(fake, real)]
        elif lie == "head signed by another key":
            forged = relay.append(binding("airline", FAKE_SEED))
            head = relay.sign_head(key=OTHER_RELAY_KEY)
            relay.bundles = [relay.proven(fake, forged, sth=head)]
        elif lie == "binding of another handle":  # logged, but the airline's owner
            # watching its handle in the log never sees it
            forged = relay.append(binding("airline2", FAKE_SEED))
            relay.bundles = [relay.proven(fake, forged, sth=relay.sign_head())]
        elif lie == "binding as a user":  # a user's key is not a business's (§15.6)
            forged = relay.append(binding("airline", FAKE_SEED, kind="user"))
            relay.bundles = [relay.proven(fake, forged, sth=relay.sign_head())]
        elif lie == "an entry that is no binding":
            relay.bundles = [relay.proven(fake, 0, sth=relay.sign_head())]
        else:  # a binding of the fake key that is not in the signed tree
            index = relay.append(binding("airline", FAKE_SEED))
            proven = relay.proven(fake, index)
            relay.entries.pop()
            relay.bundles = [replace(proven, log=replace(proven.log, sth=relay.sign_head()))]
        alice = await customer(relay, log_wait_s=0.3)
        with pytest.raises(KeyNotLogged) as raised:
            await within(alice.send("airline", "my card number"))
        assert raised.value.handle == "airline"
        assert relay.ends[0].received(frames.Send) == []
        assert alice.store.get_trusted_identity("airline") is None  # nothing pinned
        await alice.close()

    run(scenario())


def test_a_binding_signed_after_the_bundle_is_waited_for() -> None:
    """A business that registered within STH_INTERVAL: the first bundle has no proof;
    once a newer head is signed the SDK fetches the bundle again, now proven."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        relay.sign_head()
        index = relay.append(binding("airline", AIRLINE_SEED))
        unproven = bundle("airline", AIRLINE_SEED, "business")
        relay.bundles = [unproven]
        alice = await customer(relay)
        sending = asyncio.ensure_future(alice.send("airline", "hello"))
        await relay.ends[0].wait_for(frames.LogHeadFetch)
        relay.sign_head()
        relay.bundles = [unproven, relay.proven(unproven, index)]
        await within(sending)
        assert relay.fetches == 2
        await alice.close()

    run(scenario())


def test_a_head_signed_between_the_bundle_and_the_first_look_is_not_waited_past() -> None:
    """The bundle came without proof just before the relay signed the head that covers
    the binding, and nothing is logged after: no larger head will ever come. The SDK
    fetches the bundle once more after its first look at the head (a CI run that waited
    25 s for a larger head, then refused the business's key, found this race)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        index = relay.append(binding("airline", AIRLINE_SEED))
        relay.sign_head()  # covers the binding; the log grows no more
        unproven = bundle("airline", AIRLINE_SEED, "business")
        relay.bundles = [unproven, relay.proven(unproven, index)]
        alice = await customer(relay, log_wait_s=2.0)
        await within(alice.send("airline", "hello"))
        assert relay.fetches == 2
        await alice.close()

    run(scenario())


def test_two_heads_no_proof_joins_are_a_fork_with_both_heads_as_evidence() -> None:
    """A head kept from before, then a bundle proven in a head of another history (the
    relay rewrote an entry): LogForked, carrying both signed heads."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(4))
        index = relay.append(binding("airline", AIRLINE_SEED))
        first = relay.sign_head()
        alice = await customer(relay)
        alice.store.set_tree_head(first)
        relay.entries[1] = StatementLogged(v=1, commitment=os.urandom(32), at=T0).to_bytes()
        relay.append(*filler(2))
        second = relay.sign_head()
        relay.bundles = [relay.proven(bundle("airline", AIRLINE_SEED, "business"), index)]
        with pytest.raises(LogForked) as raised:
            await within(alice.send("airline", "hello"))
        assert {raised.value.first, raised.value.second} == {first, second}
        assert alice.store.tree_head() == first  # the kept head is not replaced
        await alice.close()

    run(scenario())


# --- against a real relay: two people shown two histories -------------------------------


def relay_signer(db_path) -> Callable[[bytes], bytes]:
    """The relay's own signing key, read from its database: what a relay that forks
    its log signs with (the test plays the relay showing Bob another history)."""
    with sqlite3.connect(db_path) as db:
        (seed,) = db.execute("SELECT seed FROM relay_identity").fetchone()
    db.close()
    return lambda message: SigningKey(bytes(seed)).sign(message).signature


@pytest.mark.parametrize("bob_shown", ["another root at the same size", "an older forged head"])
def test_a_relay_showing_two_users_two_histories_is_caught_by_one_message(
    tmp_path: Path, bob_shown: str
) -> None:
    """SPEC §15.6 rule 5: Alice verified the relay's honest head (her first message to
    the airline); the relay showed Bob a head of a history of its own, signed with its
    key. Alice's next message to Bob carries her head inside the encryption: Bob's
    client checks it against his, the relay cannot join them, and the alarm goes off —
    with both signed heads as evidence — before Bob sends anything more."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alarms: list[LogForked] = []
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob", on_log_forked=alarms.append)
            await online(relay.url, "airline", "business")
            if bob_shown == "an older forged head":
                await online(relay.url, "shop", "business")
            await within(alice.send("airline", "hello"))  # Alice keeps the honest head
            honest = alice.store.tree_head()
            assert honest is not None
            size = 1
            forged_root = merkle.root_of([merkle.leaf_hash(binding("evil", FAKE_SEED))])
            forged = sign_tree_head(relay_signer(tmp_path / "relay.db"), size, forged_root, T0)
            bob.store.set_tree_head(forged)  # what the relay showed Bob earlier
            await within(alice.send("bob", "hi Bob"))
            bob_inbox = Inbox(bob)
            assert (await bob_inbox.next()).body == "hi Bob"  # the message itself is shown
            await within(bob.log_check.settled())
            assert len(alarms) == 1 and {alarms[0].first, alarms[0].second} == {forged, honest}
            with pytest.raises(LogForked):
                await within(bob.send("alice", "answer"))
            assert bob.store.tree_head() == forged  # the evidence is kept, not overwritten
            await bob_inbox.close()
            for client in (alice, bob):
                await client.close()

    run(scenario())


def test_contacts_on_one_history_raise_nothing_and_keep_the_newer_head(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alarms: list[LogForked] = []
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob", on_log_forked=alarms.append)
            await online(relay.url, "airline", "business")
            await within(bob.send("airline", "hello"))
            older = bob.store.tree_head()
            await online(relay.url, "shop", "business")
            await within(alice.send("shop", "hello"))  # a newer head, same history
            await within(alice.send("bob", "hi Bob"))
            bob_inbox = Inbox(bob)
            await bob_inbox.next()
            await within(bob.log_check.settled())
            assert alarms == [] and bob.store.tree_head() == alice.store.tree_head() != older
            await within(bob.send("alice", "fine"))
            await bob_inbox.close()
            for client in (alice, bob):
                await client.close()

    run(scenario())


def test_a_head_rides_along_once_per_contact_and_again_when_it_changes() -> None:
    """~150 bytes of padding each: the first message to a contact carries our head, and
    the next one after it changed; not every message (SPEC §15.6 rule 5)."""

    async def never(_make: object) -> frames.Frame:
        raise AssertionError("gossip reads nothing from the relay")

    store = MemoryKeyStore()
    check = LogCheck(store, LogReader(never, lambda: None), lambda: None)
    assert check.gossip("bob") is None  # no head kept yet
    store.set_tree_head(b"head one")
    assert [check.gossip("bob"), check.gossip("bob"), check.gossip("carol")] == [
        b"head one", None, b"head one",
    ]  # fmt: skip
    store.set_tree_head(b"head two")
    assert [check.gossip("bob"), check.gossip("bob")] == [b"head two", None]


def _heads_of_two_histories() -> tuple[SigningKey, bytes, bytes]:
    """Two heads one relay signed: 4 entries, then 6 entries of another history."""
    key = SigningKey(b"\x33" * 32)
    sign = lambda message: key.sign(message).signature  # noqa: E731
    ours = [merkle.leaf_hash(e) for e in filler(4)]
    theirs = [merkle.leaf_hash(e) for e in filler(6)]
    theirs[1] = merkle.leaf_hash(b"rewritten")
    kept = sign_tree_head(sign, 4, merkle.root_of(ours), T0)
    heard = sign_tree_head(sign, 6, merkle.root_of(theirs), T0 + 1)
    return key, kept, heard


def test_a_relay_that_refuses_the_proof_between_its_own_heads_is_a_fork() -> None:
    """The attack (found in review): a contact's head of another history, checked against
    ours, needs a consistency proof from the relay; the relay answered NOT_FOUND, the
    check was dropped as "could not check" and no alarm went off. An honest relay answers
    601 only for a size past its newest signed head (SPEC §15.6 rule 1): for two heads
    it signed, it has no proof joining them, which is the fork."""

    async def scenario() -> None:
        key, kept, heard = _heads_of_two_histories()

        async def refuse(make: Callable[[int], frames.Frame]) -> frames.Frame:
            assert isinstance(make(1), frames.LogConsistencyFetch)
            raise NotFound()

        store = MemoryKeyStore()
        store.set_tree_head(kept)
        relay_key = key.verify_key.encode()
        check = LogCheck(store, LogReader(refuse, lambda: relay_key), lambda: relay_key)
        check.heard(heard, "bob")
        await check.settled()
        assert check.forked is not None
        assert {check.forked.first, check.forked.second} == {kept, heard}
        assert store.tree_head() == kept

    run(scenario())


def test_a_larger_head_signed_earlier_is_a_fork() -> None:
    """SPEC §15.3 rules 2-3: a head extends another only if its timestamp is not earlier;
    a relay signs none that goes back in time. The SDK kept a larger head dated before
    the one it held without a word."""

    async def scenario() -> None:
        key = SigningKey(b"\x33" * 32)
        entries = filler(6)
        leaves = [merkle.leaf_hash(e) for e in entries]
        sign = lambda message: key.sign(message).signature  # noqa: E731
        kept = sign_tree_head(sign, 4, merkle.root_of(leaves[:4]), T0 + 10)
        heard = sign_tree_head(sign, 6, merkle.root_of(leaves), T0)  # the same history

        async def prove(make: Callable[[int], frames.Frame]) -> frames.Frame:
            frame = make(1)
            assert isinstance(frame, frames.LogConsistencyFetch)
            proof = merkle.consistency_proof(frame.first, frame.second, _nodes(entries))
            return frames.LogConsistency(re=1, proof=tuple(proof))

        store = MemoryKeyStore()
        store.set_tree_head(kept)
        relay_key = key.verify_key.encode()
        check = LogCheck(store, LogReader(prove, lambda: relay_key), lambda: relay_key)
        check.heard(heard, "bob")
        await check.settled()
        assert check.forked is not None and store.tree_head() == kept

    run(scenario())


def _nodes(entries: list[bytes]) -> merkle.NodeHashes:
    frontier, nodes = merkle.Frontier(), {}
    for entry in entries:
        nodes.update(frontier.append(merkle.leaf_hash(entry)))
    return lambda wanted: {node: nodes[node] for node in wanted}


def test_two_heads_checked_at_once_are_checked_against_each_other() -> None:
    """The attack (found in review): each observation read the kept head, awaited the
    relay's proof, then kept its own head if larger than what it had read. Two heads of
    two histories that share the kept one's entries, checked at once (a bundle and a
    contact's head), were each proven against the kept head and never against each
    other; the relay answered the larger's proof first, and the smaller was then kept
    over it (a rollback), the fork unseen. Now one observation at a time, each against
    the newest kept."""

    async def scenario() -> None:
        key = SigningKey(b"\x33" * 32)
        sign = lambda message: key.sign(message).signature  # noqa: E731
        common = filler(4)
        ours = [*common, *filler(6)[4:]]
        theirs = [*common, *(StatementLogged(v=1, commitment=bytes([9, i]) * 16, at=T0)
                             .to_bytes() for i in range(4))]  # fmt: skip
        kept = sign_tree_head(sign, 4, merkle.root_of([merkle.leaf_hash(e) for e in common]), T0)
        larger = sign_tree_head(
            sign, 6, merkle.root_of([merkle.leaf_hash(e) for e in ours]), T0 + 1
        )
        smaller_fork = sign_tree_head(
            sign, 5, merkle.root_of([merkle.leaf_hash(e) for e in theirs[:5]]), T0 + 1
        )
        larger_done = asyncio.Event()

        async def relay(make: Callable[[int], frames.Frame]) -> frames.Frame:
            frame = make(1)
            assert isinstance(frame, frames.LogConsistencyFetch)
            if (frame.first, frame.second) == (4, 6):
                proof = merkle.consistency_proof(4, 6, _nodes(ours))
            elif (frame.first, frame.second) == (4, 5):
                with contextlib.suppress(TimeoutError):  # answered second, if it can be
                    await asyncio.wait_for(larger_done.wait(), 0.2)
                proof = merkle.consistency_proof(4, 5, _nodes(theirs[:5]))
            else:  # no proof joins the two histories
                raise NotFound()
            return frames.LogConsistency(re=1, proof=tuple(proof))

        store = MemoryKeyStore()
        store.set_tree_head(kept)
        relay_key = key.verify_key.encode()
        check = LogCheck(store, LogReader(relay, lambda: relay_key), lambda: relay_key)
        check.heard(smaller_fork, "bob")
        await asyncio.sleep(0)
        with contextlib.suppress(LogForked):
            await check.observe(open_tree_head(larger, relay_key), larger)
        larger_done.set()
        await check.settled()
        assert check.forked is not None
        assert {check.forked.first, check.forked.second} == {smaller_fork, larger}

    run(scenario())


def test_a_relay_key_the_person_accepted_starts_a_new_log(tmp_path: Path) -> None:
    """The profile kept a head signed by the relay's old key; once the person accepted the
    new key (``accept_relay_key``), every head was held against that old head, which does
    not verify with the new key: InvalidTreeHead from every first message to a business
    and every badge check, for good (found in review). Heads of another key are no
    history of this one: accepting a key drops the kept head."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            await online(relay.url, "airline", "business")
            alice_store = MemoryKeyStore()
            alice = await online(relay.url, "alice", store=alice_store)
            await within(alice.send("airline", "hello"))
            assert alice.store.tree_head() is not None  # signed by the old key
            await alice.close()
        replace_relay_key(tmp_path / "relay.db")
        clock = FakeClock(time.time_ns() // 1_000_000)
        async with relay_at(tmp_path, clock=clock) as relay:
            await online(relay.url, "shop", "business")
            await relay.housekeeping.publish_tree_head()  # the new key's first head
            alice = make_client(alice_store)
            alice.accept_relay_key(relay.relay_key)
            await within(alice.connect(relay.url))
            await within(alice.login())
            clock.advance(60_000)  # a restart empties the account's buckets (SPEC §10)
            await within(alice.send("shop", "hello"))
            head = alice.store.tree_head()
            assert head is not None and open_tree_head(head, relay.relay_key).size == 2
            await alice.close()

    run(scenario())


def test_a_log_that_grows_at_every_look_without_proving_the_key_is_not_waited_on_for_ever() -> None:
    """T55: a bundle without its proof is fetched again each time the log has grown, and
    only a look that found no growth checked the deadline. A relay that signs a larger
    head at every LOG_HEAD_FETCH (its own log: one filler entry each) and never proves
    the airline's key kept the send asking, round trip after round trip, for ever
    (reproduced: thousands of fetches, no KeyNotLogged). The deadline holds whatever the
    log does."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.append(*filler(2))
        relay.sign_head()
        relay.bundles = [bundle("airline", FAKE_SEED, "business")]
        honest_answer = relay.answer

        def growing(end: RelayEnd, frame: frames.Frame) -> None:
            if isinstance(frame, frames.LogHeadFetch):
                relay.append(*filler(1))
                relay.sign_head()
            honest_answer(end, frame)

        relay.answer = growing
        alice = await customer(relay, log_wait_s=0.3)
        with pytest.raises(KeyNotLogged):
            await within(alice.send("airline", "my card number"), 5)
        assert relay.ends[0].received(frames.Send) == []
        await alice.close()

    run(scenario())
