"""Scale-out benchmark (issue 14): SQLite relay, PostgreSQL with 1 worker and with 2, side by side.

Why one run with all three: the issue's targets are ratios between deployments on the
same machine at the same time (PostgreSQL 1 worker ≥ 0.8× the SQLite relay's msg/s;
2 workers ≥ 1.0× one worker's, at ≤ 1.25× one worker's total CPU per message), and this
machine is shared and noisy. So each repetition runs every deployment once, in an order
that rotates from one repetition to the next, and the table shows the median of the
repetitions with their min–max; the ratios' spread is taken between runs of the same
repetition.

The workload is ``bench/run.py``'s workload 1 (``bench/loadgen.py``): 50 sender→recipient
pairs × 1000 messages of 1 KiB, window 10, load in separate processes. Deployments:

- ``sqlite``: ``blindrelay serve --db FILE`` (``synchronous=FULL``, as workload 1);
- ``pg1``: ``blindrelay serve --store postgresql://…/<fresh database>``;
- ``pg2``: two such processes on one fresh database, on different ports. Pair *i*'s
  sender connects to worker *i mod 2* and its recipient to the other one, so every
  message crosses workers (``LoadSpec.relays``). Before the load, one message is sent
  across; if it does not arrive within PROBE_TIMEOUT_S the run stops with one line
  (a build without cross-worker delivery would otherwise hang until the timeout).
  ``pgN`` runs N workers the same way; SQLite cannot have more than one.
- ``pg2-local`` (not run by default): the same two workers with each pair whole on
  worker *i mod 2*, so no message crosses — what the cross-worker hints cost is the
  difference from ``pg2``; ``pgN-local`` likewise. The targets compare ``pg2``.

Every deployment run gets a fresh database (``CREATE DATABASE`` through asyncpg on the
server's URL, dropped afterwards, also on errors). While it exists the run holds the
machine-wide lock of ``tests/pg.py`` shared, so the test suite's crash restarts of the
server wait for it instead of breaking it (and a run waits for a restart). Relays bind
127.0.0.1 only, start with a clean environment (no ``BLINDRELAY_*`` variable leaks in)
and with the send and registration limits raised out of reach, as in workload 1; every
subprocess and load has a timeout, and everything started is stopped on any error.

CPU per message, measured over the load only (from the moment every account is
connected to the last delivery): *relay* is every relay worker's process tree (the SQLite
relay's writer process included); *PG backends* are the PostgreSQL client backends
serving the run's database — their pids from ``pg_stat_activity`` (``datname`` = the
fresh database), CPU from ``/proc/<pid>/stat`` utime+stime before and after (a backend
that connects during the load counts from zero). *total* = relay + PG backends, the
figure of the CPU target. *PG bg* — WAL writer, checkpointer, background writer — is
shown apart and not in the total: those processes are server-wide, so other clients of
the server add to it. Autovacuum and the load generator are not counted. Backend CPU
needs the server on this machine (its processes in /proc); otherwise it shows ``-``.

PostgreSQL server: ``--postgres URL`` or ``BLINDRELAY_BENCH_POSTGRES`` or
``BLINDRELAY_TEST_POSTGRES`` (a role that may create databases); without one only
``--only sqlite`` can run.

    .venv/bin/python bench/scale.py [--postgres URL] [--quick] [--repeat 3]
        [--only sqlite pg1 pg2] [--pairs 50] [--messages 1000] [--window 10]
        [--size 1024] [--load-processes 2] [--timeout 300] [--json PATH] [--check]

``--quick``: 400 messages per pair instead of 1000 (same 50 pairs and window, so the
same concurrency): figures in a minute or two on 2 cores. ``bench/run.py`` runs this as
workload 7 (``--only scale``). Record: ``bench/results/scale-<UTC time>.json`` unless
``--json PATH``. Exit status: 0; 1 with ``--check`` when a target is missed; 2 when the
benchmark could not run (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import relay
from bench.loadgen import LoadError, LoadSpec, introduce, open_account, run_load
from bench.procs import ServerError, ServerProcess, process_cpu_s, raise_nofile_limit

ROOT = relay.ROOT
RESULTS = ROOT / "bench" / "results"
URL_VARIABLES = ("BLINDRELAY_BENCH_POSTGRES", "BLINDRELAY_TEST_POSTGRES")
"""Where the PostgreSQL server's URL comes from when ``--postgres`` is not given, in order."""
DEFAULT_DEPLOYMENTS = ("sqlite", "pg1", "pg2")
DEFAULT_REPEAT = 3
QUICK_MESSAGES = 400
PROBE_TIMEOUT_S = 10.0
"""How long one message may take from one worker to a recipient on another before the
deployment is declared unable to deliver across workers."""
RELAY_START_TIMEOUT_S = 30.0
"""Until a relay worker prints its URL (a PostgreSQL one migrates its fresh database first)."""
PG_TIMEOUT_S = 10.0
DROP_RETRY_S = 30.0
"""How long dropping a run's database is retried (a server restarting refuses connections)."""
"""Connecting to PostgreSQL and each administrative statement (create, drop, look-ups)."""
DATABASE_PREFIX = "blindrelay_bench_scale_"
BACKGROUND_TYPES = ("walwriter", "checkpointer", "background writer")
"""``pg_stat_activity.backend_type`` of the server-wide processes shown as *PG bg*."""


