"""Key types and curve operations: RFC 7748 / RFC 8032 vectors, named failures (SPEC §13.2)."""

from __future__ import annotations

import nacl.bindings
import pytest

from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
    X25519KeyPair,
    ed25519_public_to_x25519,
    encode_ed25519_public,
    encode_x25519_public,
    signed_prekey_message,
    verify_signature,
    x25519,
)
from blindrelay.protocol.errors import InvalidKey, InvalidSignature


def counter_rng():
    state = {"n": 0}

    def rng(size: int) -> bytes:
        state["n"] += 1
        return bytes([state["n"]]) * size

    return rng


# RFC 7748 §5.2, the two single-step test vectors.
RFC7748_52 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "out"), RFC7748_52)
def test_x25519_matches_rfc7748_section_5_2(scalar, u, out):
    assert x25519(bytes.fromhex(scalar), bytes.fromhex(u)).hex() == out


def test_x25519_iterated_1000_times_matches_rfc7748_section_5_2():
    k = u = bytes.fromhex("09" + "00" * 31)
    expected = {
        1: "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079",
        1000: "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51",
    }
    for i in range(1, 1001):
        k, u = x25519(k, u), k
        if i in expected:
            assert k.hex() == expected[i]


def test_x25519_diffie_hellman_matches_rfc7748_section_6_1():
    alice = X25519KeyPair.from_private(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519KeyPair.from_private(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.public.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.dh(bob.public).hex() == shared
    assert bob.dh(alice.public).hex() == shared


# RFC 8032 §7.1, TEST 1-3.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
        "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e45"
        "8f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae"
        "67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032)
def test_identity_key_signs_as_rfc8032_section_7_1(seed, public, message, signature):
    identity = IdentityKeyPair.from_seed(bytes.fromhex(seed))
    assert identity.public.hex() == public
    assert identity.sign(bytes.fromhex(message)).hex() == signature
    verify_signature(bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032)
def test_altered_signature_or_message_is_an_invalid_signature(seed, public, message, signature):
    sig = bytearray.fromhex(signature)
    sig[5] ^= 1
    with pytest.raises(InvalidSignature):
        verify_signature(bytes.fromhex(public), bytes.fromhex(message), bytes(sig))
    with pytest.raises(InvalidSignature):
        verify_signature(
            bytes.fromhex(public), bytes.fromhex(message) + b"!", bytes.fromhex(signature)
        )


@pytest.mark.parametrize(
    ("public", "signature"), [(b"\x01" * 31, b"\x00" * 64), (b"\x01" * 32, b"")]
)
def test_malformed_signature_inputs_are_invalid_signatures(public, signature):
    with pytest.raises(InvalidSignature):
        verify_signature(public, b"m", signature)


def test_identity_dh_uses_the_libsodium_ed25519_to_x25519_conversion():
    alice = IdentityKeyPair.from_seed(bytes(range(32)))
    bob = IdentityKeyPair.from_seed(bytes(range(1, 33)))
    assert alice.x25519_public == ed25519_public_to_x25519(alice.public)
    assert alice.x25519_public == nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(alice.public)
    assert alice.dh(bob.x25519_public) == bob.dh(alice.x25519_public)


# Low-order points of Curve25519 (u-coordinates), as listed by libsodium/cr.yp.to.
LOW_ORDER_U = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER_U, ids=lambda p: p[:4].hex())
def test_low_order_x25519_point_is_an_invalid_key_not_a_runtime_error(point):
    with pytest.raises(InvalidKey):
        x25519(b"\x42" * 32, point)


@pytest.mark.parametrize("point", [bytes(32), b"\x01" + bytes(31)], ids=["zero", "identity"])
def test_low_order_ed25519_identity_key_is_an_invalid_key(point):
    with pytest.raises(InvalidKey):
        ed25519_public_to_x25519(point)


def test_wrong_length_keys_are_invalid_keys():
    with pytest.raises(InvalidKey):
        x25519(b"\x01" * 32, b"\x09" * 31)
    with pytest.raises(InvalidKey):
        IdentityKeyPair.from_seed(b"\x01" * 31)
    with pytest.raises(InvalidKey):
        X25519KeyPair.from_private(b"")


def test_encodings_carry_a_type_byte():
    key = b"\x07" * 32
    assert encode_x25519_public(key) == b"\x05" + key
    assert encode_ed25519_public(key) == b"\xed" + key
    assert signed_prekey_message(key) == b"blindrelay/v1/signed-prekey\x00\x05" + key


def make_bundle(with_one_time: bool = True):
    rng = counter_rng()
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, 7, rng)
    otpk = OneTimePreKey.generate(9, rng)
    return (
        identity,
        spk,
        otpk,
        PreKeyBundle(
            identity_key=identity.public,
            signed_prekey_id=spk.key_id,
            signed_prekey_public=spk.public,
            signed_prekey_signature=spk.signature,
            one_time_prekey_id=otpk.key_id if with_one_time else None,
            one_time_prekey_public=otpk.public if with_one_time else None,
        ),
    )


