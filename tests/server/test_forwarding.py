"""The forwarding attack of issue 16, against a real relay (SPEC §1.3, §4.4.2).

A user connects by mistake (plain ``ws://``, a spoofed name, a phished URL) to an
endpoint that relays between her and the real relay. Before the channel it received
the relay's greeting and challenge, let the user sign, and was welcomed as her. Now
the endpoint must run a Noise channel of its own with each side:

- with a key of its own, a client that pinned the relay key refuses it before
  sending anything (``RelayKeyChanged``); on first contact the user signs over the
  endpoint's channel and relay key, and the real relay refuses that signature
  (AUTH_FAILED): nothing gets through as the user, her queued envelopes stay
  queued;
- presenting the real relay key with its own static key fails the handshake: the
  relay key signed no such static key (``NoiseHandshakeFailed``);
- rewriting HELLO to show the real relay key inside its own channel is refused by
  the client (HELLO must name the key the handshake bound).

The endpoint here (:class:`Forwarder`) terminates both channels and passes frames
across, so it could read and change anything that crossed it: the tests show what
it is left with.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.client.transport import HandshakeRefused
from blindrelay.client.trust import RelayKeyChanged
from blindrelay.protocol import SUBPROTOCOL, channel
from blindrelay.protocol.channel import ClientChannel, RelayChannel
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.errors import ErrorCode, UnexpectedFrame
from blindrelay.protocol.frames import (
    Ack,
    Error,
    Frame,
    Hello,
    Login,
    OneTimePreKeyRecord,
    PrekeysUpload,
    Welcome,
)
from blindrelay.protocol.noise import HandshakeState
from blindrelay.server.relay import RunningRelay

from .conftest import TEST_TIMEOUT_S, Clients, error_code

ATTACKER_SEED = b"\x66" * 32


@dataclass
class Forwarder:
    """An endpoint between a client and the real relay, a channel to each side.

    ``static`` and ``binding`` are what it presents to the client; ``rewrite`` may
    change each frame the relay sends before it passes it on. It records every frame
    in both directions.
    """

    relay_url: str
    static: channel.KeyPair
    binding: bytes
    rewrite: Callable[[Frame], Frame] = lambda frame: frame
    from_client: list[Frame] = field(default_factory=list)
    from_relay: list[Frame] = field(default_factory=list)

    async def handler(self, victim: ServerConnection) -> None:
        towards_victim = RelayChannel(self.static, self.binding, os.urandom)
        try:
            await victim.send(towards_victim.receive_handshake(await victim.recv()))
        except (channel.ChannelError, ConnectionClosed):
            return
        async with connect(self.relay_url, subprotocols=[SUBPROTOCOL], compression=None) as relay:  # type: ignore[list-item]
            towards_relay = ClientChannel(os.urandom)
            await relay.send(towards_relay.start())
            towards_relay.receive_handshake(await relay.recv())

            async def down() -> None:  # relay → victim
                async for message in relay:
                    frame = decode(towards_relay.decrypt(message))
                    self.from_relay.append(frame)
                    await victim.send(towards_victim.encrypt(encode(self.rewrite(frame))))

            async def up() -> None:  # victim → relay
                async for message in victim:
                    data = towards_victim.decrypt(message)
                    self.from_client.append(decode(data))
                    await relay.send(towards_relay.encrypt(data))

            tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def welcomed(self) -> bool:
        return any(isinstance(frame, Welcome) for frame in self.from_relay)


def showing(relay_key: bytes) -> Callable[[Frame], Frame]:
    """A rewrite that shows ``relay_key`` in HELLO, with the relay's challenge."""

    def rewrite(frame: Frame) -> Frame:
        if isinstance(frame, Hello):
            return Hello(version=frame.version, relay_key=relay_key, challenge=frame.challenge,
                         expires_at=frame.expires_at, now=frame.now)  # fmt: skip
        return frame

    return rewrite


def own_key_forwarder(relay_url: str, hello_key: bytes | None = None) -> Forwarder:
    """An endpoint with a relay key and static key of its own, correctly bound; HELLO
    shows its own key (consistent with its channel) unless ``hello_key`` is given."""
    static = channel.relay_static_key(ATTACKER_SEED)
    signing = SigningKey(ATTACKER_SEED)
    binding = channel.static_binding(signing, static.public)
    shown = hello_key or bytes(signing.verify_key)
    return Forwarder(relay_url, static, binding, rewrite=showing(shown))


async def real_binding(relay_url: str) -> bytes:
    """What any client learns from the relay's message 2: its binding (relay key and
    signature over its static key), captured to be replayed."""
    async with connect(relay_url, subprotocols=[SUBPROTOCOL], compression=None) as ws:  # type: ignore[list-item]
        handshake = HandshakeState(
            channel.PATTERN, initiator=True, rng=os.urandom, prologue=channel.PROLOGUE
        )
        await ws.send(handshake.write_message())
        reply = await ws.recv()
        assert isinstance(reply, bytes)
        return handshake.read_message(reply)


