"""One batch of operations, one transaction: how the PostgreSQL back end group-commits.

Everything a worker called while its previous batch ran is one batch (``store``), and
runs here as one transaction:

1. ``BEGIN``, then one statement locks the ``queue_counts`` row of every account whose
   queue or pair states the batch will change (:func:`lock_set`), in sorted order, so
   two workers never deadlock on them and never interleave on one account: SENDs to a
   recipient commit in delivery-id order (ids are drawn under the lock, so a pager's
   cursor never passes an uncommitted lower id), a pair's state is read and written by
   one transaction at a time, and the budgets keyed by an account are spent once.
   ACKs lock nothing: they delete rows their connection was pushed and count them in
   ``queue_acks`` (``schema``), so the recipient's worker acknowledging and the workers
   sending to it do not wait for each other's commits. A SEND that does not see an
   ACK committed meanwhile decides as if the ACK came after it, on a fuller queue.
2. The calls, in submission order. Between two calls of other operations, a run of
   SENDs, ACKs, PAGEs and the loop's reads is executed set-based, a few statements for
   the whole run whatever its length: its ACKs first (one ``DELETE … USING unnest``),
   then its SENDs (one statement reads every pair state, recipient, remembered msg id,
   budget and badge they need; the decisions are made here in submission order with
   :mod:`..rules`, exactly as the SQLite back end makes them one by one; one statement
   writes every envelope, remembered id, pair state, count, metering count and budget),
   then its reads, then its PAGEs (one ``LATERAL`` query). Within such a run only
   different connections' frames change places, which have no order between them
   (an ACK can only free room a SEND sees; a PAGE sees every SEND called before it);
   per-connection order, and the order of everything else, is submission order.
   Every other operation runs alone (:mod:`.operations`), in a savepoint if it writes.
3. The batch's hints, one ``pg_notify`` statement (delivered by PostgreSQL only on
   ``COMMIT``), then ``COMMIT`` (``synchronous_commit=on``). The caller answers only now,
   and only now do new envelopes for recipients served by other workers go over their
   peer links (``routing_links``), those that got no hint.

Failures. A refusal is decided before anything is written (or undone with its
savepoint): it fails alone. Anything else unexpected in a set-based statement aborts
the transaction: it is rolled back and the batch runs again "carefully", every call
alone in a savepoint, so only the failing call fails. A deadlock or serialization
failure between workers runs the batch again as it was. A lost connection is raised
to the store (an outage: every call of the batch gets STORE_UNAVAILABLE).

Not here: the stream of batches and outages (``store``), the operations run alone
(``operations``), a run's SENDs (``sends``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from blindrelay.protocol.signed import ConsentStatement, unverified_body

from ... import routing
from ...logs import log_event
from ...routing import EnvelopeLinks, Hint, HintSeal
from .operations import OPERATIONS, WRITES
from .reads import accounts, accounts_evenly, check_upload, stored_key_ids
from .rows import (
    QUEUE_COLUMNS,
    connection_lost,
    envelope_row,
    job_error,
    retryable,
)
from .sends import send_group
from .tx import Call, Outcome, Tx

READS = frozenset({"account", "account_for_login", "check_prekey_upload"})
"""What ``Store.read`` may ask: operations that write nothing, in the ordered stream."""

ARGUMENTS: dict[str, tuple[str, ...]] = {
    "send": (
        "handle", "kind", "to", "msg_id", "intent", "category", "categories", "body", "now",
        "rules", "lease",
    ),
    "acknowledge": ("acks",),
    "page": ("handle", "after", "limit", "not_before", "max_bytes"),
}  # fmt: skip
"""The arguments of the set-based operations, as :data:`..operations.CONTRACT` names them
(``acknowledge`` is merged: its one argument is the list of items)."""

SET_BASED = frozenset(ARGUMENTS) | READS

MAX_RETRIES = 5
"""Runs of one batch after deadlocks or serialization failures before it runs carefully."""


@dataclass(slots=True)
class Counters:
    """What a store's batches cost, for tests and the log."""

    commits: int = 0
    calls: int = 0
    replays: int = 0
    """Batches rolled back and run again carefully (an unexpected failure)."""
    retries: int = 0
    """Batches run again after a deadlock or serialization failure."""
    last_commit_s: float = 0.0
    """How long the last batch's COMMIT round trip took."""


