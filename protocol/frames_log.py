"""Frames of the transparency log (SPEC §15.6): the log proof a BUNDLE carries, the
fetches of the log's head, proofs and entries with their answers, and DISCOVERABLE.

Why together: this is the log as the wire shows it, what ``server/transparency``
serves; the fetches need no account (an auditor never logs in, :mod:`.connection`).
The entries and tree heads these frames carry as bytes are decoded by
:mod:`.transparency`. Shared parts are in :mod:`.frames_base`; import frames from
:mod:`.frames`, which gathers every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import limits
from .frames_base import (
    MAX_DELIVERY_ID,
    FrameType,
    Request,
    Response,
    check_max,
    check_proof,
    check_size,
    check_uint,
)


@dataclass(frozen=True, slots=True)
class LogProof:
    """A published key binding with what proves it logged (SPEC §5.3, §15.6): the entry's
    exact bytes, its leaf index, its inclusion proof and the signed tree head it is
    proven against."""

    entry: bytes
    index: int
    proof: tuple[bytes, ...]
    sth: bytes

    def __post_init__(self) -> None:
        check_size(self.entry, "entry", limits.MAX_LOG_ENTRY_BYTES)
        check_uint(self.index, "index", MAX_DELIVERY_ID)
        check_proof(self.proof)
        check_size(self.sth, "sth", limits.MAX_TREE_HEAD_BYTES)


# §15 Transparency log


@dataclass(frozen=True, slots=True)
class LogHeadFetch(Request):
    """Ask for the log's newest signed tree head (SPEC §15.6); needs no account."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_HEAD_FETCH


@dataclass(frozen=True, slots=True)
class LogHead(Response):
    """The newest signed tree head; absent while the relay has signed none."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_HEAD
    sth: bytes | None = None

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        if self.sth is not None:
            check_size(self.sth, "sth", limits.MAX_TREE_HEAD_BYTES)


@dataclass(frozen=True, slots=True)
class LogConsistencyFetch(Request):
    """Ask for PROOF(first, D[second]) (SPEC §15.2): that tree ``second`` extends ``first``."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_CONSISTENCY_FETCH
    first: int
    second: int

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_uint(self.first, "first", MAX_DELIVERY_ID, minimum=1)
        check_uint(self.second, "second", MAX_DELIVERY_ID, minimum=1)


@dataclass(frozen=True, slots=True)
class LogConsistency(Response):
    """A consistency proof, as RFC 9162 §2.1.4.1 builds it."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_CONSISTENCY
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_proof(self.proof)


@dataclass(frozen=True, slots=True)
class LogInclusionFetch(Request):
    """Ask where ``entry`` (its exact bytes) is, and PATH(index, D[size]) for it. The
    entry, not its hash: the relay finds it by the time every entry carries, an index
    that grows in order, where a hash index costs a random insert per append."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_INCLUSION_FETCH
    entry: bytes
    size: int

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_size(self.entry, "entry", limits.MAX_LOG_ENTRY_BYTES)
        check_uint(self.size, "size", MAX_DELIVERY_ID, minimum=1)


@dataclass(frozen=True, slots=True)
class LogInclusion(Response):
    """The first leaf holding that hash, and its inclusion proof in the tree of ``size``."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_INCLUSION
    index: int
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_uint(self.index, "index", MAX_DELIVERY_ID)
        check_proof(self.proof)


@dataclass(frozen=True, slots=True)
class LogEntriesFetch(Request):
    """Ask for up to ``count`` entries from index ``start`` on (auditors, SPEC §15.6)."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_ENTRIES_FETCH
    start: int
    count: int

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_uint(self.start, "start", MAX_DELIVERY_ID)
        check_uint(self.count, "count", limits.MAX_LOG_ENTRIES, minimum=1)


@dataclass(frozen=True, slots=True)
class LogEntries(Response):
    """Entries ``start`` … ``start + len(entries) − 1``, their exact bytes; fewer than asked
    at the log's end or when ``MAX_LOG_ENTRIES_BYTES`` is reached."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_ENTRIES
    start: int
    entries: tuple[bytes, ...]

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_uint(self.start, "start", MAX_DELIVERY_ID)
        check_max(self.entries, "entries", limits.MAX_LOG_ENTRIES)
        for item in self.entries:
            check_size(item, "entries", limits.MAX_LOG_ENTRY_BYTES)


@dataclass(frozen=True, slots=True)
class Discoverable(Request):
    """A user publishes its key binding in the log, from now on (SPEC §15.6); answered OK."""

    TYPE: ClassVar[FrameType] = FrameType.DISCOVERABLE
