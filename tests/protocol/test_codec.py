"""SPEC §2.3: the codec round-trips every frame and refuses everything else."""

from __future__ import annotations

import contextlib
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
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
from blindrelay.protocol.signed import SignedObject

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


def test_a_frame_of_exactly_the_size_cap_is_parsed() -> None:
    """SPEC §2.3: "at most" MAX_FRAME_BYTES — the cap itself is allowed (parsed, then
    refused here for what it holds, not for its size)."""
    head = msgpack.packb({"t": 20, "id": 9, "junk": b""}, use_bin_type=True)[:-2]
    filler = limits.MAX_FRAME_BYTES - len(head) - 3  # bin 16: c5, two length bytes
    data = head + b"\xc5" + filler.to_bytes(2, "big") + b"\x00" * filler
    assert len(data) == limits.MAX_FRAME_BYTES
    assert msgpack.unpackb(data)["junk"] == b"\x00" * filler
    with pytest.raises(MalformedFrame):
        codec.decode(data)


def test_a_signed_object_of_exactly_its_bound_is_decoded_and_one_byte_more_is_not() -> None:
    """SPEC §14: a signed object's bound (MAX_STATEMENT_BYTES, MAX_PROFILE_BYTES …) is
    "at most", as for frames."""
    data = codec.encode_object(SignedObject(body=b"b" * 100, sig=bytes(64)))
    assert codec.decode_object(SignedObject, data, max_bytes=len(data)).body == b"b" * 100
    with pytest.raises(FrameTooLarge):
        codec.decode_object(SignedObject, data, max_bytes=len(data) - 1)


def test_a_map_of_more_entries_than_any_record_has_is_refused_from_its_header() -> None:
    """MAX_MAP_KEYS bounds the work of any map, under any key (records and content
    share ``strict_unpack``), not only the keys a frame would refuse after building it."""
    biggest = {f"k{n}": 0 for n in range(codec.MAX_MAP_KEYS)}
    assert codec.strict_unpack(msgpack.packb(biggest)) == biggest
    with pytest.raises(MalformedFrame):
        codec.strict_unpack(msgpack.packb({**biggest, "one_more": 0}))


@pytest.mark.parametrize(
    "mapping",
    [{b"a": 0}, {"a": 0, b"a": 0}, {"k": {b"inner": 0}}],
    ids=["bin-key", "bin-key-beside-the-same-str-key", "bin-key-in-a-nested-map"],
)
def test_strict_unpack_refuses_a_bin_map_key(mapping: dict[object, object]) -> None:
    """SPEC §2.3 rule 2: map keys are str. msgpack's strict_map_key lets bin keys through;
    a reader of the result that assumed str keys then raised TypeError (fuzzing, T77)."""
    with pytest.raises(MalformedFrame, match="key"):
        codec.strict_unpack(msgpack.packb(mapping, use_bin_type=True))


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


@pytest.mark.parametrize("tag", [True, False], ids=["true", "false"])
def test_a_bool_t_is_malformed_not_the_frame_type_it_equals(tag: bool) -> None:
    """SPEC §2.3: `t` that is not an int is 100, and a bool is never an int — `true`
    equals 1 (HELLO) and `false` 0 (no type, which would be 102)."""
    hello = f.Hello(
        version=2, relay_key=bytes(32), challenge=bytes(limits.CHALLENGE_BYTES),
        expires_at=1, now=1,
    )  # fmt: skip
    message = msgpack.unpackb(codec.encode(hello))
    message["t"] = tag
    with pytest.raises(MalformedFrame):
        codec.decode(msgpack.packb(message, use_bin_type=True))


def test_encoding_puts_type_first_and_omits_absent_optionals() -> None:
    frame = f.Error(code=400, re=3)
    assert msgpack.unpackb(codec.encode(frame)) == {"t": 9, "code": 400, "re": 3}
    assert codec.encode(frame)[1:3] == b"\xa1t"


def test_every_decode_error_is_a_protocol_error_with_a_frame_code() -> None:
    for cls in DECODE_ERRORS:
        assert issubclass(cls, ProtocolError)
        assert 100 <= cls.code < 200
    assert UnknownFrameType.code is ErrorCode.UNKNOWN_FRAME_TYPE


# --- SPEC §2.2.5: the id an ERROR echoes ------------------------------------------


class _Pairs(list):  # type: ignore[type-arg]
    """A map as its key/value pairs, duplicates kept (what the reference reads)."""


