"""Sessions and envelopes: the flows the client SDK drives (SPEC §13.6)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindrelay.protocol.crypto import session as s
from blindrelay.protocol.crypto import x3dh
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
)
from blindrelay.protocol.crypto.padding import MAX_PLAINTEXT_BYTES
from blindrelay.protocol.errors import (
    CryptoError,
    DecryptionFailed,
    DuplicatedMessage,
    InvalidKey,
    MalformedEnvelope,
    PlaintextTooLarge,
)
from blindrelay.protocol.limits import MAX_CIPHERTEXT_BYTES
from tests.protocol.crypto.rng import stream

RNG = stream(b"session-tests")
ALICE = IdentityKeyPair.from_seed(b"\x0a" * 32)
BOB = IdentityKeyPair.from_seed(b"\x0b" * 32)
SPK = SignedPreKey.generate(BOB, 1, RNG)
OTPK = OneTimePreKey.generate(2, RNG)


def bundle(with_one_time: bool = True) -> PreKeyBundle:
    return PreKeyBundle(
        BOB.public, 1, SPK.public, SPK.signature,
        2 if with_one_time else None, OTPK.public if with_one_time else None,
    )  # fmt: skip


def start(their_bundle: PreKeyBundle | None = None) -> s.Session:
    """Alice's session with "bob" (SPEC §13.3: made for that pair of handles)."""
    b = their_bundle if their_bundle is not None else bundle()
    return s.initiate_session(ALICE, b, RNG, our_handle="alice", their_handle="bob")


def accept(
    envelope: bytes, one_time: dict | None = None, *, sender: str = "alice", us: str = "bob"
):
    """Bob receives ``envelope`` as delivered from ``sender``."""
    return s.accept_session(
        BOB, envelope, {1: SPK}.get, (one_time if one_time is not None else {2: OTPK}).get, RNG,
        our_handle=us, their_handle=sender,
    )  # fmt: skip


@pytest.fixture
def established():
    alice = start()
    alice, first = s.encrypt(alice, b"hello", RNG)
    bob, plaintext, used = accept(first)
    assert (plaintext, used) == (b"hello", 2)
    bob, reply = s.encrypt(bob, b"hi", RNG)
    alice, plaintext = s.decrypt(alice, reply, RNG)
    assert plaintext == b"hi"
    return alice, bob


def test_initiator_sends_prekey_messages_until_it_hears_back():
    alice = start()
    alice, m1 = s.encrypt(alice, b"one", RNG)
    alice, m2 = s.encrypt(alice, b"two", RNG)
    for envelope in (m1, m2):
        info = s.peek_envelope(envelope)
        assert info.message_type is s.MessageType.PREKEY
        assert info.sender_identity_key == ALICE.public
        assert (info.signed_prekey_id, info.one_time_prekey_id) == (1, 2)
    bob, plaintext, _ = accept(m2)  # the first message was delayed
    assert plaintext == b"two"
    bob, plaintext = s.decrypt(bob, m1, RNG)
    assert plaintext == b"one"
    bob, reply = s.encrypt(bob, b"ack", RNG)
    assert s.peek_envelope(reply).message_type is s.MessageType.MESSAGE
    alice, _ = s.decrypt(alice, reply, RNG)
    assert alice.pending_prekey is None
    alice, m3 = s.encrypt(alice, b"three", RNG)
    assert s.peek_envelope(m3).message_type is s.MessageType.MESSAGE
    assert s.decrypt(bob, m3, RNG)[1] == b"three"


def test_session_without_a_one_time_prekey_works_and_reports_none():
    alice = start(bundle(with_one_time=False))
    alice, first = s.encrypt(alice, b"x", RNG)
    assert s.peek_envelope(first).one_time_prekey_id is None
    _, plaintext, used = accept(first, one_time={})
    assert (plaintext, used) == (b"x", None)


def test_replayed_first_message_is_refused_once_the_one_time_prekey_is_deleted():
    alice = start()
    _, first = s.encrypt(alice, b"x", RNG)
    accept(first)
    with pytest.raises(InvalidKey, match="one-time prekey"):
        accept(first, one_time={})


