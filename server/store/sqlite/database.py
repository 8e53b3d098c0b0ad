"""The relay's SQLite file itself: checked to be a relay's, opened private and in WAL
mode with the schema applied, checkpointed, read from other threads.

Why a module of its own: what a table holds and how a job reads it (:mod:`.tables`)
does not depend on how the file is opened, and the operator's commands, ``inspect`` and
the writer process need the file without the tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
from pathlib import Path

import sqlite_utils

from ...logs import log_event
from .. import StoreStartError
from .schema import SCHEMA_VERSION, add_columns, migrate, statements

FILE_MODE = 0o600
"""SPEC §11.2: the database, its WAL and its shared memory are readable by the
relay's user only — the database holds the relay's private seed."""

WAL_SIZE_LIMIT_BYTES = 4 << 20
"""``journal_size_limit``: what SQLite cuts the WAL back to when it restarts it
after a checkpoint, so a burst does not leave a large file behind. 4 MiB is
where SQLite's own automatic checkpoint fires (1000 pages of 4 KiB): smaller
would truncate and regrow the file at every restart; the periodic truncating
checkpoint (:func:`checkpoint`) empties it entirely anyway."""

BUSY_TIMEOUT_MS = 5000
CHECKPOINT_BUSY_TIMEOUT_MS = 200
"""How long a checkpoint waits for readers of an older snapshot (an operator's
``inspect``) before it gives up until the next one; the writer, and so every
SEND, waits meanwhile."""


def hold_relay_file(path: Path) -> int:
    """An exclusive ``flock`` on the database file, held (the descriptor returned) for as
    long as this relay serves it; a second relay process is refused in one line.

    Why: the relay process numbers deliveries and grants delivery leases for the one
    writer it started (SPEC §6.4.6), and one relay's envelopes reach another's outbox
    only by paging — two relays on one file were never a deployment that works. Several
    relay processes share a PostgreSQL store. The operator's commands take no lock:
    they write nothing a relay numbers. ``flock`` is apart from SQLite's own (POSIX)
    locks, and the descriptor is closed only once the store's connections are.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreStartError(
            f"{path} is served by another relay process: a SQLite store serves one relay;"
            " give this one its own --db, or share a PostgreSQL store (--store postgresql://…)"
        ) from None
    return fd


def check_relay_file(path: Path, *, new: bool = False) -> None:
    """Refuse, in one line (:class:`StoreStartError`), a file that is not a relay
    database before anything writes to it: a chat profile, another program's SQLite
    file, or no SQLite file at all would otherwise be given the relay's tables.
    ``new``: a missing file is made (``serve``) if its folder exists; otherwise a
    missing file is refused (the operator's commands and ``inspect`` read a relay's)."""
    if not path.exists():
        if not new:
            raise StoreStartError(f"no relay database at {path}: give the --db of a relay")
        if not path.parent.is_dir():
            raise StoreStartError(
                f"cannot create {path}: the folder {path.parent} does not exist; create it "
                "or give --db a path in an existing folder"
            )
        return
    if path.is_dir():
        raise StoreStartError(f"{path} is a folder: give --db a database file")
    try:
        names = _table_names(path, with_wal=_has_wal(path))
    except sqlite3.DatabaseError as exc:
        raise StoreStartError(f"{path} is not a relay database ({exc})") from None
    if not names and not new:
        # An empty file (made by hand, cut short) holds no relay: the operator's commands
        # would make the relay's tables in it and, for `invite`, hand out tokens no relay
        # knows.
        raise StoreStartError(f"{path} is empty, not a relay database: give the --db of a relay")
    if names and "relay_identity" not in names:
        raise StoreStartError(
            f"{path} is not a relay database (its tables are another program's, a chat "
            "profile's perhaps); give the --db of a relay"
        )


def _table_names(path: Path, *, with_wal: bool) -> set[str]:
    """The names in the file's schema, read-only.

    ``with_wal`` (a write-ahead log with frames in it beside the file): the file is read
    together with its WAL, as SQLite will open it. The file alone is not the database
    then: a relay killed during a checkpoint (SQLite's automatic one runs inside a
    COMMIT) leaves pages of the file half copied from the WAL, which the next open
    replays — read alone, such a file is "malformed", and refusing it kept the relay
    from ever starting again on a database that had lost nothing (seen in
    tests/server/test_crash.py; tests/server/test_database_file.py). It is a WAL
    database already, so this read makes no file beside it that was not there.
    Otherwise ``immutable``: no -wal/-shm files are made beside a file that may not be
    ours (a chat profile in WAL mode would get them from a plain read)."""
    mode = "?mode=ro" if with_wal else "?mode=ro&immutable=1"
    conn = sqlite3.connect(path.resolve().as_uri() + mode, uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def _has_wal(path: Path) -> bool:
    """Whether ``path`` has a write-ahead log with something in it."""
    wal = path.with_name(path.name + "-wal")
    return wal.is_file() and wal.stat().st_size > 0


def connect(path: Path, synchronous: str = "FULL") -> sqlite_utils.Database:
    """Open (creating if needed) the relay database in WAL mode.

    ``isolation_level=None``: the connection never opens transactions behind
    our back; :meth:`sqlite_utils.Database.atomic` opens them explicitly.
    Files are private (:func:`_make_private`) and deleted rows are overwritten
    (``secure_delete``, SPEC §11.2).
    """
    _make_private(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    conn.execute("PRAGMA journal_mode=WAL")
    # Checked against config.SYNCHRONOUS_MODES before we get here.
    conn.execute(f"PRAGMA synchronous={synchronous}")
    # "Deleted rows MUST be overwritten": SQLite zeroes deleted cells and freed
    # pages only with this on, and builds differ in the default (Debian's is on).
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    db = sqlite_utils.Database(conn)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        with db.atomic():
            if version:  # an existing database, made by an older relay
                add_columns(conn)
            # Statement by statement: executescript() would COMMIT first.
            for statement in statements():
                conn.execute(statement)
            migrate(conn, version)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db


def _make_private(path: Path) -> None:
    """SPEC §11.2: the database and its -wal and -shm are 0600 whatever the umask.

    SQLite creates a new database 0644 (forcing the mode past the umask) and its
    -wal and -shm with the database's mode, so the database is created here
    first; files an older relay left wider are narrowed.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            companion = Path(f"{path}{suffix}")
            if stat.S_IMODE(companion.stat().st_mode) != FILE_MODE:
                companion.chmod(FILE_MODE)


def checkpoint(db: sqlite_utils.Database) -> bool:
    """SPEC §11.2: fold the WAL into the database file and truncate it to zero bytes.

    What acknowledged and purged envelopes left in the WAL is gone after this;
    in the database file ``secure_delete`` zeroed them. Must run outside a
    transaction. False when a reader of an older snapshot kept it from
    completing (within :data:`CHECKPOINT_BUSY_TIMEOUT_MS`): the next one retries.
    """
    conn = db.conn
    conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_TIMEOUT_MS}")
    try:
        busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    log_event(20 if not busy else 30, "wal_checkpoint", complete=not busy, frames=frames)
    return not busy


def connect_reader(path: Path) -> sqlite_utils.Database:
    """A read-only connection for the event-loop thread (WAL readers never block)."""
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    return sqlite_utils.Database(conn)


def count_queued(path: Path) -> int:
    """Envelopes in the queue (``RelayMetrics.queued``), on a read-only connection of
    its own: callable from any thread."""
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM queue").fetchone()[0])
    finally:
        conn.close()
