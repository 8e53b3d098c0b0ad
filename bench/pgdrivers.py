"""Which PostgreSQL client library the relay should use, decided by measurement (issue 14).

The relay's durable pattern, without the relay: no WebSockets, no frames, only the
store traffic that one SEND → DELIVER → ACK costs, driven by the workload of
``bench/run.py`` workload 1 (50 pairs, window 10, 1 KiB bodies), with
``synchronous_commit=on``. Each worker process runs, over its own connections:

- **group commit of SENDs**: everything submitted while the previous transaction ran is
  one transaction: read the batch's pair states and recipient queue counts with row
  locks (``FOR UPDATE``, in sorted order so that workers cannot deadlock), look up the
  remembered ``(sender, msg_id)`` for idempotence, decide in Python (consent, block,
  queue cap, duplicate), insert ``sent`` and ``queue`` rows set-based with ``unnest``,
  update the counts, ``pg_notify`` one channel per recipient, ``COMMIT``. A sender's
  window slot is freed only when the COMMIT has returned;
- **delivery**: a LISTEN connection turns notifications into "page this recipient";
  one query pages every recipient that needs it (``LATERAL … LIMIT``);
- **acknowledgement**: every delivered envelope is acknowledged at once, acks group
  committed too (counts locked in sorted order, ``DELETE … RETURNING`` set-based, counts
  decremented).

With two workers, pair *i*'s sender lives on worker *i mod 2* and its recipient on the
other one, so every message crosses workers through NOTIFY.

Each library runs the same SQL in two shapes: ``statements`` (one statement per step,
as code would naturally write it) and ``fused`` (the read phase and the write phase each
one statement, data-modifying CTEs — the fewest round trips asyncpg can have). asyncpg
sends one statement per round trip; psycopg 3 runs in pipeline mode, so a phase costs one
round trip whatever its shape.

Figures per configuration are the median of ``--runs`` interleaved runs (the order
rotates each round; the machine is shared and noisy): msgs/s, CPU µs per message of the
client processes, and of the PostgreSQL backends serving their connections (read from
``/proc/<pid>/stat``; the WAL writer, checkpointer and other sessions are not counted).
Each run uses a fresh schema, created before and dropped after.

    .venv/bin/python bench/pgdrivers.py --url postgresql://127.0.0.1:5432/test \
        [--runs 3] [--messages 1000] [--workers 1 2] [--max-batch 0 50]
        [--only asyncpg/fused ...]

psycopg is not a project dependency: ``.venv/bin/pip install psycopg[binary]`` to
compare (the benchmark names a missing library and exits 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import statistics
import struct
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import process_cpu_s

PAIRS = 50
WINDOW = 10
"""SENDs a sender has awaiting their commit, as in workload 1."""
BODY_BYTES = 1024
PAGE_ROWS = 50
"""Envelopes one page query returns per recipient: several windows' worth, so a
recipient that fell behind catches up in few queries."""
QUEUE_CAP = 10_000
"""Per-recipient cap checked in every batch (never reached here; the check is the cost)."""
MAX_BATCHES = (0, 50)
"""Transaction sizes measured: everything pending (here the whole window of every
sender, ~500 SENDs, as only a bare harness gets), and at most 50 — closer to what a
relay's loop turn gathers while its CPU also runs WebSockets, where per-transaction
costs (round trips) weigh ten times more per message."""
RUN_TIMEOUT_S = float(os.environ.get("PGDRIVERS_TIMEOUT", 300))
"""A run that takes longer than this has hung (a lost notification, a lock wait)."""
CONNECT_TIMEOUT_S = 10.0

DRIVERS = ("asyncpg", "psycopg")
SHAPES = ("statements", "fused")
VARIANTS = tuple(f"{driver}/{shape}" for driver in DRIVERS for shape in SHAPES)
RETRYABLE_SQLSTATES = {"40P01", "40001"}
"""Deadlock and serialization failure: the batch is retried (and counted)."""


class BenchError(Exception):
    """A one-line, actionable reason the benchmark cannot run."""


# --- schema and SQL (asyncpg's $n placeholders; converted for psycopg) ------------

SCHEMA = """
CREATE TABLE pairs (
    low text NOT NULL, high text NOT NULL,
    consent text NOT NULL, blockers text NOT NULL,
    PRIMARY KEY (low, high)
);
CREATE TABLE queue_counts (recipient text PRIMARY KEY, queued integer NOT NULL);
CREATE TABLE sent (
    sender text NOT NULL, msg_id bytea NOT NULL, digest bytea NOT NULL, at bigint NOT NULL,
    PRIMARY KEY (sender, msg_id)
);
CREATE TABLE queue (
    delivery_id bigserial PRIMARY KEY,
    recipient text NOT NULL, sender text NOT NULL, msg_id bytea NOT NULL,
    sent_at bigint NOT NULL, body bytea NOT NULL
);
CREATE INDEX queue_by_recipient ON queue (recipient, delivery_id);
"""

READ_PAIRS = """
SELECT p.low, p.high, p.consent, p.blockers
FROM pairs p JOIN unnest($1::text[], $2::text[]) AS u(low, high) USING (low, high)
ORDER BY p.low, p.high FOR UPDATE OF p"""
READ_COUNTS = """
SELECT recipient, queued FROM queue_counts WHERE recipient = ANY($1::text[])
ORDER BY recipient FOR UPDATE"""
READ_SENT = """
SELECT s.sender, s.msg_id
FROM sent s JOIN unnest($1::text[], $2::bytea[]) AS u(sender, msg_id) USING (sender, msg_id)"""
READ_FUSED = f"""
WITH p AS ({READ_PAIRS}), c AS ({READ_COUNTS.replace("$1", "$3")}),
     s AS ({READ_SENT.replace("$1", "$4").replace("$2", "$5")})