@asynccontextmanager
async def listening(forwarder: Forwarder) -> AsyncIterator[str]:
    async with serve(
        forwarder.handler,
        "127.0.0.1",
        0,
        subprotocols=[SUBPROTOCOL],
        compression=None,  # type: ignore[list-item]
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"ws://{host}:{port}"


async def victim_login(url: str, handle: str, key: SigningKey) -> tuple[Frame, ClientConnection]:
    """A client on first contact (nothing pinned) logging in through ``url``: the
    handshake, HELLO, LOGIN signed by its identity key; returns the answer."""
    async with connect(url, subprotocols=[SUBPROTOCOL], compression=None) as ws:  # type: ignore[list-item]
        channel_ = ClientChannel(os.urandom)
        await ws.send(channel_.start())
        channel_.receive_handshake(await ws.recv())
        machine = ClientConnection(channel_.handshake_hash, channel_.relay_key)
        machine.receive_data(channel_.decrypt(await ws.recv()))
        request_id = machine.login(handle, lambda m: key.sign(m).signature)
        for data in machine.data_to_send():
            await ws.send(channel_.encrypt(data))
        answer = decode(channel_.decrypt(await asyncio.wait_for(ws.recv(), TEST_TIMEOUT_S)))
        assert getattr(answer, "re", None) == request_id
        return answer, machine


async def direct_welcome(
    relay: RunningRelay, clients: Clients, handle: str, key: SigningKey
) -> Welcome:
    """What the relay holds for ``handle`` (queued envelopes, prekeys), seen by logging
    in directly."""
    direct, welcome = await clients.logged_in(relay.url, handle, key)
    await direct.ws.close()
    return welcome


async def test_a_forwarder_with_its_own_key_gets_no_frame_through_as_the_user(
    relay: RunningRelay, clients: Clients
) -> None:
    """First contact: the user signs what the endpoint shows her; the real relay refuses
    it (another relay key, another channel) and closes. The endpoint never acts as her:
    her three queued envelopes are still queued, and what it sends next is refused."""
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    for n in range(3):
        await bob.send_message("alice", f"queued {n}".encode())
    await alice.ws.close()
    forwarder = own_key_forwarder(relay.url)
    async with listening(forwarder) as url:
        answer, _ = await victim_login(url, "alice", alice.key)
    assert error_code(answer) == ErrorCode.AUTH_FAILED
    assert not forwarder.welcomed()
    assert [type(frame) for frame in forwarder.from_client] == [Login]
    assert (await direct_welcome(relay, clients, "alice", alice.key)).queued == 3


async def test_a_captured_signature_is_worthless_to_the_forwarder_on_its_own_connection(
    relay: RunningRelay, clients: Clients
) -> None:
    """The endpoint takes the user's LOGIN and sends it on a connection of its own to
    the relay (it may try to ACK and upload prekeys after): AUTH_FAILED, closed, and
    nothing it sent took effect."""
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await bob.send_message("alice", b"queued")
    await alice.ws.close()
    forwarder = own_key_forwarder(relay.url)
    async with listening(forwarder) as url:
        await victim_login(url, "alice", alice.key)
    (login,) = forwarder.from_client
    thief = await clients.open(relay.url)
    await thief.send(login)
    await thief.send(Ack(delivery_ids=(1, 2, 3)))
    planted = (OneTimePreKeyRecord(key_id=1, public=os.urandom(32)),)
    await thief.send(PrekeysUpload(id=thief.request_id(), one_time=planted))
    assert error_code(await thief.recv()) == ErrorCode.AUTH_FAILED
    assert await thief.closed() == 1008
    welcome = await direct_welcome(relay, clients, "alice", alice.key)
    assert (welcome.queued, welcome.one_time_prekeys) == (1, 0)


async def test_a_client_that_pinned_the_relay_key_sends_nothing_to_a_forwarder(
    relay: RunningRelay,
) -> None:
    """SPEC §4.1: another relay key, bound or not, is RelayKeyChanged before any frame."""
    forwarder = own_key_forwarder(relay.url)
    pinned = Client(MemoryKeyStore())
    pinned.accept_relay_key(relay.relay_key)
    async with listening(forwarder) as url:
        with pytest.raises(RelayKeyChanged):
            await asyncio.wait_for(pinned.connect(url), TEST_TIMEOUT_S)
        await pinned.close()
    assert forwarder.from_client == []


async def test_a_forwarder_cannot_present_the_relay_key_without_the_relay_s_static_key(
    relay: RunningRelay,
) -> None:
    """The relay's own binding, replayed with the endpoint's static key: the handshake
    fails (the relay key signed no such static key), and nothing is sent."""
    stolen = await real_binding(relay.url)
    assert stolen[:32] == relay.relay_key
    forwarder = Forwarder(relay.url, channel.relay_static_key(ATTACKER_SEED), stolen)
    client = Client(MemoryKeyStore())
    async with listening(forwarder) as url:
        with pytest.raises(HandshakeRefused, match="not signed"):
            await asyncio.wait_for(client.connect(url), TEST_TIMEOUT_S)
    await client.close()
    assert forwarder.from_client == []


async def test_a_hello_rewritten_to_the_real_relay_key_is_refused_by_the_client(
    relay: RunningRelay, clients: Clients
) -> None:
    """The endpoint shows the real relay key in HELLO inside its own channel: the client
    closes before signing anything."""
    alice = await clients.registered(relay.url, "alice")
    forwarder = own_key_forwarder(relay.url, hello_key=relay.relay_key)
    async with listening(forwarder) as url:
        with pytest.raises(UnexpectedFrame, match="relay key"):
            await victim_login(url, "alice", alice.key)
    assert forwarder.from_client == []
    assert isinstance(forwarder.from_relay[0], Hello) and not forwarder.welcomed()
    assert not any(isinstance(frame, Error) for frame in forwarder.from_relay)
