"""The independent implementation (``x3dh`` + ``doubleratchet``), configured as SPEC §13.

Test-only adapter used by test_interop.py and bench/crypto.py. What comes from
the independent packages: X3DH (their DH order, F, salt, HKDF via
``cryptography``, AD assembly, signature checks via ``xeddsa``), the whole Double
Ratchet state machine (root and chain KDFs via ``cryptography``, skipped keys,
DoS threshold, X25519 via ``cryptography``). What we supply, because the packages
leave it to the application: the key encodings (written out literally here),
the info strings and chain constants, the AEAD class (XChaCha20-Poly1305 from
PyNaCl; its key and nonce derived with ``cryptography``'s HKDF, not our kdf.py),
the header encoding into the associated data, the AD appendix (the package
builds ``Encode(IK_A) || Encode(IK_B) || appendix`` itself and takes the
appendix from the application — "usernames, certificates or other identifying
information", its docs say; ours is the label and the two length-prefixed
handles, written out below from SPEC §13.3, not imported), and deterministic
randomness.

The envelope layout and padding are framing, not cryptography, and the packages
have neither: the adapter uses our ``encode_envelope``/``peek_envelope`` and
``pad``/``unpad`` so whole envelopes can be compared byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import nacl.bindings
import x3dh
import x3dh.base_state
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from doubleratchet import AEAD, AuthenticationFailedException, DoubleRatchet, EncryptedMessage
from doubleratchet import Header as TheirHeader
from doubleratchet.recommended import (
    HashFunction,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)

from blindrelay.protocol.crypto import session as ours
from blindrelay.protocol.crypto.padding import pad, unpad
from blindrelay.protocol.crypto.ratchet import Header

Rng = Callable[[int], bytes]

INFO_X3DH = b"blindrelay/v1/x3dh"
INFO_RATCHET = b"blindrelay/v1/ratchet"
INFO_MESSAGE_KEYS = b"blindrelay/v1/message-keys"
AD_LABEL = b"blindrelay/v2"
CHAIN_CONSTANT = b"\x02\x01"  # HMAC(ck, 0x02) = next chain key first, then HMAC(ck, 0x01) = mk
MAX_SKIPPED_KEYS = 1000
MAX_FORWARD_JUMP = 1000

_CURRENT_RNG: list[Rng] = []


def ad_appendix(initiator_handle: str, recipient_handle: str) -> bytes:
    """SPEC §13.3: ``"blindrelay/v2" || u8 len || handle_A || u8 len || handle_B``."""
    parts = [AD_LABEL]
    for handle in (initiator_handle, recipient_handle):
        raw = handle.encode("utf-8")
        parts.append(struct.pack("B", len(raw)) + raw)
    return b"".join(parts)


class FakeSecrets:
    """Stands in for the module-level ``secrets`` of x3dh.base_state."""

    def token_bytes(self, size: int) -> bytes:
        return _CURRENT_RNG[-1](size)

    def choice(self, seq: list[bytes]) -> bytes:
        return sorted(seq)[0]


x3dh.base_state.secrets = FakeSecrets()  # type: ignore[assignment]


class State(x3dh.BaseState):
    @staticmethod
    def _encode_public_key(key_format: x3dh.IdentityKeyFormat, pub: bytes) -> bytes:
        if key_format is x3dh.IdentityKeyFormat.CURVE_25519:
            # Only used for the signed-prekey signature (SPEC §13.2).
            return b"blindrelay/v1/signed-prekey\x00\x05" + pub
        return b"\xed" + pub


class RootKDF(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return INFO_RATCHET


class ChainKDF(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256


class XChaChaAEAD(AEAD):
    @staticmethod
    def _key_nonce(key: bytes) -> tuple[bytes, bytes]:
        out = HKDF(
            algorithm=hashes.SHA256(), length=56, salt=bytes(32), info=INFO_MESSAGE_KEYS
        ).derive(key)
        return out[:32], out[32:]

    @staticmethod
    async def encrypt(plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        k, n = XChaChaAEAD._key_nonce(key)
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, associated_data, n, k
        )

    @staticmethod
    async def decrypt(ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        k, n = XChaChaAEAD._key_nonce(key)
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, associated_data, n, k
            )
        except Exception as exc:
            raise AuthenticationFailedException() from exc


class DHRatchet(diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet):
    @staticmethod
    def _generate_priv() -> bytes:
        return _CURRENT_RNG[-1](32)


class Ratchet(DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: TheirHeader) -> bytes:
        return (
            associated_data
            + header.ratchet_pub
            + struct.pack(">II", header.previous_sending_chain_length, header.sending_chain_length)
        )


RATCHET_CONFIG = {
    "diffie_hellman_ratchet_class": DHRatchet,
    "root_chain_kdf": RootKDF,
    "message_chain_kdf": ChainKDF,
    "message_chain_constant": CHAIN_CONSTANT,
    "dos_protection_threshold": MAX_FORWARD_JUMP,
    "max_num_skipped_message_keys": MAX_SKIPPED_KEYS,
    "aead": XChaChaAEAD,
}


class using_rng:
    def __init__(self, rng: Rng) -> None:
        self.rng = rng

    def __enter__(self) -> None:
        _CURRENT_RNG.append(self.rng)

    def __exit__(self, *exc: object) -> None:
        _CURRENT_RNG.pop()


def create_state(identity_seed: bytes, rng: Rng, num_pre_keys: int = 1) -> State:
    """A recipient's X3DH state: identity from the seed, SPK then OPKs drawn from ``rng``."""
    with using_rng(rng):
        state = State.create(
            x3dh.IdentityKeyFormat.ED_25519,
            x3dh.HashFunction.SHA_256,
            INFO_X3DH,
            x3dh.base_state.IdentityKeyPairSeed(identity_seed),
        )
        state.generate_pre_keys(num_pre_keys)
    return state


