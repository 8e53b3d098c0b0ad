"""The PostgreSQL test plumbing and the store's driver (asyncpg), on the real server.

What the PostgreSQL store will rest on, checked where CI can see it: each module gets a
database of its own; a committed row survives a crash restart of the server
(``-m immediate``, ``synchronous_commit=on``) and an uncommitted one does not; NOTIFY
issued inside a transaction reaches a listener only once it commits, never for a
rollback. And the rules of tests/pg.py itself: without ``BLINDRELAY_TEST_POSTGRES`` the
PostgreSQL tests are left out with one closing line; with it they cannot be skipped, and
an unreachable server stops the run with one line. The embedded default imports no
PostgreSQL driver.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest

from ..pg import ENV, PostgresDatabase, connect

ROOT = Path(__file__).resolve().parents[2]
NOTIFY_TIMEOUT_S = 10.0


async def test_each_module_has_a_fresh_database(pg_database: PostgresDatabase):
    conn = await connect(pg_database.url)
    try:
        assert await conn.fetchval("SELECT current_database()") == pg_database.name
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()


async def test_committed_row_survives_an_immediate_restart(pg_database: PostgresDatabase):
    conn = await connect(pg_database.url)
    await conn.execute("CREATE TABLE survivors (id integer PRIMARY KEY, body bytea NOT NULL)")
    await conn.execute("INSERT INTO survivors VALUES (1, $1)", b"acknowledged")  # committed
    started = await conn.fetchval("SELECT pg_postmaster_start_time()")
    open_tx = await connect(pg_database.url)
    transaction = open_tx.transaction()
    await transaction.start()
    await open_tx.execute("INSERT INTO survivors VALUES (2, $1)", b"never committed")

    await pg_database.restart_async()

    for broken in (conn, open_tx):  # the server killed their backends
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
            await broken.fetchval("SELECT 1")
    conn = await connect(pg_database.url)
    try:
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") > started
        rows = await conn.fetch("SELECT id, body FROM survivors ORDER BY id")
        assert [tuple(row) for row in rows] == [(1, b"acknowledged")]
    finally:
        await conn.close()


async def test_notify_reaches_a_listener_only_after_commit(pg_database: PostgresDatabase):
    listener = await connect(pg_database.url)
    sender = await connect(pg_database.url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(
            "q_bob", lambda _c, _pid, _ch, payload: heard.put_nowait(payload)
        )
        async with sender.transaction():
            await sender.execute("SELECT pg_notify('q_bob', 'in flight')")
            await listener.fetchval("SELECT 1")  # a round trip on the listener's connection
            assert heard.empty()
        transaction = sender.transaction()
        await transaction.start()
        await sender.execute("SELECT pg_notify('q_bob', 'rolled back')")
        await transaction.rollback()
        await sender.execute("SELECT pg_notify('q_bob', 'committed')")  # autocommit

        # One sender's notifications arrive in commit order: had the rolled-back one
        # been sent, it would come between these two.
        got = [await asyncio.wait_for(heard.get(), NOTIFY_TIMEOUT_S) for _ in range(2)]
        assert got == ["in flight", "committed"]
    finally:
        await listener.close()
        await sender.close()


def test_the_embedded_default_imports_no_postgresql_driver():
    code = (
        "import sys, blindrelay.server.cli, blindrelay.server.relay, blindrelay.client.cli; "
        "print(sorted({'asyncpg', 'psycopg'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the rules of tests/pg.py, on a throw-away test file ----------------------------

PROBE = textwrap.dedent(
    """
    import pytest

    def test_needs_nothing():
        pass

    def test_needs_postgres(pg_database):
        pass

    @pytest.mark.postgres
    def test_skips_itself():
        pytest.skip("no")
    """
)


WORKERS = pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
"""Each rule holds for a plain ``pytest`` and for ``make test``'s two pytest-xdist
workers, where the controller collects nothing and the workers collect alone."""


def run_probe(
    tmp_path: Path, url: str | None, workers: list[str] = []  # noqa: B006 - never changed
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if url is not None:
        env[ENV] = url
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.pg", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), *workers, str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip


@WORKERS
def test_without_the_variable_postgresql_tests_are_left_out_with_one_line(tmp_path, workers):
    done = run_probe(tmp_path, None, workers)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" + ("" if workers else ", 2 deselected") in done.stdout
    assert "skipped" not in done.stdout
    line = (
        f"2 PostgreSQL tests not run ({ENV} is unset); "
        f"to run them: {ENV}=postgresql://127.0.0.1:5432/test make test"
    )
    assert done.stdout.splitlines().count(line) == 1


@WORKERS
def test_with_an_unreachable_server_the_run_stops_with_one_line(tmp_path, workers):
    url = "postgresql://127.0.0.1:1/test"  # nothing listens on port 1
    done = run_probe(tmp_path, url, workers)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"ERROR: {ENV}={url}: cannot connect (")
    assert "passed" not in done.stdout


@WORKERS
def test_with_the_variable_a_postgresql_test_cannot_skip(pg_server_url, tmp_path, workers):
    done = run_probe(tmp_path, pg_server_url, workers)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "1 failed, 2 passed" in done.stdout
    assert f"a PostgreSQL test skipped although {ENV} is set: it must run" in done.stdout