_UNDECIDED = object()


def _reference_request_id(data: bytes) -> object:
    """SPEC §2.2.5 read with msgpack itself: the first object, if a map of at most 16
    entries, with exactly one str key `id` whose value is an int (not a bool) in
    1 … 2^32−1. (Generated values nest far less than the 1024 containers allowed.)

    msgpack refuses a timestamp extension (−1) of a length the timestamp format does not
    define, which the rule skips like any extension: those inputs are undecided here
    (the vector ``id_with_bad_timestamp`` covers them).
    """
    unpacker = msgpack.Unpacker(
        raw=False, unicode_errors="surrogateescape", strict_map_key=False,
        object_pairs_hook=_Pairs, ext_hook=lambda code, data: (code, data), timestamp=0,
    )  # fmt: skip
    unpacker.feed(data)
    try:
        obj = unpacker.unpack()
    except Exception as exc:
        return _UNDECIDED if "timestamp" in str(exc) else None
    if type(obj) is not _Pairs or len(obj) > 16:
        return None
    ids = [value for key, value in obj if type(key) is str and key == "id"]
    if len(ids) == 1 and type(ids[0]) is int and 1 <= ids[0] <= f.MAX_REQUEST_ID:
        return ids[0]
    return None


id_values = st.integers(-3, 3) | st.integers(2**32 - 3, 2**32 + 3) | msgpack_values
key_values = st.sampled_from(["id", "t", "handle", "x"]) | st.binary(max_size=3) | st.integers(0, 3)


@st.composite
def _maps_with_ids(draw: st.DrawFn) -> bytes:
    """Maps with duplicate, non-str and `id` keys, garbage values, cut or extended."""
    pairs = draw(st.lists(st.tuples(key_values, id_values | msgpack_values), max_size=6))
    packer = msgpack.Packer(use_bin_type=True)
    data = packer.pack_map_header(len(pairs)) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in pairs
    )
    cut = draw(st.integers(0, len(data)))
    return draw(st.sampled_from([data, data[:cut], data + draw(st.binary(max_size=4))]))


@settings(max_examples=600)
@given(_maps_with_ids() | st.binary(max_size=64))
def test_request_id_of_agrees_with_a_reference_reading(data: bytes) -> None:
    expected = _reference_request_id(data)
    assume(expected is not _UNDECIDED)  # a timestamp of a bad length: see the reference
    assert codec.request_id_of(data) == expected


@settings(max_examples=500)
@given(st.binary(max_size=32).map(lambda tail: b"\x82\xa2id" + tail))
def test_request_id_of_never_raises_whatever_follows_an_id_key(data: bytes) -> None:
    """Found by the mutation test below: an id whose value was a str that is not UTF-8
    made the reader raise instead of answering None."""
    result = codec.request_id_of(data)
    assert result is None or 1 <= result <= f.MAX_REQUEST_ID


@settings(max_examples=300)
@given(all_frames, st.data())
def test_a_mutated_frame_refused_by_the_decoder_echoes_the_id_the_rule_reads(
    frame: f.Frame, data: st.DataObject
) -> None:
    encoded = bytearray(codec.encode(frame))
    encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    expected = _reference_request_id(bytes(encoded))
    assume(expected is not _UNDECIDED)
    try:
        codec.decode(bytes(encoded))
    except DECODE_ERRORS as exc:
        assert exc.request_id == expected


@pytest.mark.parametrize("container", [b"\x91", b"\x81\xa1k"], ids=["arrays", "maps"])
def test_an_id_is_read_past_values_nesting_up_to_the_bound_and_not_beyond(container: bytes) -> None:
    """SPEC §2.2.5: "each key and value nesting at most 1024 containers"."""
    for depth, expected in ((codec.ID_MAX_NESTING, 7), (codec.ID_MAX_NESTING + 1, None)):
        value = container * (depth - 1) + b"\x90"  # the innermost container is empty
        data = b"\x83\xa1t\x0b\xa1x" + value + b"\xa2id\x07"
        with pytest.raises(MalformedFrame) as info:
            codec.decode(data)
        assert info.value.request_id == expected, depth


def test_an_id_is_read_from_maps_of_up_to_sixteen_entries() -> None:
    """SPEC §2.2.5: "one complete msgpack map of at most 16 entries"."""
    for entries, expected in ((codec.ID_MAP_MAX_ENTRIES, 7), (codec.ID_MAP_MAX_ENTRIES + 1, None)):
        pairs = {"id": 7, **{f"k{i}": i for i in range(entries - 1)}}
        assert codec.request_id_of(msgpack.packb(pairs)) == expected, entries


