"""SPEC §4.6.3: the registration proof of work, its cost bound, and both machines' use of it."""

from __future__ import annotations

import msgpack
import pytest
from nacl.pwhash import argon2id
from nacl.signing import SigningKey

from blindrelay.protocol import frames as f
from blindrelay.protocol import limits
from blindrelay.protocol import pow as puzzle
from blindrelay.protocol.connection import ClientConnection, RelayConnection
from blindrelay.protocol.errors import MalformedFrame, RegistrationRefused
from blindrelay.protocol.transcripts import register_transcript

from .pair import ALICE, T0, counter_rng, signer

MIB = 1024 * 1024
TINY = f.ProofOfWork(bits=3, opslimit=1, memlimit=MIB)
"""Cheap enough for tests: ~8 evaluations of 1 MiB."""

RELAY_KEY = bytes(range(32))
CHALLENGE = bytes(range(32, 64))
CHANNEL = bytes(range(64, 128))
TRANSCRIPT = register_transcript(
    RELAY_KEY, CHALLENGE, "alice", "user", bytes(32), handshake_hash=CHANNEL
)


def test_a_solution_verifies_and_has_the_leading_zero_bits() -> None:
    nonce = puzzle.solve(TRANSCRIPT, CHALLENGE, TINY.bits, TINY.opslimit, TINY.memlimit)
    assert len(nonce) == limits.POW_NONCE_BYTES
    digest = puzzle.proof_digest(TRANSCRIPT, CHALLENGE, nonce, TINY.opslimit, TINY.memlimit)
    assert puzzle.leading_zero_bits(digest) >= TINY.bits
    assert puzzle.verify(TRANSCRIPT, CHALLENGE, nonce, TINY.bits, TINY.opslimit, TINY.memlimit)


def test_the_digest_is_argon2id_over_the_domain_separated_input() -> None:
    nonce = bytes(16)
    expected = argon2id.kdf(
        32, b"blindrelay/v1/pow\x00" + TRANSCRIPT + nonce, CHALLENGE[:16],
        opslimit=1, memlimit=MIB,
    )  # fmt: skip
    assert puzzle.proof_digest(TRANSCRIPT, CHALLENGE, nonce, 1, MIB) == expected


@pytest.mark.parametrize(
    "changed",
    [
        register_transcript(bytes(32), CHALLENGE, "alice", "user", bytes(32), handshake_hash=CHANNEL),
        register_transcript(RELAY_KEY, bytes(32), "alice", "user", bytes(32), handshake_hash=CHANNEL),
        register_transcript(RELAY_KEY, CHALLENGE, "alicf", "user", bytes(32), handshake_hash=CHANNEL),
        register_transcript(RELAY_KEY, CHALLENGE, "alice", "business", bytes(32), handshake_hash=CHANNEL),
        register_transcript(RELAY_KEY, CHALLENGE, "alice", "user", bytes(31) + b"\x01", handshake_hash=CHANNEL),
        register_transcript(RELAY_KEY, CHALLENGE, "alice", "user", bytes(32), handshake_hash=bytes(64)),
    ],
    ids=["relay_key", "challenge", "handle", "kind", "identity_key", "channel"],
)
def test_a_solution_is_bound_to_every_field_of_the_registration(changed: bytes) -> None:
    """A proof found for one registration is worth nothing for another: with 16 bits
    the chance that the same nonce also solves a changed input is 2^-16."""
    cost = (16, 1, MIB)
    nonce = bytes.fromhex(POW_16_BITS_NONCE)
    assert puzzle.verify(TRANSCRIPT, CHALLENGE, nonce, *cost)
    challenge = changed[20 + 32 : 20 + 64]
    assert not puzzle.verify(changed, challenge, nonce, *cost)


POW_16_BITS_NONCE = "0000000000000000000000000001281c"
"""Found once with puzzle.solve(TRANSCRIPT, CHALLENGE, 16, 1, MIB) (~30 s); checked by
the first assertion of the test above."""


def test_a_wrong_or_short_nonce_does_not_verify() -> None:
    cost = (TINY.bits, TINY.opslimit, TINY.memlimit)
    good = puzzle.solve(TRANSCRIPT, CHALLENGE, *cost)
    wrong = next(
        n.to_bytes(16, "big")
        for n in range(1000)
        if not puzzle.verify(TRANSCRIPT, CHALLENGE, n.to_bytes(16, "big"), *cost)
    )
    assert not puzzle.verify(TRANSCRIPT, CHALLENGE, wrong, *cost)
    assert not puzzle.verify(TRANSCRIPT, CHALLENGE, good[:15], *cost)


def test_leading_zero_bits_counts_from_the_most_significant_bit() -> None:
    assert puzzle.leading_zero_bits(b"\x00\x00") == 16
    assert puzzle.leading_zero_bits(b"\x00\x01") == 15
    assert puzzle.leading_zero_bits(b"\x10\x00") == 3
    assert puzzle.leading_zero_bits(b"\x80") == 0


