"""Regenerate the frozen crypto known-answer vectors (SPEC §13.10).

Run from the repository root:  .venv/bin/python protocol/vectors/crypto/generate.py
(``--check`` compares instead of writing). Fixed identity seeds and a
deterministic RNG make every byte reproducible; the RNG is

    rng_label(n) = SHAKE-256(label || counter as u64 big-endian)[:n]

with ``counter`` starting at 1 and increasing by one per call, one stream per
party. A change to any output is a wire-format change and needs a new version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blindrelay.protocol.crypto import session, x3dh
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
)

HERE = Path(__file__).resolve().parent


def stream(label: bytes) -> Callable[[int], bytes]:
    counter = [0]

    def rng(size: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(label + counter[0].to_bytes(8, "big")).digest(size)

    return rng


INITIATOR_SEED = bytes.fromhex("a0" * 32)
RECIPIENT_SEED = bytes.fromhex("b0" * 32)
INITIATOR_HANDLE = "alice"
RECIPIENT_HANDLE = "bob"
"""Both handles are in AD (SPEC §13.3): the transcript decrypts only for this pair."""
INITIATOR = {"our_handle": INITIATOR_HANDLE, "their_handle": RECIPIENT_HANDLE}
RECIPIENT = {"our_handle": RECIPIENT_HANDLE, "their_handle": INITIATOR_HANDLE}

# (actor, action, label). "send" encrypts plaintext(label); "recv" delivers it.
SCRIPT = [
    ("initiator", "send", "m1"), ("initiator", "send", "m2"),
    ("recipient", "recv", "m2"), ("recipient", "recv", "m1"),
    ("recipient", "send", "r1"), ("recipient", "send", "r2"),
    ("initiator", "recv", "r2"), ("initiator", "recv", "r1"),
    ("initiator", "send", "m3"), ("recipient", "recv", "m3"),
]  # fmt: skip


def plaintext(label: str) -> bytes:
    return f"blindrelay vector message {label}".encode() * (3 if label == "r2" else 1)


def transcript(with_one_time: bool) -> dict[str, Any]:
    name = b"otpk" if with_one_time else b"no-otpk"
    initiator = IdentityKeyPair.from_seed(INITIATOR_SEED)
    recipient = IdentityKeyPair.from_seed(RECIPIENT_SEED)
    keys_rng = stream(b"blindrelay-vectors/recipient-keys/" + name)
    spk = SignedPreKey.generate(recipient, 1, keys_rng)
    otpk = OneTimePreKey.generate(100, keys_rng)
    bundle = PreKeyBundle(
        recipient.public, spk.key_id, spk.public, spk.signature,
        otpk.key_id if with_one_time else None, otpk.public if with_one_time else None,
    )  # fmt: skip
    initiator_label = b"blindrelay-vectors/initiator/" + name
    recipient_label = b"blindrelay-vectors/recipient/" + name
    agreement = x3dh.initiate(initiator, bundle, stream(initiator_label), **INITIATOR)  # same draw
    rngs = {"initiator": stream(initiator_label), "recipient": stream(recipient_label)}
    sessions: dict[str, session.Session | None] = {
        "initiator": session.initiate_session(initiator, bundle, rngs["initiator"], **INITIATOR),
        "recipient": None,
    }
    in_flight: dict[str, bytes] = {}
    steps = []
    for actor, action, label in SCRIPT:
        current = sessions[actor]
        if action == "send":
            assert current is not None
            sessions[actor], envelope = session.encrypt(current, plaintext(label), rngs[actor])
            in_flight[label] = envelope
            steps.append(
                {
                    "actor": actor,
                    "action": "send",
                    "label": label,
                    "plaintext": plaintext(label).hex(),
                    "envelope": envelope.hex(),
                }
            )
            continue
        envelope = in_flight.pop(label)
        if current is None:
            otpks = {otpk.key_id: otpk} if with_one_time else {}
            current, got, _ = session.accept_session(
                recipient, envelope, {spk.key_id: spk}.get, otpks.get, rngs[actor], **RECIPIENT
            )
        else:
            current, got = session.decrypt(current, envelope, rngs[actor])
        sessions[actor] = current
        steps.append({"actor": actor, "action": "recv", "label": label, "plaintext": got.hex()})
    return {
        "description": "X3DH + Double Ratchet session, SPEC §13; "
        + ("with" if with_one_time else "without")
        + " a one-time prekey",
        "rng": "SHAKE-256(label || u64 BE counter from 1)[:n], one stream per label",
        "envelope_version": session.ENVELOPE_VERSION,
        "initiator": {
            "handle": INITIATOR_HANDLE,
            "identity_seed": INITIATOR_SEED.hex(),
            "identity_public": initiator.public.hex(),
            "rng_label": initiator_label.decode(),
        },
        "recipient": {
            "handle": RECIPIENT_HANDLE,
            "identity_seed": RECIPIENT_SEED.hex(),
            "identity_public": recipient.public.hex(),
            "rng_label": recipient_label.decode(),
            "prekey_rng_label": (b"blindrelay-vectors/recipient-keys/" + name).decode(),
            "signed_prekey": spk.to_bytes().hex(),
            "one_time_prekey": otpk.to_bytes().hex() if with_one_time else None,
            "bundle": bundle.to_bytes().hex(),
        },
        "x3dh": {
            "ephemeral_public": agreement.ephemeral_public.hex(),
            "shared_secret": agreement.shared_secret.hex(),
            "ad_appendix": x3dh.ad_appendix(INITIATOR_HANDLE, RECIPIENT_HANDLE).hex(),
            "associated_data": agreement.associated_data.hex(),
        },
        "steps": steps,
        "final_sessions": {k: v.to_bytes().hex() for k, v in sessions.items() if v is not None},
    }


def build() -> dict[str, dict[str, Any]]:
    """File name → vector document."""
    return {
        "session_with_one_time_prekey.json": transcript(True),
        "session_without_one_time_prekey.json": transcript(False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for name, document in build().items():
        text = json.dumps(document, indent=2) + "\n"
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale vectors:", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
