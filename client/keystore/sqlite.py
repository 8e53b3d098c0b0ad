"""The durable key store: one SQLite file, every row sealed (``sealing``), one table per
kind of record (``schema``).

Handles, message ids, counterparts and contacts' identity keys appear on disk
only as keyed hashes; a kind is listed by reading its own table, so no row of
another kind is opened. What the file still shows: the number and size of rows
per table (how many contacts, prekeys, pending messages, held messages, kept
statements), which log rows belong to one counterpart (not whose) and, in the
WAL, when they were written.

What it is not: a decision about any record (the kinds' modules make those,
over the primitives written here).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import nacl.pwhash.argon2id as argon2id
import nacl.utils
import sqlite_utils

from .base import LOG_TABLES, ROW_TABLES, TABLES
from .lock import disown_file, own_file
from .records import (
    MAX_PROCESSED_IDS,
    IncomingMessage,
    KeyStoreCorrupted,
    require_bytes,
    require_handle,
)
from .schema import create_tables, upgrade_tables
from .sealing import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    FORMAT_VERSION,
    KEY_BYTES,
    MAX_ACCEPTED_MEMLIMIT,
    Sealer,
    check_costs,
    passphrase_bytes,
    unwrap_master,
    wrap_master,
)
from .settings import SettingRecords

RECORD_CACHE_SIZE = 87_381
"""Rows :class:`SqliteKeyStore` keeps decrypted in memory, written through and
dropped whenever a transaction rolls back. A bulk send reads a contact's
session, trusted key, pending identity change and published mark per message
(~33 µs of SQLite and decryption); one process owns a store, so what it wrote is
what the file holds. A business's whole customer base fits (four rows each, the
same 21,845 customers as when it was three)."""

_CACHED_TABLES = frozenset(
    {"sessions", "identities", "identity_changes", "published", "away_replies"}
)
"""Read for every message sent or received (SPEC §3.3, §15.6; a business's away reply);
prekeys and our identity are not kept decrypted here."""


def _message_key(sender: str, msg_id: bytes) -> bytes:
    """Natural key of a received envelope: the sender's handle, then its msg_id."""
    return sender.encode() + b"\x00" + msg_id


class SqliteKeyStore(SettingRecords):
    """Key store in one SQLite file, every record sealed (see ``sealing``).

    One process and one thread own a store: the file is locked while it is
    open (a second open raises KeyStoreInUse) and the connection refuses use
    from another thread. Writes are ``synchronous=FULL`` — the SDK acks deliveries
    on the strength of a commit, so a commit must survive power loss, and a
    client writes a few times per message, far below the ~1.5k commits/s FULL
    allows. ``secure_delete`` zeroes freed pages so a taken one-time prekey
    does not linger in the file.
    """

    def __init__(
        self,
        db: sqlite_utils.Database,
        master_key: bytes,
        header: dict[str, Any],
        *,
        max_processed_ids: int,
        owner: int | None = None,
    ) -> None:
        """Use :meth:`open`; this wires an already unlocked database.

        ``owner`` is the descriptor holding the file's lock (:func:`.lock.own_file`):
        only a store that owns its file keeps rows decrypted in memory.
        """
        self._db = db
        self._header = header
        self._sealer = Sealer(master_key)
        self._max_processed = max_processed_ids
        self._closed = False
        self._owner = owner
        self._cached_tables = _CACHED_TABLES if owner is not None else frozenset()
        self._records: dict[tuple[str, bytes], Sequence[Any] | None] = {}
        """Decrypted rows of the hot tables as the file holds them (see RECORD_CACHE_SIZE)."""

    @classmethod
    def open(
        cls,
        path: str | Path,
        passphrase: str,
        *,
        create: bool = False,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
        max_processed_ids: int = MAX_PROCESSED_IDS,
    ) -> Self:
        """Unlock the store at ``path``; with ``create``, make it if absent.

        The Argon2 costs apply only when creating; an existing store uses the
        costs in its header. A file of an earlier schema is upgraded (``schema``).
        Raises :class:`WrongPassphrase`, :class:`KeyStoreCorrupted`,
        :class:`KeyStoreTooNew`, or ``FileNotFoundError`` without ``create``.
        """
        path = Path(path)
        passphrase_bytes(passphrase)
        existed = path.exists()
        if not existed and not create:
            raise FileNotFoundError(f"no key store at {path}")
        if create:  # before connecting: a refused cost must not leave an empty file
            check_costs(opslimit, memlimit, max_memlimit=argon2id.MEMLIMIT_MAX)
        owner = own_file(path)  # before SQLite opens it (see own_file)
        try:
            conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT only
        except BaseException:
            disown_file(owner)
            raise
        try:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA temp_store=MEMORY")
            if "header" not in db.table_names():
                if existed and db.table_names():
                    raise KeyStoreCorrupted(f"{path} is not a blindrelay key store")
                master, header = cls._initialise(db, passphrase, opslimit, memlimit)
            else:
                header = cls._read_header(db)
                master = unwrap_master(header, passphrase)
        except sqlite3.DatabaseError as exc:
            conn.close()
            disown_file(owner)
            raise KeyStoreCorrupted(f"{path} is not a blindrelay key store") from exc
        except BaseException:
            conn.close()
            disown_file(owner)
            raise
        store = cls(db, master, header, max_processed_ids=max_processed_ids, owner=owner)
        try:
            upgrade_tables(conn, store._sealer, store)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _initialise(
        db: sqlite_utils.Database, passphrase: str, opslimit: int, memlimit: int
    ) -> tuple[bytes, dict[str, Any]]:
        salt = nacl.utils.random(argon2id.SALTBYTES)
        master = nacl.utils.random(KEY_BYTES)
        header = {
            "id": 1,
            "format": FORMAT_VERSION,
            "salt": salt,
            "opslimit": opslimit,
            "memlimit": memlimit,
            "wrapped_master": wrap_master(master, passphrase, salt, opslimit, memlimit),
        }
        with db.atomic():
            create_tables(db.conn)
            columns = ", ".join(header)
            placeholders = ", ".join("?" for _ in header)
            db.execute(
                f"INSERT INTO header ({columns}) VALUES ({placeholders})",  # noqa: S608
                list(header.values()),
            )
        return master, header

    @staticmethod
    def _read_header(db: sqlite_utils.Database) -> dict[str, Any]:
        rows = list(db["header"].rows)
        if len(rows) != 1 or rows[0].get("format") != FORMAT_VERSION:
            raise KeyStoreCorrupted("key store header missing or of another format")
        header = rows[0]
        try:
            check_costs(header["opslimit"], header["memlimit"], max_memlimit=MAX_ACCEPTED_MEMLIMIT)
        except (TypeError, ValueError) as exc:
            raise KeyStoreCorrupted("key store header has unacceptable Argon2 costs") from exc
        return header

    def change_passphrase(
        self,
        old_passphrase: str,
        new_passphrase: str,
        *,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
    ) -> None:
        """Rewrap the master key under a new passphrase (and costs).

        Records are untouched, so a copy of the file taken earlier still opens
        with the old passphrase: this protects the file from now on, not copies.
        """
        check_costs(opslimit, memlimit, max_memlimit=argon2id.MEMLIMIT_MAX)
        master = unwrap_master(self._header, old_passphrase)
        salt = nacl.utils.random(argon2id.SALTBYTES)
        update = {
            "salt": salt,
            "opslimit": opslimit,
            "memlimit": memlimit,
            "wrapped_master": wrap_master(master, new_passphrase, salt, opslimit, memlimit),
        }
        with self._transaction():
            self._db.execute(
                "UPDATE header SET salt = ?, opslimit = ?, memlimit = ?, wrapped_master = ?"
                " WHERE id = 1",
                [salt, opslimit, memlimit, update["wrapped_master"]],
            )
        self._header = {**self._header, **update}

    def close(self) -> None:
        """Checkpoint the WAL into the file and release the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._records.clear()
        try:
            self._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.conn.close()
            disown_file(self._owner)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Storage primitives

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        try:
            with self._db.atomic():
                yield self
        except BaseException:
            self._records.clear()  # rolled back: the cache may hold writes the file lost
            raise

    def _put(self, table: str, key: bytes, fields: Sequence[Any]) -> None:
        """One statement: all or nothing by itself, its own commit outside a transaction.

        Writes that are one ``_put`` or ``_delete`` need no ``_transaction``
        around them; inside an :meth:`atomic` block that would cost a SAVEPOINT
        and a RELEASE per write (a bulk send makes two writes per message).
        """
        assert table in ROW_TABLES
        k = self._sealer.lookup(table, key)
        sql = (
            f"INSERT INTO {table} (k, v) VALUES (?, ?)"  # noqa: S608
            " ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        )
        self._db.execute(sql, [k, self._sealer.seal(table, k, fields)])
        if table in self._cached_tables:
            self._cache(table, key, fields)

    def _get(self, table: str, key: bytes) -> Sequence[Any] | None:
        assert table in ROW_TABLES
        cached = table in self._cached_tables
        if cached:
            try:
                return self._records[(table, key)]
            except KeyError:
                pass
        k = self._sealer.lookup(table, key)
        row = self._db.execute(f"SELECT v FROM {table} WHERE k = ?", [k]).fetchone()  # noqa: S608
        fields = None if row is None else self._sealer.open(table, k, row[0])
        if cached:
            self._cache(table, key, fields)
        return fields

    def _delete(self, table: str, key: bytes) -> bool:
        assert table in ROW_TABLES
        k = self._sealer.lookup(table, key)
        cursor = self._db.execute(f"DELETE FROM {table} WHERE k = ?", [k])  # noqa: S608
        if table in self._cached_tables:
            self._cache(table, key, None)
        return cursor.rowcount > 0

    def _cache(self, table: str, key: bytes, fields: Sequence[Any] | None) -> None:
        """Remember what the file now holds for a row (None: no such row), oldest out first."""
        records = self._records
        if (table, key) not in records and len(records) >= RECORD_CACHE_SIZE:
            del records[next(iter(records))]
        records[(table, key)] = fields

    def _rows(self, table: str) -> list[Sequence[Any]]:
        assert table in TABLES
        rows = self._db.execute(f"SELECT k, v FROM {table} ORDER BY rowid").fetchall()  # noqa: S608
        return [self._sealer.open(table, k, v) for k, v in rows]

    def _append(self, table: str, group: str, record: bytes) -> None:
        """One row: the next sequence number, sealed to its group and position."""
        assert table in LOG_TABLES
        g = self._sealer.lookup(table, group.encode())
        ((seq,),) = self._db.execute(
            f"SELECT coalesce(max(seq), 0) + 1 FROM {table}"  # noqa: S608
        ).fetchall()
        sealed = self._sealer.seal(table, g + seq.to_bytes(8, "big"), [group, record])
        self._db.execute(f"INSERT INTO {table} (seq, g, v) VALUES (?, ?, ?)", [seq, g, sealed])  # noqa: S608

    def _read(self, table: str, group: str, start: int) -> list[bytes]:
        assert table in LOG_TABLES
        g = self._sealer.lookup(table, group.encode())
        rows = self._db.execute(
            f"SELECT seq, v FROM {table} WHERE g = ? ORDER BY seq LIMIT -1 OFFSET ?",  # noqa: S608
            [g, start],
        ).fetchall()
        records = []
        for seq, sealed in rows:
            stored, record = self._sealer.open(table, g + seq.to_bytes(8, "big"), sealed)
            if stored != group:
                raise KeyStoreCorrupted("a log row is filed under another group")
            records.append(bytes(record))
        return records

    def _drop(self, table: str, group: str, count: int | None) -> None:
        assert table in LOG_TABLES
        g = self._sealer.lookup(table, group.encode())
        self._db.execute(
            f"DELETE FROM {table} WHERE seq IN"  # noqa: S608
            f" (SELECT seq FROM {table} WHERE g = ? ORDER BY seq LIMIT ?)",
            [g, -1 if count is None else count],
        )

    def _count(self, table: str, group: str) -> int:
        assert table in LOG_TABLES
        g = self._sealer.lookup(table, group.encode())
        ((count,),) = self._db.execute(
            f"SELECT count(*) FROM {table} WHERE g = ?",  # noqa: S608
            [g],
        ).fetchall()
        return int(count)

    # Incoming messages

    def _add_processed(self, sender: str, msg_id: bytes) -> None:
        k = self._sealer.lookup("processed", _message_key(sender, msg_id))
        self._db.execute("INSERT INTO processed (k) VALUES (?)", [k])
        self._db.execute(
            "DELETE FROM processed WHERE seq <= (SELECT max(seq) FROM processed) - ?",
            [self._max_processed],
        )

    def _add_pending(self, message: IncomingMessage) -> None:
        k = self._sealer.lookup("inbox", _message_key(message.sender, message.msg_id))
        fields = [message.msg_id, message.sender, message.received_at_ms, message.body]
        self._db.execute(
            "INSERT INTO inbox (k, v) VALUES (?, ?)", [k, self._sealer.seal("inbox", k, fields)]
        )

    def is_processed(self, sender: str, msg_id: bytes) -> bool:
        require_handle(sender)
        require_bytes("msg_id", msg_id)
        k = self._sealer.lookup("processed", _message_key(sender, msg_id))
        return self._db.execute("SELECT 1 FROM processed WHERE k = ?", [k]).fetchone() is not None

    def pending_messages(self) -> list[IncomingMessage]:
        return [IncomingMessage(*fields) for fields in self._rows("inbox")]

    def consume(self, sender: str, msg_id: bytes) -> bool:
        require_handle(sender)
        require_bytes("msg_id", msg_id)
        k = self._sealer.lookup("inbox", _message_key(sender, msg_id))
        cursor = self._db.execute("DELETE FROM inbox WHERE k = ?", [k])
        return cursor.rowcount > 0
