"""The byte strings an account signs (protocol/transcripts.py), against SPEC §3.4 and
§4.2–4.3 written out by hand: a change to a layout is a change to the protocol."""

from __future__ import annotations

import pytest

from blindrelay.protocol.transcripts import (
    login_transcript,
    register_transcript,
    rotate_transcript,
)

RELAY_KEY = bytes(range(32))
CHALLENGE = bytes(range(32, 64))
CHANNEL = bytes(range(64, 128))
OLD_KEY = b"\x11" * 32
NEW_KEY = b"\x22" * 32


def test_the_registration_transcript_is_laid_out_as_spec_4_2_says() -> None:
    expected = (
        b"blindrelay/v2/auth" + b"\x00" + b"\x01" + RELAY_KEY + CHALLENGE + CHANNEL
        + bytes([len("alice")]) + b"alice" + b"\x02" + NEW_KEY
    )  # fmt: skip
    assert (
        register_transcript(
            RELAY_KEY, CHALLENGE, "alice", "business", NEW_KEY, handshake_hash=CHANNEL
        )
        == expected
    )


def test_the_login_transcript_is_laid_out_as_spec_4_3_says() -> None:
    expected = (
        b"blindrelay/v2/auth" + b"\x00" + b"\x02" + RELAY_KEY + CHALLENGE + CHANNEL
        + bytes([len("bob")]) + b"bob"
    )  # fmt: skip
    assert login_transcript(RELAY_KEY, CHALLENGE, "bob", handshake_hash=CHANNEL) == expected


def test_the_rotation_transcript_is_laid_out_as_spec_3_4_says() -> None:
    issued_at = 1_700_000_000_123
    expected = (
        b"blindrelay/v1/rotate" + b"\x00" + RELAY_KEY + bytes([len("carol")]) + b"carol"
        + OLD_KEY + NEW_KEY + issued_at.to_bytes(8, "big")
    )  # fmt: skip
    assert rotate_transcript(RELAY_KEY, "carol", OLD_KEY, NEW_KEY, issued_at) == expected


def test_a_user_and_a_business_sign_different_registrations() -> None:
    """The kind byte is signed: a proof for a user account cannot register a business."""
    user = register_transcript(
        RELAY_KEY, CHALLENGE, "alice", "user", NEW_KEY, handshake_hash=CHANNEL
    )
    business = register_transcript(
        RELAY_KEY, CHALLENGE, "alice", "business", NEW_KEY, handshake_hash=CHANNEL
    )
    assert user != business
    assert user[-33] == 0x01 and business[-33] == 0x02


def test_a_login_is_never_a_prefix_of_a_registration() -> None:
    """The purpose byte separates them: a login proof cannot stand for a registration."""
    login = login_transcript(RELAY_KEY, CHALLENGE, "alice", handshake_hash=CHANNEL)
    register = register_transcript(
        RELAY_KEY, CHALLENGE, "alice", "user", NEW_KEY, handshake_hash=CHANNEL
    )
    assert not register.startswith(login)


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_a_handshake_hash_of_any_other_size_is_refused(size: int) -> None:
    """The channel binding is the 64-byte Noise hash; anything else is a caller's bug."""
    with pytest.raises(ValueError):
        login_transcript(RELAY_KEY, CHALLENGE, "alice", handshake_hash=bytes(size))
    with pytest.raises(ValueError):
        register_transcript(
            RELAY_KEY, CHALLENGE, "alice", "user", NEW_KEY, handshake_hash=bytes(size)
        )
