"""DELIVER before the commit (SPEC §6.4.5, issue 19): an online recipient gets an
envelope while its commit is in flight; SENT, and the deletion its ACK asks for, wait
for the commit; a commit that fails closes the recipient's connection.

The writer process is held between a batch's decisions and its COMMIT by the fault
injection its module documents (``PAUSE_BEFORE_COMMIT_ENV``): while the file exists,
nothing of the batch is committed, so "before the commit" is a state the test holds,
not a race it hopes to win. The relay killed in that state: tests/client/test_deliver_crash.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Ack, Deliver, Error, Send, Sent
from blindrelay.server.config import RelayConfig
from blindrelay.server.context import CLOSE_STORE_FAILED
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store.sqlite.database import count_queued
from blindrelay.server.store.sqlite.writer_process import (
    HOLD_BEFORE_BATCH_ENV,
    PAUSE_BEFORE_COMMIT_ENV,
)

from .conftest import (
    ALL_BACKENDS,
    Clients,
    FakeClock,
    RawClient,
    RelayFixture,
    outbox_of,
    released,
    settled,
    until,
)

BACKENDS = ALL_BACKENDS


@contextlib.asynccontextmanager
async def held_writer(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[RunningRelay, RawClient, RawClient, Path]]:  # fmt: skip
    """A relay whose writer holds every batch between its decisions and its COMMIT
    while ``pause`` exists (it does on entry), alice and bob logged in, bob settled."""
    pause = tmp_path / "pause"
    monkeypatch.setenv(PAUSE_BEFORE_COMMIT_ENV, str(pause))
    async with RelayFixture(config, clock) as relay, released(pause):
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        await settled(relay, "bob")
        pause.touch()
        yield relay, alice, bob, pause


async def send_unanswered(client: RawClient, to: str, body: bytes) -> int:
    request_id = client.request_id()
    await client.send(Send(id=request_id, to=to, msg_id=os.urandom(16), intent="chat", body=body))
    return request_id


@pytest.mark.sqlite_only
async def test_an_online_recipient_gets_the_envelope_while_its_commit_is_in_flight(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert config.db_path is not None
    async with held_writer(config, clients, clock, tmp_path, monkeypatch) as held:
        relay, alice, bob, pause = held
        request_id = await send_unanswered(alice, "bob", b"before the fsync")

        deliver = await bob.push(Deliver)
        assert deliver.body == b"before the fsync"
        # Held before its COMMIT: nothing is on disk, and alice has no SENT.
        assert count_queued(config.db_path) == 0
        assert not [f for f in alice.inbox if isinstance(f, Sent)]

        await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
        outbox = outbox_of(relay, "bob")
        await until(lambda: deliver.delivery_id in getattr(outbox, "acks_waiting", ()))

        pause.unlink()  # the COMMIT happens
        sent = await alice.response(request_id)
        assert isinstance(sent, Sent) and sent.at == deliver.sent_at
        # The ACK held meanwhile deletes it once committed.
        await until(lambda: count_queued(config.db_path) == 0 and not outbox.acks_waiting)
        assert relay.ctx.metrics.delivers["before_commit"] == 1


@pytest.mark.sqlite_only
async def test_an_envelope_decided_while_a_page_is_read_is_paged_after_it(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``Outbox.decided``: a page and a SEND in one transaction, the page first. The
    SEND's decision reaches the outbox before the page's rows (decisions come before the
    COMMIT, the page with it), yet the page does not hold it — the outbox must page
    once more, or the envelope waits for bob's next login.

    Held before the COMMIT, batch 1 holds S1…S4; bob's window of 3 is full (S4 waits),
    his ACK of S1 and S2 asks for a page (P), and alice's S5 follows: both wait in the
    writer's socket and make batch 2 = [P, S5]. P finds S4 alone, S5 is decided after it.
    An idle writer takes S1 alone, so the writer is held (``HOLD_BEFORE_BATCH_ENV``)
    until S2…S4 have joined it.
    """
    pause, hold = tmp_path / "pause", tmp_path / "hold"
    monkeypatch.setenv(PAUSE_BEFORE_COMMIT_ENV, str(pause))
    monkeypatch.setenv(HOLD_BEFORE_BATCH_ENV, str(hold))
    windowed = replace(config, delivery_window=3, send_burst_user=100, send_burst_pair=100)
    async with RelayFixture(windowed, clock) as relay, released(pause), released(hold):
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        assert isinstance(await bob.send_message("alice", b"hi"), Sent)  # a contact now
        metrics = relay.ctx.metrics
        await settled(relay, "bob")
        pause.touch()
        hold.touch()
        answers = [await send_unanswered(alice, "bob", b"S%d" % n) for n in range(1, 5)]
        await until(lambda: metrics.frames_received[Send.TYPE] == 5)
        await asyncio.sleep(0.05)  # S2…S4 leave in the loop turn after their frames
        hold.unlink()
        first = await bob.deliveries(3)
        assert [d.body for d in first] == [b"S1", b"S2", b"S3"]  # S4: the window is full
        outbox = outbox_of(relay, "bob")
        await bob.send(Ack(delivery_ids=(first[0].delivery_id, first[1].delivery_id)))
        await until(lambda: getattr(outbox, "paging", False))  # P handed to the writer
        answers.append(await send_unanswered(alice, "bob", b"S5"))
        await until(lambda: metrics.frames_received[Send.TYPE] == 6)
        await asyncio.sleep(0.05)  # S5's job leaves in the loop turn after its frame
        pause.unlink()
        assert [d.body for d in await bob.deliveries(2)] == [b"S4", b"S5"]
        for request_id in answers:
            assert isinstance(await alice.response(request_id), Sent)


