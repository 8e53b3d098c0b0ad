"""Padding to size buckets (SPEC §13.5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindrelay.protocol.crypto.padding import BUCKETS, MAX_PLAINTEXT_BYTES, pad, unpad
from blindrelay.protocol.crypto.session import ENVELOPE_OVERHEAD_MAX
from blindrelay.protocol.errors import DecryptionFailed, PlaintextTooLarge
from blindrelay.protocol.limits import MAX_CIPHERTEXT_BYTES


def test_buckets_are_powers_of_two_from_256_bytes_to_32_kib():
    assert BUCKETS == (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def test_largest_envelope_fits_the_relay_cap():
    assert BUCKETS[-1] + ENVELOPE_OVERHEAD_MAX <= MAX_CIPHERTEXT_BYTES


@given(st.binary(max_size=MAX_PLAINTEXT_BYTES))
def test_padding_round_trips_to_a_bucket_size(plaintext):
    padded = pad(plaintext)
    assert len(padded) in BUCKETS
    assert len(padded) > len(plaintext)
    assert unpad(padded) == plaintext


@pytest.mark.parametrize(("length", "bucket"), [(0, 256), (255, 256), (256, 512), (32767, 32768)])
def test_bucket_edges(length, bucket):
    assert len(pad(bytes(length))) == bucket


def test_plaintext_over_the_largest_bucket_is_refused():
    with pytest.raises(PlaintextTooLarge):
        pad(bytes(MAX_PLAINTEXT_BYTES + 1))


@pytest.mark.parametrize(
    "padded",
    [bytes(256), b"\x01" * 256, b"\x80" + bytes(254), b"x" * 255 + b"\x81", b"\x80" + bytes(299)],
    ids=["zeros", "no-marker", "not-a-bucket", "bad-marker", "300-bytes"],
)
def test_malformed_padding_is_a_decryption_failure(padded):
    with pytest.raises(DecryptionFailed):
        unpad(padded)


def reference_unpad(padded: bytes) -> bytes | None:
    """The rule as SPEC §13.5 states it: strip trailing zeros, one 0x80 must remain."""
    if len(padded) not in BUCKETS:
        return None
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        return None
    return stripped[:-1]


@given(
    st.binary(max_size=600),
    st.sampled_from([b"", b"\x80", b"\x81", b"\x00\x80", b"\x80\x80", b"\x80\x01"]),
    st.sampled_from([256, 512, 1024]),
)
def test_unpad_agrees_with_the_spec_rule_on_any_bucket_sized_input(body, tail, size):
    padded = (body + tail)[:size]
    padded += bytes(size - len(padded))
    expected = reference_unpad(padded)
    if expected is None:
        with pytest.raises(DecryptionFailed):
            unpad(padded)
    else:
        assert unpad(padded) == expected
