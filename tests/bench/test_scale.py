"""bench/scale.py: its pure helpers, its one-line refusals, and one tiny SQLite run.

No timing is checked (speed is measured by the benchmark itself): what is checked is
that deployments are what they claim (every message crosses workers, SQLite refuses
two workers), that CPU and ratios are aggregated correctly, and that the harness
creates and drops its databases on a real PostgreSQL server.
"""

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from bench.loadgen import LoadSpec, pair_urls
from bench.scale import (
    DATABASE_PREFIX,
    TARGETS,
    URL_VARIABLES,
    Deployment,
    Measurement,
    PgServer,
    Run,
    ScaleError,
    clean_environment,
    cpu_delta,
    database_url,
    is_postgres,
    pg_url_from,
    ratios,
    read_cpu,
    relay_argv,
    render,
    run_order,
    store_counters,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "scale.py"


def run(deployment, repetition, msgs_per_s, total_us=None, **more):
    figures = dict(messages=100, elapsed_s=1.0, p50_ms=1.0, p99_ms=2.0, relay_us=10.0,
                   backend_us=None, background_us=None, client_us=5.0)  # fmt: skip
    figures.update(more)
    return Run(deployment, repetition, msgs_per_s=msgs_per_s, total_us=total_us, **figures)


def test_deployments_parse_and_sqlite_refuses_two_workers():
    assert Deployment.parse("sqlite") == Deployment("sqlite", "sqlite", 1)
    assert Deployment.parse("sqlite1") == Deployment("sqlite", "sqlite", 1)
    assert Deployment.parse("pg1") == Deployment("pg1", "postgresql", 1)
    assert Deployment.parse("pg2").workers == 2
    assert [Deployment.parse(n).label for n in ("sqlite", "pg1", "pg2")] == [
        "SQLite relay", "PG 1 worker", "PG 2 workers"
    ]  # fmt: skip
    local = Deployment.parse("pg2-local")
    assert (local.name, local.workers, local.crossing) == ("pg2-local", 2, False)
    assert local.label == "PG 2 workers, local" and Deployment.parse("pg2").crossing
    for name in ("sqlite-local", "pg1-local", "pg-local"):
        with pytest.raises(ScaleError, match="unknown deployment"):
            Deployment.parse(name)
    with pytest.raises(ScaleError, match=r"^sqlite2: 2 relay workers need a store they share"):
        Deployment.parse("sqlite2")
    with pytest.raises(ScaleError, match="unknown deployment 'postgres'"):
        Deployment.parse("postgres")


def test_with_two_workers_every_pair_crosses_and_the_load_is_balanced():
    spec = LoadSpec(url="ws://a", pairs=50, relays=("ws://a", "ws://b"))
    urls = [pair_urls(spec, i) for i in range(50)]
    assert all(sender != recipient for sender, recipient in urls)
    assert Counter(s for s, _ in urls) == {"ws://a": 25, "ws://b": 25}
    assert Counter(r for _, r in urls) == {"ws://a": 25, "ws://b": 25}
    one = LoadSpec(url="ws://a", pairs=3)
    assert {pair_urls(one, i) for i in range(3)} == {("ws://a", "ws://a")}
    local = LoadSpec(url="ws://a", pairs=50, relays=("ws://a", "ws://b"), crossing=False)
    urls = [pair_urls(local, i) for i in range(50)]
    assert all(sender == recipient for sender, recipient in urls)
    assert Counter(s for s, _ in urls) == {"ws://a": 25, "ws://b": 25}


def test_relay_argv_per_store_and_a_clean_environment(tmp_path, monkeypatch):
    sqlite = relay_argv(Deployment.parse("sqlite"), tmp_path, "")
    assert sqlite[sqlite.index("--db") + 1] == str(tmp_path / "relay.db")
    assert "--store" not in sqlite
    pg = relay_argv(Deployment.parse("pg2"), tmp_path, "postgresql://h/db")
    assert pg[pg.index("--store") + 1] == "postgresql://h/db"
    assert "--db" not in pg and "--synchronous" not in pg
    for argv in (sqlite, pg):
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert "--send-rate-user=1000000000" in argv
    monkeypatch.setenv("BLINDRELAY_STORE", "postgresql://elsewhere/x")
    monkeypatch.setenv("PATH_LIKE_OTHER", "kept")
    env = clean_environment()
    assert "BLINDRELAY_STORE" not in env and env["PATH_LIKE_OTHER"] == "kept"


def test_server_url_sources_and_database_url():
    first, second = URL_VARIABLES
    env = {first: "postgresql://bench/x", second: "postgresql://test/y"}
    assert pg_url_from("postgresql://flag/z", env) == "postgresql://flag/z"
    assert pg_url_from(None, env) == "postgresql://bench/x"
    assert pg_url_from(None, {second: "postgresql://test/y"}) == "postgresql://test/y"
    assert pg_url_from(None, {first: ""}) is None
    assert (database_url("postgresql://u@127.0.0.1:5432/test?sslmode=disable", "fresh")
            == "postgresql://u@127.0.0.1:5432/fresh?sslmode=disable")  # fmt: skip


def test_run_order_rotates_so_each_deployment_leads_once():
    names = ["sqlite", "pg1", "pg2"]
    orders = [run_order(names, r) for r in range(3)]
    assert [o[0] for o in orders] == names
    assert all(sorted(o) == sorted(names) for o in orders)


def test_cpu_delta_counts_new_processes_from_zero_and_ended_ones_as_lost():
    before = {1: 2.0, 2: 5.0, 3: 1.0, 4: None}
    after = {1: 2.5, 2: None, 3: 0.25, 4: None, 5: 0.75}
    used, lost = cpu_delta(before, after)
    assert used == pytest.approx(0.5 + 0.75)  # pid 1's growth and new pid 5
    assert lost == 2  # pid 2 gone, pid 3's number reused by a younger process
    assert cpu_delta({}, {}) == (0.0, 0)


def test_cpu_readings_of_this_process():
    readings = read_cpu([os.getpid(), 2**22 + 1])  # above any default pid_max: absent
    assert readings[2**22 + 1] is None
    assert readings[os.getpid()] > 0
    assert not is_postgres(os.getpid())


def test_store_counters_are_summed_over_the_workers_logs(tmp_path):
    first, second, none = tmp_path / "w1.log", tmp_path / "w2.log", tmp_path / "w3.log"
    first.write_text(
        '{"event":"registered","handle":"a"}\nnot json "store_closed"\n'
        '{"event":"store_closed","commits":10,"calls":250,"replays":0,"retries":1}\n'
    )
    second.write_text('{"event":"store_closed","commits":5,"calls":50,"replays":2,"retries":0}\n')
    none.write_text('{"event":"stopped"}\n')
    assert store_counters([first, second, none, tmp_path / "missing.log"]) == {
        "commits": 15, "calls": 300, "replays": 2, "retries": 1
    }  # fmt: skip
    assert store_counters([none]) is None
    measured = replace(run("pg2", 0, 1.0), store={"commits": 15, "calls": 300, "retries": 1})
    assert measured.calls_per_commit == 20.0
    assert run("sqlite", 0, 1.0).calls_per_commit is None


def test_summary_medians_and_ranges_per_deployment():
    runs = [run("sqlite", 0, 100.0, 50.0), run("pg1", 0, 90.0, 60.0),
            run("sqlite", 1, 120.0, 40.0), run("pg1", 1, 80.0, 70.0),
            run("sqlite", 2, 110.0, 45.0, p99_ms=9.0), run("pg1", 2, 85.0, None)]  # fmt: skip
    summary = summarize(runs)
    assert list(summary) == ["sqlite", "pg1"]
    rate = summary["sqlite"]["msgs_per_s"]
    assert (rate.median, rate.low, rate.high) == (110.0, 100.0, 120.0)
    assert summary["sqlite"]["p99_ms"].median == 2.0
    total = summary["pg1"]["total_us"]  # the run without a reading is left out
    assert (total.median, total.low, total.high) == (65.0, 60.0, 70.0)
    assert summary["pg1"]["backend_us"] is None


def test_ratios_of_medians_with_per_repetition_range_and_verdicts():
    runs = [run("sqlite", 0, 100.0, 50.0), run("pg1", 0, 90.0, 60.0), run("pg2", 0, 99.0, 90.0),
            run("sqlite", 1, 120.0, 40.0), run("pg1", 1, 84.0, 70.0), run("pg2", 1, 100.0, 80.0),
            run("sqlite", 2, 110.0, 45.0), run("pg1", 2, 88.0, 64.0), run("pg2", 2, 80.0, 70.0)]  # fmt: skip
    by_label = {r.target.label: r for r in ratios(runs)}
    assert list(by_label) == [t.label for t in TARGETS]
    pg1_sqlite = by_label[TARGETS[0].label]
    assert pg1_sqlite.value == pytest.approx(88 / 110, abs=1e-3)
    assert (pg1_sqlite.low, pg1_sqlite.high) == (0.7, 0.9)  # 84/120 and 90/100
    assert pg1_sqlite.met is True  # 0.8 >= 0.8
    pg2_pg1 = by_label[TARGETS[1].label]
    assert pg2_pg1.value == pytest.approx(99 / 88, abs=1e-3) and pg2_pg1.met is True
    cpu = by_label[TARGETS[2].label]
    assert cpu.value == pytest.approx(80 / 64, abs=1e-3) and cpu.met is True  # 1.25 <= 1.25
    runs[2] = run("pg2", 0, 99.0, 95.0)
    assert {r.target.label: r.met for r in ratios(runs)}[TARGETS[2].label] is True
    worse = [*runs[:8], run("pg2", 2, 80.0, 99.0)]
    assert {r.target.label: r.met for r in ratios(worse)}[TARGETS[2].label] is False
    only_sqlite = [r for r in runs if r.deployment == "sqlite"]
    assert ratios(only_sqlite) == []


def test_render_names_every_deployment_and_verdict():
    runs = [run("sqlite", 0, 10_000.0, 90.0), run("pg1", 0, 7_000.0, 120.0, backend_us=40.0),
            run("pg2", 0, 8_000.0, 140.0, backend_us=50.0, background_us=3.0)]  # fmt: skip
    spec = LoadSpec(url="", pairs=50, messages=100)
    deployments = [Deployment.parse(n) for n in ("sqlite", "pg1", "pg2")]
    facts = {"url": "postgresql://127.0.0.1:5432/test", "server_version": "15.20",
             "synchronous_commit": "on", "fsync": "on", "wal_sync_method": "fdatasync"}  # fmt: skip
    text = render(Measurement(spec, deployments, 1, runs, facts))
    lines = text.splitlines()
    assert any(line.startswith("SQLite relay") and "10,000" in line for line in lines)
    assert any(line.startswith("PG 2 workers") and "140.0" in line for line in lines)
    assert any(line.startswith(TARGETS[0].label) and line.endswith("MISSED") for line in lines)
    assert any(line.startswith(TARGETS[1].label) and line.endswith("MET") for line in lines)
    assert "PostgreSQL 15.20 at 127.0.0.1:5432" in text
    assert "NOT in total" in text


def _scale(*args, env=None):
    environ = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES} | (env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, env=environ, cwd=ROOT)  # fmt: skip


