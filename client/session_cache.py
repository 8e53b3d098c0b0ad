"""Decoded sessions kept in memory: a cache of what the keystore holds, never more.

Decoding a stored session costs more than a message's cryptography for a business
serving many customers, so ``sessions`` keeps the last :data:`SESSION_CACHE_SIZE`
decoded. The keystore stays the truth: every load reads the stored blob and uses the
cached object only when that blob is the one it was made from (sessions are immutable).
A handle's entry is its stored session or gone — whoever rewrites a stored session
replaces or forgets its entry — so the skipped message keys held in memory stay within
the bounds of those stored (SPEC §13.4, ``skipped_keys``).

Not here: loading and storing sessions (``sessions``), what a session is
(``blindrelay.protocol.crypto.session``).
"""

from __future__ import annotations

from blindrelay.protocol.crypto.session import Session

SESSION_CACHE_SIZE = 16_384
"""Decoded sessions kept in memory (a business serves many customers from one device)."""


class SessionCache:
    """handle → (stored blob, the Session it decodes to), the oldest entry out first."""

    def __init__(self, size: int = SESSION_CACHE_SIZE) -> None:
        self._size = size
        self._entries: dict[str, tuple[bytes, Session]] = {}

    def get(self, handle: str, blob: bytes) -> Session | None:
        """The Session ``blob`` decodes to, if it is the blob cached for ``handle``."""
        cached = self._entries.get(handle)
        return cached[1] if cached is not None and cached[0] == blob else None

    def put(self, handle: str, blob: bytes, session: Session) -> None:
        """``session`` (decoded from, or encoded as, ``blob``) is stored for ``handle``."""
        entries = self._entries
        if handle not in entries and len(entries) >= self._size:
            del entries[next(iter(entries))]  # oldest entry first
        entries[handle] = (blob, session)

    def forget(self, handle: str) -> None:
        """``handle``'s stored session is about to change, or changed without a decoding."""
        self._entries.pop(handle, None)


__all__ = ["SESSION_CACHE_SIZE", "SessionCache"]
