"""Reading the transparency log from the SDK (client/transparency.py, SPEC §15.6):
``client.log`` over an account's link, :func:`open_log_reader` with no account, and
DISCOVERABLE. Against a real relay, whose heads the tests publish when they need one."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from blindrelay.client.transparency import open_log_reader
from blindrelay.client.transport import ConnectionLost
from blindrelay.client.trust import RelayKeyChanged
from blindrelay.protocol.errors import NotFound, UnexpectedFrame
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, decode_entry
from blindrelay.protocol.transparency.treehead import check_extends
from blindrelay.server.relay import RunningRelay

from ..relays import relay_at
from .harness import online, run, within


def bindings(entries: list[bytes]) -> list[KeyBinding]:
    return [e for e in map(decode_entry, entries) if isinstance(e, KeyBinding)]


def test_a_client_reads_verifies_and_joins_two_heads(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            assert await within(alice.log.head()) is None  # nothing signed yet
            await online(relay.url, "airline", "business")
            await relay.housekeeping.publish_tree_head()
            older = await within(alice.log.head())
            assert older is not None and older.size == 1
            entries = await within(alice.log.entries(0))
            assert [b.handle for b in bindings(entries)] == ["airline"]
            assert merkle.root_of([merkle.leaf_hash(e) for e in entries]) == older.root
            await online(relay.url, "shop", "business")
            await relay.housekeeping.publish_tree_head()
            newer = await within(alice.log.head())
            assert newer is not None and newer.size == 2
            check_extends(older, newer, await within(alice.log.consistency(1, 2)))
            index, proof = await within(alice.log.inclusion(entries[0], 2))
            merkle.verify_inclusion(merkle.leaf_hash(entries[0]), index, 2, proof, newer.root)
            with pytest.raises(NotFound):  # §15.6 rule 1: only trees the relay signed
                await within(alice.log.consistency(1, 3))
            await alice.close()

    run(scenario())


class Forwarder:
    """A local port whose new TCP connections go to the relay at ``target`` (a URL);
    :meth:`retarget` points it elsewhere and cuts the connections it carries."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Forwarder:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cut()
        self._server.close()
        await self._server.wait_closed()

    def retarget(self, target: str) -> None:
        self.target = target
        self._cut()

    def _cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = urlsplit(self.target)
        up_reader, up_writer = await asyncio.open_connection(address.hostname, address.port)
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_a_reader_keeps_the_relay_key_it_learned_for_its_next_connections(
    tmp_path: Path,
) -> None:
    """open_log_reader without a key takes the first one presented and pins it: when its
    connection has ended and the next reaches a relay with another key (the same address,
    now forwarded elsewhere), the reader raises RelayKeyChanged and keeps the first key."""

    async def scenario() -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with (
            relay_at(tmp_path / "a") as first,
            relay_at(tmp_path / "b") as second,
            Forwarder(first.url) as forwarder,
            open_log_reader(forwarder.url) as reader,
        ):
            assert await within(reader.head()) is None  # nothing signed yet
            learned = reader.relay_key
            assert learned is not None
            forwarder.retarget(second.url)
            with pytest.raises(RelayKeyChanged):
                for _ in range(2):  # the first ask may meet the cut connection
                    with contextlib.suppress(ConnectionLost):
                        await within(reader.head())
            assert reader.relay_key == learned

    run(scenario())


async def closed_one_of(relay: RunningRelay) -> None:
    """Until the relay holds one connection fewer than now."""
    metrics = relay.ctx.metrics
    before = metrics.connections()
    while metrics.connections() >= before:
        await asyncio.sleep(0.01)


def test_a_reader_without_an_account_pins_the_relay_key_and_reconnects(tmp_path: Path) -> None:
    """§15.6: the log is read before any login; the relay ends such a connection at its
    authentication timeout and the reader opens another, with the same relay key."""

    async def scenario() -> None:
        async with relay_at(tmp_path, auth_timeout_s=0.2) as relay:
            await online(relay.url, "airline", "business")
            await relay.housekeeping.publish_tree_head()
            async with open_log_reader(relay.url) as reader:
                head = await within(reader.head())
                assert head is not None and head.size == 1
                await within(closed_one_of(relay))  # the authentication timeout
                again = await within(reader.head())  # so on a new connection
                assert again == head
                with pytest.raises(UnexpectedFrame):  # 103: DISCOVERABLE needs a login
                    await within(reader.publish_key())
            async with open_log_reader(relay.url, relay_key=bytes(32)) as wrong:
                with pytest.raises(RelayKeyChanged):
                    await within(wrong.head())

    run(scenario())


def test_a_user_publishes_its_key_and_then_its_rotations(tmp_path: Path) -> None:
    """§15.6 rule 4: DISCOVERABLE logs a user's binding once; its rotations follow."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            await within(alice.log.publish_key())
            await within(alice.log.publish_key())  # again: nothing more
            await within(alice.rotate_identity())
            await relay.housekeeping.publish_tree_head()
            logged = bindings(await within(alice.log.entries(0)))
            assert [(b.handle, b.kind) for b in logged] == [("alice", "user")] * 2
            assert logged[1].previous_key == logged[0].identity_key
            bob = await online(relay.url, "bob")
            await within(bob.rotate_identity())  # not published: not logged
            await relay.housekeeping.publish_tree_head()
            assert len(bindings(await within(bob.log.entries(0)))) == 2
            await alice.close()
            await bob.close()

    run(scenario())


def test_log_fetches_past_the_relay_s_burst_wait_out_its_402(tmp_path: Path) -> None:
    """SPEC §10: a logged-in connection's log fetches have a bucket of their own
    (LOG_FETCH_BURST, LOG_FETCH_RATE_PER_MIN). ``client.log`` raised the first 402
    (RateLimited) to its caller — the SDK's head checks among them — though the ERROR
    says when the same fetch succeeds (``retry_after``): it waits, and asks again."""

    async def scenario() -> None:
        async with relay_at(tmp_path, log_fetch_burst=2, log_fetch_rate_per_min=6000.0) as relay:
            await online(relay.url, "airline", "business")
            await relay.housekeeping.publish_tree_head()
            alice = await online(relay.url, "alice")
            heads = [await within(alice.log.head()) for _ in range(8)]
            assert all(h is not None and h.size == 1 for h in heads)
            await alice.close()

    run(scenario())
