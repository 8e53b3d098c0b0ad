"""bench/threads.py: one tiny relay run read thread by thread, and its one-line refusals.

No timing is checked: what is checked is that every thread of the relay's tree is read,
named by its role, and that the figures are per message and add up to the whole.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import threads
from bench.loadgen import LoadError, LoadSpec
from bench.procs import parse_perf_stat, syscall_counting_problem, thread_stats
from bench.threads import per_message

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "threads.py"


def test_this_process_threads_are_read_and_differenced_per_message():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        before = thread_stats([os.getpid()])
        spent = time.thread_time()
        while time.thread_time() - spent < 0.02:  # 20 ms of CPU on the main thread
            sum(range(10_000))
        # The kernel adds a running thread's time to its schedstat at a tick or when the
        # thread leaves the core, not when it is read: leave the core once.
        time.sleep(0.001)
        after = thread_stats([os.getpid()])
    finally:
        stop.set()
        worker.join()
    assert os.getpid() in after and worker.native_id in after
    rows = {row["tid"]: row for row in per_message(before, after, 10, os.getpid())}
    assert rows[os.getpid()]["role"] == "relay main"
    assert rows[worker.native_id]["role"] == "relay thread"
    assert rows[os.getpid()]["runs"] >= 0 and rows[os.getpid()]["cpu_us"] > 0


def test_a_tiny_paced_run_reads_the_relay_and_its_writer(tmp_path):
    out = tmp_path / "threads.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--rate", "200", "--seconds", "0.1", "--pairs", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record["messages"] == 20  # at least 10 per pair
    roles = [row["role"] for row in record["threads"]]
    assert roles.count("relay main") == 1 and roles.count("child main") == 1  # the writer
    assert "child thread" in roles  # its fsync thread (synchronous=FULL)
    assert all(row["cpu_us"] >= 0 and row["wait_us"] >= 0 for row in record["threads"])
    assert 0 <= record["machine_busy"] <= 1
    assert "(whole relay)" in done.stdout
    decision = {"decision wait", "decision decide", "decision back"}
    assert set(record["send_stages_ms"]) >= {"loop", "store", "deliver", *decision}


def test_bad_arguments_are_one_line_and_status_2():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--rate", "0"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("threads.py: error: --rate and --seconds")
    assert "Traceback" not in done.stderr


def test_perf_stat_output_is_read_event_by_event():
    text = (
        "1234,,syscalls:sys_enter_sendto,2000000,100.00,,\n"
        "56.0,,context-switches,2000000,100.00,,\n"
        "<not counted>,,syscalls:sys_enter_fsync,0,0.00,,\n"
        "<not supported>,,syscalls:sys_enter_getpid,0,0.00,,\n"
        "\n"
        "some warning line\n"
    )
    assert parse_perf_stat(text) == {"sendto": 1234, "context-switches": 56}


def test_a_tiny_run_counts_the_system_calls_of_the_relay_and_of_the_forwarder(tmp_path):
    """Where perf can read syscall tracepoints (CI's machines can), the counts are per
    message and show what the relay does that the forwarder does not: WAL writes and a
    writer process to talk to. Elsewhere the flag is refused in one line."""
    problem = syscall_counting_problem()
    records = {}
    for server in ("relay", "forwarder"):
        out = tmp_path / f"{server}.json"
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--rate", "200", "--seconds", "0.1", "--pairs", "2",
             "--syscalls", "--server", server, "--json", str(out)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        if problem is not None:
            assert done.returncode == 2
            assert done.stderr.splitlines()[-1] == f"threads.py: error: --syscalls: {problem}"
            return
        assert done.returncode == 0, done.stderr
        assert "system calls per message" in done.stdout
        records[server] = json.loads(out.read_text())
    relay, forwarder = (records[s]["syscalls_per_msg"] for s in ("relay", "forwarder"))
    assert relay["sendto"] >= 1 and forwarder["sendto"] >= 1  # at least each DELIVER
    assert relay["pwrite64"] > 0 and forwarder.get("pwrite64", 0) == 0  # the WAL
    assert [row["role"] for row in records["forwarder"]["threads"]] == ["forwarder main"]
    assert records["forwarder"]["send_stages_ms"] is None


def test_a_load_that_fails_midway_stops_its_syscall_counter(tmp_path, monkeypatch):
    """The counter starts when the load is ready; a load that fails after that must not
    leave its ``perf stat`` running until the server goes."""
    stopped = []

    class Counter:
        def __init__(self, pids):
            assert pids

        def stop(self):
            stopped.append(True)
            return {}

    def failing(spec, on_phase):
        on_phase("ready", [])
        raise LoadError("a worker exited without reporting")

    monkeypatch.setattr(threads, "SyscallCounter", Counter)
    monkeypatch.setattr(threads, "run_load", failing)
    spec = LoadSpec(url="", pairs=1, messages=10, window=1, workers=1)
    with pytest.raises(LoadError):
        threads.measure(spec, tmp_path, "forwarder", syscalls=True)
    assert stopped == [True]