SELECT (SELECT array_agg(p.low) FROM p), (SELECT array_agg(p.high) FROM p),
       (SELECT array_agg(p.consent) FROM p), (SELECT array_agg(p.blockers) FROM p),
       (SELECT array_agg(c.recipient) FROM c), (SELECT array_agg(c.queued) FROM c),
       (SELECT array_agg(s.sender) FROM s), (SELECT array_agg(s.msg_id) FROM s)"""

INSERT_SENT = """
INSERT INTO sent (sender, msg_id, digest, at)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[])"""
INSERT_QUEUE = """
INSERT INTO queue (recipient, sender, msg_id, sent_at, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::bytea[])"""
ADD_COUNTS = """
UPDATE queue_counts q SET queued = q.queued + u.n
FROM unnest($1::text[], $2::int[]) AS u(recipient, n) WHERE q.recipient = u.recipient"""
NOTIFY = "SELECT pg_notify('q_' || r, '') FROM unnest($1::text[]) AS r"
WRITE_FUSED = """
WITH s AS (INSERT INTO sent (sender, msg_id, digest, at)
           SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[])),
     q AS (INSERT INTO queue (recipient, sender, msg_id, sent_at, body)
           SELECT * FROM unnest($5::text[], $1::text[], $2::bytea[], $4::bigint[], $6::bytea[])),
     c AS (UPDATE queue_counts q SET queued = q.queued + u.n
           FROM unnest($7::text[], $8::int[]) AS u(recipient, n) WHERE q.recipient = u.recipient)
SELECT pg_notify('q_' || r, '') FROM unnest($7::text[]) AS r"""

LOCK_COUNTS = """
SELECT recipient FROM queue_counts WHERE recipient = ANY($1::text[])
ORDER BY recipient FOR UPDATE"""
DELETE_ACKED = """
DELETE FROM queue q USING unnest($1::text[], $2::bigint[]) AS u(recipient, delivery_id)
WHERE q.delivery_id = u.delivery_id AND q.recipient = u.recipient
RETURNING q.recipient"""
SUB_COUNTS = """
UPDATE queue_counts q SET queued = q.queued - u.n
FROM unnest($1::text[], $2::int[]) AS u(recipient, n) WHERE q.recipient = u.recipient"""
ACK_FUSED = f"""
WITH gone AS ({DELETE_ACKED}),
     c AS (UPDATE queue_counts q SET queued = q.queued - g.n
           FROM (SELECT recipient, count(*)::int AS n FROM gone GROUP BY recipient) AS g
           WHERE q.recipient = g.recipient)
