"""The Noise Protocol Framework, revision 34, for the ``25519_ChaChaPoly_BLAKE2b`` suite.

A protocol construction written from the Noise specification (sections 4–5),
like :mod:`.crypto.x3dh` from Signal's: X25519 (``crypto_scalarmult``) and
ChaCha20-Poly1305 IETF (``crypto_aead_chacha20poly1305_ietf_*``) are PyNaCl's;
BLAKE2b-512 is the standard library's (``hashlib``, RFC 7693 — the same function
as libsodium's ``generichash``, twenty times cheaper per call than PyNaCl's
wrapper, which made up most of a handshake's cost), and HMAC over it the
standard library's RFC 2104 construction, as Noise §4.3 defines HMAC-HASH; HKDF
is the chain of Noise §4.3.
Checked against the cacophony vectors and, in the tests, an independent
implementation (``protocol/vectors/noise/``, ``tests/protocol/test_noise.py``).

Sans I/O: randomness is a parameter (``rng``); messages are bytes in, bytes out.
Patterns: the interactive ones SPEC §1.3 compares (NN, NK, NX, XX, IK), without
PSK modes.

Not here: what blindrelay puts in the handshake, its limits, framing and rekey
schedule (:mod:`.channel`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

Rng = Callable[[int], bytes]

DHLEN = 32
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535
"""Noise §3: every Noise message, handshake or transport, is at most 65535 bytes."""
MAX_NONCE = 2**64 - 1
"""Noise §5.1: the nonce 2^64−1 is reserved (REKEY uses it); never used to encrypt."""

SUITE = "25519_ChaChaPoly_BLAKE2b"


class NoiseError(Exception):
    """A Noise operation failed; the handshake or session cannot go on."""


class DecryptFailed(NoiseError):
    """A ciphertext failed authentication (tampered, reordered, replayed, or the wrong key)."""


class NonceExhausted(NoiseError):
    """The 64-bit nonce ran out (Noise §5.1); the session must end."""


class InvalidPublicKey(NoiseError):
    """An X25519 public key of low order, whose shared secret is all zeros."""


# --- Noise §4: the crypto functions -------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: bytes
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != DHLEN:
            raise ValueError("an X25519 private key is 32 bytes")
        return cls(private, crypto_scalarmult_base(private))

    @classmethod
    def generate(cls, rng: Rng) -> KeyPair:
        """GENERATE_KEYPAIR() from the injected randomness."""
        return cls.from_private(rng(DHLEN))


def dh(key_pair: KeyPair, public: bytes) -> bytes:
    """DH(): X25519. libsodium refuses a low-order point (an all-zero secret)."""
    try:
        return crypto_scalarmult(key_pair.private, public)
    except RuntimeError as exc:  # libsodium's refusal comes as a bare RuntimeError
        raise InvalidPublicKey("low-order X25519 public key") from exc


_nonce = struct.Struct("<4xQ").pack
"""Noise §12.3 (ChaChaPoly): 32 bits of zeros, then the 64-bit counter little-endian."""


def encrypt(k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    return crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(n), k)


def decrypt(k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    try:
        return crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, _nonce(n), k)
    except CryptoError as exc:
        raise DecryptFailed("authentication failed") from exc


def rekey(k: bytes) -> bytes:
    """REKEY(k) (Noise §4.2): the first 32 bytes of ENCRYPT(k, maxnonce, zerolen, zeros)."""
    return encrypt(k, MAX_NONCE, b"", bytes(KEYLEN))[:KEYLEN]


def hash_(data: bytes) -> bytes:
    """HASH(): BLAKE2b with a 64-byte output."""
    return hashlib.blake2b(data).digest()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-HASH (RFC 2104 over BLAKE2b-512, block length 128)."""
    return hmac.digest(key, data, hashlib.blake2b)


def hkdf(chaining_key: bytes, input_key_material: bytes, outputs: int) -> list[bytes]:
    """HKDF(ck, ikm, num_outputs) exactly as Noise §4.3 defines it (2 or 3 outputs)."""
    temp_key = hmac_hash(chaining_key, input_key_material)
    out = [hmac_hash(temp_key, b"\x01")]
    for i in range(2, outputs + 1):
        out.append(hmac_hash(temp_key, out[-1] + bytes([i])))
    return out


# --- Noise §5.1: CipherState --------------------------------------------------------


class CipherState:
    """A key and a nonce. Failed decryption changes nothing (Noise §5.1)."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        k = self.k
        if k is None:
            return plaintext
        n = self.n
        if n >= MAX_NONCE:
            raise NonceExhausted("no nonce left")
        self.n = n + 1
        return crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(n), k)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        k = self.k
        if k is None:
            return ciphertext
        n = self.n
        if n >= MAX_NONCE:
            raise NonceExhausted("no nonce left")
        plaintext = decrypt(k, n, ad, ciphertext)
        self.n = n + 1
        return plaintext

    def rekey(self) -> None:
        """Rekey() (Noise §4.2, §11.3): a new key, the nonce kept."""
        if self.k is not None:
            self.k = rekey(self.k)


# --- Noise §5.2: SymmetricState -----------------------------------------------------


class SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hash_(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, input_key_material, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = hkdf(self.ck, b"", 2)
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])


# --- Noise §5.3 and §7: HandshakeState ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """A handshake pattern (Noise §7): pre-messages, then messages alternating from the
    initiator. Tokens are the spec's: e, s, ee, es, se, ss."""

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]


