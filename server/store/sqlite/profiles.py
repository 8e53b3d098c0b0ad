"""Business profiles and operator badges as the relay stores them (SPEC §8.1–8.2).

Both are signed objects kept byte for byte: the relay can serve them but not
alter them. Profiles are written by the business over the protocol (after
``open_profile`` verified them); badges only by the operator through
``blindrelay admin`` — nothing in the protocol stores a badge, so a business
cannot verify itself. A revoked badge keeps its row (``revoked_at``) so the
operator can see what was withdrawn; the relay never serves it again.

Not here: verification (``blindrelay.protocol.business``), the CLI (``admin``).
"""

from __future__ import annotations

import sqlite_utils


class ProfileStore:
    """The ``profiles`` table: the latest signed profile per business."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def put(self, handle: str, signed: bytes, now: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO profiles (handle, signed, updated_at) VALUES (?, ?, ?)",
            (handle, signed, now),
        )

    def get(self, handle: str) -> bytes | None:
        row = self.db.execute("SELECT signed FROM profiles WHERE handle = ?", (handle,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, handle: str) -> None:
        """At a rotation: the profile was signed by the old key (SPEC §3.4)."""
        self.db.execute("DELETE FROM profiles WHERE handle = ?", (handle,))


class BadgeStore:
    """The ``badges`` table: every badge the operator issued, and its revocation."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def serial_taken(self, serial: int) -> bool:
        row = self.db.execute("SELECT 1 FROM badges WHERE serial = ?", (serial,)).fetchone()
        return row is not None

    def add(
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
        self.db.execute(
            "INSERT INTO badges (serial, handle, key_fingerprint, display_name, issued_at,"
            " expires_at, revoked_at, signed) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
            (serial, handle, key_fingerprint, display_name, issued_at, expires_at, signed),
        )

    def in_force(self, handle: str) -> list[int]:
        """The serials of ``handle``'s unrevoked badges, in order."""
        rows = self.db.execute(
            "SELECT serial FROM badges WHERE handle = ? AND revoked_at IS NULL ORDER BY serial",
            (handle,),
        )
        return [int(serial) for (serial,) in rows.fetchall()]

    def revoke(self, handle: str, now: int) -> int:
        """Withdraw every unrevoked badge of ``handle``; how many were withdrawn."""
        return self.db.execute(
            "UPDATE badges SET revoked_at = ? WHERE handle = ? AND revoked_at IS NULL",
            (now, handle),
        ).rowcount

    def current(self, handle: str, key_fingerprint: bytes, now: int) -> bytes | None:
        """The badge to serve: the newest one not revoked, unexpired, for the current key.

        "When the operator revokes a badge the relay stops serving it at once":
        this is read on every PROFILE_FETCH, never cached.
        """
        row = self.db.execute(
            "SELECT signed FROM badges WHERE handle = ? AND key_fingerprint = ?"
            " AND revoked_at IS NULL AND ? < expires_at"
            " ORDER BY issued_at DESC, serial DESC LIMIT 1",
            (handle, key_fingerprint, now),
        ).fetchone()
        return None if row is None else bytes(row[0])
