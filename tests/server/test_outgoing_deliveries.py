"""What an account's deliveries make the relay hold (SPEC §1.2.4, §6.4; threat model
T81): a recipient that never reads, with a queue of the largest envelopes that an account
of the attacker's own filled.

Measured from the relay's own accounting (``RunningRelay.outgoing``), not from time or
process memory."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.protocol import State as WsState

from blindrelay.protocol import limits
from blindrelay.protocol.codec import encode
from blindrelay.protocol.connection import State
from blindrelay.protocol.frames import Ack, Deliver, Ok, ProfileFetch, ProfilePut, Sent
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.transport import Flusher, OutgoingStats, WebSocketTransport

from .conftest import Clients, FakeClock, RawClient, outbox_of, relay_with, until
from .slow_readers import big_profile, small_window

BOUND = 256 * 1024
QUEUED = 256
"""A whole delivery window of the largest envelopes: ~10 MiB, 40 times the bound."""
BODY = os.urandom(limits.MAX_CIPHERTEXT_BYTES)


class _PagedRows:
    """Rows the store's ``page`` operations returned for each account: the store's public
    entry point, wrapped for the test."""

    def __init__(self, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: dict[str, int] = {}
        store = relay.ctx.store
        inner = store.call

        def call(operation: str, args: Any, done: Any, *rest: Any) -> None:
            if operation != "page":
                return inner(operation, args, done, *rest)

            def counted(ok: bool, value: Any) -> None:
                if ok:
                    self.rows[args[0]] = self.rows.get(args[0], 0) + len(value[0])
                done(ok, value)

            return inner(operation, args, counted, *rest)

        monkeypatch.setattr(store, "call", call)


async def _contacts(relay: RunningRelay, clients: Clients, **mallory: Any) -> list[RawClient]:
    """mallory and her accomplice bob, who have written to each other (SPEC §7.3)."""
    pair = [
        await clients.registered(relay.url, "mallory", **mallory),
        await clients.registered(relay.url, "bob"),
    ]
    for sender, recipient in (pair, pair[::-1]):
        assert isinstance(await sender.send_message(recipient.handle, b"hi"), Sent)
        delivered = await recipient.push(Deliver)
        await recipient.send(Ack(delivery_ids=(delivered.delivery_id,)))
    return pair


async def _queue_for_mallory(relay: RunningRelay, clients: Clients) -> RawClient:
    """While mallory is offline, bob queues a window of the largest envelopes for her."""
    mallory, bob = await _contacts(relay, clients)
    await mallory.close()
    await until(lambda: relay.ctx.sessions.get("mallory") is None)
    for _ in range(QUEUED):
        assert isinstance(await bob.send_message("mallory", BODY), Sent)
    return mallory


async def test_a_recipient_that_never_reads_is_not_pushed_its_whole_window(
    config: RelayConfig, clock: FakeClock, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §1.2.4: deliveries wait while the relay holds more than the bound for the
    connection, as they wait for a full window. Before, a recipient that never read was
    pushed its whole window at once — 256 DELIVERs of ~40 KiB, 10 MiB where the bound is
    1 MiB (here 256 KiB) — held for as long as it took 8 KiB per write timeout, and every
    login made the store read all 256 again. Now a page reads what fits the bound, and
    the store reads no more than one page of envelopes that are not pushed; a slow reader
    still gets every one, in order, as it drains what it is sent."""
    async with relay_with(
        config, clock, max_outgoing_buffer_bytes=BOUND, write_timeout_s=0.5,
        send_burst_user=10_000,
    ) as relay:  # fmt: skip
        first = await _queue_for_mallory(relay, clients)
        paged = _PagedRows(relay, monkeypatch)
        pushed = relay.ctx.metrics.delivers_paged

        # She logs in and never reads: aborted at the write timeout.
        sock = small_window(relay.url)
        mallory = await clients.open(relay.url, sock=sock)
        mallory.ws.transport.pause_reading()
        mallory.conn.login("mallory", lambda m: first.key.sign(m).signature)
        for data in mallory.conn.data_to_send():  # the LOGIN; its WELCOME is never read
            await mallory.ws.send(data)
        await until(lambda: relay.outgoing.write_timeouts == 1)
        largest = limits.MAX_FRAME_BYTES
        assert relay.outgoing.peak_bytes <= BOUND + 2 * largest, relay.outgoing
        pushed = relay.ctx.metrics.delivers_paged - pushed
        assert paged.rows["mallory"] - pushed <= BOUND // largest, (paged.rows, pushed)
        mallory.ws.transport.abort()

        # A reader that stops until the relay holds its bound, then reads: every one.
        reader = await clients.open(relay.url, sock=small_window(relay.url))
        reader.ws.transport.pause_reading()
        reader.conn.login("mallory", lambda m: first.key.sign(m).signature)
        for data in reader.conn.data_to_send():
            await reader.ws.send(data)
        await until(lambda: relay.outgoing.reading_paused >= 2)
        reader.ws.transport.resume_reading()
        ids = []
        while len(ids) < QUEUED:
            delivered = await reader.push(Deliver)
            ids.append(delivered.delivery_id)
            await reader.send(Ack(delivery_ids=(delivered.delivery_id,)))
        assert ids == sorted(ids) and len(set(ids)) == QUEUED