SELECT recipient FROM gone"""

PAGE = """
SELECT u.recipient, q.delivery_id, q.sender, q.msg_id, q.sent_at, q.body
FROM unnest($1::text[], $2::bigint[]) AS u(recipient, after)
CROSS JOIN LATERAL (
    SELECT delivery_id, sender, msg_id, sent_at, body FROM queue
    WHERE recipient = u.recipient AND delivery_id > u.after
    ORDER BY delivery_id LIMIT $3) AS q"""

_DOLLAR = re.compile(r"\$(\d+)")


def psycopg_sql(sql: str) -> str:
    """``$n`` → ``%(pn)b``: the same statement text, binary parameters, for psycopg."""
    return _DOLLAR.sub(r"%(p\1)b", sql)


def sender_name(pair: int) -> str:
    return f"s{pair:02d}"


def recipient_name(pair: int) -> str:
    return f"r{pair:02d}"


# --- one round trip or many: the two drivers behind one small interface ------------


class Conn:
    """A connection of either driver: issue statements, then collect their rows.

    ``issue`` starts a statement; ``rows`` waits for its result. asyncpg runs the
    statement in ``issue`` (one round trip each); psycopg in pipeline mode only queues
    it, and the first ``rows`` (or the COMMIT) sends everything queued at once.
    """

    backend_pid: int

    async def issue(self, sql: str, *args: Any) -> Any:
        raise NotImplementedError

    async def rows(self, handle: Any) -> list[Sequence[Any]]:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def listen(self, channels: list[str], notified: Callable[[str], None]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class AsyncpgConn(Conn):
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.backend_pid = conn.get_server_pid()

    @classmethod
    async def connect(cls, url: str, schema: str | None) -> AsyncpgConn:
        import asyncpg

        settings = {"synchronous_commit": "on"}
        if schema:
            settings["search_path"] = schema
        return cls(await asyncpg.connect(url, server_settings=settings, timeout=CONNECT_TIMEOUT_S))

    async def issue(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetch(sql, *args)

    async def rows(self, handle: Any) -> list[Sequence[Any]]:
        return list(handle)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.conn.transaction()  # type: ignore[no-any-return]

    async def listen(self, channels: list[str], notified: Callable[[str], None]) -> None:
        for channel in channels:
            await self.conn.add_listener(channel, lambda _c, _pid, ch, _payload: notified(ch))

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def close(self) -> None:
        await self.conn.close()


class PsycopgConn(Conn):
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.backend_pid = conn.info.backend_pid
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, schema: str | None) -> PsycopgConn:
        import psycopg

        options = "-c synchronous_commit=on" + (f" -c search_path={schema}" if schema else "")
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, options=options, connect_timeout=int(CONNECT_TIMEOUT_S)
        )
        return cls(conn)

    async def issue(self, sql: str, *args: Any) -> Any:
        params = {f"p{i}": arg for i, arg in enumerate(args, 1)}
        cursor = self.conn.cursor(binary=True)
        await cursor.execute(psycopg_sql(sql), params)
        return cursor

    async def rows(self, handle: Any) -> list[Sequence[Any]]:
        return await handle.fetchall()  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def transaction(self) -> Any:
        async with self.conn.pipeline(), self.conn.transaction():
            yield

    async def listen(self, channels: list[str], notified: Callable[[str], None]) -> None:
        for channel in channels:
            await self.conn.execute(f"LISTEN {channel}")

        async def pump() -> None:
            async for notice in self.conn.notifies():
                notified(notice.channel)

        self._listener = asyncio.create_task(pump())

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.conn.close()


CONNECTORS: dict[str, Callable[[str, str | None], Awaitable[Any]]] = {
    "asyncpg": AsyncpgConn.connect,
    "psycopg": PsycopgConn.connect,
}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of either driver's server error (asyncpg ``sqlstate``, psycopg ``sqlstate``)."""
    return getattr(exc, "sqlstate", None)


# --- the relay's three transactions ------------------------------------------------


@dataclass(slots=True)
class Send:
    pair: int
    msg_id: bytes
    body: bytes


