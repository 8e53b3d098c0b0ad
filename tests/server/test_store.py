"""server/store/: the operation contract, the factory's choice of back end, and the
SQLite back end behind the Store interface."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    HandleTaken,
    InvalidPrekeys,
    InvalidProfile,
    StaleStatement,
)
from blindrelay.protocol.signed import make_statement
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.routing import is_postgresql
from blindrelay.server.store import (
    Account,
    Store,
    StoreError,
    StoreJobError,
    UnsupportedStore,
    check_store_url,
    inspect_store,
    open_admin_store,
    open_store,
)
from blindrelay.server.store.operations import CONTRACT, READS, SendRules, argument_names
from blindrelay.server.store.sqlite import jobs
from blindrelay.server.store.sqlite.store import SqliteStore


def test_the_sqlite_back_end_implements_exactly_the_contracts_operations() -> None:
    assert sorted(jobs.OPERATIONS) == sorted(CONTRACT)
    for name, operation in CONTRACT.items():
        parameters = list(inspect.signature(jobs.OPERATIONS[name]).parameters.values())[1:]
        if operation.merged:
            assert len(parameters) == 1, name  # the list of items
            continue
        assert [p.name for p in parameters] == argument_names(operation), name
        optional = [p.name for p in parameters if p.default is not inspect.Parameter.empty]
        assert optional == [a.rstrip("?") for a in operation.args if a.endswith("?")], name


def test_the_sqlite_back_end_answers_exactly_the_contracts_reads(tmp_path: Path) -> None:
    reads = SqliteStore(tmp_path / "r.db").reads
    assert sorted(reads) == sorted(READS)
    for name, read in READS.items():
        parameters = list(inspect.signature(reads[name]).parameters)
        assert parameters == argument_names(read), name


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("relay.db", Path("relay.db")),
        ("/var/lib/blindrelay/relay.db", Path("/var/lib/blindrelay/relay.db")),
        ("sqlite:///var/lib/blindrelay/relay.db", Path("/var/lib/blindrelay/relay.db")),
        ("sqlite:relay.db", Path("relay.db")),
        ("sqlite:data/relay.db", Path("data/relay.db")),
    ],
)
def test_a_sqlite_url_or_a_plain_path_opens_the_sqlite_back_end(url: str, path: Path) -> None:
    store = open_store(url, RelayConfig())
    assert isinstance(store, SqliteStore) and store.path == path
    assert not store.running  # not started: nothing opened yet


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://db/relay", "unknown kind 'mysql'"),
        ("sqlite://host/relay.db", "a sqlite URL has no host"),
        ("sqlite:", "no database file"),
        ("", "no store given"),
    ],
)
def test_a_store_url_the_relay_cannot_open_is_refused_in_one_line(url: str, says: str) -> None:
    for opening in (
        lambda: open_store(url, RelayConfig()),
        lambda: open_admin_store(url),
        lambda: inspect_store(url, 10),
    ):
        with pytest.raises(UnsupportedStore) as refused:
            opening()
        assert says in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["postgresql://127.0.0.1:1/relay", "postgres://relay@127.0.0.1:1/r"]
)
def test_the_operator_commands_open_a_postgresql_url_and_say_in_one_line_why_they_cannot(
    url: str,
) -> None:
    """Both spellings reach the PostgreSQL back end (port 1: nothing listens there)."""
    for opening in (lambda: open_admin_store(url), lambda: inspect_store(url, 10)):
        with pytest.raises(StoreError) as refused:
            opening()
        assert not isinstance(refused.value, UnsupportedStore)
        message = str(refused.value)
        assert message.startswith("cannot reach the PostgreSQL server of ") and "\n" not in message
        assert "is it running, and are the URL's host and port right?" in message


def test_without_asyncpg_a_postgresql_url_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # what a missing package looks like
    url = "postgresql://127.0.0.1:1/relay"
    for opening in (
        lambda: check_store_url(url),
        lambda: open_store(url, RelayConfig()),
        lambda: open_admin_store(url),
        lambda: inspect_store(url, 10),
    ):
        with pytest.raises(UnsupportedStore) as refused:
            opening()
        assert str(refused.value) == (
            "the PostgreSQL store needs asyncpg, which is not installed: "
            "pip install 'blindrelay[postgresql]'"
        )


def test_the_operator_commands_need_an_existing_database(tmp_path: Path) -> None:
    for opening in (
        lambda: open_admin_store(str(tmp_path / "none.db")),
        lambda: inspect_store(str(tmp_path / "none.db"), 10),
    ):
        with pytest.raises(StoreError, match="no relay database at"):
            opening()
    assert not (tmp_path / "none.db").exists()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each back end: a new SQLite file, or a new schema of the module's
    PostgreSQL database."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_database").fresh_schema())
    return str(tmp_path / "r.db")


async def test_the_store_answers_the_loops_reads_from_what_it_committed(store_url: str) -> None:
    store = open_store(store_url, RelayConfig())
    await store.start()

    async def read(name: str, *args: Any) -> tuple[bool, Any]:
        answer: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        store.read(name, args, lambda ok, value: answer.set_result((ok, value)))
        if "://" not in store_url:
            assert answer.done()  # SQLite answers before read returns: nothing is held
        return await answer

    try:
        assert store.running
        assert await store.submit("create_account", "alice", "user", b"k" * 32, 0) is None
        alice = Account("alice", "user", b"k" * 32)
        assert await read("account", "alice") == (True, alice)
        assert await read("account_for_login", "alice") == (True, alice)
        assert await read("account", "bob") == await read("account_for_login", "bob") == (True, None)
        await store.submit("upload_prekeys", "alice", b"k" * 32, None, [[1, b"p" * 32]], 10, 0)
        assert await read("check_prekey_upload", "alice", [2], 10) == (True, None)
        ok, refused = await read("check_prekey_upload", "alice", [1], 10)
        assert not ok and isinstance(refused, InvalidPrekeys)
        ok, refused = await read("check_prekey_upload", "alice", [2, 3], 2)
        assert not ok and isinstance(refused, InvalidPrekeys)
        await store.submit("rotate_identity", "alice", b"k" * 32, b"n" * 32, 0)
        rotated = Account("alice", "user", b"n" * 32)
        assert await read("account", "alice") == (True, rotated)  # at once
    finally:
        await store.close()
    assert not store.running


async def test_login_numbers_are_read_back_for_a_catch_up(store_url: str) -> None:
    """SPEC §1.2.3: what a worker that lost its hints compares its connections with."""
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        for handle in ("alice", "bob"):
            await store.submit("create_account", handle, "user", handle.encode() * 8, 0)
        assert await store.submit("login_seqs", ["alice", "bob", "nobody"]) == [0, 0, 0]
        for _ in range(2):
            await store.submit("login_counts", "alice", 0)
        await store.submit("login_counts", "bob", 0)
        assert await store.submit("login_seqs", ["nobody", "bob", "alice"]) == [0, 1, 2]
        assert await store.submit("login_seqs", []) == []
    finally:
        await store.close()


async def test_a_login_and_a_rotation_each_commit_only_over_the_other(store_url: str) -> None:
    """SPEC §3.4, §4.3: ``login_counts`` with the key the LOGIN proved, and
    ``rotate_identity`` with the rotating connection's login number, are compare-and-swaps,
    so a rotation and a LOGIN with the old key, committed in either order, never leave a
    connection acting with a key that is no longer the account's."""
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        await store.submit("create_account", "alice", "user", b"k" * 32, 0)
        assert (await store.submit("login_counts", "alice", 0, b"k" * 32))[3] == 1
        # A newer login (2) than the rotating connection's (1): the rotation is refused.
        assert (await store.submit("login_counts", "alice", 0, b"k" * 32))[3] == 2
        with pytest.raises(StaleStatement):
            await store.submit("rotate_identity", "alice", b"k" * 32, b"n" * 32, 0, 1)
        await store.submit("rotate_identity", "alice", b"k" * 32, b"n" * 32, 0, 2)
        # The old key's login, verified before the rotation committed, counts nothing.
        with pytest.raises(AuthenticationFailed):
            await store.submit("login_counts", "alice", 0, b"k" * 32)
        assert await store.submit("login_seqs", ["alice"]) == [2]
        assert (await store.submit("login_counts", "alice", 0, b"n" * 32))[3] == 3
    finally:
        await store.close()


