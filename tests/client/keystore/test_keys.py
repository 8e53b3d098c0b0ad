"""Our identity, prekeys, sessions and the contacts' keys we trust (client/keystore/keys.py).

Each test runs against both stores (the ``store`` fixture of tests/client/conftest.py):
the record kinds are written once over the storage primitives, so both must decide alike.
"""

from __future__ import annotations

import pytest

from blindrelay.client.keystore import (
    MAX_PREKEY_ID,
    IdentityStatus,
    KeyStore,
    SkippedKeyHolder,
)
from blindrelay.protocol.errors import IdentityKeyReused, UntrustedIdentity

from .samples import (
    KEY_A,
    KEY_B,
    NOW,
    one_time_prekey,
    our_identity,
    signed_prekey,
)


def test_identity_round_trips(store: KeyStore) -> None:
    assert store.get_identity() is None
    store.set_identity(our_identity())
    assert store.get_identity() == our_identity()


def test_signed_prekeys_are_kept_by_id_with_a_current_one(store: KeyStore) -> None:
    store.store_signed_prekey(signed_prekey(7))
    store.store_signed_prekey(signed_prekey(3))
    assert [record.key_id for record in store.signed_prekeys()] == [3, 7]
    assert store.load_signed_prekey(7) == signed_prekey(7)
    assert store.current_signed_prekey() is None
    store.set_current_signed_prekey(7)
    assert store.current_signed_prekey() == signed_prekey(7)
    with pytest.raises(KeyError):
        store.set_current_signed_prekey(99)
    store.remove_signed_prekey(3)
    assert store.load_signed_prekey(3) is None


def test_the_relay_taking_a_signed_prekey_retires_the_others(store: KeyStore) -> None:
    """SPEC §13.3: a retired signed prekey keeps its date until the SDK deletes it."""
    for key_id in (3, 7, 9):
        store.store_signed_prekey(signed_prekey(key_id))
    assert store.published_signed_prekey() is None and store.retired_signed_prekeys() == {}
    store.mark_signed_prekey_published(7, NOW)
    assert store.published_signed_prekey() == 7
    assert store.retired_signed_prekeys() == {3: NOW, 9: NOW}
    store.mark_signed_prekey_published(9, NOW + 5)  # 3 keeps its date, 7 retires now
    assert store.retired_signed_prekeys() == {3: NOW, 7: NOW + 5}
    with pytest.raises(KeyError):
        store.mark_signed_prekey_published(99, NOW)
    store.remove_signed_prekey(3)
    assert store.retired_signed_prekeys() == {7: NOW + 5}
    store.remove_signed_prekey(9)
    assert store.published_signed_prekey() is None


def test_one_time_prekeys_can_be_removed_together(store: KeyStore) -> None:
    store.store_one_time_prekeys([one_time_prekey(i) for i in (1, 2, 3)])
    store.remove_one_time_prekeys([1, 3, 4])
    assert store.one_time_prekey_ids() == [2]


def test_taking_a_one_time_prekey_deletes_it(store: KeyStore) -> None:
    store.store_one_time_prekeys([one_time_prekey(i) for i in (1, 2, 3)])
    assert store.take_one_time_prekey(2) == one_time_prekey(2)
    assert store.take_one_time_prekey(2) is None
    assert store.one_time_prekey_ids() == [1, 3]


def test_prekey_ids_are_never_handed_out_twice(store: KeyStore) -> None:
    first = store.allocate_prekey_ids(100)
    second = store.allocate_prekey_ids(1)
    assert first == range(1, 101)
    assert second == range(101, 102)
    with pytest.raises(ValueError):
        store.allocate_prekey_ids(0)


def test_prekey_ids_run_to_the_last_u32_and_no_further(store: KeyStore) -> None:
    """Key ids are u32 on the wire (SPEC §5.1): the last one, 2**32 - 1, is handed out;
    then the space is exhausted rather than wrapping to an id used before."""
    store.allocate_prekey_ids(MAX_PREKEY_ID - 2)
    assert store.allocate_prekey_ids(2) == range(MAX_PREKEY_ID - 1, MAX_PREKEY_ID + 1)
    with pytest.raises(OverflowError):
        store.allocate_prekey_ids(1)


def test_sessions_are_opaque_bytes_per_handle(store: KeyStore) -> None:
    assert store.load_session("airline") is None
    store.store_session("airline", b"state-1")
    store.store_session("bob", b"state-b")
    store.store_session("airline", b"state-2")
    assert store.load_session("airline") == b"state-2"
    store.delete_session("airline")
    assert store.load_session("airline") is None
    assert store.load_session("bob") == b"state-b"


def test_the_sessions_holding_skipped_keys_are_one_list_in_order(store: KeyStore) -> None:
    assert store.skipped_key_holders() == []
    holders = [SkippedKeyHolder("bob", 3, NOW), SkippedKeyHolder("airline", 1000, NOW - 1)]
    store.set_skipped_key_holders(holders)
    assert store.skipped_key_holders() == holders  # the caller's order: oldest first
    store.set_skipped_key_holders([])
    assert store.skipped_key_holders() == []
    with pytest.raises(ValueError):
        SkippedKeyHolder("bob", -1, NOW)
    with pytest.raises(TypeError):
        store.set_skipped_key_holders([("bob", 3, NOW)])  # type: ignore[list-item]


