"""Relay benchmark: durable relay vs the in-memory forwarder, same load, same run.

Why side by side: absolute figures depend on the machine; the ratio to the stack's
ceiling (``bench/forwarder.py``: websockets + msgpack, no auth, no storage) does not,
much. Issue 4's targets are ratios: relay throughput ≥ 0.5× the forwarder's, and
p99 delivery latency within 3× the forwarder's at that load.

Each server runs in its own process, started fresh with an empty database; the load
(``bench/loadgen.py``) runs in separate worker processes. Everything binds
127.0.0.1; counts are bounded and every run has a timeout after which the servers
and workers are stopped and the script exits with status 2.

The relay runs with its default durability (``synchronous=FULL``, group commit) and
default log level, but with the send rate limits raised out of reach: the defaults
(50 messages/s per user) would measure the token bucket, not the relay.

    .venv/bin/python bench/relay.py [--pairs 50] [--messages 1000] [--window 10]
        [--size 1024] [--workers 2] [--repeat 1] [--also relay-normal forwarder-strict]
        [--profile DIR] [--json PATH] [--check]

The whole suite (issue 8: this workload plus paced latency, idle connections,
offline drain, fan-out and client crypto) is ``bench/run.py``, which calls
:func:`throughput` for workloads 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import LoadError, LoadSpec, run_load
from bench.procs import ServerError, ServerProcess, busy_fraction, machine_cpu_ticks

ROOT = Path(__file__).resolve().parents[1]

THROUGHPUT_RATIO_MIN = 0.5
"""Issue 4: relay msg/s ≥ this × forwarder msg/s (issue 8 raises it to 0.6)."""
P99_RATIO_MAX = 3.0
"""Issue 4: relay p99 delivery latency ≤ this × the forwarder's at the same load."""

UNLIMITED_RATE = "1000000000"
"""Send rate and burst given to the relay under test, far above anything reached."""

PROFILE_RATE_HZ = 250
"""py-spy sampling rate: enough samples in a ~10 s run, little overhead."""

ServerArgv = Callable[[Path], list[str]]

VERSIONED = ("blindrelay", "websockets", "msgpack", "pynacl", "sqlite-utils")
"""Distributions whose versions go into every JSON record."""


def unlimited_flags() -> list[str]:
    """``blindrelay serve`` flags that raise the send, statement and registration limits
    out of reach.

    Every benchmark account registers from 127.0.0.1 (SPEC §4.6.1), and the default send
    rates would measure the token buckets, not the relay. The statement bucket (SPEC §7.4:
    60 at once, 60 an hour) is raised too: ``bench/soak.py``'s consent and block links
    sign one every few seconds, a burst spent in about ten minutes, after which every
    refusal counted as unexpected and those links stopped (a 30-minute soak on
    2026-12-07, the first since the bucket came).
    """
    return [
        f"--{name}={UNLIMITED_RATE}"
        for name in (
            "send-rate-user", "send-burst-user", "send-rate-pair", "send-burst-pair",
            "statement-rate-per-h", "statement-burst",
            "register-rate-per-h", "register-burst", "max-unauthenticated-per-source",
            "connections-per-s-source", "connections-burst-source",
        )
    ]  # fmt: skip


def relay_argv(synchronous: str) -> ServerArgv:
    def argv(workdir: Path) -> list[str]:
        return [
            sys.executable, "-m", "blindrelay.server.cli", "serve",
            "--host", "127.0.0.1", "--port", "0", "--db", str(workdir / "relay.db"),
            "--synchronous", synchronous, *unlimited_flags(),
            "--metrics-listen", f"127.0.0.1:{free_port()}",  # its SEND stages, read after
        ]  # fmt: skip

    return argv


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


STAGES = ("loop", "store", "answer", "total")
"""SEND → SENT stages; ``batch`` and ``commit`` (a group-committed batch, its COMMIT) are
reported beside them: where the store stage's time goes."""


