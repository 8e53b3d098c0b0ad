"""Frozen crypto known-answer vectors still hold byte for byte (SPEC §13.10)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from blindrelay.protocol.crypto import session
from blindrelay.protocol.crypto.keys import IdentityKeyPair, OneTimePreKey, SignedPreKey
from blindrelay.protocol.errors import DecryptionFailed

VECTORS = Path(__file__).resolve().parents[3] / "protocol" / "vectors" / "crypto"
NAMES = ["session_with_one_time_prekey.json", "session_without_one_time_prekey.json"]


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "crypto_vector_generator", VECTORS / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated():
    return load_generator().build()


@pytest.mark.parametrize("name", NAMES)
def test_code_reproduces_the_frozen_transcript(regenerated, name):
    frozen = json.loads((VECTORS / name).read_text())
    assert regenerated[name] == frozen


@pytest.mark.parametrize("name", NAMES)
def test_frozen_first_envelope_decrypts_with_the_recorded_keys_alone(name):
    vector = json.loads((VECTORS / name).read_text())
    recipient = vector["recipient"]
    identity = IdentityKeyPair.from_seed(bytes.fromhex(recipient["identity_seed"]))
    spk = SignedPreKey.from_bytes(bytes.fromhex(recipient["signed_prekey"]))
    otpks = {}
    if recipient["one_time_prekey"]:
        otpk = OneTimePreKey.from_bytes(bytes.fromhex(recipient["one_time_prekey"]))
        otpks[otpk.key_id] = otpk
    first = next(step for step in vector["steps"] if step["action"] == "send")
    envelope = bytes.fromhex(first["envelope"])
    assert envelope[0] == vector["envelope_version"] == session.ENVELOPE_VERSION

    def accept(sender: str):
        return session.accept_session(
            identity, envelope, {spk.key_id: spk}.get, otpks.get, lambda n: b"\x01" * n,
            our_handle=recipient["handle"], their_handle=sender,
        )  # fmt: skip

    with pytest.raises(DecryptionFailed):  # SPEC §13.3: both handles are in AD
        accept("mallory")
    _, plaintext, _ = accept(vector["initiator"]["handle"])
    assert plaintext.hex() == first["plaintext"]
    info = session.peek_envelope(envelope)
    assert info.base_key.hex() == vector["x3dh"]["ephemeral_public"]


@pytest.mark.parametrize("name", NAMES)
def test_frozen_associated_data_is_laid_out_as_the_spec_says(name):
    vector = json.loads((VECTORS / name).read_text())
    initiator, recipient = vector["initiator"], vector["recipient"]
    handles = b"".join(
        bytes([len(h)]) + h.encode() for h in (initiator["handle"], recipient["handle"])
    )
    expected = (
        b"\xed" + bytes.fromhex(initiator["identity_public"])
        + b"\xed" + bytes.fromhex(recipient["identity_public"])
        + b"blindrelay/v2" + handles
    )  # fmt: skip
    assert bytes.fromhex(vector["x3dh"]["associated_data"]) == expected
    assert bytes.fromhex(vector["x3dh"]["ad_appendix"]) == expected[66:]
