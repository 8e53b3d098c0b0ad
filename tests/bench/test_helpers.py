"""Helpers of the benchmark suite (no timing of our code here: speed is measured in bench/)."""

import itertools
import os
import subprocess
import sys
import time

import pytest

from bench import relay
from bench.loadgen import LoadSpec, _spread, due_time, percentile
from bench.procs import (
    ServerError,
    ServerProcess,
    busy_fraction,
    machine_cpu_ticks,
    process_schedstat,
)
from bench.profile import function_key, summarize
from bench.run import Figure


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([float(v) for v in range(1, 1001)], 99) == 990.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_pacing_is_one_evenly_spaced_stream():
    rate, pairs, messages = 200.0, 4, 5
    times = sorted(
        due_time(10.0, rate, pairs, pair, k) for pair in range(pairs) for k in range(messages)
    )
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {round(1 / rate, 9)}
    assert times[0] == 10.0
    assert due_time(10.0, rate, pairs, 1, 2) == 10.0 + (1 + 2 * pairs) / rate


def test_spread_deals_every_index_once():
    slices = _spread(10, 3)
    assert sorted(i for s in slices for i in s) == list(range(10))
    assert len(_spread(2, 4)) == 2


def test_profile_self_and_inclusive():
    lines = [
        "thread (1): MainThread;main (server/cli.py:1);f (server/a.py:3);g (server/b.py:9) 3",
        "thread (1): MainThread;main (server/cli.py:1);f (server/a.py:4) 1",
        "thread (2): writer;w (server/storage.py:5) 4",
        "garbage",
    ]
    s = summarize(lines)
    assert s.total == 8
    assert s.threads == {"MainThread": 4, "writer": 4}
    assert s.self_samples["g (server/b.py)"] == 3
    assert s.self_samples["f (server/a.py)"] == 1
    assert s.inclusive["f (server/a.py)"] == 4
    assert s.top(s.self_samples, 1) == [("w (server/storage.py)", 50.0)]
    assert function_key("f (x.py:12)") == "f (x.py)"


def test_figure_targets():
    assert Figure.compare("w", "m", 6.0, 10.0, "b", (">=", 0.6)).met is True
    assert Figure.compare("w", "m", 5.0, 10.0, "b", (">=", 0.6)).met is False
    assert Figure.compare("w", "m", 30.0, 10.0, "b", ("<=", 2.0)).met is False
    fig = Figure.compare("w", "m", 1.0, 0.0, "b", ("<=", 2.0))
    assert fig.ratio is None and fig.met is None


def test_schedstat_counts_time_runnable_without_a_core_and_wake_ups():
    """Three spinning processes per core: this one gets about a quarter of a core, so it
    waits for one longer than it runs, and its wait shows as more than the CPU time it
    spent (so it is not its CPU time). Each sleep ends in a wake-up. A process that is
    gone reads (0, 0). (It asserted that a spin alone hardly waits, false whenever
    anything else runs: it failed beside the other pytest-xdist worker.)"""

    def spin(seconds: float) -> float:
        before = process_schedstat(os.getpid())[0]
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass
        return process_schedstat(os.getpid())[0] - before

    runs = process_schedstat(os.getpid())[1]
    for _ in range(20):
        time.sleep(0.001)
    assert process_schedstat(os.getpid())[1] - runs >= 20
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(3 * (os.cpu_count() or 1))
    ]
    try:
        waited = spin(0.3)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert waited > 1.5 * 0.3  # ~3 times the CPU time at a quarter of a core
    assert process_schedstat(spinners[0].pid) == (0.0, 0)


def test_machine_busy_share_counts_idle_and_iowait_as_not_busy():
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = machine_cpu_ticks("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    after = machine_cpu_ticks("cpu  250 0 100 1000 100 0 0 0 0 0\ncpu0 1 2 3\n")
    assert before == (150, 1000) and after == (350, 1450)
    assert busy_fraction(before, after) == 200 / 450
    assert busy_fraction(after, after) == 0.0
    now = machine_cpu_ticks()
    assert 0 <= now[0] <= now[1]


def test_a_paced_load_measures_from_departure_as_well_as_from_due(tmp_path):
    """A tiny paced load on the forwarder: every message is measured twice, from its due
    time and from when its SEND left, and the second can never be the longer — message
    by message, so also percentile by percentile of the sorted lists."""
    spec = LoadSpec(url="", pairs=2, messages=30, window=2, size=64, workers=1, rate=300.0)
    row = relay.throughput(relay.BASELINE, spec, tmp_path, None)
    assert row.messages == 60
    assert row.departure_p95_ms is not None and row.departure_p99_ms is not None
    assert 0 <= row.departure_p95_ms <= row.p95_ms
    assert 0 <= row.departure_p99_ms <= row.p99_ms
    assert row.machine_busy is not None and 0 <= row.machine_busy <= 1
    with pytest.raises(ValueError, match="paced load needs size >= 16"):
        LoadSpec(url="", size=8, rate=1.0)
    unpaced = LoadSpec(url="", pairs=1, messages=5, window=1, size=8, workers=1)
    (tmp_path / "unpaced").mkdir()
    row = relay.throughput(relay.BASELINE, unpaced, tmp_path / "unpaced", None)
    assert row.departure_p95_ms is None


def test_a_server_that_exits_before_listening_is_named_with_its_last_log_line(tmp_path):
    """The benchmarks run servers in temporary directories, gone by the time anyone reads
    the message: it must carry what the server said, not only the log's path."""
    script = "import sys; print('starting', file=sys.stderr); print('port in use', file=sys.stderr); sys.exit(3)"
    with pytest.raises(ServerError) as raised:
        ServerProcess([sys.executable, "-c", script], log=tmp_path / "server.log")
    message = str(raised.value)
    assert "exited before listening (code 3)" in message
    assert "port in use" in message
