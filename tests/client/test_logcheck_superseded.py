"""A key binding the log holds a newer one of is no proof of a business's key (SPEC §15.6
rule 3, T60).

The attack (found in review, 2026-12-06): the airline rotates its identity key — because
the old one leaked, say — and its customers prove the new key in the log. Whoever holds
the old key then writes as the airline under it (a prekey message, which the relay lets
through: it holds the customers' published prekeys), and the relay answers the bundle
fetch that checks that key with the old key's binding: a real entry, in the log under
the relay's newest head, binding that very handle, kind and key. Every check of rule 3
passed, so the key change the customer approved — it reads like any other — was
"proven", and the reply went out encrypted to the leaked key. The SDK now keeps where
the log holds the newest binding it proved for each handle, and a binding at an earlier
index is refused (KeyNotLogged): an honest relay serves only the newest.

Over the in-memory relay of :mod:`.log_relay`; the test writes the DELIVERs the relay,
the airline and the holder of its old key would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore, SqliteKeyStore
from blindrelay.client.sdk import Client
from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import KeyNotLogged, UntrustedIdentity
from blindrelay.protocol.transparency.entries import KeyBinding

from ..relays import T0
from .harness import LOW_COST, Inbox, bundle, run, within
from .log_relay import AIRLINE_SEED, LoggingRelay, Writer, binding, customer, filler

ROTATED_SEED = b"\x52" * 32


def rotation(handle: str, old_seed: bytes, new_seed: bytes, at: int) -> bytes:
    """The key binding of ``handle``'s rotation from ``old_seed``'s key to ``new_seed``'s."""
    return KeyBinding(
        v=1, handle=handle, kind="business", at=at,
        identity_key=IdentityKeyPair.from_seed(new_seed).public,
        previous_key=IdentityKeyPair.from_seed(old_seed).public,
    ).to_bytes()  # fmt: skip


def sends(relay: LoggingRelay) -> list[frames.Send]:
    return relay.ends[-1].received(frames.Send)


async def rotated(relay: LoggingRelay, alice: Client, inbox: Inbox) -> frames.Bundle:
    """Alice wrote to the airline under its first key; the airline rotated, logged, wrote
    under the new key, and alice approved and proved it. The first key's bundle, proven
    by its binding under the relay's newest head: what the relay serves next."""
    relay.append(*filler(2))
    first = relay.append(binding("airline", AIRLINE_SEED))
    relay.sign_head()
    relay.bundles = [relay.proven(bundle("airline", AIRLINE_SEED, "business"), first)]
    await within(alice.send("airline", "hello"))
    second = relay.append(*filler(1), rotation("airline", AIRLINE_SEED, ROTATED_SEED, T0 + 1))
    relay.sign_head()
    relay.bundles = [relay.proven(bundle("airline", ROTATED_SEED, "business"), second)]
    airline = Writer(relay, alice, "airline", ROTATED_SEED)
    airline.deliver("We changed phones")
    await within(relay.ends[-1].wait_for(frames.Ack))
    alice.approve_identity("airline")
    await inbox.next()
    await within(alice.send("airline", "noted"))
    assert airline.read(sends(relay)[-1]) == "noted"
    assert alice.store.logged_key("airline") == IdentityKeyPair.from_seed(ROTATED_SEED).public
    relay.append(*filler(1))
    relay.sign_head()  # the old binding proven under a newer head than any alice saw
    return relay.proven(bundle("airline", AIRLINE_SEED, "business"), first)


def test_the_key_a_business_rotated_away_from_is_not_proven_by_its_old_binding() -> None:
    """The holder of the airline's old key writes under it; alice approves the change (it
    reads as any other). The relay proves the old key with its old binding: refused, and
    nothing is encrypted to the old key (before: the reply went out to it)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay, log_wait_s=0.3)
        inbox = Inbox(alice)
        old = await rotated(relay, alice, inbox)
        relay.bundles = [old]
        Writer(relay, alice, "airline", AIRLINE_SEED).deliver("We are back on our old phone")
        await within(relay.ends[-1].wait_for(frames.Ack, count=2))
        assert alice.identity_change_pending("airline")
        alice.approve_identity("airline")
        shown = await inbox.next()
        assert shown.identity == "unlogged"
        before = len(sends(relay))
        with pytest.raises(KeyNotLogged, match="newer key binding"):
            await within(alice.send("airline", "my card number"))
        assert len(sends(relay)) == before
        await inbox.close()
        await alice.close()

    run(scenario())


def test_a_bundle_of_the_key_a_business_rotated_away_from_is_refused_before_trust() -> None:
    """With no session (a new conversation), the relay serves the old key's bundle with
    its old binding: refused before the key is even taken as a change to ask the user
    about (before: recorded as the pending change, and once approved, used)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay, log_wait_s=0.3)
        inbox = Inbox(alice)
        old = await rotated(relay, alice, inbox)
        alice.store.delete_session("airline")
        relay.bundles = [old]
        before = len(sends(relay))
        with pytest.raises(KeyNotLogged, match="newer key binding"):
            await within(alice.send("airline", "my card number"))
        assert not alice.identity_change_pending("airline")
        assert len(sends(relay)) == before
        await inbox.close()
        await alice.close()

    run(scenario())


def test_a_rotation_logged_later_is_proven_and_used() -> None:
    """The honest case past the check: a binding at a later index than the one proven
    before is a rotation, taken as one (and so is the same binding again)."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay, log_wait_s=0.3)
        inbox = Inbox(alice)
        await rotated(relay, alice, inbox)
        third = relay.append(rotation("airline", ROTATED_SEED, AIRLINE_SEED, T0 + 2))
        relay.sign_head()
        relay.bundles = [relay.proven(bundle("airline", AIRLINE_SEED, "business"), third)]
        alice.store.delete_session("airline")
        with pytest.raises(UntrustedIdentity):  # a key change the user is asked about
            await within(alice.send("airline", "back to the first key"))
        alice.approve_identity("airline")
        await within(alice.send("airline", "back to the first key"))
        assert alice.store.logged_key("airline") == IdentityKeyPair.from_seed(AIRLINE_SEED).public
        await inbox.close()
        await alice.close()

    run(scenario())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_index_of_the_binding_proven_is_kept_under_its_relay_key(
    kind: str, tmp_path: Path
) -> None:
    """Kept in the profile, across restarts; read only for the relay key whose log it is
    in (another key's log numbers its entries afresh, SPEC §15.6 rule 5)."""
    path = tmp_path / "profile.keys"
    memory = MemoryKeyStore()

    def opened() -> MemoryKeyStore | SqliteKeyStore:
        if kind == "memory":
            return memory
        return SqliteKeyStore.open(path, "pass", create=True, **LOW_COST)

    key, relay, other_relay = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
    store = opened()
    store.mark_logged("airline", key)  # as an older SDK did: no index
    assert store.logged_index("airline", relay) is None
    store.mark_logged("airline", key, index=7, relay_key=relay)
    store.mark_published("airline")  # marking again keeps it
    store.close()
    store = opened()
    assert store.logged_key("airline") == key
    assert store.logged_index("airline", relay) == 7
    assert store.logged_index("airline", other_relay) is None
    assert store.logged_index("bob", relay) is None
    store.close()