async def send_batch(conn: Conn, shape: str, batch: list[Send]) -> list[bool]:
    """One transaction: lock, check, insert, count, notify. Returns accepted per SEND.

    A remembered (sender, msg_id) is accepted again without a second queue row — the
    idempotence a resent SEND after a reconnect relies on.
    """
    senders = [sender_name(s.pair) for s in batch]
    recipients = [recipient_name(s.pair) for s in batch]
    msg_ids = [s.msg_id for s in batch]
    keys = sorted({tuple(sorted(pair)) for pair in zip(senders, recipients, strict=True)})
    lows, highs = [k[0] for k in keys], [k[1] for k in keys]
    distinct = sorted(set(recipients))
    async with conn.transaction():
        if shape == "fused":
            (row,) = await conn.rows(
                await conn.issue(READ_FUSED, lows, highs, distinct, senders, msg_ids)
            )
            states = dict(
                zip(
                    zip(row[0] or [], row[1] or [], strict=True),
                    zip(row[2] or [], row[3] or [], strict=True),
                    strict=True,
                )
            )
            counts = dict(zip(row[4] or [], row[5] or [], strict=True))
            seen = set(zip(row[6] or [], row[7] or [], strict=True))
        else:
            handles = [
                await conn.issue(READ_PAIRS, lows, highs),
                await conn.issue(READ_COUNTS, distinct),
                await conn.issue(READ_SENT, senders, msg_ids),
            ]
            pair_rows, count_rows, seen_rows = [await conn.rows(h) for h in handles]
            states = {(r[0], r[1]): (r[2], r[3]) for r in pair_rows}
            counts = {r[0]: r[1] for r in count_rows}
            seen = {(r[0], bytes(r[1])) for r in seen_rows}
        accepted, write = [], defaultdict(list)
        added: dict[str, int] = defaultdict(int)
        now = int(time.time() * 1000)
        for send, sender, recipient in zip(batch, senders, recipients, strict=True):
            consent, blockers = states[tuple(sorted((sender, recipient)))]
            if (sender, send.msg_id) in seen:
                accepted.append(True)  # a resend: answered SENT again, queued once
                continue
            ok = (
                consent == "granted"
                and not blockers
                and counts[recipient] + added[recipient] < QUEUE_CAP
            )
            accepted.append(ok)
            if not ok:
                continue
            seen.add((sender, send.msg_id))
            added[recipient] += 1
            write["sender"].append(sender)
            write["msg_id"].append(send.msg_id)
            write["digest"].append(hashlib.blake2b(send.body, digest_size=32).digest())
            write["at"].append(now)
            write["recipient"].append(recipient)
            write["body"].append(send.body)
        touched, increments = list(added), list(added.values())
        w = write
        if shape == "fused":
            await conn.issue(
                WRITE_FUSED,
                w["sender"],
                w["msg_id"],
                w["digest"],
                w["at"],
                w["recipient"],
                w["body"],
                touched,
                increments,
            )
        else:
            await conn.issue(INSERT_SENT, w["sender"], w["msg_id"], w["digest"], w["at"])
            await conn.issue(
                INSERT_QUEUE, w["recipient"], w["sender"], w["msg_id"], w["at"], w["body"]
            )
            await conn.issue(ADD_COUNTS, touched, increments)
            await conn.issue(NOTIFY, touched)
    return accepted


async def ack_batch(conn: Conn, shape: str, acks: list[tuple[str, int]]) -> list[str]:
    """One transaction deleting acknowledged envelopes; returns the recipient of each deleted."""
    recipients = [a[0] for a in acks]
    ids = [a[1] for a in acks]
    async with conn.transaction():
        await conn.issue(LOCK_COUNTS, sorted(set(recipients)))
        if shape == "fused":
            gone = await conn.issue(ACK_FUSED, recipients, ids)
        else:
            gone_rows = await conn.rows(await conn.issue(DELETE_ACKED, recipients, ids))
            per: dict[str, int] = defaultdict(int)
            for (recipient,) in gone_rows:
                per[recipient] += 1
            await conn.issue(SUB_COUNTS, list(per), list(per.values()))
    # Fused, psycopg's pipeline sends BEGIN … COMMIT in one round trip; the rows are
    # read once it has returned.
    return [r[0] for r in (await conn.rows(gone) if shape == "fused" else gone_rows)]


async def page(conn: Conn, after: dict[str, int]) -> list[Sequence[Any]]:
    """Up to PAGE_ROWS envelopes past each recipient's cursor, in delivery order."""
    return await conn.rows(await conn.issue(PAGE, list(after), list(after.values()), PAGE_ROWS))


# --- a worker process: senders, recipients and the three loops ----------------------


