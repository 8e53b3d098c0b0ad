"""server/fastframes.py: SENT and DELIVER bytes are the codec's; SEND and ACK read as it reads."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindrelay.protocol import limits
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.errors import MalformedFrame, ProtocolError
from blindrelay.protocol.frames import (
    MAX_DELIVERY_ID,
    Ack,
    Deliver,
    Frame,
    FrameType,
    Send,
    Sent,
    field_names,
)
from blindrelay.server import fastframes
from blindrelay.server.store import QueuedEnvelope, envelope_row

uints = st.integers(min_value=1, max_value=2**53 - 1)
times = st.integers(min_value=0, max_value=2**47)
msg_ids = st.binary(min_size=limits.MESSAGE_ID_BYTES, max_size=limits.MESSAGE_ID_BYTES)
handles = st.from_regex(r"[a-z][a-z0-9]{2,7}(?:_[a-z0-9]{1,7})?", fullmatch=True)
categories = st.sampled_from(sorted(limits.CATEGORIES))


@given(re=st.integers(min_value=1, max_value=2**31 - 1), msg_id=msg_ids, at=times)
def test_sent_is_the_codecs_encoding(re: int, msg_id: bytes, at: int) -> None:
    data = fastframes.sent(re, msg_id, at)
    assert data == encode(Sent(re=re, msg_id=msg_id, at=at))
    assert decode(data) == Sent(re=re, msg_id=msg_id, at=at)


@st.composite
def envelopes(draw: st.DrawFn) -> QueuedEnvelope:
    intent = draw(st.sampled_from(["chat", "notification", "consent_request", "statement"]))
    category = draw(categories) if intent == "notification" else None
    asked = (
        tuple(draw(st.lists(categories, min_size=1, max_size=3, unique=True)))
        if intent == "consent_request"
        else None
    )
    return QueuedEnvelope(
        delivery_id=draw(uints),
        recipient=draw(handles),
        sender=draw(handles),
        sender_kind=draw(st.sampled_from(["user", "business"])),
        msg_id=draw(msg_ids),
        intent=intent,
        category=category,
        categories=asked,
        sent_at=draw(times),
        body=draw(st.binary(min_size=1, max_size=64)),
    )


@given(envelopes())
def test_deliver_is_the_codecs_encoding(envelope: QueuedEnvelope) -> None:
    frame = Deliver(
        delivery_id=envelope.delivery_id, sender=envelope.sender,
        sender_kind=envelope.sender_kind, msg_id=envelope.msg_id, intent=envelope.intent,
        sent_at=envelope.sent_at, body=envelope.body, category=envelope.category,
        categories=envelope.categories,
    )  # fmt: skip
    data = fastframes.deliver(envelope)
    assert data == encode(frame)
    assert fastframes.deliver_row(envelope_row(envelope)) == data  # the store's row form
    assert decode(data) == frame


# --- ACK in ----------------------------------------------------------------------

ACK_HEAD = encode(Ack(delivery_ids=(1,)))[:-2]  # up to the id array: map, t, key
delivery_ids = st.integers(min_value=1, max_value=MAX_DELIVERY_ID)


@given(st.lists(delivery_ids, min_size=1, max_size=limits.MAX_ACK_IDS))
def test_a_canonical_ack_is_read_without_the_codec(ids: list[int]) -> None:
    data = encode(Ack(delivery_ids=tuple(ids)))
    assert fastframes.ack(data) == decode(data) == Ack(delivery_ids=tuple(ids))


def _decoded_or_refused(data: bytes) -> Frame | None:
    try:
        return decode(data)
    except ProtocolError:
        return None


@given(
    st.lists(
        st.one_of(
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.booleans(),
            st.none(),
            st.floats(allow_nan=False),
            st.binary(max_size=3),
            st.text(max_size=3),
            st.lists(delivery_ids, max_size=2),
        ),
        max_size=limits.MAX_ACK_IDS + 2,
    ),
    st.binary(max_size=2),
)
def test_the_fast_ack_accepts_only_what_the_codec_accepts(items: list[Any], tail: bytes) -> None:
    """Odd ids, non-integers, empty or overlong arrays, trailing bytes: the fast
    path either returns the codec's frame or declines (the codec then refuses)."""
    data = ACK_HEAD + msgpack.packb(items, use_bin_type=True) + tail
    fast = fastframes.ack(data)
    assert fast is None or fast == _decoded_or_refused(data)


