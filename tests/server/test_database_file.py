"""The relay's SQLite file as a crash leaves it (server/store/sqlite/database.py).

A relay killed during a checkpoint leaves the database file half written: some pages
already copied from the write-ahead log, others not. SQLite replays the WAL at the next
open and nothing is lost; but the file read alone, without its WAL, is "malformed".
The check that refuses a file that is not a relay's read it alone, so the relay
refused to start again, for ever, on a database that had lost nothing (one run in six
of tests/server/test_crash.py under load: "relay.db is not a relay database (database
disk image is malformed)").
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from blindrelay.server.store import StoreStartError
from blindrelay.server.store.sqlite.database import check_relay_file, connect
from blindrelay.server.store.sqlite.store import SqliteAdminStore, SqliteStore

COMPANIONS = ("", "-wal", "-shm")


def torn_copy(source: sqlite3.Connection, path: Path, into: Path) -> Path:
    """The files of ``path`` as a kill mid-checkpoint leaves them: every page rewritten
    in the WAL (a VACUUM, not checkpointed while ``source`` stays open), then the file's
    pages overwritten with what a half-done copy could hold (here: zeros), which only
    the WAL's newer copies make whole again."""
    source.execute("PRAGMA wal_autocheckpoint=0")
    source.execute("VACUUM")  # in WAL mode, every page of the file goes to the WAL
    into.mkdir()
    for suffix in COMPANIONS:
        shutil.copyfile(f"{path}{suffix}", f"{into / path.name}{suffix}")
    torn = into / path.name
    torn.write_bytes(bytes(torn.stat().st_size))
    return torn


def test_a_relay_database_torn_in_a_checkpoint_is_taken_and_opens_whole(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    db = connect(path)
    db.conn.execute("CREATE TABLE canary (note TEXT)")
    db.conn.execute("INSERT INTO canary VALUES ('acknowledged before the crash')")
    torn = torn_copy(db.conn, path, tmp_path / "after-crash")
    with pytest.raises(sqlite3.DatabaseError):  # the file alone is no database
        sqlite3.connect(torn.as_uri() + "?mode=ro&immutable=1", uri=True).execute(
            "SELECT name FROM sqlite_master"
        ).fetchall()

    check_relay_file(torn, new=True)  # refused before: "is not a relay database (...)"
    check_relay_file(torn)  # the operator's commands read it too
    reopened = connect(torn)
    assert reopened.execute("SELECT note FROM canary").fetchall() == [
        ("acknowledged before the crash",)
    ]
    assert reopened.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.conn.close()


def test_another_programs_database_torn_in_a_checkpoint_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "profile.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE messages (body BLOB)")
    torn = torn_copy(other, path, tmp_path / "after-crash")
    with pytest.raises(StoreStartError, match="its tables are another program's"):
        check_relay_file(torn, new=True)
    other.close()


def test_a_file_with_a_log_that_is_not_its_own_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database" * 300)
    Path(f"{path}-wal").write_bytes(b"nor a log" * 300)
    with pytest.raises(StoreStartError, match="is not a relay database"):
        check_relay_file(path, new=True)


async def test_a_second_relay_process_on_the_same_file_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    """SPEC §6.4.6: the relay process numbers deliveries for the one writer it started, so
    a SQLite file serves one relay. A second one on the file is refused before it serves
    anything (before, it ran, and the two relays' envelopes met only by paging); once
    the first has closed, the file is free again. The operator's commands are not
    relays: they open the file as before."""
    path = tmp_path / "relay.db"
    first = SqliteStore(path)
    await first.start()
    try:
        second = SqliteStore(path)
        with pytest.raises(StoreStartError) as refused:
            await second.start()
        message = str(refused.value)
        assert "served by another relay process" in message and "\n" not in message
        assert not second.running
        admin = SqliteAdminStore.open(path)
        admin.close()
    finally:
        await first.close()
    again = SqliteStore(path)
    await again.start()
    await again.close()
