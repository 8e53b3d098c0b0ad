"""The client–relay channel (SPEC §1.3): a Noise NX handshake, then every frame sealed.

Theory of operation. The client writes handshake message 1 (``-> e``, 32 bytes);
the relay answers message 2 (``<- e, ee, s, es``) whose payload binds its Noise
static key to its Ed25519 relay key (:func:`static_binding`). From then on each
WebSocket message is one Noise transport message holding one frame; both
directions rekey every :data:`REKEY_INTERVAL` messages. The handshake hash goes
into the LOGIN/REGISTER transcripts (SPEC §4.2–4.3), so a signature made on one
channel is worth nothing on any other.

Both ends are sans I/O: bytes in, bytes out, randomness passed in. Any failure
is a :class:`ChannelError`; the connection then closes with
:data:`CLOSE_CHANNEL_FAILED` and nothing is answered (SPEC §1.3.6).

Not here: the Noise framework itself (:mod:`.noise`), frames (:mod:`.connection`),
sockets (``server.relay``, ``client.transport``).
"""

from __future__ import annotations

from nacl.hashlib import blake2b
from nacl.signing import SigningKey

from . import limits, noise
from .crypto.keys import signature_valid
from .noise import CipherState, HandshakeState, KeyPair, NoiseError, Rng

PATTERN = "NX"
PROTOCOL_NAME = noise.protocol_name(PATTERN)
"""``Noise_NX_25519_ChaChaPoly_BLAKE2b``: why NX, SPEC §1.3.1."""

PROLOGUE = b"blindrelay.v2"
"""Mixed into the handshake hash: the subprotocol, so a handshake of another
protocol or version never completes as this one."""

STATIC_CONTEXT = b"blindrelay/v2/noise-static\x00"
"""Signature context of the binding (SPEC §14): never a statement, proof or prekey."""

STATIC_DERIVATION = b"blindrelay/v2/noise-static-key"
"""Key separation: the relay's X25519 static private key is a keyed hash of its
Ed25519 seed, never the signing key itself (:func:`relay_static_key`)."""

HANDSHAKE_REQUEST_BYTES = noise.DHLEN
"""Message 1: the client's ephemeral public key and an empty payload."""

BINDING_BYTES = 32 + 64
"""Message 2's payload: relay_key || Ed25519 signature."""

HANDSHAKE_RESPONSE_BYTES = noise.DHLEN + (noise.DHLEN + noise.TAGLEN) + BINDING_BYTES + noise.TAGLEN
"""Message 2: e, the encrypted static, the encrypted binding: 192 bytes."""

TAG_BYTES = noise.TAGLEN
MAX_TRANSPORT_MESSAGE_BYTES = limits.MAX_FRAME_BYTES + TAG_BYTES
"""The WebSocket ``max_size`` (SPEC §1.1.5): the largest frame sealed, 65,535 bytes,
Noise's own limit."""

REKEY_INTERVAL = limits.REKEY_INTERVAL_MESSAGES

CLOSE_CHANNEL_FAILED = 4001
"""WebSocket close code after a handshake or transport message that fails (SPEC §1.3.6)."""


class ChannelError(Exception):
    """The channel cannot go on: close with :data:`CLOSE_CHANNEL_FAILED`, answer nothing."""


class NoiseHandshakeFailed(ChannelError):
    """The handshake failed: a malformed message, a failed decryption, or a relay
    static key that its relay key did not sign."""


class TransportMessageRejected(ChannelError):
    """A transport message failed: tampered, reordered, replayed, dropped before it,
    oversize, or not a binary message."""


def relay_static_key(seed: bytes) -> KeyPair:
    """The relay's Noise static key pair, derived from its Ed25519 seed (SPEC §1.3.2)."""
    private = blake2b(STATIC_DERIVATION, digest_size=32, key=seed).digest()
    return KeyPair.from_private(private)


def static_binding(signing_key: SigningKey, static_public: bytes) -> bytes:
    """relay_key || Ed25519(relay key, STATIC_CONTEXT || static): message 2's payload."""
    signature = signing_key.sign(STATIC_CONTEXT + static_public).signature
    return bytes(signing_key.verify_key) + signature


def bound_relay_key(binding: bytes, static_public: bytes) -> bytes:
    """The relay key a binding names, once its signature over ``static_public`` checks."""
    if len(binding) != BINDING_BYTES:
        raise NoiseHandshakeFailed("handshake payload is not a relay-key binding")
    relay_key, signature = binding[:32], binding[32:]
    if not signature_valid(relay_key, STATIC_CONTEXT + static_public, signature):
        raise NoiseHandshakeFailed("the relay's static key is not signed by its relay key")
    return relay_key