def send_stages(argv: list[str]) -> dict[str, list[float]] | None:
    """The relay's SEND → SENT histogram by stage (``/metrics``), its batches' and
    COMMITs' times, SEND → DELIVER (``deliver``) and the way to a decision before the
    commit by its stages (``decision wait``, ``decision decide``, ``decision back``):
    [p50, p99] ms of each, interpolated within its bucket as Prometheus's
    histogram_quantile does; None for a server without ``--metrics-listen``."""
    if "--metrics-listen" not in argv:
        return None
    text = metrics_text(argv[argv.index("--metrics-listen") + 1])
    buckets: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}
    store_parts = {
        "blindrelay_commit_batch_seconds": "batch", "blindrelay_commit_seconds": "commit",
    }  # fmt: skip
    delivered: dict[float, float] = {}  # SEND → DELIVER, both paths (before/after commit)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            bound = float(sample.labels["le"])
            if family.name == "blindrelay_send_seconds" and sample.labels.get("stage") in buckets:
                buckets[sample.labels["stage"]].append((bound, sample.value))
            elif family.name in store_parts:  # inside the store stage: a batch, its COMMIT
                buckets.setdefault(store_parts[family.name], []).append((bound, sample.value))
            elif family.name == "blindrelay_deliver_seconds":
                delivered[bound] = delivered.get(bound, 0.0) + sample.value
            elif family.name == "blindrelay_decision_seconds":
                buckets.setdefault(f"decision {sample.labels['stage']}", []).append(
                    (bound, sample.value)
                )
    if delivered:
        buckets["deliver"] = list(delivered.items())
    return {
        stage: [round(quantile(q, sorted(rows)) * 1e3, 2) for q in (0.5, 0.99)]
        for stage, rows in buckets.items()
        if rows and rows[-1][1] > 0
    }


def metrics_text(address: str, timeout_s: float = 10.0) -> str:
    """The relay's ``/metrics`` page (Prometheus text) from its ``--metrics-listen`` HOST:PORT."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as answer:
        text: str = answer.read().decode()
    return text


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """``q`` of a cumulative histogram [(upper bound, count)], linear within a bucket."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = bound, count
    return lower


def forwarder_argv(*extra: str) -> ServerArgv:
    def argv(workdir: Path) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "forwarder.py"), "--port", "0", *extra]

    return argv


BASELINE = "forwarder"
SUBJECT = "relay"
SERVERS: dict[str, tuple[str, ServerArgv]] = {
    "forwarder": ("in-memory forwarder (baseline)", forwarder_argv()),
    "relay": ("relay, synchronous=FULL (default)", relay_argv("FULL")),
    "relay-normal": ("relay, synchronous=NORMAL", relay_argv("NORMAL")),
    "forwarder-strict": ("forwarder with the strict codec", forwarder_argv("--strict")),
}
"""Every server the script can measure; ``forwarder`` and ``relay`` always run."""


@dataclass(frozen=True, slots=True)
class Row:
    """One server under one workload: the figures the table and the JSON carry."""

    server: str
    messages: int
    elapsed_s: float
    msgs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    sent_p50_ms: float
    sent_p99_ms: float
    rss_idle_kib: int
    rss_kib: int
    peak_rss_kib: int
    server_cpu_us_per_msg: float
    client_cpu_us_per_msg: float
    server_cpu_wait_us_per_msg: float = 0.0
    """Time the server's threads spent runnable but waiting for a core, per message."""
    server_runs_per_msg: float = 0.0
    """Times a server thread was put on a core (woken), per message."""
    client_cpu_wait_us_per_msg: float = 0.0
    send_stages_ms: dict[str, list[float]] | None = None
    """The relay's own SEND → SENT split (loop, store, answer, total): [p50, p99] ms."""
    departure_p95_ms: float | None = None
    """Paced loads: p95 from when each SEND left the load generator, not from when it was
    due; what the server and the receiving side add, the sender's lateness left out."""
    departure_p99_ms: float | None = None
    machine_busy: float | None = None
    """Share of both cores busy from the load's start to its end, connecting and
    registering left out (:func:`procs.machine_cpu_ticks`): server, load generator and
    everything else together."""


