"""Hints between relay workers that share one store: what one worker committed that
another worker's connections must act on.

With one relay process everything below happens in that process: the handler
that committed a change acts on the local sessions directly (``delivery``,
``statements``, ``directory``, ``auth``). With N workers sharing a PostgreSQL
store, the recipient of a message, the old connection of an account that logs
in again, or the owner of a prekey pool may be connected to another worker. The
store therefore emits a :class:`Hint` **inside the transaction that commits the
change** (PostgreSQL: ``pg_notify``, delivered only on ``COMMIT``), so no worker
ever hears of a change before it is committed; every worker hears every hint
and ignores its own (``origin``), which it has already acted on locally.

Hints are hints: a lost one (a worker that was disconnected from the store)
costs latency, never a message, because the tables are the truth and a worker
that reconnects catches up from them (every outbox pages its queue again).

A hint carries metadata the relay has anyway (handles, delivery ids, counts),
never content; its text form is compact and under PostgreSQL's 8000-byte
payload limit (:data:`MAX_IDS` ids at most; more become a :attr:`HintKind.QUEUED`
"page again", which is always correct).

Not here: how hints travel (``store/postgresql``), what a worker does with one
(``relay``).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

CHANNEL = "blindrelay_hints"
"""The PostgreSQL ``LISTEN``/``NOTIFY`` channel every worker of one store uses."""

MAX_IDS = 500
"""Delivery ids one WITHDRAWN hint carries (< 8000 bytes with any handle)."""


class HintKind(enum.Enum):
    QUEUED = "q"
    """``handle``'s queue has new rows (or lost some the hint could not list): page it."""
    WITHDRAWN = "w"
    """``ids`` were deleted from ``handle``'s queue by a statement (SPEC §7.4): never push them."""
    LOGIN = "l"
    """``handle`` logged in on ``origin`` with login sequence ``value`` (SPEC §4.4): a
    connection of ``handle`` with a lower sequence is replaced (4000)."""
    PREKEYS_LOW = "p"
    """``handle`` has ``value`` one-time prekeys left, under the low-water mark (SPEC §5.4)."""


@dataclass(frozen=True, slots=True)
class Hint:
    kind: HintKind
    handle: str
    origin: str
    """The worker that committed the change (:func:`new_worker_id`)."""
    value: int = 0
    ids: tuple[int, ...] = ()

    def encode(self) -> str:
        """``kind origin value handle [ids,…]``, space-separated (handles have no spaces)."""
        text = f"{self.kind.value} {self.origin} {self.value} {self.handle}"
        if self.ids:
            text += " " + ",".join(map(str, self.ids))
        return text


def decode(payload: str) -> Hint:
    """The hint of a notification payload; ValueError if it is not one."""
    parts = payload.split(" ")
    if len(parts) not in (4, 5):
        raise ValueError("not a hint")
    kind, origin, value, handle = parts[:4]
    ids = tuple(int(i) for i in parts[4].split(",")) if len(parts) == 5 else ()
    return Hint(HintKind(kind), handle, origin, int(value), ids)


def withdrawn(handle: str, origin: str, ids: list[int]) -> Hint:
    """A WITHDRAWN hint, or QUEUED (page again) if too many ids to list."""
    if len(ids) > MAX_IDS:
        return Hint(HintKind.QUEUED, handle, origin)
    return Hint(HintKind.WITHDRAWN, handle, origin, ids=tuple(ids))


def new_worker_id() -> str:
    """A random id for one relay process's life: 16 hex digits."""
    return os.urandom(8).hex()
