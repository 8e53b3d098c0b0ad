"""The SQLite back end as the relay and the operator see it: a :class:`~..Store` and an
:class:`~..AdminStore` over one database file.

:class:`SqliteStore` composes the two halves the relay has always had: every
operation goes to the writer process (:mod:`.writer`, running :mod:`.jobs` with
group commit), and the reads the handlers make (``read``) go to a read-only
WAL connection of the loop's own, which sees each commit as soon as it is made
and never blocks the writer: a read is answered before ``read`` returns, at the
cost of a lookup, so a connection's frames are never held for one.

:class:`SqliteAdminStore` is the operator's: one read-write connection of
its own (``blindrelay admin`` runs next to a live relay; SQLite serialises the
two writers, ``busy_timeout`` waits).

Not here: the operations (``jobs``), the tables (``tables``), the choice of
back end (``blindrelay.server.store.open_store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlite_utils

from blindrelay.protocol.errors import NotFound

from ... import gcpolicy
from ...routing import EnvelopeLinks, HintSeal, new_worker_id
from .. import Done, StoreError, settling, transparency
from ..records import Account, MonthUsage
from ..transparency import MAX_BILL_ITEMS_WHOLE
from . import logjobs
from .database import (
    check_relay_file,
    connect,
    connect_reader,
    count_queued,
    hold_relay_file,
)
from .relayleases import RelayLeases, pushed_first
from .tables import Accounts, PreKeyStore, Tables
from .writer import Writer

LOST = "the writer process exited"


DELIVERY_LEASES = True
"""Whether a relay started now numbers deliveries and grants delivery leases (SPEC §6.4.6).
Off, every SEND waits for its decision and SQLite numbers deliveries: the strict path,
which tests/server/test_leases.py compares the leases against."""


class SqliteStore:
    """One SQLite file: a writer process for the operations, a reader for the loop."""

    def __init__(
        self, path: Path, synchronous: str = "FULL", gc_threshold: int = gcpolicy.DEFAULT_THRESHOLD
    ) -> None:
        self.path = path
        self.location = f"{path} (SQLite, synchronous={synchronous})"
        self.origin = new_worker_id()
        """Written into no hint: one SQLite file has one relay process."""
        self.on_lost: Callable[[str], None] | None = None
        self.on_available: Callable[[bool], None] | None = None
        """Never called: a lost writer is lost for good (:attr:`on_lost`)."""
        self.links: EnvelopeLinks | None = None
        """Unused: one relay process has no other worker to tell."""
        self.hint_seal: HintSeal | None = None
        """Unused, as :attr:`links`."""
        self._writer = Writer(path, synchronous, gc_threshold)
        self._writer.on_lost = self._lost
        self._reader: sqlite_utils.Database | None = None
        self._accounts: Accounts | None = None
        self._prekeys: PreKeyStore | None = None
        self._leases: RelayLeases | None = None
        """Delivery ids and leases (SPEC §6.4.6), told of every operation in order."""
        self._lock: int | None = None
        """The descriptor holding the file's relay lock (:func:`.database.hold_relay_file`)."""
        self.reads: dict[str, Callable[..., Any]] = {
            "account": self.account,
            "account_for_login": self.account_for_login,
            "check_prekey_upload": self.check_prekey_upload,
        }
        """Read name (:data:`..operations.READS`) → how this back end answers it."""

    @property
    def running(self) -> bool:
        return self._writer.running

    @property
    def available(self) -> bool:
        return self._writer.running

    @property
    def pid(self) -> int | None:
        """The writer process's, for tests that kill it."""
        return self._writer.pid

    @property
    def on_batch(self) -> Callable[[int, float, float], None] | None:
        """``Store.on_batch``: reported by the writer process with each batch's answers."""
        return self._writer.on_batch

    @on_batch.setter
    def on_batch(self, hook: Callable[[int, float, float], None] | None) -> None:
        self._writer.on_batch = hook

    @property
    def on_decided(self) -> Callable[[float, float, float], None] | None:
        """``Store.on_decided``: timed by the writer process and the loop together."""
        return self._writer.on_decided

    @on_decided.setter
    def on_decided(self, hook: Callable[[float, float, float], None] | None) -> None:
        self._writer.on_decided = hook

    async def start(self) -> None:
        check_relay_file(self.path, new=True)  # before anything writes to it
        await self._writer.start()  # creates or upgrades the schema before the reader opens
        try:
            self._lock = hold_relay_file(self.path)
            self._reader = connect_reader(self.path)
        except BaseException:
            await self._writer.close()
            self._unlock()
            raise
        self._accounts = Accounts(self._reader)
        self._prekeys = PreKeyStore(self._reader)
        if DELIVERY_LEASES:
            self._leases = RelayLeases(self._reader.conn)

    async def close(self) -> None:
        await self._writer.close()
        if self._reader is not None:
            self._reader.conn.close()
            self._reader = self._accounts = self._prekeys = None
            self._leases = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost(LOST)

    def call(
        self,
        operation: str,
        args: list[Any] | tuple[Any, ...],
        done: Done,
        decided: Callable[[Any], None] | None = None,
    ) -> None:
        leases = self._leases
        pushed = False
        if leases is not None:
            leases.handing(operation)
            if operation == "send":
                done, decided = leases.sending(args, done, decided)
                pushed = pushed_first(args)
            elif operation == "apply_statement":
                args = leases.statement_args(args)
        # A chat pushed already waits for nothing but its SENT: it may wait for company.
        self._writer.call(operation, args, done, decided, deferrable=pushed)

    def call_many(self, operation: str, item: Any, done: Done) -> None:
        if self._leases is not None:
            self._leases.handing(operation)
        # Nobody waits on an ACK's deletion (SPEC §6.5): it may wait for company.
        self._writer.call_many(operation, item, done, deferrable=operation == "acknowledge")

    def submit(self, operation: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.call(operation, args, settling(future))
        return future

    def lease_send(self, sender: str, to: str, msg_id: bytes) -> list[int] | None:
        """``Store.lease_send`` (:mod:`.relayleases`); None unless the writer runs — a
        DELIVER pushed first for a job that can no longer be handed over would never be
        confirmed nor withdrawn."""
        leases = self._leases
        if leases is None or not self._writer.running:
            return None
        return leases.ticket(sender, to, msg_id)

    async def queued_total(self) -> int:
        """Envelopes in the queue, on a connection of its own in a thread: a scan of an
        index that neither the event loop nor the writer waits for."""
        return await asyncio.to_thread(count_queued, self.path)

    def read(self, name: str, args: list[Any] | tuple[Any, ...], done: Done) -> None:
        """Answered at once, from the loop's reader: before this returns."""
        try:
            value = self.reads[name](*args)
        except Exception as exc:
            done(False, exc)
            return
        done(True, value)

    def account(self, handle: str) -> Account | None:
        assert self._accounts is not None, "the store is not started"
        return self._accounts.get(handle)

    def account_for_login(self, handle: str) -> Account | None:
        assert self._accounts is not None, "the store is not started"
        return self._accounts.get_evenly(handle)

    def check_prekey_upload(self, handle: str, key_ids: Sequence[int], max_stored: int) -> None:
        assert self._prekeys is not None, "the store is not started"
        self._prekeys.check_upload(handle, key_ids, max_stored)


class SqliteAdminStore:
    """The operator's connection to a relay database."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    @classmethod
    def open(cls, path: Path) -> SqliteAdminStore:
        """An existing database (upgraded to this relay's schema if older)."""
        if not path.exists():
            raise StoreError(f"no database at {path}")
        try:
            return cls(Tables(connect(path)))
        except (OSError, sqlite3.Error) as exc:  # a directory, no permission, not a database
            raise StoreError(f"cannot open the database {path}: {exc}") from None

    def transaction(self) -> AbstractContextManager[object]:
        return self._writing()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction begun IMMEDIATE: it takes the write lock (waiting out the
        busy timeout) before it reads. A deferred one that read first cannot write once
        the running relay commits after its read (SQLite refuses the upgrade at once,
        "database is locked", whatever the timeout), and the relay commits every few
        milliseconds (tree heads, SPEC §15.3). Nested blocks are savepoints."""
        conn = self._tables.db.conn
        if conn.in_transaction:
            with self._tables.db.atomic():
                yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def account(self, handle: str) -> Account | None:
        return self._tables.accounts.get(handle)

    def badge_serial_taken(self, serial: int) -> bool:
        return self._tables.badges.serial_taken(serial)

    def add_badge(
        self,
        *,
        serial: int,
        handle: str,
        key_fingerprint: bytes,
        display_name: str,
        issued_at: int,
        expires_at: int,
        signed: bytes,
    ) -> None:
        with self._writing():  # the badge and its log entry (SPEC §15.1)
            self._tables.badges.add(
                serial=serial, handle=handle, key_fingerprint=key_fingerprint,
                display_name=display_name, issued_at=issued_at, expires_at=expires_at,
                signed=signed,
            )  # fmt: skip
            self._tables.log.append([transparency.badge_issued(handle, serial, signed, issued_at)])

    def revoke_badges(self, handle: str, now: int) -> int:
        tables = self._tables
        with self._writing():  # the revocations and their log entries
            serials = tables.badges.in_force(handle)
            revoked = tables.badges.revoke(handle, now)
            tables.log.append(transparency.badge_revoked(handle, s, now) for s in serials)
        return revoked

    def add_invites(self, digests: Iterable[bytes], now: int) -> None:
        self._tables.invites.add(digests, now)

    def usage(self, business: str | None, month: str | None) -> list[MonthUsage]:
        return self._tables.usage.months(business, month)

    def relay_key(self) -> bytes | None:
        return self._tables.relay_identity.public_key()

    def bill(self, business: str, month: str) -> list[Any] | None:
        try:
            return logjobs.bill_page(self._tables, business, month, 0, MAX_BILL_ITEMS_WHOLE)
        except NotFound:
            return None

    def open_bill(self, business: str, month: str) -> int:
        return self._tables.bills.count_open(business, month)

    def close(self) -> None:
        self._tables.db.conn.close()