def test_signed_prekey_signature_covers_the_domain_separated_encoding():
    identity, spk, _, bundle = make_bundle()
    verify_signature(identity.public, signed_prekey_message(spk.public), spk.signature)
    bundle.verify()


def test_bundle_with_a_forged_signed_prekey_is_refused():
    _, _, otpk, bundle = make_bundle()
    forged = PreKeyBundle(
        bundle.identity_key, 7, otpk.public, bundle.signed_prekey_signature, None, None
    )
    with pytest.raises(InvalidSignature):
        forged.verify()


def test_bundle_with_half_a_one_time_prekey_is_refused():
    _, _, _, bundle = make_bundle()
    half = PreKeyBundle(
        bundle.identity_key, 7, bundle.signed_prekey_public, bundle.signed_prekey_signature, 9, None
    )
    with pytest.raises(InvalidKey):
        half.verify()


@pytest.mark.parametrize("with_one_time", [True, False])
def test_everything_round_trips_through_bytes(with_one_time):
    identity, spk, otpk, bundle = make_bundle(with_one_time)
    assert IdentityKeyPair.from_bytes(identity.to_bytes()) == identity
    assert identity.to_bytes() == identity.seed
    assert SignedPreKey.from_bytes(spk.to_bytes()) == spk
    assert OneTimePreKey.from_bytes(otpk.to_bytes()) == otpk
    assert PreKeyBundle.from_bytes(bundle.to_bytes()) == bundle
    assert X25519KeyPair.from_bytes(otpk.keypair.to_bytes()) == otpk.keypair


@pytest.mark.parametrize("cut", [0, 1, 132, 134])
def test_truncated_bundle_bytes_are_refused(cut):
    _, _, _, bundle = make_bundle()
    with pytest.raises(InvalidKey):
        PreKeyBundle.from_bytes(bundle.to_bytes()[:cut])


def test_private_material_stays_out_of_reprs():
    identity, spk, _, _ = make_bundle()
    assert identity.seed.hex() not in repr(identity)
    assert spk.keypair.private.hex() not in repr(spk)


@pytest.mark.parametrize("key_id", [-1, 2**32, True])
def test_key_ids_are_unsigned_32_bit(key_id):
    with pytest.raises(ValueError, match="key id"):
        OneTimePreKey(key_id, X25519KeyPair.from_private(b"\x01" * 32))


@pytest.mark.parametrize("point", [bytes(32), b"\x01" + bytes(31)], ids=["zero", "identity"])
def test_bundle_with_a_low_order_identity_key_is_an_invalid_key(point):
    """PreKeyBundle.verify names a key that is no usable point InvalidKey, as the module
    promises, before it looks at any signature (which would say InvalidSignature)."""
    _, _, _, bundle = make_bundle()
    with pytest.raises(InvalidKey):
        PreKeyBundle(point, 7, bundle.signed_prekey_public, bundle.signed_prekey_signature).verify()


def test_bundle_with_a_one_time_prekey_of_the_wrong_length_is_refused():
    _, _, otpk, bundle = make_bundle()
    short = PreKeyBundle(
        bundle.identity_key, 7, bundle.signed_prekey_public, bundle.signed_prekey_signature,
        9, otpk.public[:31],
    )  # fmt: skip
    with pytest.raises(InvalidKey):
        short.verify()
