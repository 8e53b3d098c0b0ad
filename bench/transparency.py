"""Benchmark: the transparency log (issue 17) — appends, tree heads, proofs, at 10k and 1M.

For each size and each back end the log is built from empty with statement entries
(the most frequent kind; 66 bytes each), then measured:

  append      entries/s while building, in transactions of ``--batch`` entries (the
              relay appends one entry per registration, rotation or statement, in the
              operation's transaction; a batch here measures the log's own cost)
  tree head   root of the whole log from its stored complete subtrees + Ed25519 signature
  inclusion   proof generation for random leaves against the full size: median and p99 ms,
              and the proof's size (hashes and bytes)
  consistency proof generation from a random earlier size to the full size: the same
  verify      both verifications (the client's side), median µs

Back ends: ``memory`` (the protocol package alone, nodes in per-level byte arrays: the
floor), ``sqlite`` (the relay's SQLite tables, :class:`TransparencyLog`, on a temporary
file with the relay's settings: WAL, ``synchronous=FULL``, one commit per batch),
``postgresql`` (the relay's PostgreSQL tables in a schema of their own, dropped after;
``synchronous_commit=on``, one transaction per batch; proofs one query each).
Targets (issue 17): proofs ≤ 1 ms at 1M entries, appends ≥ 20k entries/s.

Bills (``--bill-items N``, SQLite): a business's month of N billed notifications is
recorded as the SEND job records them, then closed by the relay's own ``close_bills``
jobs (items built and hashed, the rows replaced by the items, the bill's entry appended
with the last chunk): how long the writer is busy once a month for that business,
and how long serving one BILL page takes. The relay closes a bill a chunk of
``BILL_CHUNK_ITEMS`` at a time, one writer job each: the longest job is how long one
SEND may wait behind the closing.

    .venv/bin/python bench/transparency.py [--sizes 10000 1000000]
        [--backends memory sqlite postgresql] [--postgres URL] [--batch 1000] [--samples 300]
        [--bill-items 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.transparency import entries, merkle
from blindrelay.protocol.transparency.bills import month_end, month_of
from blindrelay.protocol.transparency.merkle import Node
from blindrelay.protocol.transparency.treehead import sign_tree_head
from blindrelay.server.store.postgresql import transparency as pglog
from blindrelay.server.store.records import LogHead
from blindrelay.server.store.sqlite import logjobs
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables
from blindrelay.server.store.sqlite.transparency import TransparencyLog

URL_VARIABLES = ("BLINDRELAY_BENCH_POSTGRES", "BLINDRELAY_TEST_POSTGRES")
"""As bench/scale.py: where the PostgreSQL server's URL comes from without --postgres."""
PROOF_TARGET_MS = 1.0
APPEND_TARGET_PER_S = 20_000.0
RELAY = IdentityKeyPair(b"\xc0" * 32)
T0 = 1_790_000_000_000


def entry(i: int) -> bytes:
    commitment = i.to_bytes(32, "big")
    return entries.StatementLogged(v=1, commitment=commitment, at=T0 + i).to_bytes()


class MemoryLog:
    """The protocol layer alone: a Frontier, and complete subtrees in one bytearray per level."""

    def __init__(self) -> None:
        self.frontier = merkle.Frontier()
        self.levels: list[bytearray] = []

    def append(self, batch: Sequence[bytes]) -> None:
        levels = self.levels
        for data in batch:
            for node, value in self.frontier.append(merkle.leaf_hash(data)):
                if node.level == len(levels):
                    levels.append(bytearray())
                levels[node.level] += value

    def nodes(self, wanted: Sequence[Node]) -> dict[Node, bytes]:
        levels = self.levels
        return {n: bytes(levels[n.level][32 * n.offset : 32 * n.offset + 32]) for n in wanted}

    def close(self) -> None:
        """Nothing to release."""


