"""Proof of work for registration: a memory-hard puzzle the relay may set (SPEC §4.6.3).

The relay announces a cost in HELLO (:class:`~.frames.ProofOfWork`: difficulty
``bits`` and Argon2id's ``opslimit`` and ``memlimit``). The client looks for a
16-byte nonce such that

    Argon2id(password = "blindrelay/v1/pow" || 0x00 || registration transcript || nonce,
             salt = challenge[0:16], opslimit, memlimit, 32 bytes)

starts with ``bits`` zero bits, and sends it in REGISTER. The registration
transcript (SPEC §4.2) binds relay key, challenge, handle, kind and identity
key, so a solution is good for exactly one registration on one connection,
and the context string keeps the input apart from every signed message.

Solving takes 2^bits evaluations on average, checking takes one — and Argon2id
makes each evaluation cost memory, which GPUs and ASICs cannot cheapen the way
they cheapen plain hashing. The expected cost is bounded
(:func:`expected_solve_ms` ≤ ``POW_MAX_EXPECTED_SOLVE_MS`` on a slow reference
device), so a relay cannot demand more than a slow phone does in time, and a
client refuses a HELLO that asks for more.

Pure functions; CPU-bound — an I/O layer runs :func:`solve` and :func:`verify`
off its event loop. Argon2id is libsodium's (PyNaCl), not ours. Not here: the
HELLO record (``frames``), when the relay asks (``server``).
"""

from __future__ import annotations

import math

from nacl.pwhash import argon2id

from . import limits

POW_CONTEXT = b"blindrelay/v1/pow\x00"
DIGEST_BYTES = 32
SALT_BYTES = argon2id.SALTBYTES
"""16: libsodium's Argon2id salt size; the salt is the challenge's first 16 bytes."""


def expected_solve_ms(bits: int, opslimit: int, memlimit: int) -> int:
    """Expected time to solve on the reference device (SPEC §4.6.3), in ms.

    Argon2id's time is dominated by filling and reading ``memlimit`` bytes
    ``opslimit`` times; 2^bits evaluations are expected.
    """
    work = (1 << bits) * opslimit * memlimit
    return math.ceil(work / limits.POW_REFERENCE_BYTES_PER_MS)


def proof_digest(
    transcript: bytes, challenge: bytes, nonce: bytes, opslimit: int, memlimit: int
) -> bytes:
    """One Argon2id evaluation over the domain-separated input (SPEC §4.6.3)."""
    return argon2id.kdf(
        DIGEST_BYTES,
        POW_CONTEXT + transcript + nonce,
        challenge[:SALT_BYTES],
        opslimit=opslimit,
        memlimit=memlimit,
    )


def leading_zero_bits(digest: bytes) -> int:
    """Zero bits at the start of ``digest``, most significant bit of byte 0 first."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def verify(
    transcript: bytes, challenge: bytes, nonce: bytes, bits: int, opslimit: int, memlimit: int
) -> bool:
    """Whether ``nonce`` solves the puzzle: exactly one Argon2id evaluation."""
    if len(nonce) != limits.POW_NONCE_BYTES:
        return False
    digest = proof_digest(transcript, challenge, nonce, opslimit, memlimit)
    return leading_zero_bits(digest) >= bits


def solve(
    transcript: bytes, challenge: bytes, bits: int, opslimit: int, memlimit: int, start: int = 0
) -> bytes:
    """The first nonce from ``start`` (counting up, big-endian) that solves the puzzle.

    Deterministic for given inputs, which makes the vectors reproducible; any
    nonce that verifies is as good.
    """
    counter = start
    while True:
        nonce = counter.to_bytes(limits.POW_NONCE_BYTES, "big")
        digest = proof_digest(transcript, challenge, nonce, opslimit, memlimit)
        if leading_zero_bits(digest) >= bits:
            return nonce
        counter += 1
