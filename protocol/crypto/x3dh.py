"""X3DH key agreement, exactly as Signal publishes it (SPEC §13.3).

https://signal.org/docs/specifications/x3dh/ with these parameters:

- curve X25519; identity keys are Ed25519 converted to X25519 (see :mod:`.keys`);
- hash SHA-256; info ``b"blindrelay/v1/x3dh"``;
- ``SK = HKDF(salt=32×0x00, ikm=F || DH1 || DH2 || DH3 [|| DH4], info, 32)``
  with ``F = 32×0xFF``;
- ``AD = Encode(IK_A) || Encode(IK_B) || appendix`` where Encode of an Ed25519
  identity key is ``0xED || key`` and the appendix binds both handles:
  ``b"blindrelay/v2" || u8 len(handle_A) || handle_A || u8 len(handle_B) || handle_B``.

The handles are those the relay routes by: the initiator uses its own and the
bundle's, the recipient the DELIVER's ``sender`` and its own. Every message of
the session carries AD in its AEAD data, so an envelope re-sent by another
account, or delivered under another sender, fails to decrypt (SPEC §13.3).

Without a one-time prekey (DH4 absent) the initial message can be replayed to
the recipient, who cannot tell: SPEC §13.3 states the consequence.

Not owned here: fetching or storing prekeys, sessions (:mod:`.session`), the
Double Ratchet (:mod:`.ratchet`). The spec says the parties delete the ephemeral
private key and DH outputs afterwards; Python cannot wipe memory, so we only drop
every reference (nothing here keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blindrelay.protocol.crypto.kdf import HASH_LEN, INFO_X3DH, hkdf
from blindrelay.protocol.crypto.keys import (
    KEY_LEN,
    IdentityKeyPair,
    PreKeyBundle,
    Rng,
    X25519KeyPair,
    ed25519_public_to_x25519,
    encode_ed25519_public,
)

F = b"\xff" * 32
"""X3DH's F: 32 0xFF bytes before the DH outputs, so that the HKDF input never
starts like an X25519 output (domain separation from XEdDSA, kept as specified)."""

SALT = bytes(HASH_LEN)
"""HKDF salt: a zero-filled byte sequence of the hash output length."""

AD_LABEL = b"blindrelay/v2"
"""Start of AD's appendix; binds the session to this protocol and envelope version
(v2: the first with the handles in AD, SPEC §13.6)."""

MAX_HANDLE_BYTES = 255
"""A handle in AD is length-prefixed by one byte. Handles are at most 32 ASCII
characters (SPEC §3.2); the prefix only has to make the encoding unambiguous."""


@dataclass(frozen=True, slots=True)
class InitiatorAgreement:
    """Outcome of X3DH for the initiator: the session's roots and what to send."""

    shared_secret: bytes = field(repr=False)
    associated_data: bytes
    ephemeral_public: bytes
    """The base key EK_A, sent in every prekey message."""
    their_signed_prekey_public: bytes
    """SPK_B, the recipient's first ratchet public key."""
    signed_prekey_id: int
    one_time_prekey_id: int | None


def _encode_handle(handle: str) -> bytes:
    encoded = handle.encode("utf-8")
    if not 0 < len(encoded) <= MAX_HANDLE_BYTES:
        raise ValueError(f"a handle in AD is 1..{MAX_HANDLE_BYTES} bytes")
    return bytes((len(encoded),)) + encoded


def ad_appendix(initiator_handle: str, recipient_handle: str) -> bytes:
    """``AD_LABEL || u8 len || initiator handle || u8 len || recipient handle``.

    The length prefixes keep the pair unambiguous (("ab", "c") ≠ ("a", "bc")).
    """
    return AD_LABEL + _encode_handle(initiator_handle) + _encode_handle(recipient_handle)


def associated_data(
    initiator_identity: bytes,
    recipient_identity: bytes,
    initiator_handle: str,
    recipient_handle: str,
) -> bytes:
    """``AD = Encode(IK_A) || Encode(IK_B) || ad_appendix(handle_A, handle_B)``.

    81 bytes plus the two handles' lengths (SPEC §13.3).
    """
    return (
        encode_ed25519_public(initiator_identity)
        + encode_ed25519_public(recipient_identity)
        + ad_appendix(initiator_handle, recipient_handle)
    )


def _derive(dh_outputs: list[bytes]) -> bytes:
    return hkdf(F + b"".join(dh_outputs), salt=SALT, info=INFO_X3DH, length=KEY_LEN)


def initiate(
    our_identity: IdentityKeyPair,
    their_bundle: PreKeyBundle,
    rng: Rng,
    *,
    our_handle: str,
    their_handle: str,
) -> InitiatorAgreement:
    """Run X3DH as initiator (Alice) against the bundle fetched for ``their_handle``.

    Verifies the bundle first (InvalidKey / InvalidSignature), then draws one
    ephemeral key from ``rng``. Uses the one-time prekey if the bundle has one.
    """
    their_bundle.verify()
    their_identity_x = ed25519_public_to_x25519(their_bundle.identity_key)
    spk = their_bundle.signed_prekey_public
    ephemeral = X25519KeyPair.generate(rng)
    dh = [
        our_identity.dh(spk),  # DH1 = DH(IK_A, SPK_B)
        ephemeral.dh(their_identity_x),  # DH2 = DH(EK_A, IK_B)
        ephemeral.dh(spk),  # DH3 = DH(EK_A, SPK_B)
    ]
    if their_bundle.one_time_prekey_public is not None:
        dh.append(ephemeral.dh(their_bundle.one_time_prekey_public))  # DH4 = DH(EK_A, OPK_B)
    return InitiatorAgreement(
        shared_secret=_derive(dh),
        associated_data=associated_data(
            our_identity.public, their_bundle.identity_key, our_handle, their_handle
        ),
        ephemeral_public=ephemeral.public,
        their_signed_prekey_public=spk,
        signed_prekey_id=their_bundle.signed_prekey_id,
        one_time_prekey_id=their_bundle.one_time_prekey_id,
    )


def respond(
    our_identity: IdentityKeyPair,
    our_signed_prekey: X25519KeyPair,
    our_one_time_prekey: X25519KeyPair | None,
    their_identity_key: bytes,
    their_ephemeral_public: bytes,
    *,
    our_handle: str,
    their_handle: str,
) -> tuple[bytes, bytes]:
    """Run X3DH as recipient (Bob); returns ``(shared_secret, associated_data)``.

    ``their_handle`` is the sender the relay named. A malformed or low-order key
    of the initiator raises InvalidKey; a wrong key or handle simply yields
    another secret or AD, which the first AEAD check then rejects.
    """
    their_identity_x = ed25519_public_to_x25519(their_identity_key)
    dh = [
        our_signed_prekey.dh(their_identity_x),  # DH1
        our_identity.dh(their_ephemeral_public),  # DH2
        our_signed_prekey.dh(their_ephemeral_public),  # DH3
    ]
    if our_one_time_prekey is not None:
        dh.append(our_one_time_prekey.dh(their_ephemeral_public))  # DH4
    ad = associated_data(their_identity_key, our_identity.public, their_handle, our_handle)
    return _derive(dh), ad
