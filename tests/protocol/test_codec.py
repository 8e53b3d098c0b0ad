"""SPEC §2.3: the codec round-trips every frame and refuses everything else."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindrelay.protocol import codec, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol.errors import (
    ErrorCode,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    UnknownFrameType,
)

from .strategies import all_frames, frame_strategy

DECODE_ERRORS = (MalformedFrame, FrameTooLarge, UnknownFrameType)


@pytest.mark.parametrize("cls", list(f.FRAME_CLASSES.values()), ids=lambda c: c.__name__)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_frame_type_round_trips(cls: type[f.Frame], data: st.DataObject) -> None:
    frame = data.draw(frame_strategy(cls))
    encoded = codec.encode(frame)
    assert codec.decode(encoded) == frame
    assert codec.encode(codec.decode(encoded)) == encoded


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_random_bytes_only_ever_raise_the_documented_errors(data: bytes) -> None:
    with contextlib.suppress(DECODE_ERRORS):
        codec.decode(data)


@settings(max_examples=300)
@given(all_frames, st.data())
def test_mutated_frames_decode_or_raise_documented_errors(frame: f.Frame, data: st.DataObject) -> None:
    encoded = bytearray(codec.encode(frame))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DECODE_ERRORS):
        codec.decode(bytes(encoded))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.sampled_from([int(t) for t in f.FrameType]), st.dictionaries(st.sampled_from(["id", "re", "to", "body", "handle", "msg_id", "intent", "x"]), msgpack_values, max_size=6))
def test_structured_garbage_with_real_type_tags_is_refused_cleanly(tag: int, fields_: dict[str, object]) -> None:
    data = msgpack.packb({"t": tag, **fields_}, use_bin_type=True)
    with contextlib.suppress(DECODE_ERRORS):
        codec.decode(data)


def test_decoder_refuses_a_frame_over_the_size_cap_before_parsing() -> None:
    with pytest.raises(FrameTooLarge):
        codec.decode(b"\x80" * (limits.MAX_FRAME_BYTES + 1))


def test_error_from_a_refused_request_carries_its_id() -> None:
    data = msgpack.packb({"t": 11, "id": 77, "handle": "BAD"}, use_bin_type=True)
    with pytest.raises(MalformedFrame) as info:
        codec.decode(data)
    assert info.value.request_id == 77


def test_error_from_a_frame_with_an_invalid_id_carries_none() -> None:
    data = msgpack.packb({"t": 11, "id": 0, "handle": "bob"}, use_bin_type=True)
    with pytest.raises(MalformedFrame) as info:
        codec.decode(data)
    assert info.value.request_id is None


def test_encoding_puts_type_first_and_omits_absent_optionals() -> None:
    frame = f.Error(code=400, re=3)
    assert msgpack.unpackb(codec.encode(frame)) == {"t": 9, "code": 400, "re": 3}
    assert codec.encode(frame)[1:3] == b"\xa1t"


def test_every_decode_error_is_a_protocol_error_with_a_frame_code() -> None:
    for cls in DECODE_ERRORS:
        assert issubclass(cls, ProtocolError)
        assert 100 <= cls.code < 200
    assert UnknownFrameType.code is ErrorCode.UNKNOWN_FRAME_TYPE
