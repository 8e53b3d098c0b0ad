"""SPEC §2 Frames: strict decoding, request/response pairing, canonical encoding."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

import blindrelay.protocol
from blindrelay.protocol import limits
from blindrelay.protocol.codec import encode
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    REQUEST_FRAMES,
    Ack,
    BundleFetch,
    Deliver,
    Error,
    Ok,
    Send,
    Sent,
)

from .wire import Received, new_handle, new_msg_id

VECTORS = Path(blindrelay.protocol.__file__).parent / "vectors" / "invalid"
REQUEST_TAGS = frozenset(int(t) for t in REQUEST_FRAMES)


def _invalid_vectors() -> list[tuple[str, bytes, int]]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        vector = json.loads(path.read_text())
        data = bytes.fromhex(vector["hex"])
        if len(data) > limits.MAX_FRAME_BYTES:
            continue  # the transport closes first (SPEC §1.1.5), tested in test_s01
        out.append((path.stem, data, int(ErrorCode[vector["error"]])))
    return out


def _unique_pairs(pairs: list[tuple[object, object]]) -> dict[object, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def expected_re(data: bytes) -> int | None:
    """SPEC §2.2.3/§2.2.5, independently of any codec: the ERROR names the request if the
    bytes are one msgpack map with unique keys whose ``t`` is a request type and whose
    ``id`` is itself valid (an int, not a bool, in 1 … 2^32−1); otherwise it is a push."""
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=False, object_pairs_hook=_unique_pairs
        )
    except Exception:
        return None
    if not isinstance(obj, dict):
        return None
    tag, request_id = obj.get("t"), obj.get("id")
    if type(tag) is int and tag in REQUEST_TAGS and type(request_id) is int:
        return request_id if 1 <= request_id <= 2**32 - 1 else None
    return None


@pytest.mark.spec("2.3")
@pytest.mark.parametrize(
    ("data", "code"),
    [(d, c) for _, d, c in _invalid_vectors()],
    ids=[n for n, _, _ in _invalid_vectors()],
)
async def test_invalid_vector_is_refused_with_its_code(relay, data, code):
    """SPEC: "A receiver MUST refuse, with ERROR 100 MALFORMED_FRAME" each §2.3 case (101 for a
    field over its limit, 102 for an unknown `t`), and keep the connection open."""
    peer = await relay.user()
    re = expected_re(data)
    await peer.send_raw(data, expect_re=re)
    error = await peer.recv()
    assert isinstance(error, Error), error
    assert (error.code, error.re) == (code, re)
    assert await peer.round_trip() == []


@pytest.mark.spec("2.2.5")
async def test_refused_request_names_its_valid_id(relay):
    """SPEC: "When a request is refused because of a field, the relay MUST put the request's id
    in the ERROR's re if the id field itself was present and valid"."""
    peer = await relay.user()
    request_id = 2**32 - 1  # the largest valid id, to catch truncation
    data = msgpack.packb({"t": 11, "id": request_id, "handle": "Not-A-Handle"})
    await peer.send_raw(data, expect_re=request_id)
    error = await peer.response(request_id)
    assert isinstance(error, Error) and (error.code, error.re) == (100, request_id)


@pytest.mark.spec("2.2.3")
async def test_error_without_a_usable_id_is_a_push(relay):
    """ERROR "is a push (no re) when it answers … a frame so malformed that no valid id
    could be read from it"."""
    peer = await relay.user()
    await peer.send_raw(msgpack.packb({"t": 11, "id": 0, "handle": "bad"}))
    error = await peer.recv()
    assert isinstance(error, Error) and (error.code, error.re) == (100, None)


@pytest.mark.spec("2.1")
async def test_unknown_frame_type_gets_102_and_the_connection_stays_usable(relay):
    """SPEC: "A frame type not in this table is answered with ERROR 102 UNKNOWN_FRAME_TYPE"."""
    peer = await relay.user()
    for tag in (6, 7, 14, 24, 33, 45, 99, 127, 1000):
        await peer.send_raw(msgpack.packb({"t": tag}))
        error = await peer.recv()
        assert isinstance(error, Error) and error.code == 102, tag
    assert await peer.round_trip() == []