def test_first_identity_key_is_trusted_on_first_use(store: KeyStore) -> None:
    assert store.check_identity("airline", KEY_A) is IdentityStatus.NEW
    with pytest.raises(UntrustedIdentity, match="not yet trusted"):
        store.require_trusted("airline", KEY_A)
    assert store.trust_identity("airline", KEY_A, NOW) is IdentityStatus.NEW
    assert store.trust_identity("airline", KEY_A, NOW + 5) is IdentityStatus.TRUSTED
    store.require_trusted("airline", KEY_A)
    trusted = store.get_trusted_identity("airline")
    assert trusted is not None
    assert (trusted.identity_key, trusted.first_seen_ms, trusted.verified) == (KEY_A, NOW, False)


def test_changed_identity_key_is_never_accepted_silently(store: KeyStore) -> None:
    store.trust_identity("airline", KEY_A, NOW)
    assert store.check_identity("airline", KEY_B) is IdentityStatus.CHANGED
    with pytest.raises(UntrustedIdentity) as raised:
        store.require_trusted("airline", KEY_B)
    assert raised.value.handle == "airline"
    with pytest.raises(UntrustedIdentity):
        store.trust_identity("airline", KEY_B, NOW + 1)
    # Still the old key after both attempts.
    assert store.check_identity("airline", KEY_A) is IdentityStatus.TRUSTED


def test_user_approval_replaces_a_changed_key(store: KeyStore) -> None:
    store.trust_identity("airline", KEY_A, NOW)
    store.approve_identity("airline", KEY_A, NOW + 1, verified=True)
    verified = store.get_trusted_identity("airline")
    assert verified is not None
    assert (verified.first_seen_ms, verified.verified) == (NOW, True)
    store.approve_identity("airline", KEY_A, NOW + 2)  # approved again, not compared again
    again = store.get_trusted_identity("airline")
    assert again is not None and (again.first_seen_ms, again.verified) == (NOW, True)

    store.approve_identity("airline", KEY_B, NOW + 2)
    store.require_trusted("airline", KEY_B)
    assert store.check_identity("airline", KEY_A) is IdentityStatus.CHANGED
    replaced = store.get_trusted_identity("airline")
    assert replaced is not None
    # A new key restarts first-seen and must be verified again.
    assert (replaced.first_seen_ms, replaced.verified) == (NOW + 2, False)


def test_one_identity_key_is_pinned_for_one_handle_only(store: KeyStore) -> None:
    """SPEC §13.8: trust on first use never lets one key stand for two handles."""
    assert store.identity_owner(KEY_A) is None
    store.trust_identity("airline", KEY_A, NOW)
    assert store.identity_owner(KEY_A) == "airline"

    with pytest.raises(IdentityKeyReused) as raised:
        store.trust_identity("impostor", KEY_A, NOW + 1)
    assert (raised.value.handle, raised.value.owner) == ("impostor", "airline")
    with pytest.raises(IdentityKeyReused):
        store.approve_identity("impostor", KEY_A, NOW + 1)
    assert store.get_trusted_identity("impostor") is None
    assert store.identity_owner(KEY_A) == "airline"

    store.approve_identity("airline", KEY_A, NOW + 2, verified=True)
    assert store.identity_owner(KEY_A) == "airline"
    store.approve_identity("airline", KEY_B, NOW + 3)  # a key change the user approved
    assert (store.identity_owner(KEY_A), store.identity_owner(KEY_B)) == (None, "airline")
    assert store.trust_identity("successor", KEY_A, NOW + 4) is IdentityStatus.NEW  # freed
    assert store.identity_owner(KEY_A) == "successor"


def test_a_rolled_back_pin_leaves_the_key_unowned(store: KeyStore) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        store.trust_identity("airline", KEY_A, NOW)
        assert store.identity_owner(KEY_A) == "airline"
        raise RuntimeError("crash before the commit")
    assert store.identity_owner(KEY_A) is None
    assert store.trust_identity("other", KEY_A, NOW) is IdentityStatus.NEW


def test_identity_keys_must_be_32_bytes(store: KeyStore) -> None:
    with pytest.raises(ValueError):
        store.check_identity("airline", b"\x01" * 31)


def test_trusted_identities_list_every_contact_by_handle(store: KeyStore) -> None:
    store.trust_identity("bob", KEY_B, NOW)
    store.approve_identity("airline", KEY_A, NOW + 1, verified=True)
    assert [(t.handle, t.identity_key, t.verified) for t in store.trusted_identities()] == [
        ("airline", KEY_A, True),
        ("bob", KEY_B, False),
    ]


def test_a_pending_identity_change_is_kept_until_cleared(store: KeyStore) -> None:
    """SPEC §3.3: the key a contact presented waits for the user, per contact."""
    assert store.pending_identity_change("airline") is None
    store.record_identity_change("airline", KEY_B)
    store.record_identity_change("bob", KEY_A)
    assert store.pending_identity_change("airline") == KEY_B
    assert store.pending_identity_changes() == {"airline": KEY_B, "bob": KEY_A}
    store.clear_identity_change("airline")
    assert store.pending_identity_change("airline") is None
    assert store.pending_identity_changes() == {"bob": KEY_A}
    with pytest.raises(ValueError):
        store.record_identity_change("bob", b"short")