def test_unknown_signed_prekey_is_an_invalid_key():
    alice = start()
    _, first = s.encrypt(alice, b"x", RNG)
    with pytest.raises(InvalidKey, match="signed prekey"):
        s.accept_session(
            BOB, first, {}.get, {2: OTPK}.get, RNG, our_handle="bob", their_handle="alice"
        )


def test_normal_message_cannot_start_a_session(established):
    alice, _ = established
    _, envelope = s.encrypt(alice, b"x", RNG)
    with pytest.raises(DecryptionFailed, match="not a prekey"):
        accept(envelope)


def test_prekey_message_of_a_new_session_is_not_decrypted_by_the_old_one(established):
    _, bob = established
    fresh = start()
    _, envelope = s.encrypt(fresh, b"x", RNG)
    assert not s.belongs_to(bob, s.peek_envelope(envelope))
    with pytest.raises(DecryptionFailed, match="accept_session"):
        s.decrypt(bob, envelope, RNG)


def test_replayed_message_is_a_duplicate_and_state_is_kept(established):
    alice, bob = established
    alice, envelope = s.encrypt(alice, b"once", RNG)
    bob, _ = s.decrypt(bob, envelope, RNG)
    before = bob.to_bytes()
    with pytest.raises(DuplicatedMessage):
        s.decrypt(bob, envelope, RNG)
    assert bob.to_bytes() == before


def test_a_session_made_for_alice_and_bob_does_not_decrypt_as_mallory_and_bob():
    """SPEC §13.3: both handles are in AD, so a first message re-sent by another
    account (the relay names mallory as sender) or delivered to another handle of
    the same key fails, and the right pair still decrypts it."""
    alice = start()
    alice, first = s.encrypt(alice, b"for bob, from alice", RNG)
    with pytest.raises(DecryptionFailed):
        accept(first, sender="mallory")
    with pytest.raises(DecryptionFailed):
        accept(first, us="bob2")
    bob, plaintext, _ = accept(first)
    assert plaintext == b"for bob, from alice"
    assert bob.associated_data == alice.associated_data


def test_every_message_of_a_session_is_bound_to_its_handles(established):
    """The ratchet authenticates AD with each message: later messages are bound too."""
    alice, bob = established
    alice, envelope = s.encrypt(alice, b"later", RNG)
    as_mallory = dataclasses.replace(
        bob,
        associated_data=x3dh.associated_data(ALICE.public, BOB.public, "mallory", "bob"),
    )
    with pytest.raises(DecryptionFailed):
        s.decrypt(as_mallory, envelope, RNG)
    assert s.decrypt(bob, envelope, RNG)[1] == b"later"


def test_a_stored_session_of_envelope_version_1_is_outdated(established):
    alice, _ = established
    record = msgpack.unpackb(alice.to_bytes())
    record[0] = 1
    with pytest.raises(s.OutdatedSession):
        s.Session.from_bytes(msgpack.packb(record, use_bin_type=True))


def test_session_round_trips_through_bytes(established):
    alice, bob = established
    for session in (alice, bob, start()):
        assert s.Session.from_bytes(session.to_bytes()) == session
    with pytest.raises(ValueError, match="malformed session"):
        s.Session.from_bytes(b"\x93\x01\x02\x03")


def test_envelope_length_reveals_only_the_bucket(established):
    alice, _ = established
    sizes = {len(s.encrypt(alice, b"x" * n, RNG)[1]) for n in (0, 1, 100, 255)}
    assert len(sizes) == 1


def test_largest_prekey_envelope_fits_the_relay_cap():
    alice = start()
    _, envelope = s.encrypt(alice, bytes(MAX_PLAINTEXT_BYTES), RNG)
    assert len(envelope) == 32768 + s.ENVELOPE_OVERHEAD_MAX <= MAX_CIPHERTEXT_BYTES
    with pytest.raises(PlaintextTooLarge):
        s.encrypt(alice, bytes(MAX_PLAINTEXT_BYTES + 1), RNG)


