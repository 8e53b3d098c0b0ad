"""What a PostgreSQL batch is made of: its calls, their outcomes, its transaction.

Why a module: the batch (``batch``), the operations run alone (``operations``,
``statements``), the SEND run (``sends``) and the shared reads (``reads``) all take
these, and the batch runs all of them; here they depend on none of those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...routing import EnvelopeLinks, Hint, HintKind
from .. import Done

Outcome = tuple[bool, Any]


@dataclass(slots=True)
class Call:
    """One call in the stream: an operation (or a read) with its args, answered by ``done``."""

    operation: str
    args: Sequence[Any]
    done: Done


@dataclass(slots=True)
class Tx:
    """One batch's transaction: its connection, and the hints its operations emit."""

    conn: Any
    origin: str
    hints: list[Hint] = field(default_factory=list)
    links: EnvelopeLinks | None = None
    """``Store.links``: peer links to the other workers, for new envelopes."""
    linked: dict[str, list[list[Any]]] = field(default_factory=dict)
    """Worker → the envelopes its link carries once this transaction has committed."""

    def hint(self, kind: HintKind, handle: str, value: int = 0) -> None:
        self.hints.append(Hint(kind, handle, self.origin, value))
