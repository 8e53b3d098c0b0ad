"""The fan-out benchmark's customers (bench/fanout.py): what they check and what they send.

They bypass the generic codec (protocol.fastcodec, tested against it in
tests/protocol/test_fastcodec.py) and websockets' frame reader and writer for speed,
so these tests hold the shortcuts to the real thing: acks are the codec's, frames
written by websockets' server are read in any pieces and ours parse in it, every
frame is sealed in the Noise channel (SPEC §1.3) both ways, anything unexpected
(a message that fails the channel too) fails the run, and against a real relay
every notification is acknowledged (nothing is left to redeliver).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgpack
import pytest
from nacl.signing import SigningKey
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from bench.fanout import (
    BUSINESS,
    TEXT,
    Customer,
    Masks,
    Tally,
    check_notification,
    client_frame,
)
from bench.loadgen import LoadError
from blindrelay.client.business import Business
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.protocol import SUBPROTOCOL, channel, frames, limits
from blindrelay.protocol.channel import MAX_TRANSPORT_MESSAGE_BYTES, RelayChannel
from blindrelay.protocol.codec import encode
from blindrelay.protocol.crypto.keys import IdentityKeyPair, SignedPreKey
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import serve

from ..server.conftest import RawClient, db_rows

DELIVERY_IDS = (1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, frames.MAX_DELIVERY_ID)


def deliver(**changes: object) -> frames.Deliver:
    fields: dict[str, object] = {
        "delivery_id": 42, "sender": BUSINESS, "sender_kind": "business",
        "msg_id": os.urandom(16), "intent": "notification", "sent_at": 1_800_000_000_000,
        "body": os.urandom(383), "category": "utility",
    }  # fmt: skip
    return frames.Deliver(**(fields | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize("delivery_id", DELIVERY_IDS)
def test_a_utility_notification_from_the_business_is_accepted(delivery_id):
    assert check_notification(encode(deliver(delivery_id=delivery_id))) == delivery_id


def wire(frame: object) -> bytes:
    return msgpack.packb(frame)


CANONICAL = msgpack.unpackb(encode(deliver()))


@pytest.mark.parametrize(
    "message",
    [
        encode(deliver(intent="chat", category=None)),
        encode(deliver(sender="mallory", sender_kind="user")),
        encode(deliver(sender="rival")),
        encode(deliver(category="marketing")),
        encode(deliver(intent="consent_request", category=None, categories=("utility",))),
        encode(frames.PrekeysLow(remaining=0)),
        encode(frames.Error(code=500)),
        wire(CANONICAL | {"delivery_id": 0}),
        wire(CANONICAL | {"delivery_id": True}),
        wire(CANONICAL | {"msg_id": b"short"}),
        wire(CANONICAL | {"body": b""}),
        wire(CANONICAL | {"body": "text, not bin"}),
        wire(CANONICAL | {"sent_at": 1.5}),
        wire(CANONICAL | {"extra": 1}),
        wire({k: v for k, v in CANONICAL.items() if k != "sent_at"}),
        wire([CANONICAL]),
        encode(deliver())[:-1],
        encode(deliver()) + b"\x00",
    ],
)
def test_anything_else_is_refused(message):
    with pytest.raises(LoadError):
        check_notification(message)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 4_000, 65_535])
def test_client_frames_parse_in_websockets_server(size):
    server = ServerProtocol(state=OPEN, max_size=None)
    payload, masks = os.urandom(size), Masks()
    server.receive_data(client_frame(payload, masks.next()) + client_frame(b"x", masks.next()))
    assert [(e.opcode, e.fin, e.data) for e in server.events_received()] == [
        (Opcode.BINARY, True, payload),
        (Opcode.BINARY, True, b"x"),
    ]
    assert server.data_to_send() == []  # no close: the server found nothing wrong


def test_client_frames_stop_below_64_kib():
    with pytest.raises(ValueError):
        client_frame(bytes(65_536), bytes(4))


def test_masks_are_fresh_from_os_urandom(monkeypatch):
    draws: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    masks = Masks()
    count = Masks.BLOCK // 4 + 1
    drawn = [masks.next() for _ in range(count)]
    assert draws == [Masks.BLOCK, Masks.BLOCK]  # a second block when the first is used up
    assert {len(m) for m in drawn} == {4}
    assert len(set(drawn)) > count * 0.99  # each position of the block, not one mask reused


# --- one customer's connection, in memory against websockets' server protocol --------


RELAY_SEED = b"\x09" * 32


class Wire(asyncio.Transport):
    """A transport that hands what the customer writes to a websockets server protocol,
    with the relay's end of the channel (:meth:`seal`, :meth:`received` opens)."""

    def __init__(self) -> None:
        super().__init__()
        self.server = ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)])
        static = channel.relay_static_key(RELAY_SEED)
        binding = channel.static_binding(SigningKey(RELAY_SEED), static.public)
        self.channel = RelayChannel(static, binding, os.urandom)
        self.closed = False

    def seal(self, frame: bytes) -> bytes:
        return self.channel.encrypt(frame)

    def write(self, data: bytes) -> None:
        self.server.receive_data(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.server.receive_eof()

    def close(self) -> None:
        self.closed = True

    abort = close

    def received(self) -> list[tuple[Opcode, bytes]]:
        """Frames the customer sent, binary ones opened in the channel."""
        return [
            (e.opcode, self.channel.decrypt(e.data) if e.opcode is Opcode.BINARY else e.data)
            for e in self.server.events_received()
            if isinstance(e, Frame)
        ]

    def to_customer(self, customer: Customer, chunk: int | None = None) -> None:
        """What the server wrote since last time, in ``chunk``-byte reads (default: one)."""
        data = b"".join(self.server.data_to_send())
        step = chunk or max(len(data), 1)
        for at in range(0, len(data), step):
            customer.data_received(data[at : at + step])


async def ready_customer(tally: Tally) -> tuple[Customer, Wire]:
    """A customer past setup, as after :meth:`Customer.connect`: the WebSocket and Noise
    handshakes done (message 1 read by the server's channel, message 2 by the customer)."""
    customer = Customer("c00001", parse_uri("ws://127.0.0.1:1/"), tally, Masks())
    wire = Wire()
    customer.connection_made(wire)
    (request,) = wire.server.events_received()
    wire.server.send_response(wire.server.accept(request))  # type: ignore[arg-type]
    wire.to_customer(customer)  # the response: the customer sends message 1
    ((opcode, first),) = [(e.opcode, e.data) for e in wire.server.events_received()]  # type: ignore[union-attr]
    assert opcode is Opcode.BINARY and len(first) == channel.HANDSHAKE_REQUEST_BYTES
    wire.server.send_binary(wire.channel.receive_handshake(first))
    wire.to_customer(customer)
    assert customer.channel.established
    customer.inbox = None  # setup (REGISTER, grant) is what the relay test below covers
    return customer, wire


@pytest.mark.parametrize("chunk", [None, 1, 3, 200])
def test_each_notification_is_acknowledged_with_its_delivery_id(chunk):
    async def run() -> None:
        tally = Tally(1)
        customer, wire = await ready_customer(tally)
        wire.server.send_ping(b"p")
        wire.server.send_binary(wire.seal(encode(deliver(delivery_id=7_000_001))))  # 2-byte size
        wire.to_customer(customer, chunk)  # in any pieces
        assert tally.done.done() and tally.done.exception() is None
        assert tally.remaining == 0 and 0 < tally.first == tally.last
        assert wire.received() == [(Opcode.PONG, b"p"), (Opcode.BINARY, encode(frames.Ack(delivery_ids=(7_000_001,))))]
        assert customer.buffer == b"" and not wire.closed

    asyncio.run(run())


def send_fragmented(wire: Wire) -> None:
    sealed = wire.seal(encode(deliver()))
    wire.server.send_binary(sealed[:10], fin=False)
    wire.server.send_continuation(sealed[10:], fin=True)


@pytest.mark.parametrize(
    ("send", "error"),
    [
        (lambda w: w.server.send_binary(w.seal(encode(deliver(intent="chat", category=None)))),
         "notification"),
        (lambda w: [w.server.send_binary(w.seal(encode(deliver(delivery_id=i)))) for i in (1, 2)],
         "second"),
        (lambda w: w.server.send_text(b"hello"), "0x81"),
        (send_fragmented, "0x02"),
        (lambda w: w.server.send_binary(w.seal(bytes(limits.MAX_FRAME_BYTES))), "MalformedFrame"),
        (lambda w: w.server.send_binary(bytes(MAX_TRANSPORT_MESSAGE_BYTES + 1)),
         f"{MAX_TRANSPORT_MESSAGE_BYTES + 1}-byte frame"),
        (lambda w: w.server.send_binary(encode(deliver())), "channel"),
    ],
    ids=["a chat", "a second notification", "text", "fragments", "the largest frame",
         "over the largest", "not sealed"],
)
def test_anything_unexpected_fails_the_run(send, error):
    async def run() -> None:
        tally = Tally(2)
        customer, wire = await ready_customer(tally)
        send(wire)
        wire.to_customer(customer)
        with pytest.raises(LoadError, match=error):
            tally.done.result()

    asyncio.run(run())


def test_a_close_from_the_relay_is_answered_and_fails_the_run():
    async def run() -> None:
        tally = Tally(1)
        customer, wire = await ready_customer(tally)
        wire.server.send_close(1001)
        wire.to_customer(customer)
        assert wire.received() == [(Opcode.CLOSE, b"\x03\xe9")]  # websockets' close reply
        customer.connection_lost(None)
        with pytest.raises(LoadError, match="connection lost"):
            tally.done.result()

    asyncio.run(run())


# --- against a real relay ---------------------------------------------------------------


def test_customers_register_grant_and_ack_every_notification(tmp_path: Path):
    asyncio.run(asyncio.wait_for(notify_three(tmp_path), 20))


async def notify_three(tmp_path: Path) -> None:
    relay = await serve(RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db"))
    granted = asyncio.Event()
    client = Client(MemoryKeyStore())
    try:
        await client.connect(relay.url)
        await client.register(BUSINESS, "business")
        business = Business(client, on_consent_change=lambda _: granted.set())
        seeds = {f"c{i:05d}": os.urandom(32) for i in range(3)}
        tally, masks, uri = Tally(len(seeds)), Masks(), parse_uri(relay.url)
        customers = [await Customer.connect(uri, h, s, tally, masks) for h, s in seeds.items()]
        for handle, seed in seeds.items():
            identity = IdentityKeyPair.from_seed(seed)
            prekey = SignedPreKey.generate(identity, 1, os.urandom)
            client.sessions.start_session(
                frames.Bundle(
                    re=1, handle=handle, kind="user", identity_key=identity.public,
                    signed_prekey=frames.SignedPreKeyRecord(1, prekey.public, prekey.signature),
                )
            )  # fmt: skip
        while len(business.consenting("utility")) < len(seeds):
            granted.clear()
            await granted.wait()

        result = await business.notify("utility", TEXT)
        await tally.done
        assert sorted(result.sent) == sorted(seeds) and tally.remaining == 0
        await asyncio.gather(*(c.close() for c in customers))
        assert all(c.closed.done() for c in customers)
        for handle, seed in seeds.items():  # acknowledged: nothing waits to be redelivered
            raw = await RawClient.open(relay.url)
            welcome = await raw.login(handle, SigningKey(seed))
            assert welcome.queued == 0
            await raw.ws.close()
        assert db_rows(relay.config.db_path, "SELECT COUNT(*) FROM queue") == [(0,)]
    finally:
        await client.close()
        await relay.close()