@dataclass
class Worker:
    """The relay's store traffic for the senders and recipients placed on this worker."""

    shape: str
    senders: list[int]
    recipients: list[int]
    messages: int
    max_batch: int
    """SENDs (and ACKs) per transaction at most; 0: everything pending."""
    conns: dict[str, Conn] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)
    acks: list[tuple[str, int]] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    cursors: dict[str, int] = field(default_factory=dict)
    delivered: set[tuple[str, bytes]] = field(default_factory=set)
    duplicates: int = 0
    committed: int = 0
    acked: int = 0
    batches: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        self.windows = {p: asyncio.Semaphore(WINDOW) for p in self.senders}
        self.send_ready = asyncio.Event()
        self.ack_ready = asyncio.Event()
        self.page_ready = asyncio.Event()
        self.finished = asyncio.Event()
        self.cursors = {recipient_name(p): 0 for p in self.recipients}
        self.bodies = [secrets.token_bytes(BODY_BYTES) for _ in range(64)]

    async def connect(self, driver: str, url: str, schema: str) -> None:
        for role in ("send", "ack", "page", "listen"):
            self.conns[role] = await CONNECTORS[driver](url, schema)
        channels = [f"q_{recipient_name(p)}" for p in self.recipients]
        await self.conns["listen"].listen(channels, self.notified)

    def notified(self, channel: str) -> None:
        self.dirty.add(channel.removeprefix("q_"))
        self.page_ready.set()

    def check_finished(self) -> None:
        if (
            self.committed == len(self.senders) * self.messages
            and self.acked == len(self.recipients) * self.messages
        ):
            self.finished.set()

    async def retrying(self, transaction: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        while True:
            try:
                return await transaction(*args)
            except Exception as exc:
                if sqlstate(exc) not in RETRYABLE_SQLSTATES:
                    raise
                self.retries += 1

    def _take(self, pending: list[Any]) -> tuple[list[Any], list[Any]]:
        """(this transaction's share, the rest), oldest first."""
        cut = self.max_batch or len(pending)
        return pending[:cut], pending[cut:]

    async def sender(self, pair: int) -> None:
        window = self.windows[pair]
        for k in range(self.messages):
            await window.acquire()
            body = self.bodies[k % len(self.bodies)]
            self.sends.append(Send(pair, struct.pack(">QQ", pair, k), body))
            self.send_ready.set()

    async def send_loop(self) -> None:
        conn = self.conns["send"]
        while True:
            await self.send_ready.wait()
            self.send_ready.clear()
            batch, self.sends = self._take(self.sends)
            if self.sends:
                self.send_ready.set()
            accepted = await self.retrying(send_batch, conn, self.shape, batch)
            if not all(accepted):
                raise RuntimeError("a SEND was refused in a workload that refuses none")
            self.batches += 1
            for send in batch:
                self.windows[send.pair].release()
            self.committed += len(batch)
            self.check_finished()

    async def page_loop(self) -> None:
        conn = self.conns["page"]
        while True:
            await self.page_ready.wait()
            self.page_ready.clear()
            wanted, self.dirty = self.dirty, set()
            rows = await page(conn, {r: self.cursors[r] for r in sorted(wanted)})
            got: dict[str, int] = defaultdict(int)
            for recipient, delivery_id, sender, msg_id, _at, _body in rows:
                self.cursors[recipient] = delivery_id
                got[recipient] += 1
                key = (sender, bytes(msg_id))
                if key in self.delivered:
                    self.duplicates += 1
                self.delivered.add(key)
                self.acks.append((recipient, delivery_id))  # the client acknowledges at once
            if rows:
                self.ack_ready.set()
            for recipient, n in got.items():
                if n == PAGE_ROWS:  # there may be more
                    self.dirty.add(recipient)
                    self.page_ready.set()

    async def ack_loop(self) -> None:
        conn = self.conns["ack"]
        while True:
            await self.ack_ready.wait()
            self.ack_ready.clear()
            batch, self.acks = self._take(self.acks)
            if self.acks:
                self.ack_ready.set()
            gone = await self.retrying(ack_batch, conn, self.shape, batch)
            if len(gone) != len(batch):
                raise RuntimeError(f"{len(batch)} acks deleted {len(gone)} envelopes")
            self.acked += len(gone)
            self.check_finished()

    async def run(self) -> None:
        loops = [self.send_loop(), self.page_loop(), self.ack_loop()]
        loops += [self.sender(p) for p in self.senders]
        tasks = [asyncio.create_task(loop) for loop in loops]
        failures: list[BaseException] = []

        def ended(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]
                self.finished.set()

        for task in tasks:
            task.add_done_callback(ended)
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                await self.finished.wait()
        except TimeoutError:
            raise RuntimeError(
                f"not finished within {RUN_TIMEOUT_S} s: {self.committed} SENDs committed, "
                f"{len(self.delivered)} delivered, {self.acked} acknowledged"
            ) from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if failures:
            raise failures[0]

    async def close(self) -> None:
        for conn in self.conns.values():
            await conn.close()


async def worker_main(spec: dict[str, Any]) -> None:
    """Child process: connect, say ready, wait for go, run, report, wait for exit."""
    worker = Worker(
        spec["shape"], spec["senders"], spec["recipients"], spec["messages"], spec["max_batch"]
    )
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        await worker.connect(spec["driver"], spec["url"], spec["schema"])
        say({"ready": [c.backend_pid for c in worker.conns.values()]})
        if (await reader.readline()).strip() != b"go":
            return
        await worker.run()
        say(
            {
                "done": True,
                "batches": worker.batches,
                "retries": worker.retries,
                "delivered": len(worker.delivered),
                "duplicates": worker.duplicates,
            }
        )
        await reader.readline()  # the parent has read the backends' CPU
    except Exception as exc:
        say({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await worker.close()


# --- the parent: schema, processes, CPU, table --------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    variant: str
    workers: int
    max_batch: int
    msgs_per_s: float
    client_us: float
    backend_us: float | None
    batch_size: float
    retries: int


async def admin(driver: str, url: str, sql: str) -> None:
    conn = await CONNECTORS[driver](url, None)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pairs_sql(schema: str) -> str:
    pairs = ", ".join(
        "('{}', '{}', 'granted', '')".format(*sorted((sender_name(p), recipient_name(p))))
        for p in range(PAIRS)
    )
    counts = ", ".join(f"('{recipient_name(p)}', 0)" for p in range(PAIRS))
    return (
        f"CREATE SCHEMA {schema}; SET search_path = {schema}; {SCHEMA}"
        f"INSERT INTO pairs VALUES {pairs}; INSERT INTO queue_counts VALUES {counts};"
    )


def placement(workers: int) -> list[tuple[list[int], list[int]]]:
    """(sender pairs, recipient pairs) per worker: with several, no pair is local."""
    return [
        (
            [p for p in range(PAIRS) if p % workers == w],
            [p for p in range(PAIRS) if (p + 1) % workers == w],
        )
        for w in range(workers)
    ]


async def one_run(url: str, variant: str, workers: int, max_batch: int, messages: int) -> Result:
    driver, shape = variant.split("/")
    schema = f"bench_pgdrivers_{secrets.token_hex(4)}"
    await admin(driver, url, pairs_sql(schema))
    procs: list[asyncio.subprocess.Process] = []
    try:
        for senders, recipients in placement(workers):
            spec = {
                "driver": driver,
                "shape": shape,
                "url": url,
                "schema": schema,
                "senders": senders,
                "recipients": recipients,
                "messages": messages,
                "max_batch": max_batch,
            }
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--worker",
                    json.dumps(spec),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        ready = [await _message(p, "ready") for p in procs]
        backends = [pid for message in ready for pid in message["ready"]]
        local = all(Path(f"/proc/{pid}").exists() for pid in backends)
        client_0 = sum(process_cpu_s(p.pid) for p in procs)
        backend_0 = sum(process_cpu_s(pid) for pid in backends)
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
        reports = await asyncio.gather(*(_message(p, "done") for p in procs))
        elapsed = time.perf_counter() - start
        client_s = sum(process_cpu_s(p.pid) for p in procs) - client_0
        backend_s = sum(process_cpu_s(pid) for pid in backends) - backend_0
        total = PAIRS * messages
        delivered = sum(r["delivered"] for r in reports)
        if delivered != total or any(r["duplicates"] for r in reports):
            raise BenchError(
                f"{variant}: {delivered} of {total} delivered, with duplicates "
                f"{sum(r['duplicates'] for r in reports)}"
            )
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"exit\n")
        return Result(
            variant,
            workers,
            max_batch,
            total / elapsed,
            client_s / total * 1e6,
            backend_s / total * 1e6 if local else None,
            total / sum(r["batches"] for r in reports),
            sum(r["retries"] for r in reports),
        )
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()  # a worker still waiting for "go" or "exit" then exits
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()
        await admin(driver, url, f"DROP SCHEMA {schema} CASCADE")


async def _message(proc: asyncio.subprocess.Process, key: str) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), RUN_TIMEOUT_S + CONNECT_TIMEOUT_S)
    if not line:
        raise BenchError(f"a worker exited before '{key}' (status {await proc.wait()})")
    message: dict[str, Any] = json.loads(line)
    if "error" in message:
        raise BenchError(f"a worker failed: {message['error']}")
    return message