def test_the_expected_solve_time_is_the_memory_passed_at_the_reference_speed() -> None:
    assert puzzle.expected_solve_ms(4, 2, 16 * MIB) == 2148  # 16 × 32 MiB at 250 MB/s
    default = (limits.POW_OPSLIMIT, limits.POW_MEMLIMIT_BYTES)
    assert puzzle.expected_solve_ms(6, *default) <= limits.POW_MAX_EXPECTED_SOLVE_MS
    assert puzzle.expected_solve_ms(7, *default) > limits.POW_MAX_EXPECTED_SOLVE_MS


@pytest.mark.parametrize(
    ("bits", "opslimit", "memlimit"),
    [
        (0, 1, MIB),
        (limits.POW_MAX_BITS + 1, 1, MIB),
        (1, 0, MIB),
        (1, limits.POW_MAX_OPSLIMIT + 1, MIB),
        (1, 1, limits.POW_MIN_MEMLIMIT_BYTES - 1024),
        (1, 1, limits.POW_MAX_MEMLIMIT_BYTES + 1024),
        (1, 1, MIB + 1),
        (7, limits.POW_OPSLIMIT, limits.POW_MEMLIMIT_BYTES),
        (20, 1, MIB),
    ],
    ids=[
        "no-bits", "too-many-bits", "no-passes", "too-many-passes", "too-little-memory",
        "too-much-memory", "memory-not-kib", "over-the-bound", "over-the-bound-small-memory",
    ],
)  # fmt: skip
def test_a_cost_out_of_bounds_is_malformed(bits: int, opslimit: int, memlimit: int) -> None:
    """SPEC §4.6.3: "a HELLO asking more is malformed and a client refuses it"."""
    with pytest.raises(MalformedFrame):
        f.ProofOfWork(bits=bits, opslimit=opslimit, memlimit=memlimit)


# --- the machines ------------------------------------------------------------------


def pow_pair(cost: f.ProofOfWork | None = TINY) -> tuple[RelayConnection, ClientConnection]:
    relay = RelayConnection(
        bytes(SigningKey(b"\x01" * 32).verify_key), T0, counter_rng(), cost, handshake_hash=CHANNEL
    )
    client = ClientConnection(CHANNEL)
    for data in relay.data_to_send():
        client.receive_data(data)
    return relay, client


def send_register(relay: RelayConnection, client: ClientConnection, **extra: object) -> f.Register:
    client.register("alice", "user", ALICE.verify_key.encode(), signer(ALICE), **extra)  # type: ignore[arg-type]
    for data in client.data_to_send():
        relay.receive_data(data)
    (frame,) = relay.events_received()
    assert isinstance(frame, f.Register)
    return frame


def test_hello_announces_the_cost_and_the_longer_challenge_lifetime() -> None:
    _, client = pow_pair()
    assert client.hello is not None and client.hello.pow == TINY
    assert client.hello.expires_at == T0 + limits.POW_CHALLENGE_TTL_MS
    _, plain = pow_pair(None)
    assert plain.hello is not None and plain.hello.pow is None
    assert plain.hello.expires_at == T0 + limits.CHALLENGE_TTL_MS


def test_the_client_solves_and_the_relay_checks_with_one_evaluation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay, client = pow_pair()
    frame = send_register(relay, client)
    assert frame.pow_nonce is not None
    relay.verify_registration(frame, T0 + 1)
    check = relay.registration_proof_check(frame)
    assert check is not None
    calls: list[bytes] = []
    real = argon2id.kdf
    monkeypatch.setattr(argon2id, "kdf", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert check() is True
    assert len(calls) == 1


def test_a_register_without_a_nonce_is_refused_before_any_evaluation() -> None:
    relay, client = pow_pair()
    frame = send_register(relay, client, pow_nonce=None)
    assert frame.pow_nonce is not None  # the machine solved it by itself
    bare = f.Register(
        id=frame.id, handle=frame.handle, kind=frame.kind, identity_key=frame.identity_key,
        signature=frame.signature,
    )  # fmt: skip
    with pytest.raises(RegistrationRefused):
        relay.registration_proof_check(bare)


def test_a_relay_without_proof_of_work_ignores_a_nonce() -> None:
    relay, client = pow_pair(None)
    frame = send_register(relay, client, pow_nonce=bytes(16))
    assert relay.registration_proof_check(frame) is None


def hello_asking(bits: int) -> bytes:
    return msgpack.packb(
        {
            "t": 1, "version": 2, "relay_key": RELAY_KEY, "challenge": CHALLENGE,
            "expires_at": T0, "now": T0, "pow": {"bits": bits, "opslimit": 1, "memlimit": MIB},
        }
    )  # fmt: skip


def test_a_client_refuses_a_hello_that_asks_too_much() -> None:
    """The record is validated when decoded: an over-costly HELLO never reaches the solver."""
    ClientConnection().receive_data(hello_asking(1))
    with pytest.raises(MalformedFrame):
        ClientConnection().receive_data(hello_asking(31))