def throughput(name: str, spec: LoadSpec, workdir: Path, profile: Path | None) -> Row:
    """Workload 1: start ``name`` fresh, run the load against it, read its /proc entry."""
    argv = SERVERS[name][1](workdir)
    with ServerProcess(argv, log=workdir / f"{name}.log", cwd=ROOT) as server:
        idle_rss, _ = server.memory_kib()
        spy = start_profiler(server.pid, profile / f"{name}.txt") if profile else None
        cpu0, (wait0, runs0) = server.cpu_s(), server.schedstat()
        ticks: dict[str, tuple[int, int]] = {}  # at the load's start and end, set-up left out
        result = run_load(
            LoadSpec(**{**asdict(spec), "url": server.url}),
            lambda phase, _reports: ticks.__setitem__(phase, machine_cpu_ticks()),
        )
        machine = busy_fraction(ticks["ready"], ticks["done"])
        cpu, (wait, runs) = server.cpu_s() - cpu0, server.schedstat()
        wait, runs = wait - wait0, runs - runs0
        rss, peak = server.memory_kib()
        stages = send_stages(argv)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    n = result.messages
    return Row(
        server=name,
        messages=n,
        elapsed_s=round(result.elapsed_s, 3),
        msgs_per_s=round(result.rate, 1),
        p50_ms=round(result.delivery_ms(50), 2),
        p95_ms=round(result.delivery_ms(95), 2),
        p99_ms=round(result.delivery_ms(99), 2),
        sent_p50_ms=round(result.sent_ms(50), 2),
        sent_p99_ms=round(result.sent_ms(99), 2),
        rss_idle_kib=idle_rss,
        rss_kib=rss,
        peak_rss_kib=peak,
        server_cpu_us_per_msg=round(cpu / n * 1e6, 1),
        client_cpu_us_per_msg=round(result.client_cpu_s / n * 1e6, 1),
        server_cpu_wait_us_per_msg=round(wait / n * 1e6, 1),
        server_runs_per_msg=round(runs / n, 2),
        client_cpu_wait_us_per_msg=round(result.client_cpu_wait_s / n * 1e6, 1),
        send_stages_ms=stages,
        departure_p95_ms=_ms(result.departure_ms(95)),
        departure_p99_ms=_ms(result.departure_ms(99)),
        machine_busy=round(machine, 3),
    )


def _ms(value: float) -> float | None:
    """Rounded, or None for NaN (a load that was not paced)."""
    return None if math.isnan(value) else round(value, 2)


