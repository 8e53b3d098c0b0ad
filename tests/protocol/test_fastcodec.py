"""protocol/fastcodec.py against protocol/codec.py (SPEC §2.3): the same bytes out, the
same reading in.

Encoders: every valid SEND, SENT, DELIVER and ACK gives the codec's bytes. Readers: on
any input a reader returns None (the caller asks the codec) or exactly the frame the
codec decodes; on the codec's own encoding it never returns None.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindrelay.protocol import codec, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol.errors import FrameTooLarge, MalformedFrame, ProtocolError
from blindrelay.protocol.fastcodec import (
    encode_ack,
    encode_deliver,
    encode_send,
    encode_sent,
    read_ack,
    read_deliver,
    read_send,
    read_sent,
)

from .pair import channel_pair
from .strategies import frame_strategy

ENCODERS: dict[type[f.Frame], Callable[..., bytes]] = {
    f.Send: encode_send, f.Sent: encode_sent, f.Deliver: encode_deliver, f.Ack: encode_ack,
}  # fmt: skip
READERS: dict[type[f.Frame], Callable[[bytes], f.Frame | None]] = {
    f.Send: read_send, f.Sent: read_sent, f.Deliver: read_deliver, f.Ack: read_ack,
}  # fmt: skip
CLASSES = list(ENCODERS)
fast_frames = st.one_of([frame_strategy(cls) for cls in CLASSES])


def fields_of(frame: f.Frame) -> dict[str, Any]:
    return {field.name: getattr(frame, field.name) for field in fields(frame)}


def outcome(data: bytes) -> f.Frame | tuple[type[ProtocolError], int, int | None]:
    """What the codec makes of ``data``: its frame, or its error with code and ``re``."""
    try:
        return codec.decode(data)
    except ProtocolError as exc:
        return type(exc), int(exc.code), exc.request_id


def assert_read_as_the_codec_reads(data: bytes) -> int:
    """Every reader returns None or the codec's frame; returns how many returned a frame."""
    expected = outcome(data)
    taken = 0
    for cls, read in READERS.items():
        got = read(data)
        if got is not None:
            assert got == expected, f"{read.__name__} read {got!r}, the codec {expected!r}"
            assert type(got) is cls
            taken += 1
    return taken


# --- encoding ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=150)
@given(data=st.data())
def test_every_valid_frame_encodes_to_the_codecs_bytes(cls: type[f.Frame], data: st.DataObject) -> None:
    frame = data.draw(frame_strategy(cls))
    assert ENCODERS[cls](**fields_of(frame)) == codec.encode(frame)


WIDTHS = (1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1)
"""Each side of every msgpack uint width."""
SIZES = (1, 31, 32, 255, 256, 65_535 - 100, limits.MAX_CIPHERTEXT_BYTES)
"""Each side of the bin 8 / bin 16 lengths, up to the largest envelope."""


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("number", WIDTHS)
def test_boundary_numbers_and_sizes_encode_to_the_codecs_bytes(number: int, size: int) -> None:
    body, msg_id = random.randbytes(min(size, limits.MAX_CIPHERTEXT_BYTES)), random.randbytes(16)
    for intent, category, categories in [
        (f.Intent.CHAT, None, None),  # the enum, as the SDK's outbox holds it
        ("notification", "utility", None),
        ("consent_request", None, ("utility", "marketing")),
    ]:
        send = f.Send(
            id=number, to="a.b-c_d" + "x" * 25, msg_id=msg_id, intent=intent, body=body,
            category=category, categories=categories,
        )  # fmt: skip
        assert encode_send(**fields_of(send)) == codec.encode(send)
        for delivery_id in (number, f.MAX_DELIVERY_ID):
            deliver = f.Deliver(
                delivery_id=delivery_id, sender="abc", sender_kind="business", msg_id=msg_id,
                intent=intent, sent_at=f.MAX_TIME_MS, body=body, category=category,
                categories=categories,
            )  # fmt: skip
            assert encode_deliver(**fields_of(deliver)) == codec.encode(deliver)
    for at in (0, number, f.MAX_TIME_MS):
        sent = f.Sent(re=number, msg_id=msg_id, at=at)
        assert encode_sent(**fields_of(sent)) == codec.encode(sent)
    ids = (number, f.MAX_DELIVERY_ID, *range(1, 1 + size % limits.MAX_ACK_IDS))[: limits.MAX_ACK_IDS]
    assert encode_ack(ids) == encode_ack(list(ids)) == codec.encode(f.Ack(delivery_ids=ids))