class _Again(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


async def run_batch(
    conn: Any,
    calls: list[Call],
    origin: str,
    counters: Counters,
    links: EnvelopeLinks | None = None,
    seal: HintSeal | None = None,
) -> list[Outcome]:
    """Every call's outcome, after one COMMIT (module docstring); raises only for a lost
    connection (or cancellation), when nothing is known to be committed. ``links``:
    ``Store.links``, how new envelopes reach their recipient's worker
    (:mod:`.sends`); ``seal``: ``Store.hint_seal``, what the batch's hints are sealed
    with (none: a random one, so no other worker can act on them)."""
    seal = seal or HintSeal.random()
    careful = False
    retries = 0
    while True:
        try:
            outcomes = await _attempt(conn, calls, origin, careful, links, counters, seal)
        except _Again as again:
            if retryable(again.cause) and retries < MAX_RETRIES:
                retries += 1
                counters.retries += 1
                continue
            if careful:
                failure = job_error(again.cause)
                return [(False, failure) for _call in calls]
            careful = True
            counters.replays += 1
            continue
        counters.commits += 1
        counters.calls += len(calls)
        return outcomes


async def _attempt(
    conn: Any,
    calls: list[Call],
    origin: str,
    careful: bool,
    links: EnvelopeLinks | None,
    counters: Counters,
    seal: HintSeal,
) -> list[Outcome]:
    tx = Tx(conn, origin, links=links)
    outcomes: list[Outcome] = [(False, None)] * len(calls)
    begun = False
    try:
        await lock_set(conn, calls)  # BEGIN, in the same round trip
        begun = True
        await _run(tx, calls, outcomes, careful)
        await notify(conn, tx.hints, seal)
        committing = time.perf_counter()
        await conn.execute("COMMIT")
        counters.last_commit_s = time.perf_counter() - committing
    except Exception as exc:
        if connection_lost(exc):
            raise
        if begun or conn.is_in_transaction():
            await conn.execute("ROLLBACK")  # a lost connection here is an outage too
        raise _Again(exc) from exc
    except BaseException:  # cancelled (the store is closing): nothing committed
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")
        raise
    if links is not None:
        # Only now: "a notification is never seen before the envelope is committed".
        for worker, envelopes in tx.linked.items():
            try:
                links.send(worker, envelopes)
            except Exception as exc:  # committed: it must not fail (or rerun) the batch
                log_event(logging.ERROR, "link_send_failed", exc_type=type(exc).__name__)
                links.fallback([envelope[0] for envelope in envelopes])
    return outcomes


# --- locks and hints -----------------------------------------------------------------


def _locked_by(call: Call) -> list[Any]:
    """The accounts whose ``queue_counts`` row ``call`` needs locked (see module docstring)."""
    op, args = call.operation, call.args
    if op == "send":
        return [args[0], args[2]]
    if op == "apply_statement":
        return [args[0], unverified_body(ConsentStatement, args[1]).target]
    if op == "take_bundle":
        return [args[2]]
    if op in ("rotate_identity", "upload_prekeys", "open_session", "publish_key", "put_profile"):
        # open_session: a SEND reads where its recipient is served under this lock, so
        # a login elsewhere either comes before (the SEND links there) or after (its
        # first page, later in its stream, reads the envelope). put_profile: after a
        # rotation's commit, which deleted the old key's profile, it reads the new key
        # (and is refused) rather than store the old key's profile after the delete.
        return [args[0]]
    return []


def literal(text: str) -> str:
    """``text`` as an SQL string literal (``standard_conforming_strings`` is on, so only
    quotes are special; text holds no NUL). For the lock statement, which goes as plain
    SQL so it shares its round trip with BEGIN."""
    return "'" + text.replace("'", "''") + "'"


async def lock_set(conn: Any, calls: list[Call]) -> None:
    """BEGIN, and lock in sorted order every account row the batch's calls will write
    for (a purge also the recipients of the envelopes it will drop) — one round trip."""
    handles: set[str] = set()
    before: int | None = None
    for call in calls:
        try:
            handles.update(h for h in _locked_by(call) if type(h) is str)
            if call.operation == "purge":
                before = max(before or 0, int(call.args[0]))
        except Exception:  # noqa: S112 - malformed: the call fails on its own when it runs
            continue
    if not handles and before is None:
        await conn.execute("BEGIN")
        return
    named = ", ".join(literal(h) for h in sorted(handles)) or "NULL"
    expired = (
        f" OR handle IN (SELECT recipient FROM queue WHERE sent_at < {before:d})"  # noqa: S608
        if before is not None
        else ""
    )
    await conn.execute(
        f"BEGIN; SELECT 1 FROM queue_counts WHERE handle IN ({named}){expired}"  # noqa: S608
        " ORDER BY handle FOR UPDATE"
    )


_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


async def notify(conn: Any, hints: list[Hint], seal: HintSeal) -> None:
    """The batch's hints (identical ones once), in order, sealed (``routing``: any role
    that can connect may LISTEN); PostgreSQL delivers them only if the COMMIT that
    follows succeeds. One array parameter rather than literals in the text with the
    COMMIT: an ENVELOPE hint is ~1.4 KB, and the server lexing a batch's hints as SQL
    cost ~7 µs of backend CPU per message, against one more round trip per batch."""
    payloads = [seal.seal(hint) for hint in dict.fromkeys(hints)]
    if payloads:
        await conn.execute(_NOTIFY, routing.CHANNEL, payloads)


# --- running the calls ---------------------------------------------------------------

Group = Callable[[Tx, list[Call], list[int], list[Outcome]], Awaitable[None]]


async def _run(tx: Tx, calls: list[Call], outcomes: list[Outcome], careful: bool) -> None:
    index, count = 0, len(calls)
    while index < count:
        call = calls[index]
        if call.operation not in SET_BASED:
            savepoint = careful or call.operation in WRITES
            outcomes[index] = await _alone(tx, call, savepoint)
            index += 1
            continue
        end = index
        while end < count and calls[end].operation in SET_BASED:
            end += 1
        run = list(range(index, end))
        if careful:
            for position in run:
                await _grouped_alone(tx, calls, position, outcomes)
        else:
            for group, members in _groups(calls, run):
                await group(tx, calls, members, outcomes)
        index = end


def _groups(calls: list[Call], run: list[int]) -> list[tuple[Group, list[int]]]:
    """A run's ACKs, SENDs, reads, PAGEs, in that order (module docstring)."""
    by_kind: dict[str, list[int]] = {"acknowledge": [], "send": [], "read": [], "page": []}
    for position in run:
        operation = calls[position].operation
        by_kind["read" if operation in READS else operation].append(position)
    return [(GROUPS[kind], members) for kind, members in by_kind.items() if members]


async def _alone(tx: Tx, call: Call, savepoint: bool) -> Outcome:
    conn = tx.conn
    function = OPERATIONS.get(call.operation)
    if function is None:
        return (False, job_error(LookupError(f"unknown operation {call.operation!r}")))
    if savepoint:
        await conn.execute("SAVEPOINT op")
    mark = len(tx.hints)
    try:
        result = await function(tx, *call.args)
    except Exception as exc:
        if connection_lost(exc) or retryable(exc):
            raise
        if not savepoint and isinstance(exc, asyncpg.PostgresError):
            raise  # the transaction is aborted: the batch runs again, carefully
        if savepoint:
            await conn.execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
        del tx.hints[mark:]
        return (False, job_error(exc))
    if savepoint:
        await conn.execute("RELEASE SAVEPOINT op")
    return (True, result)


async def _grouped_alone(tx: Tx, calls: list[Call], position: int, outcomes: list[Outcome]) -> None:
    """A set-based operation's call on its own, in a savepoint (a careful run)."""
    conn = tx.conn
    operation = calls[position].operation
    await conn.execute("SAVEPOINT op")
    mark = len(tx.hints)
    try:
        await GROUPS["read" if operation in READS else operation](tx, calls, [position], outcomes)
    except Exception as exc:
        if connection_lost(exc) or retryable(exc):
            raise
        await conn.execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
        del tx.hints[mark:]
        outcomes[position] = (False, job_error(exc))
        return
    await conn.execute("RELEASE SAVEPOINT op")


# --- ACK -----------------------------------------------------------------------------

_ACKNOWLEDGE = (
    "WITH d AS (DELETE FROM queue q USING unnest($1::text[], $2::bigint[], $3::integer[])"
    "  AS a(h, id, pos) WHERE q.delivery_id = a.id AND q.recipient = a.h"
    "  RETURNING a.pos, q.recipient, q.intent),"
    " c AS (UPDATE queue_acks k SET acked = k.acked + x.n FROM (SELECT recipient,"
    "  count(*) AS n FROM d WHERE intent <> 'statement' GROUP BY recipient) AS x"
    "  WHERE k.handle = x.recipient)"
    " SELECT pos FROM d"
)


def _ack_items(args: Sequence[Any]) -> list[tuple[str, list[int]]]:
    (items,) = args
    parsed = []
    for handle, ids in items:
        if type(handle) is not str or not isinstance(ids, list | tuple):
            raise TypeError("an ACK item is [handle, [delivery id, …]]")
        if not all(type(i) is int for i in ids):
            raise TypeError("delivery ids are ints")
        parsed.append((handle, list(ids)))
    return parsed


async def acknowledge_group(
    tx: Tx, calls: list[Call], members: list[int], outcomes: list[Outcome]
) -> None:
    """Every merged ACK of the run in one statement; per item, the rows it deleted."""
    handles: list[str] = []
    ids: list[int] = []
    places: list[tuple[int, int]] = []
    counts: dict[int, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    for position in members:
        try:
            items = _ack_items(calls[position].args)
        except Exception as exc:
            outcomes[position] = (False, job_error(exc))
            continue
        counts[position] = [0] * len(items)
        for item, (handle, delivery_ids) in enumerate(items):
            for delivery_id in delivery_ids:
                if (handle, delivery_id) in seen:
                    continue  # deleted by the first ACK of it, if at all
                seen.add((handle, delivery_id))
                handles.append(handle)
                ids.append(delivery_id)
                places.append((position, item))
    if handles:
        rows = await tx.conn.fetch(_ACKNOWLEDGE, handles, ids, list(range(len(handles))))
        for (pos,) in rows:
            position, item = places[pos]
            counts[position][item] += 1
    for position, deleted in counts.items():
        outcomes[position] = (True, deleted)


# --- PAGE ----------------------------------------------------------------------------

_PAGE = (
    "SELECT p.i, c.last_id, q.delivery_id, q.recipient, q.sender, q.sender_kind, q.msg_id,"  # noqa: S608 - constant columns
    " q.intent, q.category, q.categories, q.sent_at, q.body"
    " FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::bigint[], $5::bigint[])"
    "  WITH ORDINALITY AS p(h, after, lim, nb, mb, i)"
    " LEFT JOIN queue_counts c ON c.handle = p.h"
    " LEFT JOIN LATERAL (SELECT * FROM"
    f"  (SELECT {QUEUE_COLUMNS}, sum(octet_length(body)) OVER (ORDER BY delivery_id) AS run"
    "   FROM queue WHERE recipient = p.h AND delivery_id > p.after AND sent_at >= p.nb"
    "   ORDER BY delivery_id LIMIT p.lim) AS w"
    "  WHERE p.mb IS NULL OR w.run - octet_length(w.body) < p.mb) AS q"
    "  ON true"
    " ORDER BY p.i, q.delivery_id"
)
"""Each page's rows with its recipient's ``last_id``, read in one statement (one
snapshot), so every envelope up to it that was still queued is among the rows; an
empty page is one row without an envelope. ``mb``: no row past the one whose body
brings the page's bodies to it (what reaches the relay stays near its outgoing bound)."""


async def page_group(
    tx: Tx, calls: list[Call], members: list[int], outcomes: list[Outcome]
) -> None:
    """Every PAGE of the run in one query: up to ``limit`` unexpired rows past ``after``,
    and the highest delivery id ever queued for the recipient as of those rows."""
    pages: list[tuple[int, str, int, int, int, int | None]] = []
    for position in members:
        try:
            args = calls[position].args
            if len(args) == len(ARGUMENTS["page"]) - 1:
                args = (*args, None)  # max_bytes is optional (``operations.CONTRACT``)
            named = dict(zip(ARGUMENTS["page"], args, strict=True))
            handle, after = named["handle"], named["after"]
            limit, not_before, max_bytes = named["limit"], named["not_before"], named["max_bytes"]
            budget = None if max_bytes is None else int(max_bytes)
            pages.append((position, str(handle), int(after), int(limit), int(not_before), budget))
        except Exception as exc:
            outcomes[position] = (False, job_error(exc))
    if not pages:
        return
    columns = [list(column) for column in zip(*pages, strict=True)]
    rows = await tx.conn.fetch(_PAGE, *columns[1:])
    found: list[list[list[Any]]] = [[] for _page in pages]
    highs = [0] * len(pages)
    for row in rows:
        highs[row[0] - 1] = int(row[1] or 0)
        if row[2] is not None:
            found[row[0] - 1].append(envelope_row(row[2:]))
    for (position, _handle, after, *_rest), envelopes, high in zip(
        pages, found, highs, strict=True
    ):
        outcomes[position] = (True, [envelopes, max(after, high)])


# --- the loop's reads ----------------------------------------------------------------


async def read_group(
    tx: Tx, calls: list[Call], members: list[int], outcomes: list[Outcome]
) -> None:
    """``Store.read``: accounts (one query), even LOGIN lookups (one), prekey checks (one)."""
    conn = tx.conn
    by_name: dict[str, list[int]] = {name: [] for name in READS}
    for position in members:
        by_name[calls[position].operation].append(position)
    if plain := by_name["account"]:
        handles = [str(calls[p].args[0]) for p in plain]
        found = await accounts(conn, handles)
        for position, handle in zip(plain, handles, strict=True):
            outcomes[position] = (True, found.get(handle))
    if even := by_name["account_for_login"]:
        handles = [str(calls[p].args[0]) for p in even]
        for position, account in zip(even, await accounts_evenly(conn, handles), strict=True):
            outcomes[position] = (True, account)
    if checks := by_name["check_prekey_upload"]:
        stored = await stored_key_ids(conn, list({str(calls[p].args[0]) for p in checks}))
        for position in checks:
            handle, key_ids, max_stored = calls[position].args
            try:
                check_upload(stored[str(handle)], list(key_ids), int(max_stored))
            except Exception as exc:
                outcomes[position] = (False, job_error(exc))
            else:
                outcomes[position] = (True, None)


GROUPS: dict[str, Group] = {
    "acknowledge": acknowledge_group,
    "send": send_group,
    "read": read_group,
    "page": page_group,
}
