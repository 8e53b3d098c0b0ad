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
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"))
    secret, ad = x3dh.respond(
        bob, spk.keypair, otpk.keypair if otpk else None, alice.public, agreement.ephemeral_public
    )
    assert secret == agreement.shared_secret
    assert ad == agreement.associated_data
    assert agreement.one_time_prekey_id == (2 if with_one_time else None)
    assert agreement.their_signed_prekey_public == spk.public


def test_secret_is_hkdf_of_f_and_dh1_to_dh4_in_spec_order(parties):
    alice, bob, spk, otpk = parties
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"))
    ek = X25519KeyPair.generate(seeded_rng(b"eph"))  # the same draw
    dh1 = alice.dh(spk.public)
    dh2 = ek.dh(bob.x25519_public)
    dh3 = ek.dh(spk.public)
    dh4 = ek.dh(otpk.public)
    expected = hkdf(
        b"\xff" * 32 + dh1 + dh2 + dh3 + dh4, salt=bytes(32), info=b"blindrelay/v1/x3dh", length=32
    )
    assert agreement.shared_secret == expected


def test_associated_data_is_both_encoded_identities_then_the_appendix(parties):
    alice, bob, spk, otpk = parties
    agreement = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"))
    assert agreement.associated_data == (
        b"\xed" + alice.public + b"\xed" + bob.public + b"blindrelay/v1"
    )


def test_a_one_time_prekey_changes_the_secret(parties):
    alice, bob, spk, otpk = parties
    with_otpk = x3dh.initiate(alice, bundle_of(bob, spk, otpk), seeded_rng(b"eph"))
    without = x3dh.initiate(alice, bundle_of(bob, spk, None), seeded_rng(b"eph"))
    assert with_otpk.shared_secret != without.shared_secret


def test_initiator_refuses_a_bundle_whose_signature_fails(parties):
    alice, _, spk, _ = parties
    mallory = IdentityKeyPair.generate(seeded_rng(b"mallory"))
    forged = PreKeyBundle(mallory.public, 1, spk.public, spk.signature, None, None)
    with pytest.raises(InvalidSignature):
        x3dh.initiate(alice, forged, seeded_rng(b"eph"))


def test_recipient_refuses_a_low_order_ephemeral_key(parties):
    alice, bob, spk, _ = parties
    with pytest.raises(InvalidKey):
        x3dh.respond(bob, spk.keypair, None, alice.public, b"\x01" + bytes(31))


def test_initiator_refuses_a_low_order_one_time_prekey(parties):
    alice, bob, spk, _ = parties
    bundle = PreKeyBundle(bob.public, 1, spk.public, spk.signature, 3, bytes(32))
    with pytest.raises(InvalidKey):
        x3dh.initiate(alice, bundle, seeded_rng(b"eph"))