# --- reading: the codec's own bytes --------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=150)
@given(data=st.data())
def test_every_valid_frame_is_read_by_its_reader_alone(cls: type[f.Frame], data: st.DataObject) -> None:
    frame = data.draw(frame_strategy(cls))
    encoded = codec.encode(frame)
    assert READERS[cls](encoded) == frame
    assert assert_read_as_the_codec_reads(encoded) == 1


def test_other_frames_are_left_to_the_codec() -> None:
    for frame in [
        f.Ok(re=1),
        f.Error(code=400, re=7),
        f.PrekeysLow(remaining=0),
        f.StatementsList(id=3),
        f.Statement(id=4, statement=b"x"),
    ]:
        assert assert_read_as_the_codec_reads(codec.encode(frame)) == 0


# --- reading: anything else ----------------------------------------------------------

wire_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
"""Every integer msgpack can carry."""
scalars = st.one_of(
    wire_ints, st.booleans(), st.none(), st.floats(allow_nan=False), st.binary(max_size=17),
    st.text(max_size=5), st.sampled_from(
        ["chat", "notification", "consent_request", "statement", "utility", "marketing",
         "user", "business", "abc"]
    ),
    st.integers(1, 2**53).map(lambda n: msgpack.ExtType(n % 128, b"x")),
    st.just(msgpack.Timestamp(1, 0)),
)  # fmt: skip
wire_values = st.one_of(
    scalars,
    st.lists(st.one_of(scalars, st.sampled_from(limits.CATEGORIES)), max_size=4),
    st.dictionaries(st.text(max_size=2), wire_ints, max_size=1),
)
KEYS = sorted({"t", "x", *(fld.name for cls in CLASSES for fld in fields(cls))})