PATTERNS = {
    p.name: p
    for p in (
        Pattern("NN", (), (), (("e",), ("e", "ee"))),
        Pattern("NK", (), ("s",), (("e", "es"), ("e", "ee"))),
        Pattern("NX", (), (), (("e",), ("e", "ee", "s", "es"))),
        Pattern("XX", (), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
        Pattern("IK", (), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    )
}
"""The fundamental interactive patterns this module runs (Noise §7.4–7.5)."""


def protocol_name(pattern: str) -> bytes:
    return f"Noise_{pattern}_{SUITE}".encode("ascii")


class HandshakeState:
    """One side of a handshake: write and read its messages in turn, then :meth:`split`.

    ``s`` is our static key pair, ``rs`` the peer's static public key when the
    pattern has it as a pre-message; ephemerals come from ``rng``.
    """

    def __init__(
        self,
        pattern: str,
        *,
        initiator: bool,
        rng: Rng,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        rs: bytes | None = None,
    ) -> None:
        self.pattern = PATTERNS[pattern]
        self.initiator = initiator
        self.symmetric = SymmetricState(protocol_name(pattern))
        self.s = s
        self.e: KeyPair | None = None
        self.rs = rs
        self.re: bytes | None = None
        self._rng = rng
        self._message = 0
        self.symmetric.mix_hash(prologue)
        # Noise §7.1: pre-message keys are hashed, the initiator's first.
        for op in self.pattern.initiator_pre:
            self._mix_pre(op, ours=initiator)
        for op in self.pattern.responder_pre:
            self._mix_pre(op, ours=not initiator)

    def _mix_pre(self, op: str, *, ours: bool) -> None:
        if op != "s":
            raise ValueError(f"pre-message token {op} not supported")
        key = (self.s.public if self.s is not None else None) if ours else self.rs
        if key is None:
            raise ValueError("the pattern needs a static key known before the handshake")
        self.symmetric.mix_hash(key)

    @property
    def handshake_hash(self) -> bytes:
        """``h``: after the last message, a value unique to this session (Noise §11.2)."""
        return self.symmetric.h

    @property
    def finished(self) -> bool:
        return self._message == len(self.pattern.messages)

    @property
    def our_turn(self) -> bool:
        """Whether the next message is ours to write."""
        return not self.finished and (self._message % 2 == 0) == self.initiator

    def write_message(self, payload: bytes = b"") -> bytes:
        if not self.our_turn:
            raise NoiseError("not our turn to write")
        sym = self.symmetric
        out = bytearray()
        for op in self.pattern.messages[self._message]:
            if op == "e":
                self.e = KeyPair.generate(self._rng)
                out += self.e.public
                sym.mix_hash(self.e.public)
            elif op == "s":
                if self.s is None:
                    raise NoiseError("the pattern sends a static key we do not have")
                out += sym.encrypt_and_hash(self.s.public)
            else:
                sym.mix_key(self._dh(op))
        out += sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message over 65535 bytes")
        self._message += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """The payload of the peer's next message; any failure ends the handshake."""
        if self.finished or self.our_turn:
            raise NoiseError("not the peer's turn to write")
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message over 65535 bytes")
        sym = self.symmetric
        at = 0
        for op in self.pattern.messages[self._message]:
            if op == "e":
                if len(message) - at < DHLEN:
                    raise NoiseError("handshake message too short")
                self.re = message[at : at + DHLEN]
                at += DHLEN
                sym.mix_hash(self.re)
            elif op == "s":
                size = DHLEN + (TAGLEN if sym.cipher.has_key() else 0)
                if len(message) - at < size:
                    raise NoiseError("handshake message too short")
                self.rs = sym.decrypt_and_hash(message[at : at + size])
                at += size
            else:
                sym.mix_key(self._dh(op))
        if sym.cipher.has_key() and len(message) - at < TAGLEN:
            raise NoiseError("handshake message too short")
        payload = sym.decrypt_and_hash(message[at:])
        self._message += 1
        return payload

    def _dh(self, token: str) -> bytes:
        # Noise §5.3: "es" is DH(e, rs) for the initiator and DH(s, re) for the responder.
        ours, theirs = token[0], token[1]
        if not self.initiator:
            ours, theirs = theirs, ours
        key_pair = self.e if ours == "e" else self.s
        public = self.re if theirs == "e" else self.rs
        if key_pair is None or public is None:
            raise NoiseError(f"{token}: a key is missing")
        return dh(key_pair, public)

    def split(self) -> tuple[CipherState, CipherState]:
        """(ours to send, ours to receive) once every message is done."""
        if not self.finished:
            raise NoiseError("the handshake is not finished")
        initiator_to_responder, responder_to_initiator = self.symmetric.split()
        if self.initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder
