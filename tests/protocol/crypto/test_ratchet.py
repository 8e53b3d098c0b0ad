"""Double Ratchet state machine, caps and failure handling (SPEC §13.4)."""

from __future__ import annotations

import pytest

from blindrelay.protocol.crypto import ratchet as dr
from blindrelay.protocol.crypto.kdf import hkdf, hmac_sha256
from blindrelay.protocol.crypto.keys import X25519KeyPair
from blindrelay.protocol.errors import (
    DecryptionFailed,
    DuplicatedMessage,
    InvalidKey,
    MalformedEnvelope,
    TooManySkippedMessages,
)
from tests.protocol.crypto.rng import stream

AD = b"associated"


def pair():
    rng_a, rng_b = stream(b"a"), stream(b"b")
    bob_spk = X25519KeyPair.generate(rng_b)
    secret = b"\x11" * 32
    alice = dr.initialize_initiator(secret, bob_spk.public, rng_a)
    bob = dr.initialize_recipient(secret, bob_spk)
    return alice, bob, rng_a, rng_b


def test_chain_kdf_uses_0x01_for_message_keys_and_0x02_for_chain_keys():
    ck = b"\x22" * 32
    assert dr.kdf_ck(ck) == (hmac_sha256(ck, b"\x02"), hmac_sha256(ck, b"\x01"))


def test_message_key_expansion_is_hkdf_with_its_own_info_string():
    mk = b"\x33" * 32
    out = hkdf(mk, salt=bytes(32), info=b"blindrelay/v1/message-keys", length=56)
    assert dr.message_aead_key(mk) == (out[:32], out[32:])


def test_root_kdf_is_hkdf_with_the_root_key_as_salt():
    for i in range(5):
        root, dh_out = bytes([i]) * 32, bytes([0x40 + i]) * 32
        out = hkdf(dh_out, salt=root, info=b"blindrelay/v1/ratchet", length=64)
        assert dr.kdf_rk(root, dh_out) == (out[:32], out[32:])


def test_header_encodes_to_40_bytes_and_back():
    header = dr.Header(b"\x09" * 32, 3, 2**32 - 1)
    assert len(header.encode()) == 40
    assert dr.Header.decode(header.encode()) == header
    with pytest.raises(MalformedEnvelope):
        dr.Header.decode(header.encode()[:-1])


def test_messages_flow_both_ways_with_dh_turns():
    alice, bob, rng_a, rng_b = pair()
    for turn in range(4):
        alice, h, c = dr.encrypt(alice, b"ping %d" % turn, AD)
        bob, pt = dr.decrypt(bob, h, c, AD, rng_b)
        assert pt == b"ping %d" % turn
        bob, h, c = dr.encrypt(bob, b"pong %d" % turn, AD)
        alice, pt = dr.decrypt(alice, h, c, AD, rng_a)
        assert pt == b"pong %d" % turn
    assert alice.our_ratchet != bob.our_ratchet


def test_recipient_cannot_send_before_receiving():
    _, bob, _, _ = pair()
    with pytest.raises(ValueError, match="sending chain"):
        dr.encrypt(bob, b"x", AD)


def test_out_of_order_messages_use_stored_skipped_keys_once():
    alice, bob, _, rng_b = pair()
    sent = []
    for i in range(5):
        alice, h, c = dr.encrypt(alice, bytes([i]), AD)
        sent.append((h, c))
    bob, _ = dr.decrypt(bob, *sent[4], AD, rng_b)
    assert len(bob.skipped) == 4
    for i in (2, 0, 3, 1):
        bob, pt = dr.decrypt(bob, *sent[i], AD, rng_b)
        assert pt == bytes([i])
    assert len(bob.skipped) == 0
    with pytest.raises(DuplicatedMessage):
        dr.decrypt(bob, *sent[2], AD, rng_b)


def test_replay_of_an_old_chain_message_is_a_duplicate():
    alice, bob, rng_a, rng_b = pair()
    alice, h, c = dr.encrypt(alice, b"first", AD)
    bob, _ = dr.decrypt(bob, h, c, AD, rng_b)
    bob, h2, c2 = dr.encrypt(bob, b"reply", AD)
    alice, _ = dr.decrypt(alice, h2, c2, AD, rng_a)
    alice, h3, c3 = dr.encrypt(alice, b"second", AD)
    bob, _ = dr.decrypt(bob, h3, c3, AD, rng_b)
    with pytest.raises(DuplicatedMessage):
        dr.decrypt(bob, h, c, AD, rng_b)


def test_forward_jump_over_the_cap_is_refused_and_state_kept():
    alice, bob, _, rng_b = pair()
    alice, h, c = dr.encrypt(alice, b"x", AD)
    far = dr.Header(h.ratchet_key, 0, dr.MAX_FORWARD_JUMP + 1)
    with pytest.raises(TooManySkippedMessages):
        dr.decrypt(bob, far, c, AD, rng_b)
    _bob2, pt = dr.decrypt(bob, h, c, AD, rng_b)
    assert pt == b"x"


def test_jump_of_exactly_the_cap_is_accepted():
    alice, bob, _, rng_b = pair()
    for _ in range(dr.MAX_FORWARD_JUMP):
        alice = dr.encrypt(alice, b"", AD)[0]
    alice, h, c = dr.encrypt(alice, b"last", AD)
    bob, pt = dr.decrypt(bob, h, c, AD, rng_b)
    assert pt == b"last" and len(bob.skipped) == dr.MAX_FORWARD_JUMP


def test_stored_skipped_keys_are_capped_oldest_first():
    alice, bob, rng_a, rng_b = pair()
    first_chain = []
    for _ in range(600):
        alice, h, c = dr.encrypt(alice, b"", AD)
        first_chain.append((h, c))
    bob, _ = dr.decrypt(bob, *first_chain[-1], AD, rng_b)  # stores 599
    bob, h, c = dr.encrypt(bob, b"turn", AD)
    alice, _ = dr.decrypt(alice, h, c, AD, rng_a)
    for _ in range(600):
        alice, h, c = dr.encrypt(alice, b"", AD)
    bob, _ = dr.decrypt(bob, h, c, AD, rng_b)  # stores 599 more
    assert len(bob.skipped) == dr.MAX_SKIPPED_KEYS
    with pytest.raises(DuplicatedMessage):  # key 0 of the old chain was dropped
        dr.decrypt(bob, *first_chain[0], AD, rng_b)
    bob, _ = dr.decrypt(bob, *first_chain[-2], AD, rng_b)  # a recent one survived


@pytest.mark.parametrize("where", ["ciphertext", "ad", "header-n", "header-key"])
def test_tampering_fails_and_leaves_state_unchanged(where):
    alice, bob, _, rng_b = pair()
    alice, h, c = dr.encrypt(alice, b"secret", AD)
    before = bob.to_bytes()
    ad = AD
    if where == "ciphertext":
        c = bytes([c[0] ^ 1]) + c[1:]
    elif where == "ad":
        ad = AD + b"!"
    elif where == "header-n":
        h = dr.Header(h.ratchet_key, h.previous_chain_length, h.message_number + 1)
    else:
        h = dr.Header(X25519KeyPair.generate(stream(b"m")).public, 0, 0)
    with pytest.raises(DecryptionFailed):
        dr.decrypt(bob, h, c, ad, rng_b)
    assert bob.to_bytes() == before


def test_low_order_ratchet_key_is_an_invalid_key():
    alice, bob, _, rng_b = pair()
    alice, _h, c = dr.encrypt(alice, b"x", AD)
    with pytest.raises(InvalidKey):
        dr.decrypt(bob, dr.Header(bytes(32), 0, 0), c, AD, rng_b)


def test_state_round_trips_through_bytes_with_skipped_keys():
    alice, bob, _, rng_b = pair()
    for _ in range(3):
        alice, h, c = dr.encrypt(alice, b"", AD)
    bob, _ = dr.decrypt(bob, h, c, AD, rng_b)
    assert dr.RatchetState.from_bytes(bob.to_bytes()) == bob
    with pytest.raises(ValueError, match="malformed"):
        dr.RatchetState.from_bytes(bob.to_bytes()[:-3] + b"\xc0\xc0\xc0")


def test_a_message_on_the_initiators_first_ratchet_key_has_no_receiving_chain():
    """Before it receives, the initiator has DHr = SPK_B but no CKr: a header naming
    SPK_B is refused as DecryptionFailed (not a crash deriving from no chain key)."""
    rng_a, rng_b = stream(b"a"), stream(b"b")
    bob_spk = X25519KeyPair.generate(rng_b)
    alice = dr.initialize_initiator(b"\x11" * 32, bob_spk.public, rng_a)
    with pytest.raises(DecryptionFailed, match="no receiving chain"):
        dr.decrypt(alice, dr.Header(bob_spk.public, 0, 0), bytes(32), AD, rng_a)


def test_the_last_message_number_is_refused_before_it_is_sent():
    """N is a u32 in the header: the sending chain ends before 2^32−1, with a named
    error, never at a number the next message could not carry."""
    alice, _, _, _ = pair()
    last = dr.RatchetState(
        alice.root_key, alice.our_ratchet, alice.their_ratchet_key,
        alice.sending_chain_key, None, sending_count=2**32 - 2,
    )  # fmt: skip
    _, header, _ = dr.encrypt(last, b"x", AD)
    assert header.message_number == 2**32 - 2
    exhausted = dr.RatchetState(
        alice.root_key, alice.our_ratchet, alice.their_ratchet_key,
        alice.sending_chain_key, None, sending_count=2**32 - 1,
    )  # fmt: skip
    with pytest.raises(TooManySkippedMessages):
        dr.encrypt(exhausted, b"x", AD)


def test_retired_ratchet_keys_are_bounded():
    """MAX_RETIRED_RATCHET_KEYS of the peer's old ratchet keys are remembered, no more."""
    alice, bob, rng_a, rng_b = pair()
    for _ in range(dr.MAX_RETIRED_RATCHET_KEYS + 3):
        alice, h, c = dr.encrypt(alice, b"ping", AD)
        bob, _ = dr.decrypt(bob, h, c, AD, rng_b)
        bob, h, c = dr.encrypt(bob, b"pong", AD)
        alice, _ = dr.decrypt(alice, h, c, AD, rng_a)
    assert len(bob.retired_ratchet_keys) == dr.MAX_RETIRED_RATCHET_KEYS
    assert len(alice.retired_ratchet_keys) == dr.MAX_RETIRED_RATCHET_KEYS
    assert bob.retired_ratchet_keys[-1] != alice.our_ratchet.public


@pytest.mark.parametrize(
    ("index", "value"),
    [(1, b"\x01" * 31), (3, b"\x01" * 33), (4, b"\x01" * 31), (6, True), (8, -1), (7, 2**32)],
)
def test_a_stored_state_with_a_wrong_length_key_or_a_bad_count_is_refused(index, value):
    alice, _, _, _ = pair()
    fields = alice.to_list()
    fields[index] = value
    with pytest.raises(ValueError, match="malformed"):
        dr.RatchetState.from_list(fields)
