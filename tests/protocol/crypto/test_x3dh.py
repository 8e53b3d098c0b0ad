"""X3DH as Signal specifies it, with our parameters (SPEC §13.3)."""

from __future__ import annotations

import pytest

from blindrelay.protocol.crypto import x3dh
from blindrelay.protocol.crypto.kdf import hkdf
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
    X25519KeyPair,
)
from blindrelay.protocol.errors import InvalidKey, InvalidSignature
from tests.protocol.crypto.rng import stream as seeded_rng


@pytest.fixture
def parties():
    rng = seeded_rng(b"x3dh-test")
    alice = IdentityKeyPair.generate(rng)
    bob = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(bob, 1, rng)
    otpk = OneTimePreKey.generate(2, rng)
    return alice, bob, spk, otpk


HANDLES = {"our_handle": "alice", "their_handle": "bob"}
"""The initiator's view; the recipient's is :data:`RESPONDER`."""
RESPONDER = {"our_handle": "bob", "their_handle": "alice"}


def bundle_of(bob, spk, otpk):
    return PreKeyBundle(
        bob.public,
        spk.key_id,
        spk.public,
        spk.signature,
        otpk.key_id if otpk else None,
        otpk.public if otpk else None,
    )


@pytest.mark.parametrize("with_one_time", [True, False])
def test_both_roles_derive_the_same_secret_and_associated_data(parties, with_one_time):
    alice, bob, spk, otpk = parties
    otpk = otpk if with_one_time else None
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"), **HANDLES)
    secret, ad = x3dh.respond(
        bob, spk.keypair, otpk.keypair if otpk else None, alice.public, agreement.ephemeral_public,
        **RESPONDER,
    )  # fmt: skip
    assert secret == agreement.shared_secret
    assert ad == agreement.associated_data
    assert agreement.one_time_prekey_id == (2 if with_one_time else None)
    assert agreement.their_signed_prekey_public == spk.public


def test_secret_is_hkdf_of_f_and_dh1_to_dh4_in_spec_order(parties):
    alice, bob, spk, otpk = parties
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"), **HANDLES)
    ek = X25519KeyPair.generate(seeded_rng(b"eph"))  # the same draw
    dh1 = alice.dh(spk.public)
    dh2 = ek.dh(bob.x25519_public)
    dh3 = ek.dh(spk.public)
    dh4 = ek.dh(otpk.public)
    expected = hkdf(
        b"\xff" * 32 + dh1 + dh2 + dh3 + dh4, salt=bytes(32), info=b"blindrelay/v1/x3dh", length=32
    )
    assert agreement.shared_secret == expected


def test_associated_data_is_both_encoded_identities_then_both_handles(parties):
    alice, bob, spk, otpk = parties
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"), **HANDLES)
    assert agreement.associated_data == (
        b"\xed" + alice.public + b"\xed" + bob.public + b"blindrelay/v2" + b"\x05alice" + b"\x03bob"
    )
    assert len(agreement.associated_data) == 81 + len("alice") + len("bob")


def test_the_recipient_binds_the_sender_the_relay_named(parties):
    """SPEC §13.3: the same X3DH run under another sender handle gives another AD."""
    alice, bob, spk, otpk = parties
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"), **HANDLES)
    keys = (bob, spk.keypair, otpk.keypair, alice.public, agreement.ephemeral_public)
    secret, ad = x3dh.respond(*keys, our_handle="bob", their_handle="mallory")
    assert secret == agreement.shared_secret and ad != agreement.associated_data
    _, ad = x3dh.respond(*keys, our_handle="bob2", their_handle="alice")
    assert ad != agreement.associated_data


def test_handles_in_associated_data_are_length_prefixed_so_pairs_never_collide():
    assert x3dh.ad_appendix("ab", "c") != x3dh.ad_appendix("a", "bc")
    assert x3dh.ad_appendix("alice", "bob") != x3dh.ad_appendix("bob", "alice")
    assert x3dh.ad_appendix("a" * 255, "b").startswith(b"blindrelay/v2\xff")
    for bad in ("", "a" * 256):
        with pytest.raises(ValueError):
            x3dh.ad_appendix(bad, "bob")


def test_a_one_time_prekey_changes_the_secret(parties):
    alice, bob, spk, otpk = parties
    with_otpk = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"), **HANDLES)
    without = x3dh.initiate(alice, bundle_of(bob, spk, None), seeded_rng(b"eph"), **HANDLES)
    assert with_otpk.shared_secret != without.shared_secret


def test_initiator_refuses_a_bundle_whose_signature_fails(parties):
    alice, _, spk, _ = parties
    mallory = IdentityKeyPair.generate(seeded_rng(b"mallory"))
    forged = PreKeyBundle(mallory.public, 1, spk.public, spk.signature, None, None)
    with pytest.raises(InvalidSignature):
        x3dh.initiate(alice, forged, seeded_rng(b"eph"), **HANDLES)


def test_recipient_refuses_a_low_order_ephemeral_key(parties):
    alice, bob, spk, _ = parties
    with pytest.raises(InvalidKey):
        x3dh.respond(bob, spk.keypair, None, alice.public, b"\x01" + bytes(31), **RESPONDER)


def test_initiator_refuses_a_low_order_one_time_prekey(parties):
    alice, bob, spk, _ = parties
    bundle = PreKeyBundle(bob.public, 1, spk.public, spk.signature, 3, bytes(32))
    with pytest.raises(InvalidKey):
        x3dh.initiate(alice, bundle, seeded_rng(b"eph"), **HANDLES)
