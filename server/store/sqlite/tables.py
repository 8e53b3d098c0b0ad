"""What the relay holds, in one SQLite file, and how its one writer commits.

Tables (SPEC §11 lists them; ``blindrelay inspect`` prints them):

- ``relay_identity`` — the relay's Ed25519 seed, made on first start (SPEC §4.1);
- ``accounts`` — handle, kind, current identity key (SPEC §3);
- ``signed_prekeys`` / ``one_time_prekeys`` — the prekey directory (SPEC §5);
- ``queue`` — envelopes not yet acknowledged; the row id is the delivery id,
  ``AUTOINCREMENT`` so ids only grow and are never reused (SPEC §6.4; :mod:`.queue`);
- ``sent`` — (msg_id, sender) → digest and time, for idempotent resends,
  kept for the queue TTL even after delivery (SPEC §6.3; :mod:`.queue`);
- ``pairs``, ``statements``, ``statements_in_force``, ``statement_nonces`` —
  consent, blocks, the signed statements in force behind them and the nonces
  that keep them unreplayable (SPEC §7; :mod:`.ledger`);
- ``budgets`` — token buckets that must hold across restarts and outside any
  one connection: first contacts per sender, one-time prekeys per owner (SPEC
  §5.3, §7.3; :class:`Budgets`);
- ``usage`` — metering counts per business, month, meter, category (SPEC §8.4;
  :mod:`.metering`);
- ``profiles``, ``badges`` — signed business profiles and operator badges
  (SPEC §8.1–8.2; :mod:`.profiles`).
- ``business_skeletons`` — the confusable skeleton of every business handle,
  for the lookalike rule (SPEC §3.2; :class:`BusinessSkeletons`);
- ``invites`` — hashes of the operator's unused invite tokens (SPEC §4.6.4;
  :class:`Invites`).
- ``log_entries``, ``log_nodes``, ``log_heads``, ``log_bindings``, ``log_times`` — the
  transparency log (SPEC §15; :mod:`.transparency`);
- ``bill_notifications``, ``bills``, ``bill_items`` — monthly bills (SPEC §8.5;
  :mod:`.bills`).

Bodies are opaque ciphertext: nothing here decodes them.

Concurrency: SQLite in WAL mode with exactly one writing connection, owned by
a separate writer process (:mod:`.writer_process`; the relay's side is
:mod:`.writer`). A process, not a thread: a writer thread shared the GIL with
the event loop, and every SQLite call gives the GIL up and must win it back,
so each slowed the other. The two talk over a socketpair in msgpack — job
descriptors ``[id, operation name, args]`` naming the functions of
:mod:`.jobs`, outcomes and ``(error code name, detail)`` back — never pickle,
which the package forbids. Jobs run in submission order; all jobs that
arrived while the previous commit ran share one transaction
(:class:`.commit.GroupCommitter`), so N envelopes cost one fsync, and outcomes are
reported only after that commit. A job that fails undoes only itself (see
:meth:`.commit.GroupCommitter.commit`). Outcomes come back in the same order, which
is what keeps deliveries in delivery-id order. The event loop keeps a
read-only WAL connection for account lookups (:func:`.database.connect_reader`;
:class:`~.store.SqliteStore` puts the two behind the relay's ``Store``).

The writer is the only writer of accounts, pairs and the queue, so it keeps
write-through caches of them (:class:`WriterCache`): account rows, pair states
and per-recipient queue lengths. A SEND then costs two SQL statements (INSERT
``sent``, INSERT ``queue``) instead of six. Every cache change made by a job is
undone with the job's savepoint, and a failed commit empties the caches, so
they never disagree with what is on disk.

The schema and the upgrades of older files are :mod:`.schema`'s, and
:func:`.database.connect` applies them; opening, checking and checkpointing the file are
:mod:`.database`'s. Schema is plain DDL (sqlite-utils has no ``AUTOINCREMENT``); hot paths use
prepared ``execute`` and plain ``BEGIN``/``SAVEPOINT`` (sqlite-utils'
``atomic`` cost ~10 % of the CPU per message); sqlite-utils supplies
migrations' transaction and the inspection API.

Not here: protocol rules (``auth``, ``directory``, ``delivery``), the decisions
operations make (``..rules``), what the relay sees of the store (``..``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import sqlite_utils

from blindrelay.protocol.errors import InvalidPrekeys
from blindrelay.protocol.frames import OneTimePreKeyRecord, SignedPreKeyRecord
from blindrelay.protocol.skeleton import leading_skeletons, skeleton

from ..records import Account
from ..rules import bucket_full_at, bucket_tokens
from .bills import Bills
from .cache import WriterCache
from .leasing import WriterLeases
from .ledger import ConsentLedger
from .metering import UsageMeter
from .profiles import BadgeStore, ProfileStore
from .queue import MessageQueue
from .transparency import TransparencyLog

# --- records ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreKeyBundleRow:
    identity_key: bytes
    kind: str
    signed_prekey: SignedPreKeyRecord
    one_time: OneTimePreKeyRecord | None
    remaining: int
    """One-time prekeys left after this fetch."""


# --- tables -------------------------------------------------------------------


class RelayIdentity:
    """The relay's own signing key seed (SPEC §4.1)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def load_or_create(self, make_seed: Callable[[], tuple[bytes, bytes]], now: int) -> bytes:
        """Return the stored seed, storing ``make_seed()`` = (seed, public) on first start."""
        row = self.db.execute("SELECT seed FROM relay_identity WHERE id = 1").fetchone()
        if row is not None:
            return bytes(row[0])
        seed, public = make_seed()
        self.db.execute(
            "INSERT INTO relay_identity (id, seed, public_key, created_at) VALUES (1, ?, ?, ?)",
            (seed, public, now),
        )
        return seed

    def public_key(self) -> bytes | None:
        row = self.db.execute("SELECT public_key FROM relay_identity WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])


_ACCOUNT_OR_DECOY = (
    # The row of handle ?1 if it exists, else row ?2 % max(rowid) + 1. Written so
    # that both cases run the same three searches (handle index, largest row id,
    # one row by id): coalesce() would skip the largest row id on a hit.
    "SELECT handle, kind, identity_key FROM accounts WHERE rowid = (SELECT max("
    " ifnull((SELECT rowid FROM accounts WHERE handle = ?1), 0),"
    " (?2 % max(rowid) + 1) * ((SELECT rowid FROM accounts WHERE handle = ?1) IS NULL)"
    ") FROM accounts)"
)
"""SPEC §11.1: the account lookup of a LOGIN (:meth:`Accounts.get_evenly`)."""


class Accounts:
    """Handles, kinds and current identity keys (SPEC §3).

    With a ``cache`` (the writer's), found accounts are kept in memory and
    every write updates them; unknown handles are always read (probing them
    must not fill memory). Without one (the event loop's reader), every
    ``get`` reads the database, so it sees a rotation as soon as it commits.
    """

    def __init__(self, db: sqlite_utils.Database, cache: WriterCache | None = None) -> None:
        self.db = db
        self.cache = cache
        self._conn = db.conn

    def get(self, handle: str) -> Account | None:
        cache = self.cache
        if cache is not None:
            account: Account | None = cache.accounts.get(handle)
            if account is not None:
                return account
        row = self._conn.execute(
            "SELECT handle, kind, identity_key FROM accounts WHERE handle = ?", (handle,)
        ).fetchone()
        if row is None:
            return None
        account = Account(row[0], row[1], bytes(row[2]))
        if cache is not None:
            cache.put(cache.accounts, handle, account)
        return account

    def get_evenly(self, handle: str) -> Account | None:
        """:meth:`get` with the same work whether ``handle`` exists or not (SPEC §11.1).

        For LOGIN, whose answer must not tell who exists. A plain lookup
        stops in the handle index on a miss but reads the row on a hit, and
        builds an :class:`Account` only then: together ~1.5 µs, enough to sort
        handles by timing. Here a miss reads a decoy row instead — one chosen
        by the handle, so it is as likely to be out of cache as a real one
        (accounts are never deleted, so row ids 1…max all exist) — and both
        build the record; only the final comparison differs. The writer's
        cache is not used: a cached hit would be faster still.
        """
        row = self._conn.execute(
            _ACCOUNT_OR_DECOY, (handle, zlib.crc32(handle.encode()))
        ).fetchone()
        if row is None:  # no account at all: nothing to tell apart
            return None
        account = Account(handle, row[1], bytes(row[2]))
        return account if row[0] == handle else None

    def registered_at(self, handle: str) -> int | None:
        """When ``handle`` was registered (its REGISTER's arrival), None if it never was:
        an unblock of a block made before then revokes from it (SPEC §7.4, T57)."""
        row = self._conn.execute(
            "SELECT created_at FROM accounts WHERE handle = ?", (handle,)
        ).fetchone()
        return None if row is None else int(row[0])

    def count_login(self, handle: str, identity_key: bytes | None = None) -> int:
        """Number a new login of ``handle``: its previous number plus one (1 for the first);
        0, counting nothing, when ``identity_key`` is given and no longer the account's.

        Only ever grows, so of two logins of one account — on any relay processes
        sharing the store — the later committed has the higher number (SPEC §1.2.3).
        """
        row = self._conn.execute(
            "UPDATE accounts SET login_seq = login_seq + 1"
            " WHERE handle = ?1 AND (?2 IS NULL OR identity_key = ?2) RETURNING login_seq",
            (handle, identity_key),
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def create(self, account: Account, now: int) -> bool:
        """Insert ``account``; False when the handle is taken (the caller refuses)."""
        cursor = self._conn.execute(
            "INSERT OR IGNORE INTO accounts (handle, kind, identity_key, created_at)"
            " VALUES (?, ?, ?, ?)",
            (account.handle, account.kind, account.identity_key, now),
        )
        created = cursor.rowcount == 1
        if created and self.cache is not None:
            self.cache.put(self.cache.accounts, account.handle, account)
            # Rows are only ever queued for existing accounts, and accounts are never
            # deleted: a new one has none (the cap check then needs no COUNT).
            self.cache.put(self.cache.queued, account.handle, 0)
        return created

    def replace_identity_key(
        self, handle: str, old_key: bytes, new_key: bytes, login_seq: int | None = None
    ) -> bool:
        """Compare-and-swap the identity key; False if it is no longer ``old_key`` or, with
        ``login_seq``, the account has logged in since the login of that number."""
        cursor = self._conn.execute(
            "UPDATE accounts SET identity_key = ?1 WHERE handle = ?2 AND identity_key = ?3"
            " AND (?4 IS NULL OR login_seq = ?4)",
            (new_key, handle, old_key, login_seq),
        )
        if self.cache is not None:
            self.cache.drop(self.cache.accounts, handle)
        return cursor.rowcount == 1


class BusinessSkeletons:
    """The confusable skeleton of every business handle (SPEC §3.2).

    One row per business, keyed by skeleton: two businesses never share one,
    because the second is refused before it is stored. Users have no row —
    the relay protects businesses from lookalikes, not people from each other.
    """

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._conn = db.conn

    def collides(self, handle: str) -> bool:
        """Whether a leading run of ``handle``'s labels looks like a business."""
        runs = leading_skeletons(handle)
        marks = ",".join("?" * len(runs))
        row = self._conn.execute(
            f"SELECT 1 FROM business_skeletons WHERE skeleton IN ({marks}) LIMIT 1",  # noqa: S608 - marks only
            runs,
        ).fetchone()
        return row is not None

    def add(self, handle: str) -> None:
        self._conn.execute(
            "INSERT INTO business_skeletons (skeleton, handle) VALUES (?, ?)",
            (skeleton(handle), handle),
        )


class Invites:
    """Hashes of the operator's invite tokens not used yet (SPEC §4.6.4).

    Only a hash is kept: the tokens are 128 random bits, so a plain hash is as
    good as a slow one, and a copy of the database lets no one register. A used
    invite's row is deleted with the registration that used it, so the table
    never says who was invited by whom.
    """

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._conn = db.conn

    def add(self, digests: Iterable[bytes], now: int) -> None:
        self._conn.executemany(
            "INSERT INTO invites (digest, created_at) VALUES (?, ?)",
            [(digest, now) for digest in digests],
        )

    def consume(self, digest: bytes) -> bool:
        """Delete the invite; False when there was none (unknown or used)."""
        cursor = self._conn.execute("DELETE FROM invites WHERE digest = ?", (digest,))
        return cursor.rowcount == 1

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM invites").fetchone()[0])


class PreKeyStore:
    """The prekey directory: one signed prekey and a pool of one-time prekeys per account."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def counts(self, handle: str) -> tuple[int, bool]:
        """(one-time prekeys stored, whether a signed prekey is stored)."""
        one_time = self.db.execute(
            "SELECT COUNT(*) FROM one_time_prekeys WHERE handle = ?", (handle,)
        ).fetchone()[0]
        signed = self.db.execute(
            "SELECT 1 FROM signed_prekeys WHERE handle = ?", (handle,)
        ).fetchone()
        return int(one_time), signed is not None

    def check_upload(self, handle: str, key_ids: Sequence[int], max_stored: int) -> None:
        """Raise InvalidPrekeys if adding one-time prekeys ``key_ids`` is refused (SPEC §5.2).

        "A one-time prekey whose id is already stored replaces nothing: the
        upload is refused with ERROR 300", and so is one that would take the
        supply over ``max_stored``. Read-only: the event loop asks it on its
        reader before the writer is involved, and :meth:`upload` again before
        it writes — a job that fails after writing makes its whole batch run
        again (:class:`.commit.GroupCommitter`).
        """
        stored = {
            row[0]
            for row in self.db.execute(
                "SELECT key_id FROM one_time_prekeys WHERE handle = ?", (handle,)
            )
        }  # at most max_stored ids
        if len(stored) + len(key_ids) > max_stored:
            raise InvalidPrekeys(f"more than {max_stored} one-time prekeys stored")
        if not stored.isdisjoint(key_ids):
            raise InvalidPrekeys("one-time prekey id already stored")

    def upload(
        self,
        handle: str,
        signed_prekey: SignedPreKeyRecord | None,
        one_time: Sequence[OneTimePreKeyRecord],
        max_stored: int,
        now: int,
    ) -> None:
        """Replace the signed prekey and add one-time prekeys, all or nothing:
        every refusal is raised before anything is written (:meth:`check_upload`)."""
        self.check_upload(handle, [key.key_id for key in one_time], max_stored)
        if signed_prekey is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO signed_prekeys"
                " (handle, key_id, public_key, signature, uploaded_at) VALUES (?, ?, ?, ?, ?)",
                (handle, signed_prekey.key_id, signed_prekey.public, signed_prekey.signature, now),
            )
        self.db.conn.executemany(
            "INSERT INTO one_time_prekeys (handle, key_id, public_key) VALUES (?, ?, ?)",
            [(handle, key.key_id, key.public) for key in one_time],
        )

    def take_bundle(
        self, handle: str, may_hand_out: Callable[[], bool] = lambda: True
    ) -> PreKeyBundleRow | None:
        """The account's bundle, consuming its oldest one-time prekey (SPEC §5.3) if
        there is one and ``may_hand_out()`` says so (the owner's budget, which is
        spent only when a key is handed out).

        Atomic because it runs inside one writer job: no two fetches can be
        served the same one-time key. None if there is no signed prekey.
        """
        row = self.db.execute(
            "SELECT a.identity_key, a.kind, s.key_id, s.public_key, s.signature"
            " FROM accounts a JOIN signed_prekeys s ON s.handle = a.handle WHERE a.handle = ?",
            (handle,),
        ).fetchone()
        if row is None:
            return None
        signed = SignedPreKeyRecord(key_id=row[2], public=bytes(row[3]), signature=bytes(row[4]))
        one = self.db.execute(
            "SELECT seq, key_id, public_key FROM one_time_prekeys WHERE handle = ?"
            " ORDER BY seq LIMIT 1",
            (handle,),
        ).fetchone()
        one_time = None
        if one is not None and may_hand_out():
            self.db.execute("DELETE FROM one_time_prekeys WHERE seq = ?", (one[0],))
            one_time = OneTimePreKeyRecord(key_id=one[1], public=bytes(one[2]))
        remaining, _ = self.counts(handle)
        return PreKeyBundleRow(bytes(row[0]), row[1], signed, one_time, remaining)

    def delete_all(self, handle: str) -> None:
        """After an identity rotation: the old key signed them (SPEC §3.4)."""
        self.db.execute("DELETE FROM signed_prekeys WHERE handle = ?", (handle,))
        self.db.execute("DELETE FROM one_time_prekeys WHERE handle = ?", (handle,))


class Budgets:
    """Token buckets kept in the database, per (name, key) (SPEC §5.3, §7.3).

    Why not in memory like the per-connection limits (:mod:`.ratelimit`): these
    are taken inside writer jobs, so they commit or roll back with what they
    pay for, survive a restart (waiting for one must not refill them), and
    are never reset by the writer cache being emptied. Taken rarely — a first
    contact, a served one-time prekey — so a row read and write is cheap
    enough. A full bucket is the same as no row; :meth:`purge` drops them.
    """

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def tokens(self, name: str, key: str, rate_per_h: float, burst: int, now: int) -> float:
        """What ``key``'s bucket ``name`` holds now (one indexed read, nothing written)."""
        row = self.db.conn.execute(
            "SELECT tokens, at FROM budgets WHERE name = ? AND key = ?", (name, key)
        ).fetchone()
        stored = (float(row[0]), int(row[1])) if row is not None else None
        return bucket_tokens(stored, rate_per_h, burst, now)

    def take(self, name: str, key: str, rate_per_h: float, burst: int, now: int) -> bool:
        """Spend one token of ``key``'s bucket ``name``; False (and nothing written)
        when it is empty."""
        tokens = self.tokens(name, key, rate_per_h, burst, now)
        if tokens < 1.0:
            return False
        tokens -= 1.0
        full_at = bucket_full_at(tokens, rate_per_h, burst, now)
        self.db.conn.execute(
            "INSERT OR REPLACE INTO budgets (name, key, tokens, at, full_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, key, tokens, now, full_at),
        )
        return True

    def purge(self, now: int) -> int:
        """Drop buckets that have refilled: they are the same as absent ones."""
        return int(self.db.execute("DELETE FROM budgets WHERE full_at <= ?", (now,)).rowcount)


class Tables:
    """The tables over one connection; what a writer job receives."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.cache = WriterCache()
        self.relay_identity = RelayIdentity(db)
        self.accounts = Accounts(db, self.cache)
        self.lookalikes = BusinessSkeletons(db)
        self.invites = Invites(db)
        self.prekeys = PreKeyStore(db)
        self.budgets = Budgets(db)
        self.queue = MessageQueue(db, self.cache)
        self.ledger = ConsentLedger(db, self.cache)
        self.usage = UsageMeter(db, self.cache)
        self.profiles = ProfileStore(db)
        self.badges = BadgeStore(db)
        self.log = TransparencyLog(db)
        self.bills = Bills(db)
        self.leases = WriterLeases()
        """Delivery leases (SPEC §6.4.6): in memory, as the relay process's are."""
        self.checkpoint_requested = False
        """Set by a job; :class:`.commit.GroupCommitter` checkpoints after the batch commits."""