@given(st.binary(max_size=24))
def test_the_fast_ack_declines_anything_after_the_head_it_cannot_prove(rest: bytes) -> None:
    data = ACK_HEAD + rest
    fast = fastframes.ack(data)
    assert fast is None or fast == _decoded_or_refused(data)


@pytest.mark.parametrize(
    "frame",
    [
        {"delivery_ids": [1], "t": int(FrameType.ACK)},  # another key order
        {"t": int(FrameType.ACK), "delivery_ids": [1], "x": 1},  # an unknown key
        {"t": int(FrameType.SEND), "delivery_ids": [1]},
    ],
)
def test_the_fast_ack_leaves_non_canonical_frames_to_the_codec(frame: dict[str, Any]) -> None:
    assert fastframes.ack(msgpack.packb(frame)) is None


def test_the_fast_ack_declines_duplicate_keys() -> None:
    # {"t": 23, "delivery_ids": [1], "delivery_ids": [2]} — a map header of 3 is not the head.
    data = b"\x83" + ACK_HEAD[1:] + b"\x91\x01\xacdelivery_ids\x91\x02"
    assert fastframes.ack(data) is None
    with pytest.raises(MalformedFrame):
        decode(data)


# --- SEND in ---------------------------------------------------------------------


@st.composite
def sends(draw: st.DrawFn) -> Send:
    intent = draw(st.sampled_from(["chat", "notification", "consent_request"]))
    return Send(
        id=draw(st.integers(min_value=1, max_value=2**32 - 1)),
        to=draw(handles),
        msg_id=draw(msg_ids),
        intent=intent,
        body=draw(st.binary(min_size=1, max_size=64)),
        category=draw(categories) if intent == "notification" else None,
        categories=(
            tuple(draw(st.lists(categories, min_size=1, max_size=3, unique=True)))
            if intent == "consent_request"
            else None
        ),
    )


@given(sends())
def test_a_canonical_send_is_read_without_the_codec(frame: Send) -> None:
    data = encode(frame)
    assert fastframes.send(data) == decode(data) == frame


wire_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
"""Every integer msgpack can carry."""
wire_values = st.one_of(
    wire_ints, st.booleans(), st.none(),
    st.binary(max_size=17), st.text(max_size=5), handles, msg_ids, categories,
    st.sampled_from(["chat", "notification", "consent_request", "receipt", "statement"]),
    st.lists(st.one_of(categories, wire_ints), max_size=3),
    st.dictionaries(st.text(max_size=2), wire_ints, max_size=1),
)  # fmt: skip
send_keys = st.sampled_from(["id", "to", "msg_id", "intent", "body", "category", "categories", "x"])


@given(sends(), st.dictionaries(send_keys, wire_values, max_size=3), st.booleans())
def test_the_fast_send_accepts_only_what_the_codec_accepts(
    frame: Send, changes: dict[str, Any], drop_category: bool
) -> None:
    """Wrong types, nils, unknown or missing keys, out-of-range values: the fast
    path either returns the codec's frame or declines (the codec then decides)."""
    fields = {k: v for k, v in msgpack.unpackb(encode(frame)).items()}
    fields.update(changes)
    if drop_category:
        fields.pop("category", None)
    data = msgpack.packb(fields, use_bin_type=True)
    fast = fastframes.send(data)
    assert fast is None or fast == _decoded_or_refused(data)


@given(sends(), st.binary(max_size=3), st.integers(min_value=0, max_value=40))
def test_the_fast_send_declines_cut_or_padded_bytes(frame: Send, tail: bytes, cut: int) -> None:
    data = encode(frame)
    for candidate in (data + tail, data[: len(data) - cut], data[:cut]):
        fast = fastframes.send(candidate)
        assert fast is None or fast == _decoded_or_refused(candidate)


def test_the_fast_send_declines_a_duplicate_key() -> None:
    frame = Send(id=1, to="bob", msg_id=b"m" * 16, intent="chat", body=b"x")
    data = encode(frame)
    # One more pair, "body" again: the header counts 7 keys, the dict holds 6.
    duplicated = bytes([data[0] + 1]) + data[1:] + msgpack.packb("body") + msgpack.packb(b"y")
    assert fastframes.send(duplicated) is None
    with pytest.raises(MalformedFrame):
        decode(duplicated)


def test_the_fast_send_knows_every_field_of_send() -> None:
    """A field added to SEND must be added here too (until then it falls through)."""
    assert set(fastframes._SEND_TYPES) == {"t", *field_names(Send)}