async def test_a_rotation_drops_the_profile_the_old_key_signed(store_url: str) -> None:
    """SPEC §3.4, §8.2: the stored profile was signed by the old key, which no client
    verifies it with any more (PROFILE names the new one): the rotation that replaces
    the key drops it, as it drops the old key's prekeys, and a PROFILE_PUT checked
    with the old key is refused once the rotation committed."""
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        for handle in ("shop", "cafe"):
            key = handle.encode() * 8
            await store.submit("create_account", handle, "business", key, 0)
            await store.submit("put_profile", handle, key, b"old " + handle.encode(), 0)
        await store.submit("rotate_identity", "shop", b"shop" * 8, b"n" * 32, 0)
        assert await store.submit("fetch_profile", "shop", 0) == [b"n" * 32, None, None]
        assert (await store.submit("fetch_profile", "cafe", 0))[1] == b"old cafe"  # its own
        with pytest.raises(InvalidProfile):
            await store.submit("put_profile", "shop", b"shop" * 8, b"old shop", 0)
        await store.submit("put_profile", "shop", b"n" * 32, b"new shop", 0)
        assert await store.submit("fetch_profile", "shop", 0) == [b"n" * 32, b"new shop", None]
    finally:
        await store.close()


async def test_operations_of_one_loop_turn_answer_in_order_with_their_errors(
    store_url: str,
) -> None:
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        futures = [
            store.submit("create_account", f"u{n}", "user", bytes([n]) * 32, 0) for n in range(20)
        ]
        futures.append(store.submit("create_account", "u3", "user", b"x" * 32, 0))
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[:20] == [None] * 20
        assert isinstance(results[20], HandleTaken)  # mapped back to its class
        with pytest.raises(StoreJobError) as failed:
            await store.submit("no_such_operation")
        assert failed.value.exc_type == "LookupError"  # type and place only, no message
        assert (await store.submit("login_counts", "u1", 0))[:3] == [0, 0, False]
    finally:
        await store.close()


