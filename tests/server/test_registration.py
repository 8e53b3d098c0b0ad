"""Who may create an account (SPEC §3.2 lookalikes, §4.6 registration policy; issue 13)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Error, Frame, Welcome
from blindrelay.server.relay import RunningRelay
from blindrelay.server.storage import SCHEMA_VERSION, Account, Store, connect

from .conftest import Clients, RawClient


async def register(client: RawClient, handle: str, kind: str = "user") -> Frame:
    """REGISTER through the client machine; WELCOME or the ERROR answering it."""
    request_id = client.conn.register(
        handle, kind, bytes(client.key.verify_key), lambda m: client.key.sign(m).signature
    )
    for data in client.conn.data_to_send():
        await client.ws.send(data)
    return await client.response(request_id)


async def attempt(relay: RunningRelay, clients: Clients, handle: str, kind: str = "user") -> Frame:
    return await register(await clients.open(relay.url), handle, kind)


# --- SPEC §3.2: lookalikes of businesses ------------------------------------------


@pytest.mark.parametrize(
    "lookalike",
    ["air1ine", "airiine", "ai.rline", "air-line", "airline.com", "airline-support", "air1ine_help"],
)
@pytest.mark.parametrize("kind", ["user", "business"])
async def test_a_lookalike_of_a_business_is_refused_like_a_taken_handle(
    relay: RunningRelay, clients: Clients, lookalike: str, kind: str
) -> None:
    """SPEC §3.2: a handle with a leading skeleton equal to a business's skeleton gets
    "ERROR 201 HANDLE_TAKEN, the same frame as for a taken handle"."""
    await clients.registered(relay.url, "airline", "business")
    refused = await attempt(relay, clients, lookalike, kind)
    taken = await attempt(relay, clients, "airline", kind)
    assert isinstance(refused, Error) and isinstance(taken, Error)
    assert (refused.code, refused.reason, refused.retry_after) == (ErrorCode.HANDLE_TAKEN, None, None)
    assert (taken.code, taken.reason, taken.retry_after) == (ErrorCode.HANDLE_TAKEN, None, None)


@pytest.mark.parametrize("handle", ["airlines", "support-airline", "my.airline", "airline5", "air"])
async def test_handles_that_only_contain_a_business_name_later_are_allowed(
    relay: RunningRelay, clients: Clients, handle: str
) -> None:
    """The rule looks at leading runs of whole labels only (SPEC §3.2 says why)."""
    await clients.registered(relay.url, "airline", "business")
    assert isinstance(await attempt(relay, clients, handle), Welcome)


async def test_users_are_not_protected_from_lookalikes_of_users(
    relay: RunningRelay, clients: Clients
) -> None:
    await clients.registered(relay.url, "alice")
    assert isinstance(await attempt(relay, clients, "a1ice"), Welcome)


async def test_a_business_registered_after_its_lookalike_still_registers(
    relay: RunningRelay, clients: Clients
) -> None:
    """SPEC §3.2: handles are never reassigned, so a lookalike that came first stays;
    the badge (§8.1) is what tells the real business from it."""
    await clients.registered(relay.url, "air1ine")
    assert isinstance(await attempt(relay, clients, "airline", "business"), Welcome)
    assert isinstance(await attempt(relay, clients, "airiine"), Error)


async def test_of_two_concurrent_lookalike_businesses_one_wins(
    relay: RunningRelay, clients: Clients
) -> None:
    """The skeleton is checked in the writer job that creates the account."""
    first, second = await clients.open(relay.url), await clients.open(relay.url)
    answers = await asyncio.gather(
        register(first, "airline", "business"), register(second, "air1ine", "business")
    )
    assert sorted(type(a).__name__ for a in answers) == ["Error", "Welcome"]


def test_upgrading_a_database_indexes_the_businesses_it_holds(tmp_path: Path) -> None:
    """An existing relay's businesses are protected from the first start after the upgrade."""
    path = tmp_path / "relay.db"
    store = Store(connect(path))
    store.accounts.create(Account("airline", "business", b"k" * 32), 0)
    store.accounts.create(Account("alice", "user", b"u" * 32), 0)
    store.db.conn.execute("DROP TABLE business_skeletons")
    store.db.conn.execute("PRAGMA user_version = 2")
    store.db.conn.close()
    upgraded = Store(connect(path))
    assert upgraded.lookalikes.collides("air1ine.com")
    assert not upgraded.lookalikes.collides("a1ice")
    assert upgraded.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    upgraded.db.conn.close()
    again = sqlite3.connect(path)  # a second start changes nothing
    assert again.execute("SELECT COUNT(*) FROM business_skeletons").fetchone()[0] == 1
    again.close()
