"""One open store per key store file: an exclusive advisory lock held while it is open.

What it is not: SQLite's own locking, which guards single transactions, not the
rows a store keeps decrypted in memory between them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .records import KeyStoreInUse

if sys.platform == "win32":  # pragma: no cover - no advisory file locks: no row cache

    def own_file(path: Path) -> int | None:
        return None

else:
    import fcntl

    def own_file(path: Path) -> int | None:
        """Hold an exclusive advisory lock on the store file while it is open.

        The store keeps decrypted rows in memory (RECORD_CACHE_SIZE), which is
        sound only if nothing else writes the file meanwhile: a second writer
        could advance a session behind our cached copy, and we would then
        reuse its message keys. A second open — another process, or another
        object here — fails with KeyStoreInUse instead. Taken before SQLite
        opens the file and released after it closed it: closing any other
        descriptor of the file would drop SQLite's own POSIX locks.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise KeyStoreInUse(f"{path} is open in another process") from None
        return fd


def disown_file(owner: int | None) -> None:
    if owner is not None:
        os.close(owner)  # releases the lock
