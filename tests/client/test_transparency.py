"""Reading the transparency log from the SDK (client/transparency.py, SPEC §15.6):
``client.log`` over an account's link, :func:`open_log_reader` with no account, and
DISCOVERABLE. Against a real relay, whose heads the tests publish when they need one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blindrelay.client.transparency import open_log_reader
from blindrelay.client.trust import RelayKeyChanged
from blindrelay.protocol.errors import NotFound, UnexpectedFrame
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, decode_entry
from blindrelay.protocol.transparency.treehead import check_extends

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
                await asyncio.sleep(0.5)  # past the authentication timeout: closed
                again = await within(reader.head())
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