# A prekey prefix is IK (32) || EK (32) || SPK id (4) || flag (1): 68 bytes, then the flag.
@pytest.mark.parametrize(
    ("envelope", "reason"),
    [(b"", "too short"), (b"\x02", "too short"),
     (b"\x03\x02" + bytes(40 + 272), "version 3"),
     (b"\x01\x02" + bytes(40 + 272), "version 1"),
     (b"\x01\x01" + bytes(68) + b"\x00" + bytes(40 + 272), "version 1"),
     (b"\x02\x03" + bytes(40 + 272), "type"),
     (b"\x02\x02" + bytes(40 + 271), "padded size"),
     (b"\x02\x01" + bytes(68) + b"\x02" + bytes(40 + 272), "flag"),
     (b"\x02\x01" + bytes(68) + b"\x00" + bytes(40 + 271), "padded size"),
     (b"\x02\x01" + bytes(66), "truncated"), (b"\x02\x01" + bytes(68), "truncated"),
     (b"\x02\x01" + bytes(68) + b"\x01" + bytes(3), "truncated")],
    ids=["empty", "version-only", "bad-version", "version-1-message", "version-1-prekey",
         "bad-type", "odd-ciphertext", "bad-flag", "odd-prekey-ciphertext",
         "prekey-prefix-66", "prekey-prefix-68", "one-time-id-3"],
)  # fmt: skip
def test_malformed_envelopes_are_named(envelope, reason):
    with pytest.raises(MalformedEnvelope, match=reason):
        s.peek_envelope(envelope)


def test_the_malformed_samples_differ_from_valid_envelopes_only_where_named():
    assert s.peek_envelope(b"\x02\x02" + bytes(40 + 272)).message_type is s.MessageType.MESSAGE
    prekey = s.peek_envelope(b"\x02\x01" + bytes(68) + b"\x00" + bytes(40 + 272))
    assert prekey.message_type is s.MessageType.PREKEY and prekey.one_time_prekey_id is None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_rejected_and_the_session_still_works(established, data):
    alice, bob = established
    alice, envelope = s.encrypt(alice, b"integrity", RNG)
    index = data.draw(st.integers(0, len(envelope) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(envelope)
    tampered[index] ^= flip
    before = bob.to_bytes()
    with pytest.raises(CryptoError):
        s.decrypt(bob, bytes(tampered), RNG)
    assert bob.to_bytes() == before
    assert s.decrypt(bob, envelope, RNG)[1] == b"integrity"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_of_a_first_message_is_rejected(data):
    alice = start()
    _, envelope = s.encrypt(alice, b"first", RNG)
    index = data.draw(st.integers(0, len(envelope) - 1), label="index")
    tampered = bytearray(envelope)
    tampered[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(CryptoError):
        accept(bytes(tampered))


def test_peek_fast_path_reads_a_normal_message_like_the_general_parser():
    header = s.dr.Header(b"\x07" * 32, 5, 9)
    body = b"\x02\x02" + header.encode() + bytes(256 + s.dr.AEAD_TAG_LEN)
    info = s.peek_envelope(body)
    assert info == s.EnvelopeInfo(s.MessageType.MESSAGE, header, bytes(256 + s.dr.AEAD_TAG_LEN))
    assert s.peek_envelope(bytearray(body)).header == header
    for bad in (body[:41], body[:-1], b"\x02\x02", b"\x02\x03" + body[2:], b"\x01" + body[1:]):
        with pytest.raises(MalformedEnvelope):
            s.peek_envelope(bad)


def test_a_prekey_message_belongs_to_a_session_only_from_its_sender_and_base_key(established):
    """belongs_to (SPEC §13.6): the same base key under another identity key is another
    X3DH run, for accept_session to judge, not a message of this session."""
    _, bob = established
    _, envelope = s.encrypt(start(), b"again", RNG)
    info = s.peek_envelope(envelope)
    assert not s.belongs_to(bob, info)
    same_run = dataclasses.replace(info, base_key=bob.base_key)
    assert s.belongs_to(bob, same_run)
    assert not s.belongs_to(bob, dataclasses.replace(same_run, sender_identity_key=BOB.public))
