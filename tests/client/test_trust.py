"""Whose keys we trust (client/trust.py): contacts' identity keys pinned on first use,
a change pending until the user approves it, safety numbers, the relay's key
(SPEC §3.3, §4.1, §13.8–13.9).

Unit tests on a key store alone; the same rules through the SDK against a real relay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blindrelay.client.keystore import IdentityStatus, MemoryKeyStore
from blindrelay.client.trust import IdentityState, IdentityTrust, RelayKeyChanged, RelayKeyPin
from blindrelay.protocol.crypto.fingerprint import safety_number
from blindrelay.protocol.errors import (
    IdentityKeyReused,
    UntrustedIdentity,
)

from ..relays import FakeClock, relay_at
from .harness import (
    Inbox,
    online,
    run,
    within,
)
from .keystore.samples import our_identity

KEY_1 = b"\x61" * 32
KEY_2 = b"\x62" * 32


def trust_in(store: MemoryKeyStore) -> IdentityTrust:
    return IdentityTrust(store, clock=FakeClock())


def test_the_first_key_is_pinned_and_then_recognised() -> None:
    trust = trust_in(MemoryKeyStore())
    assert trust.state("bob") is None and trust.pinned_key("bob") is None
    assert trust.pin("bob", KEY_1) is IdentityStatus.NEW
    assert trust.pin("bob", KEY_1) is IdentityStatus.TRUSTED
    assert trust.pinned_key("bob") == KEY_1 and trust.state("bob") is IdentityState.TRUSTED


def test_another_key_is_a_pending_change_that_refuses_the_contact_until_approved() -> None:
    trust = trust_in(MemoryKeyStore())
    trust.pin("bob", KEY_1)
    with pytest.raises(UntrustedIdentity):
        trust.check("bob", KEY_2)
    assert trust.pending_change("bob") == KEY_2 and trust.pinned_key("bob") == KEY_1
    with pytest.raises(UntrustedIdentity):
        trust.refuse_pending("bob")
    with pytest.raises(UntrustedIdentity):  # even the old key, while the user decides
        trust.check("bob", KEY_1)
    trust.refuse_pending("carol")  # others are not concerned


def test_approving_a_change_pins_the_new_key_and_drops_the_old_session() -> None:
    store = MemoryKeyStore()
    trust = trust_in(store)
    trust.pin("bob", KEY_1)
    store.store_session("bob", b"session under the old key")
    with pytest.raises(UntrustedIdentity):
        trust.check("bob", KEY_2)
    trust.approve("bob")
    assert trust.pinned_key("bob") == KEY_2 and trust.pending_change("bob") is None
    assert store.load_session("bob") is None
    assert trust.pin("bob", KEY_2) is IdentityStatus.TRUSTED


def test_approving_the_pinned_key_marks_it_verified_and_keeps_the_session() -> None:
    store = MemoryKeyStore()
    trust = trust_in(store)
    trust.pin("bob", KEY_1)
    store.store_session("bob", b"session")
    trust.approve("bob", verified=True)
    assert trust.state("bob") is IdentityState.VERIFIED
    assert store.load_session("bob") == b"session"
    with pytest.raises(KeyError):
        trust.approve("stranger")


def test_a_key_pinned_for_one_handle_is_refused_for_another() -> None:
    trust = trust_in(MemoryKeyStore())
    trust.pin("bob", KEY_1)
    with pytest.raises(IdentityKeyReused):  # by the check, before the key is used at all
        trust.check("mallory", KEY_1)
    with pytest.raises(IdentityKeyReused):
        trust.pin("mallory", KEY_1)
    assert trust.pinned_key("mallory") is None and trust.pending_change("mallory") is None


def test_the_safety_number_is_of_the_pending_key_while_a_change_waits() -> None:
    store = MemoryKeyStore()
    trust = trust_in(store)
    trust.pin("bob", KEY_1)
    with pytest.raises(RuntimeError, match="no identity"):
        trust.safety_number("bob")
    ours = our_identity()
    store.set_identity(ours)
    with pytest.raises(KeyError):
        trust.safety_number("stranger")
    pinned = trust.safety_number("bob")
    assert pinned == safety_number("alice", ours.identity_public, "bob", KEY_1)
    with pytest.raises(UntrustedIdentity):
        trust.check("bob", KEY_2)
    assert trust.safety_number("bob") == safety_number("alice", ours.identity_public, "bob", KEY_2)
    assert trust.safety_number("bob") != pinned


def test_the_relay_key_is_pinned_once_and_replaced_only_when_accepted() -> None:
    pin = RelayKeyPin(MemoryKeyStore())
    pin.check(KEY_1)  # nothing pinned yet: any key
    pin.pin_first(KEY_1)
    pin.pin_first(KEY_2)  # the first one stays
    assert pin.key == KEY_1
    pin.check(KEY_1)
    with pytest.raises(RelayKeyChanged) as changed:
        pin.check(KEY_2)
    assert (changed.value.pinned, changed.value.presented) == (KEY_1, KEY_2)
    with pytest.raises(ValueError):
        pin.accept(b"short")
    pin.accept(KEY_2)
    assert pin.key == KEY_2
    pin.check(KEY_2)


def test_a_relay_key_refused_as_malformed_changes_nothing() -> None:
    """``accept`` drops the kept tree head only for a key it pins: a malformed key is
    refused before anything changes (the head signed by the pinned key stays)."""
    store = MemoryKeyStore()
    pin = RelayKeyPin(store)
    pin.pin_first(KEY_1)
    store.set_tree_head(b"a head the pinned key signed")
    for malformed in (b"short", KEY_2 + b"\x00", KEY_2.hex()):
        with pytest.raises(ValueError, match="a relay key is 32 bytes"):
            pin.accept(malformed)  # type: ignore[arg-type]
    assert store.tree_head() == b"a head the pinned key signed"
    assert pin.key == KEY_1


# --- Through the SDK, against a real relay ------------------------------------------------


def test_an_identity_key_change_is_surfaced_before_the_next_send(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            changed: asyncio.Queue[str] = asyncio.Queue()
            alice = await online(relay.url, "alice", on_identity_change=changed.put_nowait)
            bob = await online(relay.url, "bob")
            alice_inbox, bob_inbox = Inbox(alice), Inbox(bob)
            await within(alice.send("bob", "hi"))
            assert (await bob_inbox.next()).body == "hi"
            await within(bob.send("alice", "hi alice"))
            assert (await alice_inbox.next()).body == "hi alice"
            number_before = alice.safety_number("bob")

            await within(bob.rotate_identity())
            await within(bob.send("alice", "new key, who dis"))

            assert await within(changed.get()) == "bob"
            assert alice.identity_change_pending("bob")
            with pytest.raises(UntrustedIdentity):
                await within(alice.send("bob", "must not leave"))
            assert alice.safety_number("bob") != number_before

            alice.approve_identity("bob")
            got = await alice_inbox.next()
            assert (got.body, got.identity) == ("new key, who dis", IdentityState.TRUSTED)
            await within(alice.send("bob", "ok, approved"))
            assert (await bob_inbox.next()).body == "ok, approved"
            assert alice.safety_number("bob") == bob.safety_number("alice")
            for closing in (alice_inbox, bob_inbox, alice, bob):
                await closing.close()

    run(scenario())