@pytest.mark.sqlite_only
async def test_an_ack_held_for_its_commit_applies_after_its_connection_ended(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Bob acknowledges an envelope whose commit is in flight and logs in again before
    the commit: the held ACK still deletes it once committed, as an ACK sent before the
    relay delivered early would have (found by the crash test: two envelopes were left
    queued after everything was acknowledged)."""
    assert config.db_path is not None
    async with held_writer(config, clients, clock, tmp_path, monkeypatch) as held:
        relay, alice, bob, pause = held
        request_id = await send_unanswered(alice, "bob", b"acknowledged, then away")
        deliver = await bob.push(Deliver)
        outbox = outbox_of(relay, "bob")
        await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
        await until(lambda: deliver.delivery_id in getattr(outbox, "acks_waiting", ()))
        await bob.close()
        await until(lambda: relay.ctx.sessions.get("bob") is None)
        pause.unlink()
        assert isinstance(await alice.response(request_id), Sent)
        await until(lambda: count_queued(config.db_path) == 0)
        _again, welcome = await clients.logged_in(relay.url, "bob", bob.key)
        assert welcome.queued == 0


async def test_the_postgresql_store_delivers_after_the_commit(
    config: RelayConfig, clients: Clients, clock: FakeClock, backend: str
) -> None:
    """A back end that answers only with its COMMIT (PostgreSQL) never decides early;
    SQLite always does for an online recipient."""
    async with RelayFixture(config, clock) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        await settled(relay, "bob")
        assert isinstance(await alice.send_message("bob", b"x"), Sent)
        await bob.push(Deliver)
        path = "after_commit" if backend == "postgresql" else "before_commit"
        assert relay.ctx.metrics.delivers == {
            "before_decision": 0, "before_commit": 0, "after_commit": 0, path: 1,
        }  # fmt: skip


@pytest.mark.sqlite_only
async def test_a_commit_that_fails_after_the_deliver_closes_the_recipients_connection(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The writer dies between the decision and the COMMIT: the sender gets an error
    (it resends), and the recipient, told of an envelope that does not exist, is
    disconnected with 1011 rather than left with delivery ids the store may reuse."""
    async with held_writer(config, clients, clock, tmp_path, monkeypatch) as held:
        relay, alice, bob, _pause = held
        request_id = await send_unanswered(alice, "bob", b"never committed")
        assert (await bob.push(Deliver)).body == b"never committed"
        writer = getattr(relay.ctx.store, "pid", None)
        assert writer is not None
        os.kill(writer, signal.SIGKILL)

        refused = await alice.response(request_id)
        assert isinstance(refused, Error) and refused.code == ErrorCode.INTERNAL_ERROR
        assert await bob.closed() == CLOSE_STORE_FAILED
        assert relay.ctx.sessions.get("bob") is None