class PostgresLog:
    """The relay's PostgreSQL tables (schema of its own, dropped after), one transaction
    per batch, under the append lock, as a relay worker appends."""

    def __init__(self, url: str) -> None:
        import asyncpg

        self.loop = asyncio.new_event_loop()
        self.schema = f"bench_log_{secrets.token_hex(4)}"
        self.conn = self.loop.run_until_complete(
            asyncpg.connect(url, server_settings={"synchronous_commit": "on"})
        )
        self.run(self.conn.execute(f'CREATE SCHEMA "{self.schema}"'))
        self.run(self.conn.execute(f'SET search_path TO "{self.schema}"'))
        schemas = (pglog.SCHEMA, pglog.BINDINGS_SCHEMA, pglog.TIMES_SCHEMA, pglog.TAGS_SCHEMA)
        for schema in schemas:  # the log's migrations: 4, 6, 7, 11
            self.run(self.conn.execute(schema))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def append(self, batch: Sequence[bytes]) -> None:
        async def append() -> None:
            async with self.conn.transaction():
                await pglog.append(self.conn, batch)

        self.run(append())

    def nodes(self, wanted: Sequence[Node]) -> dict[Node, bytes]:
        found: dict[Node, bytes] = self.run(pglog.nodes(self.conn, wanted))
        return found

    def close(self) -> None:
        """Drop the schema; after a lost connection (a server restarted under the bench)
        leave it, so the error that matters is the one reported."""
        if not self.conn.is_closed():
            self.run(self.conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE'))
            self.run(self.conn.close())
        self.loop.close()


class SqliteLog:
    """The relay's SQLite tables, one transaction per batch."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.log = TransparencyLog(self.db)
        self.nodes = self.log.nodes

    def append(self, batch: Sequence[bytes]) -> None:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        self.log.append(batch)
        conn.execute("COMMIT")

    def close(self) -> None:
        self.db.conn.close()


def timed(fn: Callable[[], Any], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1e3, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 4),
    }


def measure(log: Any, size: int, batch: int, samples: int, rng: random.Random) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(0, size, batch):
        log.append([entry(i) for i in range(start, min(size, start + batch))])
    append_s = time.perf_counter() - started

    def head() -> bytes:
        return sign_tree_head(RELAY.sign, size, merkle.tree_root(size, log.nodes), T0)

    root = merkle.tree_root(size, log.nodes)
    indices = [rng.randrange(size) for _ in range(samples)]
    firsts = [rng.randrange(1, size) for _ in range(samples)]
    inclusion: list[list[bytes]] = []
    consistency: list[list[bytes]] = []
    it, ct = iter(indices), iter(firsts)
    incl_times = timed(lambda: inclusion.append(merkle.inclusion_proof(next(it), size, log.nodes)),
                       samples)  # fmt: skip
    cons_times = timed(
        lambda: consistency.append(merkle.consistency_proof(next(ct), size, log.nodes)), samples
    )
    verify = []
    for index, proof in zip(indices[:50], inclusion[:50], strict=True):
        leaf = merkle.leaf_hash(entry(index))
        start = time.perf_counter()
        merkle.verify_inclusion(leaf, index, size, proof, root)
        verify.append(time.perf_counter() - start)
    for first, proof in zip(firsts[:50], consistency[:50], strict=True):
        first_root = merkle.tree_root(first, log.nodes)
        start = time.perf_counter()
        merkle.verify_consistency(first, size, first_root, root, proof)
        verify.append(time.perf_counter() - start)
    return {
        "entries": size,
        "append_entries_per_s": round(size / append_s),
        "append_s": round(append_s, 2),
        "tree_head": ms(timed(head, min(samples, 100))),
        "inclusion": ms(incl_times) | proof_sizes(inclusion),
        "consistency": ms(cons_times) | proof_sizes(consistency),
        "verify_median_us": round(statistics.median(verify) * 1e6, 1),
    }


def proof_sizes(proofs: list[list[bytes]]) -> dict[str, float]:
    lengths = [len(p) for p in proofs]
    return {
        "hashes_mean": round(statistics.mean(lengths), 1),
        "hashes_max": max(lengths),
        "bytes_max": 32 * max(lengths),
    }


def measure_bill(path: Path, items: int, samples: int) -> dict[str, Any]:
    """Close one business's bill of ``items`` notifications with the relay's own job, on
    the relay's SQLite tables; then serve BILL pages of it."""
    db = connect(path)
    tables = Tables(db)
    conn = db.conn
    month = month_of(T0)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(items):
        tables.bills.record("skyways.air", month, T0 + i, i.to_bytes(16, "big"), "utility",
                            f"user{i % 5000}")  # fmt: skip
    conn.execute("COMMIT")
    jobs_s: list[float] = []
    closed: list[Any] = []
    more = True
    while more:  # as the relay does: one writer job per chunk, each its own transaction
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        done, more = logjobs.close_bills(tables, month_of(month_end(month)), month_end(month))
        conn.execute("COMMIT")
        jobs_s.append(time.perf_counter() - start)
        closed += done
    close_s = sum(jobs_s)
    assert closed[0][2] == items, closed
    tables.log.add_head(LogHead(1, tables.log.root(1), T0, b"\x00"))  # a head over it
    rng = random.Random(8)
    pages = timed(
        lambda: logjobs.bill_page(
            tables, "skyways.air", month, rng.randrange(items), limits.MAX_BILL_ITEMS
        ),
        samples,
    )
    db.conn.close()
    return {
        "items": items, "close_s": round(close_s, 3),
        "close_items_per_s": round(items / close_s), "jobs": len(jobs_s),
        "longest_job_ms": round(max(jobs_s) * 1e3, 1), "page": ms(pages),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", choices=["memory", "sqlite", "postgresql"],
                        help="default: memory, sqlite, and postgresql when a server is given")
    parser.add_argument("--postgres", metavar="URL",
                        help="server for the postgresql back end (default: $"
                        + " or $".join(URL_VARIABLES) + ")")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1000, help="entries per transaction")
    parser.add_argument("--samples", type=int, default=300, help="proofs timed per kind")
    parser.add_argument("--bill-items", type=int, default=100_000,
                        help="notifications in the bill closed (0: no bill measured)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if any(not 2 <= s <= 10_000_000 for s in args.sizes) or not 1 <= args.batch <= 100_000:
        parser.error("sizes must be 2..10,000,000 and --batch 1..100,000")
    pg_url = args.postgres or next((os.environ[v] for v in URL_VARIABLES if os.environ.get(v)),
                                   None)  # fmt: skip
    backends = args.backends or ["memory", "sqlite", *(["postgresql"] if pg_url else [])]
    if "postgresql" in backends and not pg_url:
        parser.error("the postgresql back end needs --postgres URL")
    rng = random.Random(17)
    results = []
    with tempfile.TemporaryDirectory(prefix="blindrelay-bench-log-") as tmp:
        for size in args.sizes:
            for backend in backends:
                log: Any
                if backend == "memory":
                    log = MemoryLog()
                elif backend == "sqlite":
                    log = SqliteLog(Path(tmp) / f"{size}.db")
                else:
                    assert pg_url is not None
                    log = PostgresLog(pg_url)
                try:
                    row = {"backend": backend} | measure(log, size, args.batch, args.samples, rng)
                finally:
                    log.close()
                results.append(row)
                print(
                    f"{backend:6} {size:>9,} entries: append {row['append_entries_per_s']:>9,}/s"
                    f"  head {row['tree_head']['median_ms']:.3f} ms"
                    f"  inclusion {row['inclusion']['median_ms']:.3f}/"
                    f"{row['inclusion']['p99_ms']:.3f} ms ({row['inclusion']['hashes_max']} hashes)"
                    f"  consistency {row['consistency']['median_ms']:.3f}/"
                    f"{row['consistency']['p99_ms']:.3f} ms"
                    f" ({row['consistency']['hashes_max']} hashes)"
                    f"  verify {row['verify_median_us']} µs",
                    flush=True,
                )
        bill = None
        if args.bill_items > 0:
            bill = measure_bill(Path(tmp) / "bill.db", args.bill_items, args.samples)
            print(
                f"sqlite bill of {bill['items']:,} notifications: closed in {bill['close_s']} s"
                f" ({bill['close_items_per_s']:,} items/s) by {bill['jobs']} writer jobs, the"
                f" longest {bill['longest_job_ms']} ms; a BILL page"
                f" {bill['page']['median_ms']:.3f}/{bill['page']['p99_ms']:.3f} ms",
                flush=True,
            )
    record = {
        "benchmark": "transparency", "batch": args.batch, "samples": args.samples,
        "targets": {"proof_ms_max": PROOF_TARGET_MS, "append_per_s_min": APPEND_TARGET_PER_S},
        "results": results, "bill": bill,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