@pytest.mark.parametrize(
    "key",
    [b"\xa2id", b"\xd9\x02id", b"\xda\x00\x02id", b"\xdb\x00\x00\x00\x02id"],
    ids=["fixstr", "str8", "str16", "str32"],
)
def test_an_id_key_in_any_str_encoding_is_read_and_a_bin_one_is_not(key: bytes) -> None:
    """SPEC §2.2.5: "the key may be in any msgpack str encoding [...]; a bin `id` is
    another key" — each of msgpack's four str heads, and the bin head that is not one."""
    rest = b"\xa6handle\xa3BAD"  # BUNDLE_FETCH with a handle that fails its pattern
    with pytest.raises(MalformedFrame) as info:
        codec.decode(b"\x83\xa1t\x0b" + key + b"\x07" + rest)
    assert info.value.request_id == 7
    assert codec.request_id_of(b"\x83\xa1t\x0b\xc4\x02id\x07" + rest) is None


def test_a_map_claiming_more_entries_than_its_bytes_hold_has_no_id() -> None:
    data = b"\xdf\xff\xff\xff\xff\xa2id\x07"
    assert codec.request_id_of(data) is None


@pytest.mark.parametrize(
    "message",
    [
        {"t": 23, "junk": [0] * (limits.MAX_ARRAY_ITEMS + 1)},  # an unknown key
        {"t": 23, "delivery_ids": [[0] * (limits.MAX_ARRAY_ITEMS + 1)]},  # nested in a field
        {"t": 99, "id": 7, "x": [0] * 30_000},  # before `t` is looked at
    ],
    ids=["unknown-key", "nested", "unknown-type"],
)
def test_an_array_longer_than_any_type_allows_is_refused_by_the_msgpack_layer(message: dict) -> None:
    """SPEC §2.3: no array of any type holds more than MAX_ARRAY_ITEMS values, so the
    msgpack layer refuses a longer one with 101 before any Python walks its items
    (a 64 KiB message of 65,000 one-byte ints cost ~6.5 ms to refuse when the depth
    check walked them; now msgpack stops at the length header)."""
    with pytest.raises(FrameTooLarge) as raised:
        codec.decode(msgpack.packb(message))
    assert raised.value.request_id == message.get("id")


def test_a_map_over_the_entry_bound_is_still_malformed_not_too_large() -> None:
    """Only arrays have a length maximum in their types; a map with too many keys is a
    fault of the msgpack layer like any other (SPEC §2.3: 100)."""
    message = {"t": 23, **{f"k{i}": 0 for i in range(codec.MAX_MAP_KEYS)}}
    with pytest.raises(MalformedFrame):
        codec.decode(msgpack.packb(message))


def test_no_array_field_of_any_frame_allows_more_than_max_array_items() -> None:
    """The bound above refuses nothing a frame may carry (largest: ACK's ids)."""
    maxima = {
        "delivery_ids": limits.MAX_ACK_IDS,
        "one_time": limits.MAX_PREKEYS_PER_UPLOAD,
        "statements": limits.MAX_LISTED_STATEMENTS,
        "categories": limits.MAX_CATEGORIES,
        "notifications": limits.MAX_CATEGORIES,
        "items": limits.MAX_BILL_ITEMS,
        "proof": limits.MAX_PROOF_HASHES,
        "entries": limits.MAX_LOG_ENTRIES,
    }
    assert max(maxima.values()) == limits.MAX_ARRAY_ITEMS
    frame = f.Ack(delivery_ids=tuple(range(1, limits.MAX_ACK_IDS + 1)))
    assert codec.decode(codec.encode(frame)) == frame


def test_a_full_bill_page_of_the_largest_items_fits_one_frame() -> None:
    """SPEC §8.5: a BILL with MAX_BILL_ITEMS of the largest items, the largest entry,
    proof and tree head is never over MAX_FRAME_BYTES."""
    page = f.Bill(
        re=2**32 - 1,
        month="2026-12",
        entry=b"\x01" * limits.MAX_LOG_ENTRY_BYTES,
        index=f.MAX_DELIVERY_ID,
        proof=(b"\x02" * 32,) * limits.MAX_PROOF_HASHES,
        sth=b"\x03" * limits.MAX_TREE_HEAD_BYTES,
        salt=b"\x04" * 16,
        start=f.MAX_DELIVERY_ID,
        items=(b"\x05" * limits.MAX_BILL_ITEM_BYTES,) * limits.MAX_BILL_ITEMS,
    )
    assert len(codec.encode(page)) <= limits.MAX_FRAME_BYTES


