"""HKDF-SHA256 and HMAC-SHA256 against RFC 5869 and RFC 4231 (SPEC §13.1)."""

from __future__ import annotations

import hashlib
import hmac as stdlib_hmac

import pytest

from blindrelay.protocol.crypto import kdf
from blindrelay.protocol.crypto.kdf import (
    INFO_STRINGS,
    hkdf,
    hkdf_expand,
    hkdf_extract,
    hmac_sha256,
    hmac_sha256_keyed,
    hmac_sha256_pair,
)

# RFC 5869 Appendix A, test cases 1-3 (SHA-256).
RFC5869 = [
    pytest.param(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="case1",
    ),
    pytest.param(
        bytes(range(0x00, 0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="case2",
    ),
    pytest.param(
        bytes.fromhex("0b" * 22),
        b"",
        b"",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="case3",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), RFC5869)
def test_hkdf_matches_rfc5869(ikm, salt, info, length, prk, okm):
    assert hkdf_extract(salt, ikm).hex() == prk
    assert hkdf_expand(bytes.fromhex(prk), info, length).hex() == okm
    assert hkdf(ikm, salt=salt, info=info, length=length).hex() == okm


def test_hmac_sha256_matches_rfc4231_case2():
    mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert mac.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_hkdf_refuses_output_lengths_outside_the_rfc_range(length):
    with pytest.raises(ValueError, match="length"):
        hkdf_expand(bytes(32), b"", length)


def test_info_strings_are_distinct_and_versioned():
    assert len(set(INFO_STRINGS)) == len(INFO_STRINGS)
    assert all(info.startswith(b"blindrelay/v1/") for info in INFO_STRINGS)


KEYS = [b"", b"\x01", bytes(32), bytes(range(64)), bytes(range(65)), b"k" * 200]
DATA = [b"", b"\x01", b"\x02", bytes(range(256)) * 3]


@pytest.mark.parametrize("key", KEYS)
def test_every_hmac_path_equals_the_standard_library(key):
    """The C fast path, the public fallback, the reusable key schedule and the pair
    are all exactly ``hmac.digest(key, data, hashlib.sha256)``."""
    for data in DATA:
        expected = stdlib_hmac.digest(key, data, hashlib.sha256)
        assert hmac_sha256(key, data) == expected
        assert kdf._hmac_new_public(key, data, "sha256").digest() == expected
        keyed = hmac_sha256_keyed(key)
        first, second = keyed.copy(), keyed.copy()
        first.update(data)
        second.update(data)
        assert first.digest() == second.digest() == expected
        assert hmac_sha256_pair(key, data, b"x" + data) == (
            expected,
            stdlib_hmac.digest(key, b"x" + data, hashlib.sha256),
        )


@pytest.mark.parametrize("length", [1, 31, 32, 33, 56, 64, 65, 255 * 32])
def test_hkdf_expand_equals_the_rfc_loop_written_out(length):
    prk, info = bytes(range(32)), b"blindrelay/test"
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = stdlib_hmac.digest(prk, block + info + bytes((counter,)), hashlib.sha256)
        output += block
        counter += 1
    assert hkdf_expand(prk, info, length) == output[:length]
