"""bench/soak.py: its verdict rules, its one-line refusals, and a 1-minute soak on SQLite.

No timing or memory figure is checked (the soak measures those itself; a 1-minute run is
warm-up): the slow test checks that the mix runs end to end with nothing lost, no error
but the provoked ones, every disturbance exercised, and the record complete.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import (
    FD_SLOPE_MAX,
    RSS_SLOPE_MAX_MIB,
    Sample,
    judge,
    link_and_seq,
    slope,
    soak_msg_id,
)
from blindrelay.protocol.limits import MESSAGE_ID_CLOCK_BYTES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "soak.py"
CLEAN = {"lost": 0, "unexpected": 0, "queue_after_drain": 0}


def samples(minutes, rss_mib_per_min=0.0, fds_per_min=0.0, wobble=0.0):
    """One sample every 10 s over ``minutes``, growing linearly, with a +-wobble."""
    return [
        Sample(t=10.0 * k, rss_kib=int((80 + rss_mib_per_min * k / 6 + wobble * (-1) ** k) * 1024),
               fds=round(100 + fds_per_min * k / 6 + wobble * (-1) ** k), rss_kib_by_process=[],
               queue=0,
               queue_from="count", connections=80)
        for k in range(minutes * 6 + 1)
    ]  # fmt: skip


def test_soak_message_ids_begin_with_the_clock_as_the_sdks_do():
    """SPEC §6.1.1's layout, so the relay's idempotence memory is written to as by real
    clients; the soak's own bookkeeping (link, sequence) rides in the 80 bits after it."""
    now_ms = 1_780_000_000_123
    first, second = soak_msg_id(7, 41, now_ms), soak_msg_id(7, 42, now_ms + 1)
    assert len(first) == 16
    assert int.from_bytes(first[:MESSAGE_ID_CLOCK_BYTES], "big") == now_ms
    assert link_and_seq(first) == (7, 41) and link_and_seq(second) == (7, 42)
    assert first < second  # later ids sort after earlier ones, whatever their random part


def test_slope_is_least_squares():
    assert slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert slope([(0, 1), (1, 0), (2, 1), (3, 0)]) == pytest.approx(-0.2)
    assert slope([(1, 5)]) == 0.0 and slope([(1, 5), (1, 6)]) == 0.0


def test_flat_and_clean_passes_and_noise_is_not_growth():
    verdict = judge(samples(30, wobble=3), 30, CLEAN)
    assert verdict.passed and verdict.line == "PASS"
    assert verdict.flat_judged and verdict.flat_window_min == 10
    assert abs(verdict.rss_slope_mib_per_min) < 0.1 and abs(verdict.fd_slope_per_min) < 0.2


def test_growth_in_the_last_window_fails_and_says_so():
    leaking = judge(samples(30, rss_mib_per_min=RSS_SLOPE_MAX_MIB * 2), 30, CLEAN)
    assert not leaking.passed and "RSS grows +2.00 MiB/min over the last 10 min" in leaking.line
    fds = judge(samples(30, fds_per_min=FD_SLOPE_MAX * 3), 30, CLEAN)
    assert not fds.passed and "open fds grow +3.00/min" in fds.line
    # Growth early on (warm-up) and flat over the last 10 minutes passes.
    warm = samples(30)
    for s in warm[:60]:
        s.rss_kib -= (60 - int(s.t / 10)) * 1024
    assert judge(warm, 30, CLEAN).passed


def test_short_runs_judge_their_last_half_and_a_minute_is_not_judged():
    three = judge(samples(3, rss_mib_per_min=5), 3, CLEAN)
    assert three.flat_judged and three.flat_window_min == 1.5 and not three.passed
    one = judge(samples(1, rss_mib_per_min=5), 1, CLEAN)
    assert not one.flat_judged and one.passed  # warm-up: reported, not judged


def test_lost_unexpected_and_a_queue_left_behind_each_fail():
    flat = samples(3)
    verdict = judge(flat, 3, {"lost": 2, "unexpected": 1, "queue_after_drain": 5})
    assert verdict.line == (
        "FAIL: 2 acknowledged messages lost; 1 unexpected errors; "
        "5 envelopes still queued after the drain"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minutes", "0"], "--minutes must be 1..1440"),
        (["--minutes", "x"], "argument --minutes: invalid int value: 'x'"),
        (["--rate", "-5"], "--rate must be a positive number of messages/s"),
        (["--rate", "nan"], "--rate must be a positive number of messages/s"),
        (["--workers", "0"], "--workers must be 1..16"),
        (["--size", "4"], "--size must be 8.."),
        (["--store", "postgresql"], "--store postgresql: no PostgreSQL server"),
        (["--json", "/nonexistent/dir/x.json"], "no such directory"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    env = {"PATH": "/usr/bin:/bin"}  # no BLINDRELAY_*_POSTGRES: --store postgresql has no server
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env, check=False)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soak.py: ") and message in lines[0]
    assert done.stdout == ""


@pytest.mark.slow
def test_one_minute_soak_on_sqlite_passes(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "1", "--rate", "150", "--seed", "3",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict (sqlite): PASS" in done.stdout
    record = json.loads(out.read_text())
    assert record["passed"] is True
    (run,) = record["runs"]
    assert run["store"] == "sqlite" and run["rate"] == 150 and run["minutes"] == 1
    (row,) = run["rows"]
    assert set(row) == {"minute", "sent", "delivered", "rss_mib", "fds", "queue", "p99_ms",
                        "provoked", "unexpected"}  # fmt: skip
    assert row["sent"] > 0 and row["rss_mib"] > 0 and row["fds"] > 0 and row["queue"] is not None
    assert len(run["samples"]) == 7  # at the start, then every 10 s
    assert all(len(s["rss_kib_by_process"]) == 2 for s in run["samples"])  # relay, writer
    totals = run["totals"]
    assert totals["lost"] == 0 and totals["unexpected"] == 0, totals["unexpected_examples"]
    assert totals["queue_after_drain"] == 0
    assert totals["acknowledged"] == totals["delivered"] > 0
    # Every disturbance happened: offline queues drained, senders came back, blocks and
    # revokes were refused with the one code (and the relay counts what we count).
    assert totals["delivered_after_queueing"] > 0 and totals["reconnects"] > 0
    assert totals["provoked_blocked"] > 0 and totals["provoked_revoked"] > 0
    provoked = totals["provoked_blocked"] + totals["provoked_revoked"]
    assert run["relay_errors_sent"] == {"400": provoked}
    verdict = run["verdict"]
    assert verdict["passed"] and not verdict["flat_judged"]  # a minute is warm-up
    assert verdict["rss_slope_mib_per_min"] is not None and verdict["fd_slope_per_min"] is not None
