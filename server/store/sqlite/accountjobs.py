"""The SQLite back end's operations on accounts: registration, sessions, identity keys
and prekeys.

Why apart from :mod:`.jobs`: these change who an account is and where it is connected,
not what it is sent; each is one job so that no two registrations, rotations or
uploads can both pass a check. They are run exactly as the others: :data:`OPERATIONS`
joins :data:`.jobs.OPERATIONS`, the only code the writer process will run for a job.
Handing out a bundle decides consent, so ``take_bundle`` stays with the messaging jobs.

Not here: the checks made on the loop before these run (``auth``, ``registration``,
``directory``), the key binding entries they log (``..transparency``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blindrelay.protocol.errors import (
    AuthenticationFailed,
    HandleTaken,
    InvalidPrekeys,
    RegistrationRefused,
    StaleStatement,
)
from blindrelay.protocol.frames import AccountKind, OneTimePreKeyRecord, SignedPreKeyRecord

from .. import transparency
from ..records import Account
from .tables import Tables


def create_account(
    tables: Tables,
    handle: str,
    kind: str,
    identity_key: bytes,
    now: int,
    invite: bytes | None = None,
) -> None:
    """SPEC §3.2, §4.2, §4.6.4: one job, so no two registrations can both pass a check.

    ``invite`` is the hash of the REGISTER's invite when the relay requires one.
    It is consumed first; a later refusal rolls the job back, invite included.
    """
    # "An invite MUST be consumed in the same transaction that creates the account."
    if invite is not None and not tables.invites.consume(invite):
        raise RegistrationRefused("invite unknown or used")
    # "The relay MUST refuse [...] a handle with a leading skeleton equal to the
    # skeleton of an existing business, with ERROR 201 HANDLE_TAKEN."
    if tables.lookalikes.collides(handle):
        raise HandleTaken()
    # "Handles are unique: a REGISTER for an existing handle MUST be refused."
    if not tables.accounts.create(Account(handle, kind, identity_key), now):
        raise HandleTaken()
    if kind == AccountKind.BUSINESS:
        tables.lookalikes.add(handle)
    _log_binding(tables, handle, transparency.key_binding(handle, kind, identity_key, now))


def _log_binding(tables: Tables, handle: str, entry: bytes | None) -> None:
    """A key binding, and ``handle``'s newest binding is now it (SPEC §15.6 rule 3)."""
    if entry is not None:
        tables.log.bind(handle, tables.log.append([entry]))


def login_counts(
    tables: Tables, handle: str, not_before: int, identity_key: bytes | None = None
) -> list[Any]:
    """[queued, one-time prekeys, has signed prekey, login sequence] — through the
    writer, so the counts include every earlier frame's writes. AUTH_FAILED if the
    account's key is no longer ``identity_key``, the one the LOGIN proved (SPEC §4.3)."""
    login_seq = tables.accounts.count_login(handle, identity_key)
    if identity_key is not None and not login_seq:
        raise AuthenticationFailed("the key was rotated since the login was verified")
    one_time, has_signed = tables.prekeys.counts(handle)
    return [tables.queue.count(handle, not_before), one_time, has_signed, login_seq]


def open_session(tables: Tables, handle: str, worker: str, session: int, now: int) -> list[Any]:
    """[previous worker | None, still live, ended at | None]; records this connection."""
    conn = tables.db.conn
    row = conn.execute(
        "SELECT worker, live, ended_at FROM account_sessions WHERE handle = ?", (handle,)
    ).fetchone()
    conn.execute(
        "INSERT OR REPLACE INTO account_sessions (handle, worker, session, live, ended_at)"
        " VALUES (?, ?, ?, 1, ?)",
        (handle, worker, session, row[2] if row is not None else None),
    )
    if row is None:
        return [None, False, None]
    return [row[0], bool(row[1]), row[2]]


def login_seqs(tables: Tables, handles: list[str]) -> list[int]:
    query = "SELECT login_seq FROM accounts WHERE handle = ?"
    seqs = [tables.db.conn.execute(query, (handle,)).fetchone() for handle in handles]
    return [int(row[0]) if row is not None else 0 for row in seqs]


def close_session(tables: Tables, handle: str, worker: str, session: int, now: int) -> None:
    tables.db.conn.execute(
        "UPDATE account_sessions SET live = 0, ended_at = ?"
        " WHERE handle = ? AND worker = ? AND session = ? AND live = 1",
        (now, handle, worker, session),
    )


def rotate_identity(
    tables: Tables, handle: str, old_key: bytes, new_key: bytes, now: int,
    login_seq: int | None = None,
) -> None:  # fmt: skip
    # Compare-and-swap: a concurrent rotation, or a newer login (whose connection now
    # is the account's, SPEC §3.4), makes this proof stale.
    if not tables.accounts.replace_identity_key(handle, old_key, new_key, login_seq):
        raise StaleStatement()
    # The prekeys and a business's profile were signed by the old key; a bundle must
    # never mix keys, and no client verifies the profile with the old key any more.
    tables.prekeys.delete_all(handle)
    tables.profiles.delete(handle)
    account = tables.accounts.get(handle)
    assert account is not None
    published = tables.log.bound(handle) is not None
    entry = transparency.key_binding(
        handle, account.kind, new_key, now, old_key, published=published
    )
    _log_binding(tables, handle, entry)


def publish_key(tables: Tables, handle: str, now: int) -> bool:
    """SPEC §15.6 rule 4: log a user's current key binding once; False when it was
    published already (a business from registration on)."""
    account = tables.accounts.get(handle)
    if account is None or tables.log.bound(handle) is not None:
        return False
    key = account.identity_key
    entry = transparency.key_binding(handle, account.kind, key, now, published=True)
    _log_binding(tables, handle, entry)
    return True


def upload_prekeys(
    tables: Tables,
    handle: str,
    identity_key: bytes,
    signed: list[Any] | None,
    one_time: list[list[Any]],
    cap: int,
    now: int,
) -> None:
    """``signed`` = [key_id, public, signature] (verified on the loop),
    ``one_time`` = [[key_id, public]…]."""
    current = tables.accounts.get(handle)
    if current is None or current.identity_key != identity_key:
        raise InvalidPrekeys("identity key rotated during upload")
    signed_record = SignedPreKeyRecord(*signed) if signed is not None else None
    records = [OneTimePreKeyRecord(key_id, public) for key_id, public in one_time]
    tables.prekeys.upload(handle, signed_record, records, cap, now)


OPERATIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        create_account, login_counts, login_seqs, open_session, close_session,
        rotate_identity, publish_key, upload_prekeys,
    )
}  # fmt: skip
"""Operation name → function, merged into :data:`.jobs.OPERATIONS`."""