def test_refusals_are_one_line():
    done = _scale("--only", "sqlite", "pg2")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "scale: no PostgreSQL server: pass --postgres URL or set BLINDRELAY_BENCH_POSTGRES or "
        "BLINDRELAY_TEST_POSTGRES (e.g. postgresql://127.0.0.1:5432/test)"
    ]
    done = _scale("--only", "sqlite2")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("scale: sqlite2: 2 relay workers need a store they share")


def test_a_tiny_sqlite_run_end_to_end(tmp_path):
    out = tmp_path / "scale.json"
    done = _scale("--only", "sqlite", "--pairs", "4", "--messages", "5", "--repeat", "2",
                  "--load-processes", "1", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("SQLite relay") for line in done.stdout.splitlines())
    record = json.loads(out.read_text())
    assert [(r["deployment"], r["repetition"], r["messages"]) for r in record["runs"]] == [
        ("sqlite", 0, 20), ("sqlite", 1, 20)
    ]  # fmt: skip
    # CPU is read in clock ticks (10 ms): 20 messages may cost less than one.
    assert all(r["relay_us"] >= 0 and r["total_us"] == r["relay_us"] for r in record["runs"])
    assert record["ratios"] == []


def test_databases_are_created_listed_and_dropped(pg_server_url):
    server = PgServer(pg_server_url)
    with server.in_use("test_scale"):  # not while crash tests elsewhere restart the server
        _create_list_and_drop(server, pg_server_url)


