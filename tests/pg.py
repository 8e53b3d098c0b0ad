"""PostgreSQL for the test suite: a server from ``BLINDRELAY_TEST_POSTGRES``, a fresh
database per test module, and abrupt restarts for crash tests.

A pytest plugin (``tests/conftest.py`` loads it). Real PostgreSQL only, never a mock.

Which tests need PostgreSQL: those that use a fixture below (directly or through
another fixture) or carry ``@pytest.mark.postgres``; collection marks them all
``postgres``.

- Variable unset (a machine without PostgreSQL): they are deselected — not run, and not
  skipped one by one — and the run ends with one line saying how many and how to run
  them. ``make test`` still passes.
- Variable set (CI: ``.ci/run`` sets it): they run, always. If the server cannot be
  reached, the session stops before the first test with one line (``ERROR: …``), and a
  PostgreSQL test that skips itself fails.

Fixtures:

- ``pg_server_url`` (session): the server's URL, checked once.
- ``pg_database`` (module): a :class:`PostgresDatabase` — a database created for the
  module (``.url``, ``.name``) and dropped after it, with ``.restart()`` /
  ``await .restart_async()`` to crash-restart the whole server.
- :func:`fresh_database`: the same for a fixture of another scope (the conformance
  suite's deployments live for its whole package); such tests carry the ``postgres``
  mark themselves.

Restarts take the whole server down, including databases of other test processes on
this machine. So every module holds a shared lock on a per-server lock file while its
database exists, and a restart takes it exclusively: it waits until no other module on
this machine is using the server, and holds new ones off until the server is back.
(Other clients of the same server — a benchmark, another machine — are not covered.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

ENV = "BLINDRELAY_TEST_POSTGRES"
RESTART_ENV = "BLINDRELAY_TEST_POSTGRES_RESTART"
"""Optional: a command that restarts the server abruptly, for a server that is not a
Debian cluster (default: ``pg_ctlcluster VERSION NAME restart -m immediate`` for the
cluster listening on the URL's port, found with ``pg_lsclusters``)."""
EXAMPLE_URL = "postgresql://127.0.0.1:5432/test"
FIXTURES = frozenset({"pg_server_url", "pg_database"})
MIN_SERVER_VERSION = 130000
"""``DROP DATABASE … WITH (FORCE)`` needs 13; the project runs 15."""
CONNECT_TIMEOUT_S = 5.0
RESTART_TIMEOUT_S = 120.0
"""Immediate shutdown, crash recovery (replaying the WAL since the last checkpoint,
~1 s per 400 MB here) and start; generous, since a hung restart fails the test anyway."""
LOCK_TIMEOUT_S = 600.0
"""How long a restart waits for other test modules on this machine to finish with the
server (and a module waits for a restart); longer means something is stuck."""
POLL_S = 0.1

_deselected = pytest.StashKey[int]()
_WORKER_OUTPUT = "postgres_deselected"


# --- the server ------------------------------------------------------------------


def server_url() -> str | None:
    """The URL in ``BLINDRELAY_TEST_POSTGRES``, or None when PostgreSQL tests are off."""
    return os.environ.get(ENV) or None


def database_url(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name`` (user, host, port, query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def connect(url: str) -> object:
    """An asyncpg connection with ``synchronous_commit=on`` (the relay's durability)."""
    import asyncpg

    return await asyncpg.connect(
        url, timeout=CONNECT_TIMEOUT_S, server_settings={"synchronous_commit": "on"}
    )


async def _execute(url: str, *statements: str) -> list[object]:
    conn = await connect(url)
    try:
        return [await conn.fetchval(sql) for sql in statements]  # type: ignore[attr-defined]
    finally:
        await conn.close()  # type: ignore[attr-defined]


def execute(url: str, *statements: str) -> list[object]:
    """Run statements one by one; the first column of each. From inside a running event
    loop too (on a thread of its own, blocking the loop meanwhile)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_execute(url, *statements))
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, _execute(url, *statements)).result()


def rows(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The rows of one query (``?`` placeholders, as sqlite3 takes them), from any thread
    — also from inside a running event loop, as tests read what a relay stored."""
    numbered = iter(range(1, len(params) + 1))
    query = re.sub(r"\?", lambda _m: f"${next(numbered)}", sql)

    async def fetch() -> list[tuple[object, ...]]:
        conn = await connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(query, *params)]  # type: ignore[attr-defined]
        finally:
            await conn.close()  # type: ignore[attr-defined]

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, fetch()).result()


def check_server(url: str) -> None:
    """Raise UsageError (one line) unless ``url`` is a server the tests can use."""
    try:
        version, may_create = execute(
            url,
            "SHOW server_version_num",
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
        )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise pytest.UsageError(
            f"{ENV}={url}: cannot connect ({reason}); start PostgreSQL, "
            f"or unset {ENV} to leave the PostgreSQL tests out"
        ) from None
    if int(str(version)) < MIN_SERVER_VERSION:
        raise pytest.UsageError(f"{ENV}={url}: PostgreSQL {version} is older than 13")
    if not may_create:
        raise pytest.UsageError(f"{ENV}={url}: this role may not create databases")


def wait_until_accepting(url: str, timeout_s: float = RESTART_TIMEOUT_S) -> None:
    """Return once ``url`` accepts connections and answers a query."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            execute(url, "SELECT 1")
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL at {url} not back after {timeout_s} s: {exc}"
                ) from exc
            time.sleep(POLL_S)


def restart_command(url: str) -> list[str]:
    """How to restart the server at ``url`` abruptly (``-m immediate``: no checkpoint,
    every backend killed — what a crash leaves on disk)."""
    if command := os.environ.get(RESTART_ENV):
        return shlex.split(command)
    port = urlsplit(url).port or 5432
    if shutil.which("pg_lsclusters") is None:
        raise RuntimeError(f"no pg_lsclusters here: set {RESTART_ENV} to a restart command")
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(port):
            return ["pg_ctlcluster", fields[0], fields[1], "restart", "--mode", "immediate"]
    raise RuntimeError(f"no cluster on port {port} in pg_lsclusters: set {RESTART_ENV}")


# --- one database per test module --------------------------------------------------


def _flock(file: IO[bytes], operation: int, what: str) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(file, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what}: PostgreSQL busy with other tests on this machine for "
                    f"{LOCK_TIMEOUT_S} s (lock {file.name})"
                ) from None
            time.sleep(POLL_S)


class ServerLock:
    """Shared while a test module uses the server; exclusive while one restarts it.

    Two lock files per server. ``use`` is held shared by every module with a database,
    exclusive by a restart. ``gate`` is passed shared on the way in and held exclusive
    by a restart while it waits for ``use``, so that modules arriving meanwhile wait
    instead of starving it. A restart lets go of its own ``use`` before queueing at the
    gate, so two restarting processes cannot hold each other up for good.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        where = re.sub(r"[^A-Za-z0-9.-]", "_", f"{parts.hostname}-{parts.port or 5432}")
        base = Path(tempfile.gettempdir()) / f"blindrelay-test-postgres-{where}"
        # Open for the module's lifetime (a flock lives as long as its open file).
        self._use = Path(f"{base}.lock").open("ab")  # noqa: SIM115
        self._gate = Path(f"{base}.gate").open("ab")  # noqa: SIM115

    def share(self, what: str) -> None:
        _flock(self._gate, fcntl.LOCK_SH, what)
        try:
            _flock(self._use, fcntl.LOCK_SH, what)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        fcntl.flock(self._use, fcntl.LOCK_UN)
        try:
            _flock(self._gate, fcntl.LOCK_EX, what)
        except BaseException:
            self.share(what)
            raise
        try:
            try:
                _flock(self._use, fcntl.LOCK_EX, what)
                yield
            finally:
                # Back to shared while still holding the gate: nobody else can be
                # waiting for it exclusively, so this never blocks.
                fcntl.flock(self._use, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def close(self) -> None:
        self._use.close()  # closing releases the locks
        self._gate.close()


@dataclass
class PostgresDatabase:
    """A database of its own for one test module, on the shared test server."""

    server_url: str
    name: str
    _lock: ServerLock

    @property
    def url(self) -> str:
        return database_url(self.server_url, self.name)

    def restart(self) -> None:
        """Crash-restart the server (``-m immediate``) and wait until it accepts
        connections again. Every connection to it is broken; committed transactions
        (``synchronous_commit=on``) survive. Blocks: from async code use
        :meth:`restart_async`."""
        with self._lock.exclusive("restart"):
            command = restart_command(self.server_url)
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=RESTART_TIMEOUT_S
            )
            if done.returncode != 0:
                output = (done.stderr or done.stdout).strip()
                raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}: {output}")
            wait_until_accepting(self.url)

    def fresh_schema(self) -> str:
        """A URL of this database whose tables go to a new, empty schema of their own
        (``search_path``, which asyncpg sets from the URL's query): a fresh store per
        test at the cost of a ``CREATE SCHEMA``, where a database per test would cost a
        ``CREATE DATABASE``."""
        name = f"t_{secrets.token_hex(6)}"
        execute(self.url, f'CREATE SCHEMA "{name}"')
        return f"{self.url}?search_path={name}"

    async def restart_async(self) -> None:
        """:meth:`restart` in a thread, so the test's event loop (its clients, relays)
        keeps running while the server is down."""
        await asyncio.to_thread(self.restart)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    url = server_url()
    assert url is not None, "collection deselects PostgreSQL tests when the variable is unset"
    return url


