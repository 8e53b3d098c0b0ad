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


def _invalid_vectors() -> list[tuple[str, bytes, int, int | None]]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        vector = json.loads(path.read_text())
        data = bytes.fromhex(vector["hex"])
        if len(data) > limits.MAX_FRAME_BYTES:
            continue  # the transport closes first (SPEC §1.1.5), tested in test_s01
        out.append((path.stem, data, int(ErrorCode[vector["error"]]), vector["re"]))
    return out


@pytest.mark.spec("2.3")
@pytest.mark.parametrize(
    ("data", "code", "re"),
    [(d, c, r) for _, d, c, r in _invalid_vectors()],
    ids=[n for n, _, _, _ in _invalid_vectors()],
)
async def test_invalid_vector_is_refused_with_its_code_and_re(relay, data, code, re):
    """SPEC §2.3: "A receiver MUST refuse, with ERROR 100 MALFORMED_FRAME" each case (101 for
    a value over its maximum length, 102 for an unknown `t`) and keep the connection open;
    §2.2.5: the ERROR "carries `re` if and only if" the bytes hold a readable `id` — the
    vector states which."""
    peer = await relay.user()
    await peer.send_raw(data, expect_re=re)
    error = await peer.recv()
    assert isinstance(error, Error), error
    assert (error.code, error.re) == (code, re)
    assert await peer.round_trip() == []


@pytest.mark.spec("2.2.5")
async def test_refused_request_names_its_valid_id(relay):
    """SPEC: "An ERROR answering a binary message MUST carry `re` if and only if the message
    begins with one complete msgpack map in which exactly one key is the str `id` and that
    key's value is an int from 1 to 2^32−1"."""
    peer = await relay.user()
    request_id = 2**32 - 1  # the largest valid id, to catch truncation
    data = msgpack.packb({"t": 11, "id": request_id, "handle": "Not-A-Handle"})
    await peer.send_raw(data, expect_re=request_id)
    error = await peer.response(request_id)
    assert isinstance(error, Error) and (error.code, error.re) == (100, request_id)


@pytest.mark.spec("2.2.3")
async def test_error_without_a_usable_id_is_a_push(relay):
    """SPEC: "An ERROR is a push exactly when rule 5 gives it no `re`": an id of 0, or an
    id that is not the map's only `id` key."""
    peer = await relay.user()
    await peer.send_raw(msgpack.packb({"t": 11, "id": 0, "handle": "bad"}))
    error = await peer.recv()
    assert isinstance(error, Error) and (error.code, error.re) == (100, None)
    await peer.send_raw(bytes.fromhex("84a1740ba2696403a2696404a668616e646c65a3626f62"))
    error = await peer.recv()
    assert isinstance(error, Error) and (error.code, error.re) == (100, None)


@pytest.mark.spec("2.2.5")
async def test_a_readable_id_is_echoed_whatever_else_is_wrong(relay):
    """SPEC: the rule "holds whatever else is wrong with the message and whatever its `t`",
    the id "is read leniently" and "bytes after the map are ignored" — here for trailing
    bytes, an extension type, a duplicate key, an unknown `t` and a frame the state refuses."""
    peer = await relay.connect()
    cases = [
        (31, msgpack.packb({"t": 11, "id": 31, "handle": "bob"}) + b"\xc1", 100),
        (32, msgpack.packb({"t": 11, "id": 32, "handle": msgpack.ExtType(9, b"")}), 100),
        (33, bytes.fromhex("84a1740ba2696421a668616e646c65a3626f62a668616e646c65a3626f62"), 100),
        (34, msgpack.packb({"t": 77, "id": 34, "x": [[[[[[1]]]]]]}), 100),
        (35, msgpack.packb({"t": 77, "id": 35}), 102),
        (36, msgpack.packb({"t": 11, "id": 36, "handle": "bob"}), 103),  # before WELCOME
    ]
    for request_id, data, code in cases:
        await peer.send_raw(data, expect_re=request_id)
        error = await peer.response(request_id)
        assert isinstance(error, Error) and (error.code, error.re) == (code, request_id)


@pytest.mark.spec("2.1")
async def test_unknown_frame_type_gets_102_and_the_connection_stays_usable(relay):
    """SPEC: "A frame type not in this table is answered with ERROR 102 UNKNOWN_FRAME_TYPE"."""
    peer = await relay.user()
    for tag in (6, 7, 14, 24, 33, 47, 59, 99, 127, 1000):
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


@pytest.mark.spec("2.2.5")
async def test_the_id_is_read_past_1024_levels_of_nesting_but_not_1025(relay):
    """SPEC: `re` is carried if the map's keys and values each nest "at most 1024
    containers"; one more and the ERROR is a push."""
    peer = await relay.user()
    for depth, request_id in ((1024, 51), (1025, None)):
        value = b"\x91" * (depth - 1) + b"\x90"
        data = b"\x83\xa1t\x0b\xa1x" + value + b"\xa2id" + msgpack.packb(51)
        await peer.send_raw(data, expect_re=request_id)
        error = await peer.recv()
        assert isinstance(error, Error) and (error.code, error.re) == (100, request_id), depth
