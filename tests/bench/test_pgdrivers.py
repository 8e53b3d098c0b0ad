"""bench/pgdrivers.py still runs (it chose the PostgreSQL client library; docs/scaling.md).

Timing is not checked here, only that the benchmark works end to end on a tiny load
(its own consistency checks: every message delivered once, every ack deleting one
envelope) and that it says which library is missing.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "pgdrivers.py"


def test_the_benchmark_runs_on_a_tiny_load(pg_database):
    args = ["--url", pg_database.url, "--only", "asyncpg/fused", "asyncpg/statements",
            "--runs", "1", "--messages", "4", "--workers", "1", "2", "--max-batch", "0", "7"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("asyncpg/")]
    assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
        (variant, workers, cap)
        for variant in ("asyncpg/fused", "asyncpg/statements")
        for workers in ("1", "2")
        for cap in ("-", "7")
    )


def test_a_missing_library_is_named_in_one_line():
    code = (
        "import runpy, sys; sys.modules['psycopg'] = None; "  # find_spec then says: absent
        "sys.argv = ['pgdrivers.py', '--only', 'psycopg/fused']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "pgdrivers: psycopg not installed: .venv/bin/pip install psycopg[binary] "
        "(or leave it out with --only)"
    ]
