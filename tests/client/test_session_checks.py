"""The checks client/sessions.py makes of what a contact or the relay presents, each held
by a test that fails without it (mutation analysis): a bundle's signature before its key,
a pending key change on the old session, the pinned key at every encrypt, prekey ids
that name no key, and our own identity and prekey records.
"""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest

from blindrelay.client.keystore import IdentityStatus
from blindrelay.protocol.content import Text
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.crypto.session import peek_envelope
from blindrelay.protocol.errors import InvalidKey, InvalidSignature, UntrustedIdentity

from .session_pair import Pair, make_manager

KEY = 32
SIGNED_PREKEY_ID_AT = 2 + 2 * KEY
"""Where a prekey message names its signed prekey: after version, type, identity and base
key (SPEC §13.6); a one-time prekey flag and id follow."""
ONE_TIME_PREKEY_ID_AT = SIGNED_PREKEY_ID_AT + 4 + 1


@pytest.fixture
def pair() -> Pair:
    return Pair()


def other_key(seed: int) -> bytes:
    return IdentityKeyPair.generate(random.Random(seed).randbytes).public


def test_a_badly_signed_bundle_of_another_key_records_no_key_change(pair: Pair) -> None:
    """SPEC §13.3: the signed prekey's signature is verified before the key is looked at.
    A bundle naming another identity key whose signature does not verify is a forgery of
    nothing: it must not become the pending change the user is asked to approve."""
    assert pair.alice.start_session(pair.directory.bundle("bob")) is IdentityStatus.NEW
    bundle = pair.directory.bundle("bob")
    forged = replace(bundle, identity_key=other_key(7))

    with pytest.raises(InvalidSignature):
        pair.alice.start_session(forged)

    assert pair.alice.trust.pending_change("bob") is None
    assert pair.alice.encrypt("bob", b"still to the pinned key")


def test_a_message_on_the_old_session_is_refused_while_a_key_change_waits(pair: Pair) -> None:
    """SPEC §3.3: once a contact presented another key (here learnt as a forwarded
    statement or a profile would: ``trust.check``), its messages wait for the user's
    decision, also those that arrive on the session of the old key."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    assert pair.bob.receive(pair.envelope(pair.alice, "bob", Text("hello"))) is not None
    with pytest.raises(UntrustedIdentity):
        pair.bob.trust.check("alice", other_key(8))
    deliver = pair.envelope(pair.alice, "bob", Text("on the old session"))

    with pytest.raises(UntrustedIdentity):
        pair.bob.receive(deliver)
    assert not pair.bob.store.is_processed("alice", deliver.msg_id)
    assert len(pair.bob.store.pending_messages()) == 1


def test_encrypt_refuses_a_session_whose_key_is_not_the_pinned_one(pair: Pair) -> None:
    """The gate before every send (``KeyStore.require_trusted``) holds on its own: a stored
    session built on a key other than the one pinned for its handle — records left so by
    anything but ``trust.approve``, which drops the session — encrypts nothing."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    pair.alice.store.approve_identity("bob", other_key(9), 1)
    assert pair.alice.trust.pending_change("bob") is None

    with pytest.raises(UntrustedIdentity):
        pair.alice.encrypt("bob", b"to a key no longer pinned")


@pytest.mark.parametrize(
    "at", [SIGNED_PREKEY_ID_AT, ONE_TIME_PREKEY_ID_AT], ids=["signed", "one-time"]
)
def test_a_first_message_naming_prekey_id_zero_is_an_invalid_key(pair: Pair, at: int) -> None:
    """Prekey ids start at 1 (SPEC §5.1): a first message naming signed or one-time prekey
    0 names no key we hold and is refused as InvalidKey — a CryptoError, which the inbox
    acknowledges and drops — not as the keystore's ValueError, which nothing catches (the
    DELIVER would never be acknowledged)."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    deliver = pair.envelope(pair.alice, "bob", Text("hi"))
    body = bytearray(deliver.body)
    struct.pack_into(">I", body, at, 0)
    info = peek_envelope(bytes(body))
    assert 0 in (info.signed_prekey_id, info.one_time_prekey_id)

    with pytest.raises(InvalidKey):
        pair.bob.receive(replace(deliver, body=bytes(body)))
    assert not pair.bob.store.is_processed("alice", deliver.msg_id)


def test_a_profile_keeps_its_first_identity(pair: Pair) -> None:
    identity = pair.alice.identity
    with pytest.raises(RuntimeError, match="already has an identity"):
        pair.alice.create_identity("mallory", "user")
    assert pair.alice.identity == identity


def test_an_ok_for_a_signed_prekey_no_longer_held_changes_nothing() -> None:
    """The relay's OK to an upload may arrive after the key was deleted (an identity
    rotation deletes every prekey of the old key): it is ignored, not a KeyError."""
    manager = make_manager("alice", 1)
    upload = manager.prekeys_upload(1, relay_one_time=0, relay_has_signed=False)
    assert upload is not None and upload.signed_prekey is not None
    manager.signed_prekey_published(upload.signed_prekey.key_id)

    manager.signed_prekey_published(upload.signed_prekey.key_id + 10_000)

    assert manager.store.published_signed_prekey() == upload.signed_prekey.key_id