async def test_new_envelopes_wait_while_their_recipient_is_over_the_bound(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §1.2.4: an envelope committed while its recipient's connection is over the
    bound — here with answers it asked for and does not read — is not pushed, under a
    delivery lease or not (SPEC §6.4.6); it is paged once the data is down to a quarter
    of the bound, although no DELIVER was in flight whose ACK would have paged it."""
    async with relay_with(
        config, clock, max_outgoing_buffer_bytes=BOUND, write_timeout_s=5.0,
        send_burst_user=10_000, profile_fetch_burst=10_000,
    ) as relay:  # fmt: skip
        shop = await clients.registered(relay.url, "shop", "business")
        put = ProfilePut(id=shop.request_id(), profile=big_profile(shop, clock.now))
        await shop.send(put)
        assert isinstance(await shop.response(put.id), Ok)
        mallory, bob = await _contacts(relay, clients, sock=small_window(relay.url))
        for _ in range(2):  # bob's chats to her earn a delivery lease (SPEC §6.4.6)
            assert isinstance(await bob.send_message("mallory", b"hi again"), Sent)
            delivered = await mallory.push(Deliver)
            await mallory.send(Ack(delivery_ids=(delivered.delivery_id,)))
        mallory.ws.transport.pause_reading()
        for _ in range(1400):  # ~6 MB of answers: the kernel holds half
            fetch = ProfileFetch(id=mallory.request_id(), handle="shop")
            mallory.ws.protocol.send_binary(mallory.ws.channel.encrypt(encode(fetch)))
        mallory.ws.send_data()
        await until(lambda: relay.outgoing.reading_paused >= 1)

        for _ in range(32):
            assert isinstance(await bob.send_message("mallory", BODY), Sent)
        assert not outbox_of(relay, "mallory").in_flight  # none pushed over the bound

        mallory.ws.transport.resume_reading()
        ids = [(await mallory.push(Deliver)).delivery_id for _ in range(32)]
        assert ids == sorted(ids) and len(set(ids)) == 32


class _Kernel:
    """A socket's asyncio transport whose kernel takes everything at once."""

    def __init__(self) -> None:
        self.written = 0

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written += len(data)


class _Intake:
    def __init__(self) -> None:
        self.holds: list[str] = []

    def hold(self, reason: str) -> None:
        self.holds.append(reason)

    def release(self, reason: str) -> None:
        self.holds.remove(reason)


async def test_deliveries_queued_in_one_turn_count_towards_the_bound() -> None:
    """SPEC §1.2.4: what a turn queues for a connection (the DELIVERs of one commit of
    many SENDs to one recipient) counts before it is flushed: past the bound the
    connection is congested at once, so no more is pushed; once the flush has handed it
    all to the kernel, it is not, and its outbox is told."""
    ws = SimpleNamespace(
        transport=_Kernel(), paused=False,
        protocol=SimpleNamespace(
            state=WsState.OPEN, writes=[], extensions=[], expect_continuation_frame=False
        ),
    )  # fmt: skip
    conn = SimpleNamespace(state=State.AUTHENTICATED, data_to_send=list)
    channel = SimpleNamespace(established=True, encrypt=bytes)
    intake, drained = _Intake(), []
    stats = OutgoingStats()
    transport = WebSocketTransport(
        ws, conn, channel, Flusher(), intake=intake, bound=BOUND,  # type: ignore[arg-type]
        write_timeout_s=20.0, stats=stats,
    )  # fmt: skip
    transport.session = SimpleNamespace(  # type: ignore[assignment]
        outbox=SimpleNamespace(drained=lambda: drained.append(1))
    )
    for _ in range(8):  # 320 KB in one turn, nothing flushed yet
        transport.write(bytes(40_000))
    assert transport.congested and intake.holds == ["outgoing"]
    assert stats.peak_bytes > BOUND
    for _ in range(3):  # the flusher's turn, then the outbox's
        await asyncio.sleep(0)
    assert ws.transport.written > 8 * 40_000
    assert not transport.congested and intake.holds == [] and drained == [1]
