"""Safety numbers (protocol/crypto/fingerprint.py): frozen vectors, symmetry, sensitivity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol.crypto import fingerprint as fp
from blindrelay.protocol.errors import InvalidKey

VECTORS = json.loads(
    (
        Path(__file__).resolve().parents[3] / "protocol" / "vectors" / "crypto" / "fingerprint.json"
    ).read_text()
)
ALICE_KEY = bytes(SigningKey(bytes(range(32))).verify_key)
AIRLINE_KEY = bytes(SigningKey(bytes(range(32, 64))).verify_key)


@pytest.mark.parametrize(
    "case", VECTORS["cases"], ids=lambda c: f"{c['our_handle']}-{c['their_handle']}"
)
def test_known_answer_vectors_still_hold(case: dict[str, str]) -> None:
    for side in ("our", "their"):
        seed = bytes.fromhex(case[f"{side}_identity_seed"])
        assert bytes(SigningKey(seed).verify_key).hex() == case[f"{side}_identity_key"]
    ours = bytes.fromhex(case["our_identity_key"])
    theirs = bytes.fromhex(case["their_identity_key"])
    assert fp.identity_digits(case["our_handle"], ours) == case["our_digits"]
    assert fp.identity_digits(case["their_handle"], theirs) == case["their_digits"]
    assert (
        fp.safety_number(case["our_handle"], ours, case["their_handle"], theirs)
        == case["safety_number"]
    )
    assert fp.fingerprint(ours) == case["our_fingerprint"]
    assert fp.fingerprint(theirs) == case["their_fingerprint"]
    assert fp.key_fingerprint(ours).hex() == case["our_key_fingerprint"]
    assert fp.key_fingerprint(theirs).hex() == case["their_key_fingerprint"]


def test_vector_file_records_the_current_constants() -> None:
    assert VECTORS["version"] == fp.SAFETY_NUMBER_VERSION
    assert VECTORS["iterations"] == fp.SAFETY_NUMBER_ITERATIONS


def test_digit_construction_reproduces_libsignals_published_vector() -> None:
    case = VECTORS["signal_compat"]
    halves = sorted(
        fp._displayable_digits(
            bytes.fromhex(case[f"{side}_key"]), case[f"{side}_stable_id"].encode()
        )
        for side in ("our", "their")
    )
    assert "".join(halves) == case["safety_number"]


def test_both_parties_compute_the_same_safety_number() -> None:
    seen_by_alice = fp.safety_number("alice", ALICE_KEY, "airline", AIRLINE_KEY)
    seen_by_airline = fp.safety_number("airline", AIRLINE_KEY, "alice", ALICE_KEY)
    assert seen_by_alice == seen_by_airline
    assert len(seen_by_alice) == 60
    assert seen_by_alice.isdigit()


def test_any_key_change_changes_the_safety_number() -> None:
    baseline = fp.safety_number("alice", ALICE_KEY, "airline", AIRLINE_KEY)
    for position in (0, 15, 31):
        flipped = bytearray(AIRLINE_KEY)
        flipped[position] ^= 0x01
        changed = fp.safety_number("alice", ALICE_KEY, "airline", bytes(flipped))
        assert changed != baseline
        # Our own half is untouched; only theirs moves.
        assert fp.identity_digits("alice", ALICE_KEY) in changed
    other_key = bytes(SigningKey(b"\x07" * 32).verify_key)
    assert fp.safety_number("alice", other_key, "airline", AIRLINE_KEY) != baseline


def test_handle_is_bound_into_the_safety_number() -> None:
    baseline = fp.safety_number("alice", ALICE_KEY, "airline", AIRLINE_KEY)
    assert fp.safety_number("alice", ALICE_KEY, "airline2", AIRLINE_KEY) != baseline


def test_format_groups_digits_by_five() -> None:
    digits = fp.safety_number("alice", ALICE_KEY, "airline", AIRLINE_KEY)
    formatted = fp.format_safety_number(digits)
    groups = formatted.split(" ")
    assert len(groups) == 12
    assert all(len(group) == 5 for group in groups)
    assert formatted.replace(" ", "") == digits


def test_fingerprint_is_short_hex_and_key_specific() -> None:
    short = fp.fingerprint(ALICE_KEY)
    assert len(short) == 32
    int(short, 16)
    assert short != fp.fingerprint(AIRLINE_KEY)


def test_short_fingerprint_is_a_prefix_of_the_badge_key_fingerprint() -> None:
    import hashlib

    badge_value = hashlib.blake2b(ALICE_KEY, digest_size=32).digest()  # SPEC §8.1
    assert fp.key_fingerprint(ALICE_KEY) == badge_value
    assert badge_value.hex().startswith(fp.fingerprint(ALICE_KEY))


@pytest.mark.parametrize("bad_key", [b"", b"\x01" * 31, b"\x01" * 33])
def test_malformed_identity_key_is_refused(bad_key: bytes) -> None:
    with pytest.raises(InvalidKey):
        fp.identity_digits("alice", bad_key)
    with pytest.raises(InvalidKey):
        fp.fingerprint(bad_key)
    with pytest.raises(InvalidKey):
        fp.key_fingerprint(bad_key)


def test_empty_handle_is_refused() -> None:
    with pytest.raises(ValueError, match="handle"):
        fp.identity_digits("", ALICE_KEY)