async def test_close_commits_and_answers_everything_called_before_it(store_url: str) -> None:
    store = open_store(store_url, RelayConfig())
    await store.start()
    futures = [
        store.submit("create_account", f"u{n}", "user", bytes([n]) * 32, 0) for n in range(50)
    ]
    await store.close()
    assert [f.result() for f in futures] == [None] * 50
    again = open_store(store_url, RelayConfig())
    await again.start()
    try:
        assert (await again.submit("login_counts", "u49", 0))[:3] == [0, 0, False]
        with pytest.raises(HandleTaken):
            await again.submit("create_account", "u49", "user", b"z" * 32, 0)
    finally:
        await again.close()


@contextlib.asynccontextmanager
async def alice_and_bob(store_url: str) -> AsyncIterator[tuple[Store, SendRules]]:
    """A started store of ``store_url``'s back end holding the users alice and bob, and
    the default rules of a SEND; closed after."""
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        for handle in ("alice", "bob"):
            await store.submit("create_account", handle, "user", handle.encode() * 8, 0)
        yield store, send_rules(RelayConfig())
    finally:
        await store.close()


async def test_delivery_ids_only_grow_and_name_the_one_before(store_url: str) -> None:
    """SPEC §6.4: never reused, also once the queue is empty; ``previous`` covers every id
    queued for the recipient before (0: none ever): SQLite names the highest still queued,
    PostgreSQL the highest ever queued (``queue_counts.last_id``, its schema 10)."""
    async with alice_and_bob(store_url) as (store, rules):

        def send(n: int) -> asyncio.Future[list[int]]:
            return store.submit(
                "send", "alice", "user", "bob", bytes([n]) * 16, "chat", None, None, b"x", 5, rules
            )

        first, second = await asyncio.gather(send(1), send(2))
        assert (first[2], second[2]) == (0, first[0]) and second[0] > first[0]
        assert await store.submit("page", "bob", 0, 10, 0) == [
            [
                [i, "bob", "alice", "user", bytes([n]) * 16, "chat", None, None, 5, b"x"]
                for i, n in ((first[0], 1), (second[0], 2))
            ],
            second[0],
        ]
        acked: list[object] = []
        store.call_many(
            "acknowledge", ["bob", [first[0], second[0]]], lambda ok, v: acked.append(v)
        )
        third = await send(3)
        assert acked == [2] and third[0] > second[0]
        assert third[2] == (second[0] if is_postgresql(store_url) else 0)
        assert await send(3) == 5  # a resend: its original time, nothing stored
        assert (await store.submit("login_counts", "bob", 0))[0] == 1


