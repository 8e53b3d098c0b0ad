"""The SQLite back end's operations on the transparency log and the monthly bills.

Why apart from :mod:`.jobs`: these serve the log's readers and the billing run (SPEC
§8.5, §15), not the messaging path, and read the same way in an afternoon without it.
They are run exactly as the others: :data:`OPERATIONS` joins :data:`.jobs.OPERATIONS`,
the only code the writer process will run for a job.

Not here: how the log is stored (``.transparency``), what its entries and proofs are
(``..transparency``, ``blindrelay.protocol.transparency``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blindrelay.protocol.errors import NotFound
from blindrelay.protocol.transparency.entries import decode_entry

from .. import transparency
from ..records import LogHead, head_row
from .tables import Tables


def log_append(tables: Tables, entries: list[bytes]) -> int:
    for entry in entries:  # SPEC §15.1: only the encodings a log may hold
        decode_entry(entry)
    return tables.log.append(entries)


def log_state(tables: Tables) -> list[Any]:
    size = tables.log.size()
    head = tables.log.head()
    return [size, tables.log.root(size), head_row(head)]


def log_add_head(tables: Tables, size: int, root: bytes, timestamp: int, signed: bytes) -> bool:
    head = LogHead(size, root, timestamp, signed)
    log = tables.log
    log_size = log.size()
    root_there = log.root(size) if 0 <= size <= log_size else None
    if not transparency.accept_head(log.head(), head, log_size, root_there):
        return False
    log.add_head(head)
    return True


def log_head(tables: Tables) -> list[Any] | None:
    return head_row(tables.log.head())


def log_inclusion(tables: Tables, index: int, size: int) -> list[bytes]:
    if not 0 <= index < size <= tables.log.size():
        raise NotFound()
    return tables.log.inclusion_proof(index, size)


def log_consistency(tables: Tables, first: int, second: int) -> list[bytes]:
    if not 0 < first <= second <= tables.log.size():
        raise NotFound()
    return tables.log.consistency_proof(first, second)


def log_entries(tables: Tables, start: int, limit: int) -> list[bytes]:
    return tables.log.entries(start, limit)


def log_signed_consistency(tables: Tables, first: int, second: int) -> list[bytes]:
    transparency.check_signed_size(tables.log.head(), first, second)
    if first > second:
        raise NotFound()
    return tables.log.consistency_proof(first, second)


def log_find(tables: Tables, entry: bytes, size: int) -> list[Any]:
    log = tables.log
    transparency.check_signed_size(log.head(), size)
    index = log.find(entry, size)
    if index is None:
        raise NotFound()
    return [index, log.inclusion_proof(index, size)]


def log_binding_proof(tables: Tables, handle: str) -> list[Any] | None:
    """SPEC §15.6 rule 3: the handle's newest binding, if the newest head covers it.
    Every bundle asks: an unpublished handle costs one primary-key lookup."""
    log = tables.log
    seq = log.bound(handle)
    head = log.head() if seq is not None else None
    if seq is None or head is None or seq >= head.size:
        return None
    return [log.entry(seq), seq, log.inclusion_proof(seq, head.size), head.signed]


def close_bills(tables: Tables, before: str, now: int) -> list[Any]:
    """SPEC §8.5: go on closing the open bills of months before ``before``, at most
    ``BILL_CHUNK_ITEMS`` notifications in this job: [[[business, month, items, log
    index], …], more]. Rows of a month whose bill is closed already (late, which one
    writer never makes) are dropped and reported with index nil."""
    bills = tables.bills
    budget = transparency.BILL_CHUNK_ITEMS
    done: list[list[Any]] = []
    while budget > 0:
        current = bills.in_progress()
        if current is None:
            following = bills.open_months(before, 1)
            if not following:
                return [done, False]
            business, month = following[0]
            if bills.closed(business, month) is not None:
                done.append([business, month, bills.forget_open(business, month), None])
                continue
            progress = transparency.new_bill()
            bills.start(business, month, progress)
        else:
            business, month, progress = current
        rows = bills.notifications(business, month, budget + 1)  # one more: any left?
        taken = rows[:budget]
        progress, items = transparency.bill_chunk(progress, taken)
        bills.take(business, month, taken, items, progress)
        budget -= len(taken)
        if len(rows) > len(taken):
            return [done, True]
        seq = tables.log.append([transparency.bill_entry(business, month, progress, now)])
        bills.finish(business, month, seq)
        done.append([business, month, progress.count, seq])
    return [done, True]


def bill_page(tables: Tables, handle: str, month: str, start: int, limit: int) -> list[Any]:
    """SPEC §8.5: [entry, index, proof, signed head, salt, items from ``start``]."""
    found = tables.bills.closed(handle, month)
    log = tables.log
    head = transparency.check_bill_covered(log.head(), None if found is None else found[2])
    assert found is not None
    salt, _count, seq = found
    return [
        log.entry(seq), seq, log.inclusion_proof(seq, head.size), head.signed, salt,
        tables.bills.items(handle, month, start, limit),
    ]  # fmt: skip


OPERATIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        log_append, log_state, log_add_head, log_head, log_inclusion, log_consistency,
        log_entries, log_signed_consistency, log_find, log_binding_proof, close_bills,
        bill_page,
    )
}  # fmt: skip
"""Operation name → function, merged into :data:`.jobs.OPERATIONS`."""