@pytest.mark.spec("2.1")
async def test_relay_frame_types_sent_by_a_client_get_103(relay):
    """SPEC: "A relay-sent type received by the relay … is an ERROR 103 UNEXPECTED_FRAME"."""
    peer = await relay.user()
    relay_frames = [
        Ok(re=7),
        Sent(re=7, msg_id=new_msg_id(), at=1),
        Deliver(
            delivery_id=1,
            sender=new_handle(),
            sender_kind="user",
            msg_id=new_msg_id(),
            intent="chat",
            sent_at=1,
            body=b"x",
        ),
        Error(code=400, re=7),
    ]
    for frame in relay_frames:
        await peer.send_raw(encode(frame))
        error = await peer.recv()
        assert isinstance(error, Error) and (error.code, error.re) == (103, None), frame


@pytest.mark.spec("2.2.1")
async def test_every_pipelined_request_gets_exactly_one_answer(relay):
    """SPEC: "The relay MUST answer every request with exactly one frame: its response type,
    OK, or ERROR, whose re equals the request's id"."""
    alice = await relay.user()
    bob = await relay.user(signed=True)
    requests = []
    for n in range(30):
        request_id = 1000 + 7 * n
        match n % 3:
            case 0:
                frame = Send(
                    id=request_id,
                    to=bob.handle,
                    msg_id=new_msg_id(),
                    intent="chat",
                    body=b"m%d" % n,
                )
            case 1:
                frame = BundleFetch(id=request_id, handle=new_handle("nobody"))
            case _:
                frame = Send(
                    id=request_id,
                    to=new_handle("nobody"),
                    msg_id=new_msg_id(),
                    intent="chat",
                    body=b"x",
                )
        requests.append(frame)
        await alice.send(frame)
    answers = {r.id: await alice.response(r.id) for r in requests}
    assert {i: type(a).__name__ for i, a in answers.items()} == {
        r.id: ("Sent" if r.TYPE == 20 and r.to == bob.handle else "Error") for r in requests
    }
    # Nothing else answers: the next frame is the answer to a fresh request
    # (and the Peer refuses any frame whose `re` was already answered).
    assert [f for f in await alice.round_trip() if getattr(f, "re", None)] == []


@pytest.mark.spec("2.2.4")
async def test_ack_is_a_notification_with_no_answer(relay):
    """ACK "is a notification: the relay sends nothing back on success"."""
    alice = await relay.user()
    bob = await relay.user()
    await alice.request(
        lambda i: Send(id=i, to=bob.handle, msg_id=new_msg_id(), intent="chat", body=b"x")
    )
    delivery = await bob.push(Deliver)
    await bob.send(Ack(delivery_ids=(delivery.delivery_id,)))
    assert await bob.round_trip() == []


@pytest.mark.spec("2.3")
async def test_fields_in_any_order_are_accepted(relay):
    """SPEC: "Receivers MUST accept fields in any order"."""
    alice = await relay.user()
    bob = await relay.user()
    request_id, msg_id = alice.next_id(), new_msg_id()
    data = msgpack.packb(
        {
            "body": b"reordered",
            "intent": "chat",
            "msg_id": msg_id,
            "to": bob.handle,
            "id": request_id,
            "t": 20,
        }
    )
    await alice.send_raw(data, expect_re=request_id)
    assert isinstance(await alice.response(request_id), Sent)
    assert (await bob.push(Deliver)).body == b"reordered"


@pytest.mark.spec("2.3")
async def test_relay_frames_are_canonical(relay):
    """SPEC: "Senders MUST encode t first and then the fields in the order of the tables …
    using the shortest msgpack form": every relay frame re-encodes to its own bytes."""
    alice = await relay.user()
    bob = await relay.user()
    sent = await alice.request_raw(
        lambda i: Send(id=i, to=bob.handle, msg_id=new_msg_id(), intent="chat", body=b"c")
    )
    deliver = await bob.push_raw(Deliver)
    error = await alice.request_raw(lambda i: BundleFetch(id=i, handle=new_handle("nobody")))
    for item in (sent, deliver, error):
        assert isinstance(item, Received)
        assert encode(item.frame) == item.raw
        assert next(iter(msgpack.unpackb(item.raw))) == "t"
