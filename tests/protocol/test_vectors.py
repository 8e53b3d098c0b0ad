"""The vectors in protocol/vectors/ hold in both directions (SPEC §2.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blindrelay.protocol import codec
from blindrelay.protocol import frames as f
from blindrelay.protocol import pow as puzzle
from blindrelay.protocol.errors import ErrorCode, ProtocolError
from blindrelay.protocol.jsonform import from_json, to_json
from blindrelay.protocol.skeleton import leading_skeletons, skeleton
from blindrelay.protocol.transcripts import register_transcript

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
VALID = sorted((VECTORS / "valid").glob("*.json"))
INVALID = sorted((VECTORS / "invalid").glob("*.json"))


def load(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vector_decodes_to_its_frame_and_encodes_back(path: Path) -> None:
    vector = load(path)
    data = bytes.fromhex(vector["hex"])
    frame = codec.decode(data)
    assert to_json(frame) == vector["frame"]
    assert codec.encode(from_json(vector["frame"])) == data


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_raises_its_error_code_with_its_re(path: Path) -> None:
    """SPEC §2.3 picks the code, SPEC §2.2.5 whether the ERROR echoes an ``id`` as ``re``."""
    vector = load(path)
    data = bytes.fromhex(vector["hex"])
    with pytest.raises(ProtocolError) as info:
        codec.decode(data)
    assert info.value.code is ErrorCode[vector["error"]]
    assert info.value.request_id == vector["re"]
    assert codec.request_id_of(data) == vector["re"]


def test_every_frame_type_has_a_valid_vector() -> None:
    covered = {load(p)["frame"]["type"] for p in VALID}
    assert covered == {t.name for t in f.FrameType}


def test_there_are_at_least_thirty_invalid_vectors() -> None:
    assert len(INVALID) >= 30


SKELETONS = load(VECTORS / "skeletons.json")["skeletons"]


@pytest.mark.parametrize("vector", SKELETONS, ids=lambda v: v["handle"])
def test_skeleton_vector_holds(vector: dict[str, object]) -> None:
    """SPEC §3.2: the skeleton and the leading-label skeletons of each handle."""
    handle = vector["handle"]
    assert isinstance(handle, str)
    f.check_handle(handle)
    assert skeleton(handle) == vector["skeleton"]
    assert list(leading_skeletons(handle)) == vector["leading"]


POWS = load(VECTORS / "pow.json")["pow"]


@pytest.mark.parametrize("vector", POWS, ids=lambda v: f"{v['pow_nonce']}-{v['solves']}")
def test_pow_vector_holds(vector: dict[str, object]) -> None:
    """SPEC §4.6.3: transcript, Argon2id digest, leading zero bits and verdict."""
    v: dict[str, object] = vector
    transcript = register_transcript(
        bytes.fromhex(str(v["relay_key"])), bytes.fromhex(str(v["challenge"])),
        str(v["handle"]), str(v["kind"]), bytes.fromhex(str(v["identity_key"])),
        handshake_hash=bytes.fromhex(str(v["handshake_hash"])),
    )  # fmt: skip
    assert transcript.hex() == v["registration_transcript"]
    challenge, nonce = bytes.fromhex(str(v["challenge"])), bytes.fromhex(str(v["pow_nonce"]))
    cost = (int(str(v["opslimit"])), int(str(v["memlimit"])))
    digest = puzzle.proof_digest(transcript, challenge, nonce, *cost)
    assert digest.hex() == v["digest"]
    assert puzzle.leading_zero_bits(digest) == v["leading_zero_bits"]
    assert puzzle.verify(transcript, challenge, nonce, int(str(v["bits"])), *cost) is v["solves"]


def test_vectors_are_what_the_generator_produces(tmp_path: Path) -> None:
    """Committed vectors are current: regenerate in memory and compare."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", VECTORS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    valid = {name: codec.encode(frame).hex() for name, frame in module.valid_frames().items()}
    assert valid == {p.stem: load(p)["hex"] for p in VALID}
    invalid = {
        name: {"hex": data.hex(), "error": code, "re": re}
        for name, (data, code, re, _) in module.invalid_vectors().items()
    }
    assert invalid == {
        p.stem: {key: load(p)[key] for key in ("hex", "error", "re")} for p in INVALID
    }
    assert module.skeleton_vectors() == SKELETONS
    assert module.pow_vectors() == POWS
    assert module.channel_vectors() == load(VECTORS / "channel.json")
