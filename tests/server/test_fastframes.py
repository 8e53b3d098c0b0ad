"""server/fastframes.py: the relay's own SENT and DELIVER bytes are the codec's, exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blindrelay.protocol import limits
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.frames import Deliver, Sent
from blindrelay.server import fastframes
from blindrelay.server.jobs import envelope_row
from blindrelay.server.storage import QueuedEnvelope

uints = st.integers(min_value=1, max_value=2**53 - 1)
times = st.integers(min_value=0, max_value=2**47)
msg_ids = st.binary(min_size=limits.MESSAGE_ID_BYTES, max_size=limits.MESSAGE_ID_BYTES)
handles = st.from_regex(r"[a-z][a-z0-9_]{2,15}", fullmatch=True)
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
    assert fastframes.deliver_row(envelope_row(envelope)) == data  # the writer's row form
    assert decode(data) == frame