async def check_server(driver: str, url: str) -> None:
    try:
        await admin(driver, url, "SELECT 1")
    except (OSError, TimeoutError) as exc:
        raise BenchError(
            f"cannot reach PostgreSQL at {url} ({exc}); start it or pass --url"
        ) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in DRIVERS:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"cannot use PostgreSQL at {url}: {reason}") from exc


def missing_drivers(variants: Sequence[str]) -> list[str]:
    wanted = sorted({v.split("/")[0] for v in variants})
    return [d for d in wanted if importlib.util.find_spec(d) is None]


def table(results: list[Result], runs: int) -> str:
    groups: dict[tuple[str, int, int], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.variant, r.workers, r.max_batch)].append(r)
    lines = [
        f"{'library/shape':<20} {'workers':>7} {'cap':>4} {'msgs/s':>8} {'(min-max)':>13} "
        f"{'client µs/msg':>14} {'backend µs/msg':>15} {'total µs/msg':>13} "
        f"{'msgs/commit':>11} {'retries':>7}",
    ]
    for (variant, workers, cap), rs in groups.items():
        rate = statistics.median(r.msgs_per_s for r in rs)
        client = statistics.median(r.client_us for r in rs)
        backends = [r.backend_us for r in rs if r.backend_us is not None]
        backend = statistics.median(backends) if backends else None
        spread = f"{min(r.msgs_per_s for r in rs):.0f}-{max(r.msgs_per_s for r in rs):.0f}"
        lines.append(
            f"{variant:<20} {workers:>7} {cap or '-':>4} {rate:>8.0f} {spread:>13} "
            f"{client:>14.1f} "
            + (
                f"{backend:>15.1f} {client + backend:>13.1f} "
                if backend is not None
                else f"{'n/a':>15} {'n/a':>13} "
            )
            + f"{statistics.median(r.batch_size for r in rs):>11.1f} "
            f"{sum(r.retries for r in rs):>7}"
        )
    lines.append(
        f"median of {runs} interleaved runs; cap: SENDs (and ACKs) per transaction at most "
        "(-: all pending); CPU µs per message summed over the worker processes (client) "
        "and the PostgreSQL backends of their connections (backend)"
    )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> str:
    variants: list[str] = args.only or list(VARIANTS)
    if missing := missing_drivers(variants):
        raise BenchError(
            f"{' and '.join(missing)} not installed: .venv/bin/pip install "
            f"{' '.join('psycopg[binary]' if d == 'psycopg' else d for d in missing)} "
            f"(or leave {'it' if len(missing) == 1 else 'them'} out with --only)"
        )
    await check_server(variants[0].split("/")[0], args.url)
    configs = [(v, w, b) for b in args.max_batch for w in args.workers for v in variants]
    results: list[Result] = []
    for run in range(args.runs):
        order = configs[run % len(configs) :] + configs[: run % len(configs)]
        for variant, workers, max_batch in order:
            result = await one_run(args.url, variant, workers, max_batch, args.messages)
            results.append(result)
            print(
                f"run {run + 1}/{args.runs} {variant} x{workers} cap {max_batch or '-'}: "
                f"{result.msgs_per_s:.0f} msgs/s",
                file=sys.stderr,
                flush=True,
            )
    results.sort(key=lambda r: (r.max_batch, r.workers, VARIANTS.index(r.variant)))
    return table(results, args.runs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BLINDRELAY_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000, help="per pair (default 1000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], choices=[1, 2, 3, 4])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=VARIANTS,
        metavar="LIBRARY/SHAPE",
        help=f"among {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        nargs="+",
        default=list(MAX_BATCHES),
        help="SENDs (and ACKs) per transaction at most, 0 for all pending (default: 0 50)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker_main(json.loads(args.worker)))
        return 0
    if args.runs < 1 or args.messages < 1 or min(args.max_batch) < 0:
        parser.error("--runs and --messages must be at least 1, --max-batch at least 0")
    try:
        print(asyncio.run(bench(args)))
    except BenchError as exc:
        print(f"pgdrivers: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