def pack(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair: any order, duplicate keys allowed."""
    body = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in pairs)
    count = len(pairs)
    head = bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")
    return head + body


@settings(max_examples=600)
@given(
    fast_frames,
    st.dictionaries(st.sampled_from(KEYS), wire_values, max_size=3),
    st.lists(st.sampled_from(KEYS), max_size=2),
    st.randoms(use_true_random=False),
)
def test_frames_with_changed_added_or_dropped_fields_are_read_as_the_codec_reads(
    frame: f.Frame, changes: dict[str, Any], dropped: list[str], rng: random.Random
) -> None:
    """Wrong types (bool for int, str for bin, nil, floats, ext types, timestamps),
    unknown or missing keys, values out of range, array items of any type, another key
    order, the tag of another frame: read as the codec reads it, or left to it."""
    pairs = list(msgpack.unpackb(codec.encode(frame)).items()) + list(changes.items())
    pairs = [(k, v) for k, v in dict(pairs).items() if k not in dropped]
    if rng.random() < 0.5:
        rng.shuffle(pairs)
    assert_read_as_the_codec_reads(pack(pairs))


@settings(max_examples=600)
@given(fast_frames, st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 2), st.integers(0, 255)), min_size=1, max_size=4))
def test_frames_with_bytes_changed_inserted_or_deleted_are_read_as_the_codec_reads(
    frame: f.Frame, edits: list[tuple[int, int, int]]
) -> None:
    data = bytearray(codec.encode(frame))
    for where, how, byte in edits:
        where %= len(data) + 1
        if how == 0 and where < len(data):
            data[where] = byte
        elif how == 1:
            data.insert(where, byte)
        elif where < len(data):
            del data[where]
    assert_read_as_the_codec_reads(bytes(data))


@settings(max_examples=600)
@given(st.sampled_from(CLASSES), st.integers(0, 31), st.binary(max_size=48))
def test_any_bytes_after_a_frames_head_are_read_as_the_codec_reads(
    cls: type[f.Frame], count: int, rest: bytes
) -> None:
    """A map header of any size, ``t`` and the tag of one of the four, then anything."""
    head = (bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big"))
    assert_read_as_the_codec_reads(head + b"\xa1t" + bytes([int(cls.TYPE)]) + rest)


@settings(max_examples=300)
@given(fast_frames, st.binary(min_size=1, max_size=3), st.integers(1, 40))
def test_cut_or_padded_frames_are_left_to_the_codec(frame: f.Frame, tail: bytes, cut: int) -> None:
    data = codec.encode(frame)
    cut = cut % (len(data) - 1) + 1  # 1 to len - 1: a msgpack object has no complete prefix
    for candidate in (data + tail, data[:-cut], data[:cut]):
        assert assert_read_as_the_codec_reads(candidate) == 0


MSG_ID = bytes(range(16))
SEND = [("t", 20), ("id", 5), ("to", "bob"), ("msg_id", MSG_ID), ("intent", "chat"), ("body", b"x")]
SENT = [("t", 21), ("re", 5), ("msg_id", MSG_ID), ("at", 1234)]
DELIVER = [
    ("t", 22), ("delivery_id", 9), ("sender", "bob"), ("sender_kind", "user"), ("msg_id", MSG_ID),
    ("intent", "chat"), ("sent_at", 1), ("body", b"x"),
]  # fmt: skip
ACK = [("t", 23), ("delivery_ids", [1, 2])]


def with_value(pairs: list[tuple[str, Any]], key: str, raw: bytes) -> bytes:
    """``pairs`` packed with ``key``'s value replaced by the msgpack bytes ``raw``."""
    out = [bytes([0x80 | len(pairs)])]
    for k, v in pairs:
        out.append(msgpack.packb(k) + (raw if k == key else msgpack.packb(v, use_bin_type=True)))
    return b"".join(out)


REFUSED_BY_THE_CODEC = {
    "SEND with a duplicate key": pack([*SEND, ("body", b"y")]),
    "SENT with a duplicate key": pack([*SENT, ("at", 1)]),
    "DELIVER with a duplicate key": pack([*DELIVER, ("sender", "eve")]),
    "ACK with a duplicate key": pack([*ACK, ("delivery_ids", [3])]),
    "ACK repeating t": pack([*ACK, ("t", 23)]),
    "SEND with an unknown key": pack([*SEND, ("x", 1)]),
    "SEND without its body": pack(SEND[:-1]),
    "SEND with a nil category": pack([*SEND, ("category", None)]),
    "SEND with a bool id": pack([*SEND[:1], ("id", True), *SEND[2:]]),
    "SEND with a str body": pack([*SEND[:-1], ("body", "x")]),
    "SENT with a float at": pack([*SENT[:-1], ("at", 1.0)]),
    "SENT with re 0": pack([SENT[0], ("re", 0), *SENT[2:]]),
    "SENT with a short msg_id": pack([*SENT[:2], ("msg_id", MSG_ID[:15]), SENT[3]]),
    "DELIVER with a timestamp": with_value(DELIVER, "sent_at", msgpack.packb(msgpack.Timestamp(1, 0))),
    "DELIVER with an ext body": with_value(DELIVER, "body", b"\xd4\x05x"),
    "DELIVER with an empty ext body": with_value(DELIVER, "body", b"\xc7\x00\x05"),
    "DELIVER with a sender not UTF-8": with_value(DELIVER, "sender", b"\xa3b\xffb"),
    "DELIVER with a bin sender": with_value(DELIVER, "sender", b"\xc4\x03bob"),
    "DELIVER with delivery_id 0": pack([DELIVER[0], ("delivery_id", 0), *DELIVER[2:]]),
    "ACK with a str id": pack([ACK[0], ("delivery_ids", [1, "2"])]),
    "ACK with a bool id": pack([ACK[0], ("delivery_ids", [True])]),
    "ACK with a float id": pack([ACK[0], ("delivery_ids", [2.0])]),
    "SEND asking for a bin category": pack(
        [*SEND[:4], ("intent", "consent_request"), SEND[5], ("categories", [b"utility"])]
    ),
    "ACK with a nested array": pack([ACK[0], ("delivery_ids", [[1]])]),
    "ACK with an empty array": pack([ACK[0], ("delivery_ids", [])]),
    "ACK with a negative id": pack([ACK[0], ("delivery_ids", [-1])]),
    "ACK with too many ids": pack([ACK[0], ("delivery_ids", list(range(1, limits.MAX_ACK_IDS + 2)))]),
    "ACK longer than any array": pack([ACK[0], ("delivery_ids", [1] * (limits.MAX_ARRAY_ITEMS + 1))]),
    "ACK over the frame size": pack([ACK[0], ("delivery_ids", [2**63] * 7282)]),
    "SEND with an ext key": bytes([0x80 | len(SEND) + 1]) + pack(SEND)[1:] + b"\xd4\x01x\x01",
    "SEND with a bin key": bytes([0x80 | len(SEND) + 1]) + pack(SEND)[1:] + b"\xc4\x01x\x01",
    "SEND with trailing bytes": pack(SEND) + b"\xc0",
}


@pytest.mark.parametrize("data", REFUSED_BY_THE_CODEC.values(), ids=REFUSED_BY_THE_CODEC.keys())
def test_what_the_codec_refuses_is_left_to_it(data: bytes) -> None:
    with pytest.raises((MalformedFrame, FrameTooLarge)):
        codec.decode(data)
    assert assert_read_as_the_codec_reads(data) == 0


ACCEPTED_IN_ANOTHER_FORM = {
    "SEND in another key order": pack(SEND[::-1]),
    "SENT with a wide int": with_value(SENT, "re", b"\xce\x00\x00\x00\x05"),
    "ACK with wide ids": with_value(ACK, "delivery_ids", b"\x92\xcd\x00\x01\xcf" + bytes(7) + b"\x02"),
    "ACK as an array 16": with_value(ACK, "delivery_ids", b"\xdc\x00\x01\x07"),
    "DELIVER as a map 16": b"\xde\x00\x08" + pack(DELIVER)[1:],
    "DELIVER with t last": pack([*DELIVER[1:], DELIVER[0]]),
}


@pytest.mark.parametrize("data", ACCEPTED_IN_ANOTHER_FORM.values(), ids=ACCEPTED_IN_ANOTHER_FORM.keys())
def test_a_valid_frame_in_another_form_is_read_as_the_codec_reads_or_left_to_it(data: bytes) -> None:
    assert isinstance(codec.decode(data), f.Send | f.Sent | f.Deliver | f.Ack)
    assert_read_as_the_codec_reads(data)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_most_single_byte_mutations_the_codec_accepts_are_read_here_too(cls: type[f.Frame]) -> None:
    """The readers are not merely safe by declining: of mutated frames the codec still
    accepts as the same type, they read nearly all (changed values of canonical
    width)."""
    rng = random.Random(20261104)
    frame = codec.decode(codec.encode(_example(cls)))
    valid = codec.encode(frame)
    accepted = read_too = 0
    for _ in range(4000):
        data = bytearray(valid)
        data[rng.randrange(len(data))] = rng.randrange(256)
        taken = assert_read_as_the_codec_reads(bytes(data))
        if isinstance(outcome(bytes(data)), cls):
            accepted += 1
            read_too += taken
    assert accepted > 100
    assert read_too > 0.8 * accepted


def _example(cls: type[f.Frame]) -> f.Frame:
    msg_id = bytes(range(16))
    return {
        f.Send: f.Send(id=70_000, to="bob", msg_id=msg_id, intent="chat", body=b"ciphertext"),
        f.Sent: f.Sent(re=70_000, msg_id=msg_id, at=1_700_000_000_000),
        f.Deliver: f.Deliver(
            delivery_id=70_000, sender="bob", sender_kind="user", msg_id=msg_id, intent="chat",
            sent_at=1_700_000_000_000, body=b"ciphertext",
        ),
        f.Ack: f.Ack(delivery_ids=(70_000, 70_001, 1_000_000_000_000)),
    }[cls]


# --- after the channel (SPEC §1.3) -----------------------------------------------------


@settings(max_examples=100)
@given(fast_frames, st.lists(st.binary(max_size=64), max_size=3))
def test_frames_opened_from_the_channel_are_read_as_the_codec_reads(
    frame: f.Frame, others: list[bytes]
) -> None:
    """The relay and the client run the fast readers on what the channel opens: the
    exact bytes sealed, so the differential above holds for them unchanged — the frame
    itself, and any bytes a peer seals in its place."""
    client, relay = channel_pair()
    data = codec.encode(frame)
    assert relay.decrypt(client.encrypt(data)) == data
    assert assert_read_as_the_codec_reads(relay.decrypt(client.encrypt(data))) == 1
    for junk in others:
        assert_read_as_the_codec_reads(relay.decrypt(client.encrypt(junk)))


RAW_VALUES = [
    b"\xcb\x7f\xf8" + bytes(6),  # NaN, float 64
    b"\xca\x7f\xc0\x00\x00",  # NaN, float 32
    b"\xcb" + bytes(8),  # 0.0
    b"\xdb\xff\xff\xff\xff",  # a str declaring 4 GiB, then nothing
    b"\xc6\x7f\xff\xff\xff",  # a bin declaring 2 GiB
    b"\xdd\xff\xff\xff\xff",  # an array declaring 4 billion items
    b"\xdf\xff\xff\xff\xff",  # a map declaring 4 billion entries
    b"\xc9\xff\xff\xff\xff\x05",  # an ext declaring 4 GiB
    b"\xc7\x00\xff",  # an empty timestamp
    b"\xd6\xff" + bytes(4),  # a timestamp
    b"\xc0",  # nil
    b"\x91" * 3 + b"\x01",  # nested arrays
    b"\x91\x81\xa1a\x01",  # a map in an array
    b"\xa3bob",
    b"\xd9\x03bob",  # the same str, str 8
    b"\xc4\x03bob",  # the same bytes, bin
]
"""Raw msgpack values (not all of them whole) put in place of a field's value."""


def _non_canonical(value: int) -> list[bytes]:
    """``value`` in every wider msgpack int form that holds it."""
    forms = []
    for head, size, signed in ((0xCD, 2, False), (0xCE, 4, False), (0xCF, 8, False),
                               (0xD2, 4, True), (0xD3, 8, True)):  # fmt: skip
        try:
            forms.append(bytes([head]) + value.to_bytes(size, "big", signed=signed))
        except OverflowError:
            continue
    return forms


@settings(max_examples=600)
@given(fast_frames, st.data())
def test_raw_value_and_key_encodings_are_read_as_the_codec_reads(
    frame: f.Frame, data: st.DataObject
) -> None:
    """NaN floats, lengths declared far past the message, extensions, nesting, an int in a
    wider form than needed, a key in str 8: each read as the codec reads it, or left."""
    pairs = list(msgpack.unpackb(codec.encode(frame)).items())
    index = data.draw(st.integers(0, len(pairs) - 1))
    key, value = pairs[index]
    raw = [msgpack.packb(v, use_bin_type=True) for _, v in pairs]
    choices = RAW_VALUES + (_non_canonical(value) if type(value) is int else [])
    raw[index] = data.draw(st.sampled_from(choices))
    keys = [msgpack.packb(k) for k, _ in pairs]
    if data.draw(st.booleans()):
        keys[index] = b"\xd9" + bytes([len(key)]) + key.encode()
    message = bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in zip(keys, raw, strict=True))
    assert_read_as_the_codec_reads(message)