class ScaleError(RuntimeError):
    """One line saying why the benchmark cannot go on; ``logs`` are relay logs to show."""

    def __init__(self, message: str, logs: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.logs = list(logs)


# --- deployments ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way to run the relay: its store and how many worker processes share it."""

    name: str
    store: str
    """``sqlite`` or ``postgresql``."""
    workers: int
    crossing: bool = True
    """Every pair's sender and recipient on different workers (``LoadSpec.crossing``)."""

    @classmethod
    def parse(cls, name: str) -> Deployment:
        """``sqlite``, ``pg1``, ``pg2`` … (``pgN``: N workers on one database; ``pgN-local``:
        each pair on one worker)."""
        match = re.fullmatch(r"(sqlite|pg)([1-9]?)(-local)?", name)
        if match is None or (match[3] and (match[1] == "sqlite" or match[2] in ("", "1"))):
            raise ScaleError(
                f"unknown deployment {name!r}: sqlite, pg1 or pg2 (pgN: N workers; "
                "pgN-local: N workers, each pair on one of them)"
            )
        workers = int(match[2] or 1)
        if match[3]:
            return cls(f"pg{workers}-local", "postgresql", workers, crossing=False)
        if match[1] == "sqlite":
            if workers > 1:
                raise ScaleError(
                    f"{name}: {workers} relay workers need a store they share, and SQLite is "
                    f"one relay's file: run pg{workers} (with --postgres URL) instead"
                )
            return cls("sqlite", "sqlite", 1)
        return cls(f"pg{workers}", "postgresql", workers)

    @property
    def label(self) -> str:
        if self.store == "sqlite":
            return "SQLite relay"
        label = f"PG {self.workers} worker{'s' if self.workers > 1 else ''}"
        return label if self.crossing else f"{label}, local"


def pg_url_from(flag: str | None, environ: dict[str, str] | os._Environ[str]) -> str | None:
    """The PostgreSQL server URL: ``--postgres``, else the first variable of URL_VARIABLES."""
    if flag:
        return flag
    return next((environ[v] for v in URL_VARIABLES if environ.get(v)), None)


def no_server_reason() -> str:
    """Why PostgreSQL deployments cannot run, in one line."""
    return (
        "no PostgreSQL server: pass --postgres URL or set "
        f"{' or '.join(URL_VARIABLES)} (e.g. postgresql://127.0.0.1:5432/test)"
    )


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name`` (user, host, port, query kept)."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def relay_argv(deployment: Deployment, workdir: Path, store_url: str) -> list[str]:
    """``blindrelay serve`` for one worker of ``deployment``, on 127.0.0.1, any free port."""
    argv = [
        sys.executable,
        "-m",
        "blindrelay.server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    if deployment.store == "sqlite":
        argv += ["--db", str(workdir / "relay.db"), "--synchronous", "FULL"]
    else:
        argv += ["--store", store_url]
    return [*argv, *relay.unlimited_flags()]


def clean_environment() -> dict[str, str]:
    """This process's environment without any BLINDRELAY_* variable: the relays under
    test take their whole configuration from their command line."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BLINDRELAY_")}


def run_order(names: Sequence[str], repetition: int) -> list[str]:
    """Deployments in the order repetition ``repetition`` runs them: rotated by one each
    time, so no deployment always runs first (after an idle machine) or last."""
    k = repetition % len(names)
    return [*names[k:], *names[:k]]


# --- CPU readings -------------------------------------------------------------------


def read_cpu(pids: Iterable[int]) -> dict[int, float | None]:
    """CPU seconds (user + system) of each process so far; None for one that is gone."""
    return {pid: process_cpu_s(pid) if Path(f"/proc/{pid}").exists() else None for pid in set(pids)}


def cpu_delta(before: dict[int, float | None], after: dict[int, float | None]) -> tuple[float, int]:
    """CPU seconds used between two readings, and how many processes' use was lost.

    A process first seen in ``after`` started in between and counts from zero; one that
    is gone in ``after`` (None, or less than before: its pid went) ended in between and
    its last interval cannot be read — it is counted as lost, not guessed.
    """
    used, lost = 0.0, 0
    for pid in before.keys() | after.keys():
        start, end = before.get(pid), after.get(pid)
        if end is None or (start is not None and end < start):
            if start is not None:
                lost += 1
            continue
        used += end - (start or 0.0)
    return used, lost


def is_postgres(pid: int) -> bool:
    """Whether ``pid`` is a PostgreSQL process on this machine (a backend's pid from a
    server elsewhere could name an unrelated local process)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith((b"postgres", b"/usr/lib/postgresql")) or b"postgres:" in cmdline


# --- PostgreSQL -----------------------------------------------------------------------


@dataclass(slots=True)
class PgServer:
    """The PostgreSQL server the benchmark creates its databases on (administration only:
    the relays open their own connections)."""

    url: str
    facts: dict[str, str] = field(default_factory=dict)

    async def _run(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> list[list[Any]]:
        try:
            import asyncpg
        except ImportError:
            raise ScaleError(
                "asyncpg is not installed: .venv/bin/pip install 'blindrelay[postgresql]'"
            ) from None
        try:
            conn = await asyncpg.connect(self.url, timeout=PG_TIMEOUT_S)
            try:
                return [
                    await conn.fetch(sql, *args, timeout=PG_TIMEOUT_S) for sql, args in statements
                ]
            finally:
                await conn.close(timeout=PG_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScaleError(f"cannot use PostgreSQL at {self.url}: {reason}") from None

    def run(self, *statements: tuple[str, tuple[Any, ...]]) -> list[list[Any]]:
        """Each statement's rows, over one short-lived connection (no event loop runs here)."""
        return asyncio.run(self._run(statements))

    def check(self) -> dict[str, str]:
        """Fail in one line unless the server can be used; keep what the record needs."""
        names = (
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "full_page_writes",
            "max_connections",
        )
        rows = self.run(
            ("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user", ()),
            *((f"SHOW {name}", ()) for name in names),
        )
        if not rows[0] or not rows[0][0][0]:
            raise ScaleError(f"PostgreSQL at {self.url}: this role may not create databases")
        self.facts = {name: str(r[0][0]) for name, r in zip(names, rows[1:], strict=True)}
        return self.facts

    def create_database(self) -> str:
        name = f"{DATABASE_PREFIX}{secrets.token_hex(4)}"
        self.run((f'CREATE DATABASE "{name}"', ()))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, its remaining connections too, retrying for DROP_RETRY_S (the
        server may be recovering from a restart); a failure is reported, not raised (it
        must not hide the error that is unwinding, if any)."""
        deadline = time.monotonic() + DROP_RETRY_S
        while True:
            try:
                self.run((f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', ()))
                return
            except ScaleError as exc:
                if time.monotonic() > deadline:
                    print(f"scale: could not drop database {name}: {exc}", file=sys.stderr)
                    return
            time.sleep(0.5)

    @contextlib.contextmanager
    def in_use(self, what: str) -> Iterator[None]:
        """Hold the machine-wide lock of ``tests/pg.py`` shared: a test that crash-restarts
        this server waits until the run is over (a restart mid-run would end it), and a run
        waits while a restart is under way."""
        from tests.pg import ServerLock

        lock = ServerLock(self.url)
        try:
            try:
                lock.share(what)
            except RuntimeError as exc:
                raise ScaleError(str(exc)) from None
            yield
        finally:
            lock.close()

    def processes(self, database: str) -> tuple[list[int], list[int], list[str]]:
        """(client backends of ``database``, server-wide background processes, the
        application names the backends gave) as pg_stat_activity lists them now."""
        (rows,) = self.run(
            (
                "SELECT pid, backend_type, datname, application_name FROM pg_stat_activity "
                "WHERE (datname = $1 AND backend_type = 'client backend') "
                "OR backend_type = ANY($2::text[])",
                (database, list(BACKGROUND_TYPES)),
            )
        )
        clients = [r["pid"] for r in rows if r["datname"] == database]
        background = [r["pid"] for r in rows if r["backend_type"] in BACKGROUND_TYPES]
        names = sorted({r["application_name"] for r in rows if r["datname"] == database})
        return clients, background, names


@dataclass(slots=True)
class Meter:
    """CPU of a deployment's relay processes and PostgreSQL processes over the load.

    :meth:`hook` is ``run_load``'s phase hook: the reading starts when every account is
    connected (``ready``) and ends when every worker has finished (``done``)."""

    servers: list[ServerProcess]
    pg: PgServer | None
    database: str | None
    relay_s: float = 0.0
    backend_s: float | None = None
    background_s: float | None = None
    backends: int = 0
    lost: int = 0
    application_names: list[str] = field(default_factory=list)
    _relay0: float = 0.0
    _clients0: dict[int, float | None] = field(default_factory=dict)
    _background0: dict[int, float | None] = field(default_factory=dict)

    def hook(self, phase: str, reports: list[dict[str, Any]]) -> None:
        if phase == "ready":
            self._relay0 = self._relay_cpu()
            if self.pg is not None and self.database is not None:
                clients, background, _ = self.pg.processes(self.database)
                self._clients0, self._background0 = read_cpu(clients), read_cpu(background)
        elif phase == "done":
            self.relay_s = self._relay_cpu() - self._relay0
            if self.pg is not None and self.database is not None:
                clients, background, self.application_names = self.pg.processes(self.database)
                seen = set(clients) | self._clients0.keys()
                if any(is_postgres(pid) for pid in seen):
                    self.backend_s, self.lost = cpu_delta(self._clients0, read_cpu(seen))
                    self.backends = len(seen)
                    bg = set(background) | self._background0.keys()
                    self.background_s, _ = cpu_delta(self._background0, read_cpu(bg))

    def _relay_cpu(self) -> float:
        return sum(server.cpu_s() for server in self.servers)


# --- one run, many runs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One deployment under the load once; CPU in µs per delivered message."""

    deployment: str
    repetition: int
    messages: int
    elapsed_s: float
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    relay_us: float
    backend_us: float | None
    """PostgreSQL client backends of the run's database; None for SQLite, or when the
    server's processes are not on this machine."""
    total_us: float | None
    """relay + backends: what the CPU target compares (the relay alone for SQLite)."""
    background_us: float | None
    """Server-wide WAL writer, checkpointer and background writer; not in the total."""
    client_us: float
    backends: int = 0
    lost_backends: int = 0
    application_names: tuple[str, ...] = ()
    database: str | None = None
    """The PostgreSQL database the run created (and dropped)."""
    store: dict[str, int] | None = None
    """What the PostgreSQL store's batches did over the workers' whole lives (their
    ``store_closed`` log lines, summed): commits, calls, replays, retries. calls/commit is
    the group commit's batch size; retries are batches rerun after a deadlock or
    serialization failure between workers. None when the relays do not log it."""
    sent_p50_ms: float | None = None
    sent_p99_ms: float | None = None
    """SEND → SENT (the commit's round trip as the sender sees it): with a window per
    sender, this is what bounds a deployment's msg/s when the CPU does not."""

    @property
    def calls_per_commit(self) -> float | None:
        if not self.store or not self.store.get("commits"):
            return None
        return round(self.store["calls"] / self.store["commits"], 1)


def make_run(deployment: Deployment, repetition: int, result: Any, meter: Meter) -> Run:
    """The figures of one run from the load's result and the meter's readings."""
    n = result.messages

    def per_message(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds / n * 1e6, 1)

    relay_us = per_message(meter.relay_s)
    assert relay_us is not None
    backend_us = per_message(meter.backend_s)
    if deployment.store == "sqlite":
        total_us: float | None = relay_us
    else:
        total_us = None if backend_us is None else round(relay_us + backend_us, 1)
    return Run(
        deployment=deployment.name,
        repetition=repetition,
        messages=n,
        elapsed_s=round(result.elapsed_s, 3),
        msgs_per_s=round(result.rate, 1),
        p50_ms=round(result.delivery_ms(50), 2),
        p99_ms=round(result.delivery_ms(99), 2),
        sent_p50_ms=round(result.sent_ms(50), 2),
        sent_p99_ms=round(result.sent_ms(99), 2),
        relay_us=relay_us,
        backend_us=backend_us,
        total_us=total_us,
        background_us=per_message(meter.background_s),
        client_us=round(result.client_cpu_s / n * 1e6, 1),
        backends=meter.backends,
        lost_backends=meter.lost,
        application_names=tuple(meter.application_names),
        database=meter.database,
    )


def start_relay(argv: list[str], log: Path, what: str, timeout_s: float) -> ServerProcess:
    """Start one relay worker; if it does not come up, its last log line says why."""
    try:
        return ServerProcess(argv, log=log, env=clean_environment(), cwd=ROOT, timeout_s=timeout_s)
    except ServerError as exc:
        raise ScaleError(f"{what} did not start: {last_line(log) or exc}") from None


def last_line(log: Path) -> str:
    """The last non-empty line of a relay log (its one-line error when it refused to start)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


async def _probe(urls: Sequence[str]) -> None:
    tag = secrets.token_hex(3)
    sender, _ = await open_account(urls[0], f"xa{tag}")
    try:
        recipient, handle = await open_account(urls[1], f"xb{tag}")
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await introduce(sender, recipient, handle)  # sender → handle, across workers
        finally:
            await recipient.close()
    finally:
        await sender.close()


def probe_across(deployment: Deployment, urls: Sequence[str], logs: Sequence[Path]) -> None:
    """One message from worker 1 to a recipient on worker 2, or one line saying it failed."""
    try:
        asyncio.run(asyncio.wait_for(_probe(urls), PROBE_TIMEOUT_S + 30))
    except TimeoutError:
        raise ScaleError(
            f"{deployment.name}: a message sent through worker 1 did not reach its recipient "
            f"on worker 2 within {PROBE_TIMEOUT_S:.0f} s: these relays do not deliver across "
            "workers (is cross-worker routing in this build?)"
        ) from None
    except (LoadError, OSError) as exc:
        raise ScaleError(f"{deployment.name}: cross-worker probe failed: {exc}", logs) from None


def run_once(
    deployment: Deployment, spec: LoadSpec, workdir: Path, pg: PgServer | None, repetition: int
) -> Run:
    """Start ``deployment`` fresh (new database, new processes), load it, stop it."""
    logs = [workdir / f"worker{i + 1}.log" for i in range(deployment.workers)]
    with contextlib.ExitStack() as stack:
        database, store_url = None, ""
        if deployment.store == "postgresql":
            if pg is None:
                raise ScaleError(f"{deployment.name}: {no_server_reason()}")
            stack.enter_context(pg.in_use(f"bench/scale.py {deployment.name}"))
            database = pg.create_database()
            stack.callback(pg.drop_database, database)  # after the relays have stopped
            store_url = database_url(pg.url, database)
        servers = []
        for i, log in enumerate(logs):  # one after the other: the first creates the schema
            what = f"{deployment.name}: relay worker {i + 1}"
            servers.append(
                stack.enter_context(
                    start_relay(
                        relay_argv(deployment, workdir, store_url), log, what, RELAY_START_TIMEOUT_S
                    )
                )
            )
        urls = tuple(server.url for server in servers)
        if len(urls) > 1:
            probe_across(deployment, urls, logs)
        meter = Meter(servers, pg, database)
        load = replace(
            spec, url=urls[0], relays=urls if len(urls) > 1 else (), crossing=deployment.crossing
        )
        try:
            result = run_load(load, meter.hook)
        except LoadError as exc:
            raise ScaleError(f"{deployment.name}: {exc}", logs) from None
        for i, server in enumerate(servers):
            if server.proc.poll() is not None:
                raise ScaleError(
                    f"{deployment.name}: relay worker {i + 1} exited "
                    f"{server.proc.returncode} during the load",
                    logs,
                )
    expected = spec.pairs * spec.messages
    if result.messages != expected:
        raise ScaleError(f"{deployment.name}: {result.messages} of {expected} delivered")
    return replace(make_run(deployment, repetition, result, meter), store=store_counters(logs))


STORE_COUNTERS = ("commits", "calls", "replays", "retries")


def store_counters(logs: Iterable[Path]) -> dict[str, int] | None:
    """The ``store_closed`` counters of every worker's JSON log, summed (None if none)."""
    total = dict.fromkeys(STORE_COUNTERS, 0)
    found = False
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if '"store_closed"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "store_closed":
                found = True
                for key in STORE_COUNTERS:
                    value = event.get(key)
                    total[key] += value if isinstance(value, int) else 0
    return total if found else None


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of one figure over the repetitions."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values))


METRICS = (
    "msgs_per_s",
    "p50_ms",
    "p99_ms",
    "relay_us",
    "backend_us",
    "total_us",
    "background_us",
    "client_us",
    "calls_per_commit",
    "sent_p50_ms",
)


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, Spread | None]]:
    """Per deployment (in order of first appearance), each metric's median and range;
    each metric on its own (the median msg/s and the median p99 may be different runs)."""
    names = list(dict.fromkeys(r.deployment for r in runs))
    summary: dict[str, dict[str, Spread | None]] = {}
    for name in names:
        mine = [r for r in runs if r.deployment == name]
        summary[name] = {
            metric: Spread.of([v for r in mine if (v := getattr(r, metric)) is not None])
            for metric in METRICS
        }
    return summary


@dataclass(frozen=True, slots=True)
class Target:
    """Issue 14's bound on subject/baseline for one metric."""

    label: str
    subject: str
    baseline: str
    metric: str
    op: str
    bound: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound


TARGETS = (
    Target("PG 1 worker / SQLite relay, msg/s", "pg1", "sqlite", "msgs_per_s", ">=", 0.8),
    Target("PG 2 workers / PG 1 worker, msg/s", "pg2", "pg1", "msgs_per_s", ">=", 1.0),
    Target("PG 2 workers / PG 1 worker, total CPU/msg", "pg2", "pg1", "total_us", "<=", 1.25),
)


@dataclass(frozen=True, slots=True)
class Ratio:
    """A target's ratio of the two medians, with the range of the same ratio taken
    run by run (each subject run over the baseline run of the same repetition)."""

    target: Target
    value: float
    low: float | None
    high: float | None
    met: bool


def ratios(runs: Sequence[Run], targets: Sequence[Target] = TARGETS) -> list[Ratio]:
    """Every target whose two deployments both have the metric; others are left out."""
    summary = summarize(runs)
    out = []
    for t in targets:
        subject = summary.get(t.subject, {}).get(t.metric)
        baseline = summary.get(t.baseline, {}).get(t.metric)
        if subject is None or baseline is None or not baseline.median:
            continue
        value = round(subject.median / baseline.median, 3)  # the verdict is on what is shown
        by_rep: dict[int, dict[str, float]] = {}
        for r in runs:
            v = getattr(r, t.metric)
            if r.deployment in (t.subject, t.baseline) and v is not None:
                by_rep.setdefault(r.repetition, {})[r.deployment] = v
        paired = [
            d[t.subject] / d[t.baseline] for d in by_rep.values() if len(d) == 2 and d[t.baseline]
        ]
        out.append(
            Ratio(
                t,
                value,
                round(min(paired), 3) if paired else None,
                round(max(paired), 3) if paired else None,
                t.met(value),
            )
        )
    return out


@dataclass(slots=True)
class Measurement:
    """Everything one benchmark run produced."""

    spec: LoadSpec
    deployments: list[Deployment]
    repeat: int
    runs: list[Run]
    postgres: dict[str, str]
    """Server facts (version, synchronous_commit, fsync …) and its URL; empty without one."""
    load_average: tuple[float, float] = (0.0, 0.0)
    """The machine's 1-minute load average before and after: how shared the cores were."""

    @property
    def summary(self) -> dict[str, dict[str, Spread | None]]:
        return summarize(self.runs)

    @property
    def ratios(self) -> list[Ratio]:
        return ratios(self.runs)

    def record(self) -> dict[str, Any]:
        return {
            "parameters": {
                k: v for k, v in asdict(self.spec).items() if k not in ("url", "relays")
            },
            "deployments": [asdict(d) | {"label": d.label} for d in self.deployments],
            "repeat": self.repeat,
            "postgres": self.postgres,
            "summary": {
                name: {m: asdict(s) if s else None for m, s in metrics.items()}
                for name, metrics in self.summary.items()
            },
            "ratios": [asdict(r) for r in self.ratios],
            "runs": [asdict(r) for r in self.runs],
            "relay_rate_limits": relay.UNLIMITED_RATE,
            "load_average_1min": {"before": self.load_average[0], "after": self.load_average[1]},
        }


def measure(
    spec: LoadSpec,
    deployments: Sequence[Deployment],
    repeat: int,
    pg_url: str | None,
    tmp: Path,
    progress: Callable[[str], None] = lambda line: None,
) -> Measurement:
    """Run every deployment ``repeat`` times, interleaved; raises ScaleError on any failure."""
    pg = None
    if any(d.store == "postgresql" for d in deployments):
        if not pg_url:
            raise ScaleError(no_server_reason())
        pg = PgServer(pg_url)
        with pg.in_use("bench/scale.py check"):
            pg.check()
    by_name = {d.name: d for d in deployments}
    load_before = os.getloadavg()[0]
    runs: list[Run] = []
    for repetition in range(repeat):
        for name in run_order(list(by_name), repetition):
            workdir = tmp / f"{name}-{repetition}"
            workdir.mkdir()
            run = run_once(by_name[name], spec, workdir, pg, repetition)
            runs.append(run)
            progress(
                f"run {repetition + 1}/{repeat} {by_name[name].label}: "
                f"{run.msgs_per_s:,.0f} msg/s, p99 {run.p99_ms:.1f} ms"
            )
    facts = {"url": pg.url, **pg.facts} if pg else {}
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    return Measurement(spec, list(deployments), repeat, runs, facts, load)


# --- output ---------------------------------------------------------------------------


def _retries(runs: Sequence[Run], deployment: str) -> str:
    counted = [r.store["retries"] for r in runs if r.deployment == deployment and r.store]
    return str(sum(counted)) if counted else "-"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def render(m: Measurement) -> str:
    """The side-by-side table, the target ratios and what the CPU columns count."""
    s = m.spec
    pg = m.postgres
    head = [
        f"scale (issue 14): {s.pairs} pairs x {s.messages} msgs x {s.size} B, window {s.window}, "
        f"{s.workers} load processes, {len(os.sched_getaffinity(0))} CPUs; "
        f"median of {m.repeat} interleaved run(s) [min-max]; load average "
        f"{m.load_average[0]:.1f} before, {m.load_average[1]:.1f} after",
    ]
    if pg:
        where = urlsplit(pg["url"])
        head.append(
            f"PostgreSQL {pg.get('server_version')} at {where.hostname}:{where.port or 5432} "
            f"(server defaults: synchronous_commit={pg.get('synchronous_commit')}, "
            f"fsync={pg.get('fsync')}, wal_sync_method={pg.get('wal_sync_method')}); "
            "a fresh database per run"
        )
    width = max(14, *(len(d.label) + 1 for d in m.deployments))
    cols = (
        f"{'deployment':<{width}}{'msg/s':>8} {'[min-max]':<17}{'p50 ms':>7}{'p99 ms':>8}"
        f"{'relay':>8}{'PG backends':>13}{'total':>8}{'PG bg':>8}{'calls/commit':>14}"
        f"{'retries':>9}"
    )
    lines = [*head, cols, "-" * len(cols)]
    for d in m.deployments:
        f = m.summary.get(d.name)
        if f is None:
            continue
        rate = f["msgs_per_s"]
        assert rate is not None
        span = f"[{rate.low:,.0f}-{rate.high:,.0f}]"

        def med(metric: str, f: dict[str, Spread | None] = f) -> float | None:
            spread = f[metric]
            return spread.median if spread else None

        lines.append(
            f"{d.label:<{width}}{rate.median:>8,.0f} {span:<17}{_num(med('p50_ms')):>7}"
            f"{_num(med('p99_ms')):>8}{_num(med('relay_us')):>8}{_num(med('backend_us')):>13}"
            f"{_num(med('total_us')):>8}{_num(med('background_us')):>8}"
            f"{_num(med('calls_per_commit')):>14}{_retries(m.runs, d.name):>9}"
        )
    if m.ratios:
        lines += [
            "",
            f"{'ratio (of the medians)':<44}{'value':>7}  {'[per-run min-max]':<19}"
            f"{'target':<10}verdict",
        ]
        for r in m.ratios:
            span = f"[{r.low:.2f}-{r.high:.2f}]" if r.low is not None and r.high is not None else ""
            target = f"{r.target.op} {r.target.bound:g}x"
            lines.append(
                f"{r.target.label:<44}{r.value:>6.2f}x  {span:<19}{target:<10}"
                f"{'MET' if r.met else 'MISSED'}"
            )
    lost = sum(r.lost_backends for r in m.runs)
    notes = (
        "relay, PG backends, total, PG bg: CPU µs per delivered message, over the load "
        "only. relay: every relay worker's process tree (SQLite: relay + writer). "
        "PG backends: the client backends of the run's "
        "database (pids from pg_stat_activity, /proc/<pid>/stat utime+stime before/after). "
        "total = relay + PG backends. PG bg: WAL writer + checkpointer + background writer, "
        "server-wide (other clients' work included), NOT in total. Autovacuum and the load "
        "generator are not counted. calls/commit (PostgreSQL store, the workers' whole "
        "lives): store calls per transaction, i.e. the group commit's batch size; retries: "
        "batches rerun after a deadlock or serialization failure, over all runs."
    )
    if lost:
        notes += f" {lost} backend(s) ended during a run: their last interval is missing."
    notes += (
        f" Relays on 127.0.0.1, send/registration limits raised to {relay.UNLIMITED_RATE}/s;"
        " PG N workers: every pair's sender and recipient on different workers (', local':"
        " each pair on one worker)."
    )
    lines += ["", *textwrap.wrap(notes, width=len(cols))]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help=f"server for the PostgreSQL deployments (default: ${' or $'.join(URL_VARIABLES)})",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=list(DEFAULT_DEPLOYMENTS),
        metavar="DEPLOYMENT",
        help="among sqlite pg1 pg2 (pgN: N workers; pgN-local: each pair on one worker)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help=f"interleaved runs of every deployment (default {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_MESSAGES} messages per pair (unless --messages is given)",
    )
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, help="per pair (default 1000)")
    parser.add_argument("--window", type=int, default=10, help="SENDs in flight per sender")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--load-processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per load run")
    parser.add_argument("--json", type=Path, help="record path (default bench/results/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 9:
        parser.error("--repeat must be 1..9")
    messages = args.messages or (QUICK_MESSAGES if args.quick else 1000)
    try:
        spec = LoadSpec(
            url="",
            pairs=args.pairs,
            messages=messages,
            window=args.window,
            size=args.size,
            workers=args.load_processes,
            timeout_s=args.timeout,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # SIGTERM unwinds like Ctrl-C, so relays are stopped and databases dropped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    raise_nofile_limit()
    started = time.time()

    def progress(line: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {line}", file=sys.stderr, flush=True)

    try:
        deployments = list({d.name: d for d in map(Deployment.parse, args.only)}.values())
        with tempfile.TemporaryDirectory(prefix="blindrelay-scale-") as tmp:
            try:
                m = measure(
                    spec,
                    deployments,
                    args.repeat,
                    pg_url_from(args.postgres, os.environ),
                    Path(tmp),
                    progress,
                )
            except ScaleError as exc:
                for log in exc.logs:  # before the temporary directory goes
                    _print_tail(log)
                raise
    except ScaleError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 2
    elapsed = time.time() - started
    print(render(m))
    out = args.json or RESULTS / time.strftime("scale-%Y%m%dT%H%M%SZ.json", time.gmtime(started))
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "suite": "blindrelay-scale",
        "started": started,
        "elapsed_s": round(elapsed, 1),
        "environment": relay.environment(),
        "quick": args.quick,
        **m.record(),
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out} ({elapsed:.0f} s)")
    return 1 if args.check and not all(r.met for r in m.ratios) else 0


def _print_tail(log: Path, lines: int = 5) -> None:
    if log.exists():
        print(f"  {log.name}:", file=sys.stderr)
        for line in log.read_text(errors="replace").splitlines()[-lines:]:
            print(f"  | {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