def test_a_full_statements_page_of_the_largest_statements_fits_one_frame() -> None:
    """SPEC §7.6, §1.1.5: a STATEMENTS answer can never be over MAX_FRAME_BYTES, which
    the client would have to close with 1009 (with 500 per page, a page of ordinary
    ~340-byte statements was ~170 KB)."""
    page = f.Statements(
        re=2**32 - 1,
        statements=tuple(
            bytes([i % 256]) * limits.MAX_STATEMENT_BYTES
            for i in range(limits.MAX_LISTED_STATEMENTS)
        ),
        next=2**53 - 1,
    )
    assert len(codec.encode(page)) <= limits.MAX_FRAME_BYTES


def test_the_recommended_msg_id_is_the_clock_then_the_random_bits() -> None:
    """SPEC §6.1.1: 6 bytes of ms since the epoch, big-endian, then 10 random bytes; a
    clock that does not fit or a wrong number of random bytes is a caller's bug."""
    random = bytes(range(10))
    msg_id = f.message_id(0x018C34B31200, random)  # 2023-12-04T12:00:00Z
    assert msg_id == bytes.fromhex("018c34b31200") + random
    assert len(msg_id) == limits.MESSAGE_ID_BYTES
    assert f.Send(id=1, to="bob", msg_id=msg_id, intent="chat", body=b"x").msg_id == msg_id
    assert f.message_id(1, random) < f.message_id(2, bytes(10))  # ordered by the clock
    for now_ms in (-1, 1 << 48):
        with pytest.raises(ValueError):
            f.message_id(now_ms, random)
    for size in (9, 11):
        with pytest.raises(ValueError):
            f.message_id(0, bytes(size))


def _map(pairs: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map from keys and their values' raw msgpack bytes."""
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + v for k, v in pairs)


def _array(items: list[bytes]) -> bytes:
    return b"\xdc" + len(items).to_bytes(2, "big") + b"".join(items)


_EMPTY_MAPS = _array([_array([b"\x80"] * 256)] * 252)
"""65,000 empty maps, three levels down: one byte each."""
DECODE_BOMBS = {
    "empty maps under an unknown t": _map([("t", b"\x63"), ("x", _EMPTY_MAPS)]),
    "empty maps under an unknown key": _map([("t", b"\x14"), ("x", _EMPTY_MAPS)]),
    "empty arrays": _map([("t", b"\x14"), ("x", _array([_array([b"\x90"] * 256)] * 252))]),
    "maps of one entry": _map(
        [("t", b"\x14"), ("x", _array([_array([b"\x81\xa0\x00"] * 256)] * 84))]
    ),
    "timestamps under an unknown t": _map(
        [("t", b"\x63"), ("x", _array([_array([b"\xd6\xff" + bytes(4)] * 256)] * 41))]
    ),
    "empty maps at the deepest level allowed": _map(
        [("t", b"\x63"), *((f"k{i}", _array([b"\x80"] * 256)) for i in range(15))]
    ),
}


@pytest.mark.parametrize("data", DECODE_BOMBS.values(), ids=DECODE_BOMBS.keys())
def test_refusing_a_message_of_many_tiny_containers_runs_little_python(data: bytes) -> None:
    """A frame of 65,000 one-byte containers cost ~30 ms of the event loop to refuse — a
    hook per map and a Python walk per container for the depth (and the timestamps) —
    ~90 times the cost of refusing junk of the same size, before any login
    (/tmp/audit-codec/poc_decode_bomb.py: 36 ms of relay CPU a frame; an honest
    request waited 650 ms behind one connection's 17). Counted in Python calls, not
    time: the nesting is checked from the containers' headers before anything is
    built, and no container deeper than a frame needs (3) is built at all."""
    assert len(data) <= limits.MAX_FRAME_BYTES
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        with pytest.raises(DECODE_ERRORS):
            codec.decode(data)
    finally:
        sys.setprofile(None)
    assert calls < 4 * 1024, f"{calls} Python calls to refuse {len(data)} bytes"
