"""The operator's store on PostgreSQL: ``blindrelay admin … --store postgresql://…``.

:class:`PostgresAdminStore` is the :class:`~..AdminStore` of a database that relay
workers may be using at the same time: badges, invites and usage, on one connection
(``sync``). Opening it creates or upgrades the schema exactly as a starting relay
does (``schema.migrate``, under the same advisory lock), so a command on a new,
empty database works, and it refuses in one line a database a newer relay upgraded.
A database that does not exist is refused, as the SQLite back end refuses a missing
file: the operator creates databases, the relay does not.

Outside :meth:`~PostgresAdminStore.transaction` every call commits on its own; inside
it everything commits together (nested: a savepoint). A running relay sees a revoked
badge at its next read: the relay never caches badges.

Not here: the commands (``blindrelay.server.admin``), the relay's store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

from .. import StoreError, redact, transparency
from ..records import Account, MonthUsage, usage_by_month
from . import bills
from . import transparency as log
from .schema import migrate
from .sync import SyncConnection


class PostgresAdminStore:
    """The operator's connection to a relay's PostgreSQL database (synchronous)."""

    def __init__(self, connection: SyncConnection) -> None:
        """Over an open connection whose schema is current: use :meth:`open`."""
        self._db = connection

    @classmethod
    def open(cls, url: str) -> PostgresAdminStore:
        """The database at ``url``, its schema created or upgraded to this relay's;
        :class:`StoreError` (one line) if it cannot be reached, does not exist, refuses
        the login or is newer than this relay."""
        connection = SyncConnection.open(url)
        try:
            connection.run(lambda conn: migrate(conn, redact(url)))  # refuses a newer one
        except BaseException:
            connection.close()
            raise
        return cls(connection)

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        transaction = self._db.run(_begin)
        try:
            yield self
        except BaseException:
            with suppress(StoreError):  # a broken connection: the server rolled back
                self._db.run(lambda _conn: transaction.rollback())
            raise
        self._db.run(lambda _conn: transaction.commit())

    def transaction(self) -> AbstractContextManager[object]:
        return self._transaction()

    def account(self, handle: str) -> Account | None:
        """Locked FOR SHARE: inside :meth:`transaction` a relay worker's rotation of the
        key (an UPDATE of the row) waits for its commit, and one not committed yet is
        waited for and its key read. Read plainly, a badge could be signed over the key
        a rotation was replacing and committed after it (READ COMMITTED)."""
        row = self._db.run(
            lambda conn: conn.fetchrow(
                "SELECT handle, kind, identity_key FROM accounts WHERE handle = $1 FOR SHARE",
                handle,
            )
        )
        return None if row is None else Account(row[0], row[1], bytes(row[2]))

    def badge_serial_taken(self, serial: int) -> bool:
        found = self._db.run(
            lambda conn: conn.fetchval("SELECT 1 FROM badges WHERE serial = $1", serial)
        )
        return found is not None

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
        row = (serial, handle, key_fingerprint, display_name, issued_at, expires_at, signed)
        entry = transparency.badge_issued(handle, serial, signed, issued_at)

        async def add(conn: Any) -> None:
            async with conn.transaction():  # the badge and its log entry (SPEC §15.1)
                await conn.execute(
                    "INSERT INTO badges (serial, handle, key_fingerprint, display_name,"
                    " issued_at, expires_at, revoked_at, signed)"
                    " VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)",
                    *row,
                )
                await log.append(conn, [entry])

        self._db.run(add)

    def revoke_badges(self, handle: str, now: int) -> int:
        async def revoke(conn: Any) -> int:
            async with conn.transaction():  # the revocations and their log entries
                serials = await conn.fetch(
                    "UPDATE badges SET revoked_at = $1 WHERE handle = $2 AND revoked_at IS NULL"
                    " RETURNING serial",
                    now,
                    handle,
                )
                ordered = sorted(int(row[0]) for row in serials)
                if ordered:
                    entries = [transparency.badge_revoked(handle, s, now) for s in ordered]
                    await log.append(conn, entries)
                return len(ordered)

        revoked: int = self._db.run(revoke)
        return revoked

    def add_invites(self, digests: Iterable[bytes], now: int) -> None:
        rows = list(digests)
        self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO invites (digest, created_at) SELECT d, $2 FROM unnest($1::bytea[]) d",
                rows,
                now,
            )
        )

    def usage(self, business: str | None, month: str | None) -> list[MonthUsage]:
        rows = self._db.run(
            lambda conn: conn.fetch(
                "SELECT business, month, meter, category, count FROM usage"
                " WHERE ($1::text IS NULL OR business = $1) AND ($2::text IS NULL OR month = $2)"
                " ORDER BY business, month, meter, category",
                business,
                month,
            )
        )
        return usage_by_month(rows)

    def relay_key(self) -> bytes | None:
        value = self._db.run(
            lambda conn: conn.fetchval("SELECT public_key FROM relay_identity WHERE id = 1")
        )
        return None if value is None else bytes(value)

    def bill(self, business: str, month: str) -> list[Any] | None:
        result: list[Any] | None = self._db.run(
            lambda conn: bills.whole(conn, business, month)
        )
        return result

    def open_bill(self, business: str, month: str) -> int:
        count: int = self._db.run(
            lambda conn: conn.fetchval(
                "SELECT count(*) FROM bill_notifications WHERE month = $1 AND business = $2",
                month,
                business,
            )
        )
        return int(count)

    def close(self) -> None:
        self._db.close()


async def _begin(conn: Any) -> Any:
    transaction = conn.transaction()  # inside another one: a savepoint
    await transaction.start()
    return transaction