class _Channel:
    """Transport messages after the handshake: one frame each, in order, rekeyed."""

    def __init__(self, rekey_interval: int) -> None:
        self._send: CipherState | None = None
        self._receive: CipherState | None = None
        self._rekey_interval = rekey_interval
        self._failed = False
        self.handshake_hash: bytes | None = None
        """The channel binding (SPEC §4.2), once the handshake is done."""

    @property
    def established(self) -> bool:
        return self._send is not None

    def _established(self, handshake: HandshakeState) -> None:
        self._send, self._receive = handshake.split()
        self.handshake_hash = handshake.handshake_hash

    def encrypt(self, frame: bytes) -> bytes:
        """Seal one frame. A frame over MAX_FRAME_BYTES is a local bug (ValueError)."""
        cipher = self._send
        if cipher is None:
            raise RuntimeError("the channel is not established")
        if len(frame) > limits.MAX_FRAME_BYTES:
            raise ValueError("frame over MAX_FRAME_BYTES")
        self._rekey_if_due(cipher)
        try:
            return cipher.encrypt_with_ad(b"", frame)
        except NoiseError as exc:  # the nonce ran out: the connection must end
            raise TransportMessageRejected(str(exc)) from exc

    def decrypt(self, message: bytes | str) -> bytes:
        """Open one transport message; any failure ends the channel."""
        cipher = self._receive
        if cipher is None:
            raise RuntimeError("the channel is not established")
        if self._failed:
            raise TransportMessageRejected("the channel failed before")
        self._failed = True  # until it opens: after any failure nothing more is read
        if not isinstance(message, bytes):
            raise TransportMessageRejected("a text message is not a transport message")
        if not TAG_BYTES <= len(message) <= MAX_TRANSPORT_MESSAGE_BYTES:
            raise TransportMessageRejected("transport message size out of range")
        self._rekey_if_due(cipher)
        try:
            plaintext = cipher.decrypt_with_ad(b"", message)
        except NoiseError as exc:
            raise TransportMessageRejected(f"transport message {cipher.n}: {exc}") from exc
        self._failed = False
        return plaintext

    def _rekey_if_due(self, cipher: CipherState) -> None:
        # SPEC §1.3.5: "Before the transport message whose nonce n is a positive multiple
        # of REKEY_INTERVAL_MESSAGES, the sender — and the receiver before opening it —
        # calls Rekey()"; n goes on.
        n = cipher.n
        if n and n % self._rekey_interval == 0:
            cipher.rekey()


class RelayChannel(_Channel):
    """The relay's end: reads message 1, answers message 2, then seals and opens frames."""

    def __init__(
        self,
        static: KeyPair,
        binding: bytes,
        rng: Rng,
        *,
        rekey_interval: int = REKEY_INTERVAL,
    ) -> None:
        super().__init__(rekey_interval)
        self._handshake: HandshakeState | None = HandshakeState(
            PATTERN, initiator=False, rng=rng, prologue=PROLOGUE, s=static
        )
        self._binding = binding

    def receive_handshake(self, message: bytes | str) -> bytes:
        """Message 1 in, message 2 out (to send before any frame); then established."""
        handshake = self._handshake
        if handshake is None:
            raise RuntimeError("the handshake is over")
        self._handshake = None
        if not isinstance(message, bytes) or len(message) != HANDSHAKE_REQUEST_BYTES:
            raise NoiseHandshakeFailed("handshake message 1 must be 32 bytes")
        try:
            handshake.read_message(message)
            reply = handshake.write_message(self._binding)
        except NoiseError as exc:
            raise NoiseHandshakeFailed(str(exc)) from exc
        self._established(handshake)
        return reply


class ClientChannel(_Channel):
    """The client's end: writes message 1, checks message 2 and the relay key it binds."""

    def __init__(self, rng: Rng, *, rekey_interval: int = REKEY_INTERVAL) -> None:
        super().__init__(rekey_interval)
        self._handshake: HandshakeState | None = HandshakeState(
            PATTERN, initiator=True, rng=rng, prologue=PROLOGUE
        )
        self.relay_key: bytes | None = None
        """The Ed25519 relay key the relay's static is bound to (SPEC §1.3.2)."""

    def start(self) -> bytes:
        """Message 1, the first message on the connection."""
        handshake = self._handshake
        if handshake is None or not handshake.our_turn:
            raise RuntimeError("the handshake has started")
        return handshake.write_message()

    def receive_handshake(self, message: bytes | str) -> bytes:
        """Check message 2; returns the relay key its static is bound to."""
        handshake = self._handshake
        if handshake is None or handshake.our_turn:
            raise RuntimeError("no handshake message expected")
        self._handshake = None
        if not isinstance(message, bytes) or len(message) != HANDSHAKE_RESPONSE_BYTES:
            raise NoiseHandshakeFailed("handshake message 2 must be 192 bytes")
        try:
            binding = handshake.read_message(message)
        except NoiseError as exc:
            raise NoiseHandshakeFailed(str(exc)) from exc
        assert handshake.rs is not None  # NX: message 2 carries it
        self.relay_key = bound_relay_key(binding, handshake.rs)
        self._established(handshake)
        return self.relay_key


__all__ = [
    "BINDING_BYTES",
    "CLOSE_CHANNEL_FAILED",
    "HANDSHAKE_REQUEST_BYTES",
    "HANDSHAKE_RESPONSE_BYTES",
    "MAX_TRANSPORT_MESSAGE_BYTES",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "REKEY_INTERVAL",
    "STATIC_CONTEXT",
    "ChannelError",
    "ClientChannel",
    "NoiseHandshakeFailed",
    "RelayChannel",
    "TransportMessageRejected",
    "bound_relay_key",
    "relay_static_key",
    "static_binding",
]