def to_their_header(header: Header) -> TheirHeader:
    return TheirHeader(header.ratchet_key, header.previous_chain_length, header.message_number)


def from_their_header(header: TheirHeader) -> Header:
    return Header(
        header.ratchet_pub, header.previous_sending_chain_length, header.sending_chain_length
    )


class TheirParty:
    """One party on the independent stack, speaking our envelope format.

    ``our_handle`` and ``their_handle`` name the pair the session is for, as
    the relay routes it (the recipient takes ``their_handle`` from DELIVER).
    """

    def __init__(
        self,
        identity_public: bytes,
        rng: Rng,
        x3dh_state: State | None = None,
        *,
        our_handle: str,
        their_handle: str,
    ) -> None:
        self.identity_public = identity_public
        self.our_handle = our_handle
        self.their_handle = their_handle
        self.rng = rng
        self.x3dh_state = x3dh_state
        self.ratchet: Ratchet | None = None
        self.ad = b""
        self.base_key = b""
        self.pending: ours.PendingPreKey | None = None
        self.spk_ids: dict[int, bytes] = {}
        self.otpk_ids: dict[int, bytes] = {}

    async def initiate(
        self, bundle: x3dh.Bundle, spk_id: int, otpk_id: int | None, first: bytes
    ) -> bytes:
        """X3DH active + the initial ratchet message; returns the envelope."""
        assert self.x3dh_state is not None
        with using_rng(self.rng):
            secret, self.ad, header = await self.x3dh_state.get_shared_secret_active(
                bundle, ad_appendix(self.our_handle, self.their_handle), require_pre_key=False
            )
            self.ratchet, message = await Ratchet.encrypt_initial_message(
                **RATCHET_CONFIG,
                shared_secret=secret,
                recipient_ratchet_pub=bundle.signed_pre_key,
                message=pad(first),
                associated_data=self.ad,
            )
        self.base_key = header.ephemeral_key
        self.pending = ours.PendingPreKey(spk_id, otpk_id)
        return self._frame(message)

    def _frame(self, message: EncryptedMessage) -> bytes:
        prekey = None
        if self.pending is not None:
            prekey = (self.identity_public, self.base_key, self.pending)
        return ours.encode_envelope(from_their_header(message.header), message.ciphertext, prekey)

    async def encrypt(self, plaintext: bytes) -> bytes:
        assert self.ratchet is not None
        with using_rng(self.rng):
            message = await self.ratchet.encrypt_message(pad(plaintext), self.ad)
        return self._frame(message)

    async def decrypt(self, envelope: bytes) -> bytes:
        info = ours.peek_envelope(envelope)
        message = EncryptedMessage(to_their_header(info.header), info.ciphertext)
        with using_rng(self.rng):
            if self.ratchet is None:
                assert self.x3dh_state is not None and info.sender_identity_key is not None
                assert info.base_key is not None and info.signed_prekey_id is not None
                otpk = (
                    None
                    if info.one_time_prekey_id is None
                    else self.otpk_ids[info.one_time_prekey_id]
                )
                secret, self.ad, spk = await self.x3dh_state.get_shared_secret_passive(
                    x3dh.Header(
                        identity_key=info.sender_identity_key,
                        ephemeral_key=info.base_key,
                        signed_pre_key=self.spk_ids[info.signed_prekey_id],
                        pre_key=otpk,
                    ),
                    ad_appendix(self.their_handle, self.our_handle),
                    require_pre_key=False,
                )
                self.base_key = info.base_key
                self.ratchet, padded = await Ratchet.decrypt_initial_message(
                    **RATCHET_CONFIG,
                    shared_secret=secret,
                    own_ratchet_priv=spk.priv,
                    message=message,
                    associated_data=self.ad,
                )
            else:
                padded = await self.ratchet.decrypt_message(message, self.ad)
        self.pending = None
        return unpad(padded)
