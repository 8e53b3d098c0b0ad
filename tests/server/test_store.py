"""server/store/: the operation contract, the factory's choice of back end, and the
SQLite back end behind the Store interface."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from blindrelay.protocol.errors import InvalidPrekeys
from blindrelay.server.config import RelayConfig
from blindrelay.server.store import (
    Account,
    StoreError,
    UnsupportedStore,
    inspect_store,
    open_admin_store,
    open_store,
)
from blindrelay.server.store.operations import CONTRACT, READS, argument_names
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
        ("postgresql://127.0.0.1:5432/relay", "PostgreSQL store is not available yet"),
        ("postgres://relay@db/relay", "PostgreSQL store is not available yet"),
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


def test_the_operator_commands_need_an_existing_database(tmp_path: Path) -> None:
    for opening in (
        lambda: open_admin_store(str(tmp_path / "none.db")),
        lambda: inspect_store(str(tmp_path / "none.db"), 10),
    ):
        with pytest.raises(StoreError, match="no database at"):
            opening()
    assert not (tmp_path / "none.db").exists()


async def test_the_sqlite_store_answers_reads_at_once_from_what_its_writer_committed(
    tmp_path: Path,
) -> None:
    store = open_store(str(tmp_path / "r.db"), RelayConfig())
    await store.start()

    def read(name: str, *args: Any) -> tuple[bool, Any]:
        answers: list[tuple[bool, Any]] = []
        store.read(name, args, lambda ok, value: answers.append((ok, value)))
        assert len(answers) == 1  # before read returned: nothing is ever held for SQLite
        return answers[0]

    try:
        assert store.running
        assert await store.submit("create_account", "alice", "user", b"k" * 32, 0) is None
        alice = Account("alice", "user", b"k" * 32)
        assert read("account", "alice") == read("account_for_login", "alice") == (True, alice)
        assert read("account", "bob") == read("account_for_login", "bob") == (True, None)
        await store.submit("upload_prekeys", "alice", b"k" * 32, None, [[1, b"p" * 32]], 10, 0)
        assert read("check_prekey_upload", "alice", [2], 10) == (True, None)
        ok, refused = read("check_prekey_upload", "alice", [1], 10)
        assert not ok and isinstance(refused, InvalidPrekeys)
        ok, refused = read("check_prekey_upload", "alice", [2, 3], 2)
        assert not ok and isinstance(refused, InvalidPrekeys)
        await store.submit("rotate_identity", "alice", b"k" * 32, b"n" * 32)
        assert read("account", "alice") == (True, Account("alice", "user", b"n" * 32))  # at once
    finally:
        await store.close()
    assert not store.running