async def test_a_page_reads_to_its_byte_budget_not_a_fixed_count(store_url: str) -> None:
    """A page stops at the envelope whose body brings the page's bodies to ``max_bytes``
    (what a connection may be held: SPEC §1.2.4, T82) and reads up to its ``limit`` of
    small ones. Counting rows at the largest frame instead (16 a page at the default
    bound) cost an honest drain of small envelopes a fifth of its rate."""
    async with alice_and_bob(store_url) as (store, rules):

        async def send(sender: str, to: str, n: int, size: int) -> None:
            await store.submit(
                "send", sender, "user", to, n.to_bytes(16, "big"), "chat", None, None,
                bytes(size), 5, rules,
            )  # fmt: skip

        await send("bob", "alice", 999, 1)  # contacts: no cap on a stranger's requests
        sizes = [100] * 40 + [limits.MAX_CIPHERTEXT_BYTES] * 6 + [100] * 4
        for n, size in enumerate(sizes):
            await send("alice", "bob", n, size)
        small, _high = await store.submit("page", "bob", 0, 40, 0, 1 << 20)
        assert len(small) == 40  # 4,000 bytes: the limit, not a budget, ends it
        budget = 2 * limits.MAX_CIPHERTEXT_BYTES + 1
        cut, _high = await store.submit("page", "bob", small[-1][0], 256, 0, budget)
        assert [len(row[9]) for row in cut] == [limits.MAX_CIPHERTEXT_BYTES] * 3
        whole, _high = await store.submit("page", "bob", 0, 256, 0)  # no budget: the limit
        assert len(whole) == len(sizes)


async def test_a_statement_is_listed_to_its_target_only_if_the_target_existed_then(
    store_url: str,
) -> None:
    """SPEC §7.6, threat model T47: ``apply_statement`` stores with the statement whether
    it was forwarded or held back for its target, and ``statements_in_force`` lists the
    target only those; a block of a handle registered later stays its signer's alone, and
    so does the unblock that lifts it (SPEC §7.5)."""
    keys = {handle: SigningKey(bytes([n]) * 32) for n, handle in enumerate(("bob", "carol", "shop"))}
    nonces = iter(range(1, 100))

    def signed(action: str, signer: str, target: str) -> bytes:
        nonce = next(nonces)
        return make_statement(
            action, signer=signer, signer_key=bytes(keys[signer].verify_key), target=target,
            relay_key=b"r" * 32, now_ms=10, rng=lambda n: bytes([nonce]) * n,
        ).sign(lambda m: keys[signer].sign(m).signature)  # fmt: skip

    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        for handle in ("bob", "carol"):
            await store.submit("create_account", handle, "user", bytes(keys[handle].verify_key), 0)

        async def apply(data: bytes, signer: str) -> Any:
            return await store.submit(
                "apply_statement", signer, data, 10, limits.CONSENT_COOLDOWN_MS
            )

        early = signed("block", "bob", "shop")
        assert (await apply(early, "bob"))[1] is None  # nobody to forward it to
        await store.submit("create_account", "shop", "business", bytes(keys["shop"].verify_key), 20)
        own = signed("block", "shop", "carol")
        await apply(own, "shop")
        held = signed("block", "carol", "shop")
        assert (await apply(held, "carol"))[1] is None  # held back: the shop blocks carol
        assert await store.submit("statements_in_force", "shop", 0, 10) == [[own, held], None]
        assert await store.submit("statements_in_force", "bob", 0, 10) == [[early], None]
        # bob's unblock lifts a block the shop never had: neither forwarded nor listed, or
        # it would tell the shop he had blocked it (T47). Blocked again now that the shop
        # exists: forwarded and listed, and so is the unblock of that block.
        lifted = signed("unblock", "bob", "shop")
        assert (await apply(lifted, "bob"))[1] is None
        assert await store.submit("statements_in_force", "shop", 0, 10) == [[own, held], None]
        assert await store.submit("statements_in_force", "bob", 0, 10) == [[lifted], None]
        for data in (signed("block", "bob", "shop"), signed("unblock", "bob", "shop")):
            assert (await apply(data, "bob"))[1] is not None
            assert await store.submit("statements_in_force", "shop", 0, 10) == [
                [own, held, data], None
            ]  # fmt: skip
    finally:
        await store.close()