@contextlib.contextmanager
def fresh_database(server: str, label: str) -> Iterator[PostgresDatabase]:
    """A database named after ``label`` on ``server``, dropped on exit; the server lock is
    held shared meanwhile, so no restart by another test module cuts it off mid-use."""
    slug = re.sub(r"[^a-z0-9]", "_", label.lower())
    name = f"blindrelay_{slug[:36]}_{secrets.token_hex(4)}"  # within NAMEDATALEN (63)
    lock = ServerLock(server)
    try:
        lock.share(f"database for {label}")
        execute(server, f'CREATE DATABASE "{name}"')
        try:
            yield PostgresDatabase(server, name, lock)
        finally:
            execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        lock.close()


@pytest.fixture(scope="module")
def pg_database(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[PostgresDatabase]:
    with fresh_database(pg_server_url, request.module.__name__.rsplit(".", 1)[-1]) as database:
        yield database


# --- collection, enforcement and the closing line -----------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"postgres: needs the PostgreSQL server in {ENV} (set automatically)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = []
    for item in items:
        if FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)
            ours.append(item)
    url = server_url()
    if url is None:
        if ours:
            config.hook.pytest_deselected(items=ours)
            items[:] = [item for item in items if item not in ours]
        config.stash[_deselected] = len(ours)
    elif ours:
        check_server(url)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.skipped and item.get_closest_marker("postgres") and server_url() is not None:
        report.outcome = "failed"
        report.longrepr = f"a PostgreSQL test skipped although {ENV} is set: it must run"
    return report


def pytest_sessionstart(session: pytest.Session) -> None:
    """A pytest-xdist controller checks the server before its workers collect: each
    worker's own check would fail alone, and xdist would show tracebacks, not the line."""
    config = session.config
    controller = config.getoption("numprocesses", None) and not hasattr(config, "workerinput")
    url = server_url()
    if controller and url is not None:
        check_server(url)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker, hand the count to the controller, which collects
    nothing itself and prints the closing line (``make test`` runs two workers)."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output[_WORKER_OUTPUT] = session.config.stash.get(_deselected, 0)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without it
def pytest_testnodedown(node: Any, error: object) -> None:
    """``node`` is xdist's ``WorkerController``: its ``config`` is the controller's."""
    output = getattr(node, "workeroutput", None) or {}
    if _WORKER_OUTPUT in output:  # every worker collects the whole tree: the same count
        node.config.stash[_deselected] = int(output[_WORKER_OUTPUT])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    count = terminalreporter.config.stash.get(_deselected, 0)
    if count:
        tests = "test" if count == 1 else "tests"
        terminalreporter.write_line(
            f"{count} PostgreSQL {tests} not run ({ENV} is unset); "
            f"to run them: {ENV}={EXAMPLE_URL} make test"
        )