def _create_list_and_drop(server, pg_server_url):
    facts = server.check()
    assert facts["server_version"] and facts["synchronous_commit"] in ("on", "off", "local",
                                                                       "remote_write", "remote_apply")  # fmt: skip
    name = server.create_database()
    assert name.startswith(DATABASE_PREFIX)
    dropped = False
    try:
        assert server.processes(name)[0] == []

        async def hold_a_connection():
            import asyncpg

            conn = await asyncpg.connect(database_url(pg_server_url, name),
                                         server_settings={"application_name": "scale-test"})  # fmt: skip
            try:
                # PgServer runs its own event loops: keep them off this one.
                clients, background, names = await asyncio.to_thread(server.processes, name)
                assert clients == [conn.get_server_pid()]
                assert names == ["scale-test"]
                if is_postgres(clients[0]):  # the server runs on this machine
                    assert read_cpu(clients)[clients[0]] is not None
                    assert background  # WAL writer, checkpointer, background writer
                await asyncio.to_thread(server.drop_database, name)  # connection open: FORCE
            finally:
                conn.terminate()

        asyncio.run(hold_a_connection())
        dropped = True
        (rows,) = server.run(("SELECT 1 FROM pg_database WHERE datname = $1", (name,)))
        assert rows == []
    finally:
        if not dropped:
            server.drop_database(name)


@pytest.mark.parametrize("deployment", ["pg1", "pg2", "pg2-local"])
def test_a_tiny_postgresql_run_end_to_end(pg_server_url, tmp_path, deployment):
    out = tmp_path / "scale.json"
    done = _scale("--only", deployment, "--pairs", "4", "--messages", "5", "--repeat", "1",
                  "--load-processes", "1", "--postgres", pg_server_url, "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["deployment"], run["messages"]) == (deployment, 20)
    workers = int(deployment[2])
    assert run["backends"] >= workers  # at least one connection per worker was seen
    assert run["application_names"]
    assert run["lost_backends"] == 0
    assert run["store"]["commits"] > 0 and run["store"]["calls"] >= run["store"]["commits"]
    assert run["database"].startswith(DATABASE_PREFIX)
    server = PgServer(pg_server_url)
    with server.in_use("test_scale"):  # not while crash tests elsewhere restart the server
        (rows,) = server.run(("SELECT 1 FROM pg_database WHERE datname = $1", (run["database"],)))
    assert rows == []  # dropped after the run