def start_profiler(pid: int, out: Path, rate_hz: int = PROFILE_RATE_HZ) -> subprocess.Popen[bytes]:
    """py-spy in raw (collapsed stacks) format, all threads, GIL-idle samples dropped."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", str(rate_hz), "--format",
         "raw", "--output", str(out), "--threads", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def median_run(rows: list[Row]) -> Row:
    """The run with the median throughput: one whole run, so its figures belong together."""
    return sorted(rows, key=lambda row: row.msgs_per_s)[(len(rows) - 1) // 2]


def ratios(subject: Row, baseline: Row) -> dict[str, float]:
    return {
        "throughput": round(subject.msgs_per_s / baseline.msgs_per_s, 3),
        "p50": round(subject.p50_ms / baseline.p50_ms, 3),
        "p99": round(subject.p99_ms / baseline.p99_ms, 3),
        "peak_rss": round(subject.peak_rss_kib / baseline.peak_rss_kib, 3),
        "server_cpu_per_msg": round(
            subject.server_cpu_us_per_msg / baseline.server_cpu_us_per_msg, 3
        ),
    }


def targets(r: dict[str, float]) -> dict[str, bool]:
    return {
        f"throughput >= {THROUGHPUT_RATIO_MIN}x": r["throughput"] >= THROUGHPUT_RATIO_MIN,
        f"p99 <= {P99_RATIO_MAX}x": r["p99"] <= P99_RATIO_MAX,
    }


def render(
    spec: LoadSpec, rows: list[Row], r: dict[str, float], met: dict[str, bool], repeat: int
) -> str:
    head = (
        f"{spec.pairs} pairs x {spec.messages} messages x {spec.size} B, window {spec.window}, "
        f"{spec.workers} load processes, {_cpus()} CPUs, median of {repeat} run(s)"
    )
    cols = (
        f"{'server':<18}{'msg/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'SENT p50':>9}{'RSS MiB':>9}{'peak MiB':>9}{'srv us/msg':>11}"
    )
    lines = [head, cols, "-" * len(cols)]
    for row in rows:
        lines.append(
            f"{row.server:<18}{row.msgs_per_s:>9,.0f}{row.p50_ms:>8.1f}{row.p95_ms:>8.1f}"
            f"{row.p99_ms:>8.1f}{row.sent_p50_ms:>9.1f}{row.rss_kib / 1024:>9.1f}"
            f"{row.peak_rss_kib / 1024:>9.1f}{row.server_cpu_us_per_msg:>11.0f}"
        )
    lines.append(
        f"{'relay/forwarder':<18}{r['throughput']:>8.2f}x{r['p50']:>7.2f}x{'':>8}{r['p99']:>7.2f}x"
        f"{'':>9}{'':>9}{r['peak_rss']:>8.2f}x{r['server_cpu_per_msg']:>10.2f}x"
    )
    verdict = "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in met.items())
    lines.append(f"targets (issue 4): {verdict}")
    return "\n".join(lines)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _proc_field(path: str, name: str) -> str | None:
    """The first ``name: value`` line of a /proc file (Linux), or None."""
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def environment() -> dict[str, object]:
    """What a reader needs to compare a record with their own run."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "machine": platform.machine(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "system": f"{platform.system()} {platform.release()}",
        "cpus": _cpus(),
        "ram": _proc_field("/proc/meminfo", "MemTotal"),
        "python": platform.python_version(),
        "versions": {pkg: version(pkg) for pkg in VERSIONED} | {"sqlite": sqlite3.sqlite_version},
        "commit": commit,
        "uncommitted_changes": dirty,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000, help="per pair")
    parser.add_argument("--window", type=int, default=10, help="SENDs in flight per sender")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per server")
    extras = [name for name in SERVERS if name not in (BASELINE, SUBJECT)]
    parser.add_argument(
        "--also", nargs="*", default=[], choices=extras, help="extra servers, for diagnosis"
    )
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of each server here")
    parser.add_argument("--json", type=Path, help="write the run's record here")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per server; the median by msg/s is shown"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    spec = LoadSpec(
        url="",
        pairs=args.pairs,
        messages=args.messages,
        window=args.window,
        size=args.size,
        workers=args.workers,
        timeout_s=args.timeout,
    )
    names = [BASELINE, SUBJECT, *args.also]
    runs: list[Row] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="blindrelay-bench-") as tmp:
        for attempt in range(args.repeat):  # interleaved, so drifting load hits all alike
            for name in names:
                workdir = Path(tmp) / f"{name}-{attempt}"
                workdir.mkdir()
                profile = args.profile / f"run{attempt}" if args.profile else None
                try:
                    runs.append(throughput(name, spec, workdir, profile))
                except (LoadError, ServerError) as exc:
                    print(f"{name}: aborted: {exc}", file=sys.stderr)
                    _print_tail(workdir / f"{name}.log")
                    return 2
    rows = [median_run([row for row in runs if row.server == name]) for name in names]
    by_name = {row.server: row for row in rows}
    r = ratios(by_name[SUBJECT], by_name[BASELINE])
    met = targets(r)
    print(render(spec, rows, r, met, args.repeat))
    if args.json:
        record = {
            "suite": "relay",
            "started": started,
            "environment": environment(),
            "parameters": {k: v for k, v in asdict(spec).items() if k != "url"},
            "rows": [asdict(row) for row in rows],
            "runs": [asdict(row) for row in runs],
            "ratios": r,
            "targets": met,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if args.check and not all(met.values()) else 0


def _print_tail(log: Path, lines: int = 20) -> None:
    if log.exists():
        for line in log.read_text(errors="replace").splitlines()[-lines:]:
            print(f"  | {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
