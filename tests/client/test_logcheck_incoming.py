"""A published account's key that arrives in a message, not a bundle, is checked against
the relay's log before anything is encrypted to it (SPEC §15.6 rule 5, client/logcheck.py).

The attack (found in review): the relay holds our published prekeys, so it can write a
valid first message "from" business ``airline`` under an identity key of its own. The
SDK pinned that key on first use and the reply went out on that session, encrypted to
the relay's key, with no BUNDLE_FETCH and so no log proof ever asked for. The same after
a key change that arrived in a prekey message: approving it built the session from the
held message. Now the first send to a published handle whose pinned key was never proven
logged fetches the bundle's proof for that key first; the message itself is shown as
``unlogged``.

Over the in-memory relay of :mod:`.log_relay`; the test writes the DELIVERs the relay
(or an honest airline) would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore, SqliteKeyStore
from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import KeyNotLogged, UntrustedIdentity

from .harness import LOW_COST, Inbox, bundle, run, within
from .log_relay import (
    AIRLINE_SEED,
    FAKE_SEED,
    LoggingRelay,
    Writer,
    binding,
    customer,
    filler,
)

ROTATED_SEED = b"\x52" * 32


def airline_logged(relay: LoggingRelay) -> frames.Bundle:
    """The airline's real key in the log under a signed head; its proven bundle."""
    relay.append(*filler(2))
    index = relay.append(binding("airline", AIRLINE_SEED))
    relay.sign_head()
    return relay.proven(bundle("airline", AIRLINE_SEED, "business"), index)


def sends(relay: LoggingRelay) -> list[frames.Send]:
    return relay.ends[-1].received(frames.Send)


def fetches(relay: LoggingRelay) -> int:
    return len(relay.ends[-1].received(frames.BundleFetch))


@pytest.mark.parametrize("served", ["forged key", "forged key labelled user", "logged key"])
def test_a_forged_first_message_from_a_business_is_not_answered_to_an_unlogged_key(
    served: str,
) -> None:
    """The relay's first message as the airline is shown, marked ``unlogged``; the reply
    asks the log for the key it would be encrypted to and raises KeyNotLogged, whatever
    the relay then serves: nothing leaves for the forged key. Where the log shows the
    airline's real key, that key is the change the user is asked about; approved, the
    reply goes to the real airline."""

    async def scenario() -> None:
        relay = LoggingRelay()
        real = airline_logged(relay)
        relay.bundles = {
            "forged key": [bundle("airline", FAKE_SEED, "business")],
            "forged key labelled user": [bundle("airline", FAKE_SEED, "user")],
            "logged key": [real],
        }[served]
        changes: list[str] = []
        alice = await customer(relay, log_wait_s=0.3, on_identity_change=changes.append)
        Writer(relay, alice, "airline", FAKE_SEED).deliver("Flight cancelled: reply with card")
        inbox = Inbox(alice)
        shown = await inbox.next()
        with pytest.raises(KeyNotLogged) as raised:
            await within(alice.send("airline", "4111 1111 1111 1111"))
        assert raised.value.handle == "airline"
        assert sends(relay) == [] and fetches(relay) >= 1
        assert (shown.sender, shown.identity) == ("airline", "unlogged")
        # And again: never the forged key. Where the log showed the real one, that key is
        # now the pending change, refused like any until the user approves it.
        again = UntrustedIdentity if served == "logged key" else KeyNotLogged
        with pytest.raises(again):
            await within(alice.send("airline", "4111 1111 1111 1111"))
        assert sends(relay) == []
        if served == "logged key":
            assert alice.identity_change_pending("airline") and changes == ["airline"]
            alice.approve_identity("airline")
            await within(alice.send("airline", "hello"))
            real_key = IdentityKeyPair.from_seed(AIRLINE_SEED).public
            assert alice.trust.pinned_key("airline") == real_key
            assert len(sends(relay)) == 1
        await inbox.close()
        await alice.close()

    run(scenario())


def test_a_business_that_writes_first_under_its_logged_key_is_checked_once() -> None:
    """The honest case: the airline writes first. Its message is ``unlogged`` (nothing
    proved its key yet); the first reply fetches the bundle's proof for the pinned key
    and goes on the session the airline started; later ones ask nothing more."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [airline_logged(relay)]
        alice = await customer(relay, log_wait_s=0.3)
        airline = Writer(relay, alice, "airline", AIRLINE_SEED)
        airline.deliver("Your boarding pass")
        inbox = Inbox(alice)
        shown = await inbox.next()
        await within(alice.send("airline", "thanks"))
        assert fetches(relay) == 1
        assert shown.identity == "unlogged"
        await within(alice.send("airline", "and one more"))
        assert fetches(relay) == 1
        assert [airline.read(send) for send in sends(relay)] == ["thanks", "and one more"]
        airline.deliver("You are welcome")
        assert (await inbox.next()).identity == "trusted"
        await inbox.close()
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("change", ["forged", "forged, labelled user", "rotated and logged"])
def test_a_key_change_in_a_prekey_message_is_checked_before_the_reply(change: str) -> None:
    """Alice wrote to the airline (its bundle proven). A prekey message then brings
    another key, which the user approves: the held message is shown ``unlogged`` and
    the reply waits for the log. A key the relay made up is refused — even when the
    relay now calls the airline a user, as the handle was seen published; a real
    rotation, logged, is proven and answered on the airline's new session."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [airline_logged(relay)]
        alice = await customer(relay, log_wait_s=0.3)
        await within(alice.send("airline", "hello"))
        seed, kind = FAKE_SEED, "business"
        if change == "rotated and logged":
            seed = ROTATED_SEED
            index = relay.append(binding("airline", ROTATED_SEED))
            relay.sign_head()
            relay.bundles = [relay.proven(bundle("airline", ROTATED_SEED, "business"), index)]
        else:
            kind = "user" if "user" in change else "business"
            relay.bundles = [bundle("airline", FAKE_SEED, kind)]
        writer = Writer(relay, alice, "airline", seed)
        writer.deliver("We changed phones", sender_kind=kind)
        inbox = Inbox(alice)
        await within(relay.ends[-1].wait_for(frames.Ack))
        assert alice.identity_change_pending("airline")
        alice.approve_identity("airline")
        shown = await inbox.next()
        if change == "rotated and logged":
            await within(alice.send("airline", "noted"))
            assert writer.read(sends(relay)[-1]) == "noted"
            assert fetches(relay) == 2
        else:
            with pytest.raises(KeyNotLogged):
                await within(alice.send("airline", "my card number"))
            assert len(sends(relay)) == 1  # the first "hello" only
        assert shown.identity == "unlogged"
        await inbox.close()
        await alice.close()

    run(scenario())


def test_a_handle_seen_published_stays_published_whatever_the_relay_says_later() -> None:
    """The relay said business once, with no proof: refused. Serving the same key as a
    user's, without a log proof, does not pass now (it did: the lie skipped the check)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        airline_logged(relay)
        relay.bundles = [bundle("airline", FAKE_SEED, "business")]
        alice = await customer(relay, log_wait_s=0.3)
        with pytest.raises(KeyNotLogged):
            await within(alice.send("airline", "my card number"))
        relay.bundles = [bundle("airline", FAKE_SEED, "user")]
        with pytest.raises(KeyNotLogged):
            await within(alice.send("airline", "my card number"))
        assert sends(relay) == []
        assert alice.store.get_trusted_identity("airline") is None
        await alice.close()

    run(scenario())


def test_send_many_to_a_business_whose_key_is_unlogged_asks_the_log_first() -> None:
    async def scenario() -> None:
        relay = LoggingRelay()
        airline_logged(relay)
        relay.bundles = [bundle("airline", FAKE_SEED, "business")]
        alice = await customer(relay, log_wait_s=0.3)
        Writer(relay, alice, "airline", FAKE_SEED).deliver("Flight cancelled")
        inbox = Inbox(alice)
        await inbox.next()
        ((handle, outcome),) = await within(alice.send_many(["airline"], "card"))
        assert handle == "airline" and isinstance(outcome, KeyNotLogged)
        assert sends(relay) == []
        await inbox.close()
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_published_mark_and_the_logged_key_are_kept(kind: str, tmp_path: Path) -> None:
    """What the check rests on, in the profile: a handle once seen published stays so;
    the key last proven logged is kept beside it (a new key needs a new proof)."""
    path = tmp_path / "profile.keys"

    def opened() -> MemoryKeyStore | SqliteKeyStore:
        if kind == "memory":
            return memory
        return SqliteKeyStore.open(path, "pass", create=True, **LOW_COST)

    memory = MemoryKeyStore()
    key_a, key_b = bytes(32), bytes([1]) * 32
    store = opened()
    assert (store.is_published("airline"), store.logged_key("airline")) == (False, None)
    store.mark_published("airline")
    assert (store.is_published("airline"), store.logged_key("airline")) == (True, None)
    store.mark_logged("airline", key_a)
    store.mark_published("airline")  # marking again keeps the proven key
    store.mark_logged("bob", key_b)  # a proven key marks its handle published too
    store.close()
    store = opened()
    assert (store.is_published("airline"), store.logged_key("airline")) == (True, key_a)
    assert (store.is_published("bob"), store.logged_key("bob")) == (True, key_b)
    assert (store.is_published("carol"), store.logged_key("carol")) == (False, None)
    store.close()


def test_send_many_proves_the_key_a_business_wrote_first_under_and_sends() -> None:
    """A bulk send leaves a key no log proof covered yet to the path of a single send,
    which fetches the bundle's proof: proven, the recipient gets its message on the
    session the airline started — not a KeyNotLogged outcome without asking the log."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [airline_logged(relay)]
        alice = await customer(relay, log_wait_s=0.3)
        airline = Writer(relay, alice, "airline", AIRLINE_SEED)
        airline.deliver("Your boarding pass")
        inbox = Inbox(alice)
        await inbox.next()
        ((handle, outcome),) = await within(alice.send_many(["airline"], "thanks"))
        assert handle == "airline" and isinstance(outcome, bytes)
        assert fetches(relay) == 1
        assert [airline.read(send) for send in sends(relay)] == ["thanks"]
        await inbox.close()
        await alice.close()

    run(scenario())
