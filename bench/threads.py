"""The relay alone at one rate, thread by thread: where its CPU and its waits go.

Why: ``bench/run.py`` gives each server's whole process tree. To tell the event loop,
the writer process and its fsync thread apart (issue 19: which hop costs what, and how
it changes with the rate), this runs only the relay, paced like workload 2, and prints
for every thread its CPU (user and system) per message, its time runnable but waiting
for a core, and how often it was put on a core, then the relay's own SEND stages from
its ``/metrics``. Comparing two versions means running this in each checkout in turn,
several times (``docs/latency.md`` has such comparisons).

``--syscalls`` also counts the server's system calls per message with ``perf stat``
(:class:`~bench.procs.SyscallCounter`); ``--server forwarder`` reads the baseline the
same way, so the two can be set side by side call by call. Counting costs each call a
little: read a ``--syscalls`` run's counts, not its latencies.

    .venv/bin/python bench/threads.py --rate 1000 [--seconds 15] [--pairs 50] [--json PATH]
    .venv/bin/python bench/threads.py --unloaded        # one pair, one message in flight
    .venv/bin/python bench/threads.py --unloaded --syscalls [--server forwarder]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import LoadError, LoadSpec, run_load
from bench.procs import (
    ServerError,
    ServerProcess,
    SyscallCounter,
    ThreadStat,
    busy_fraction,
    machine_cpu_ticks,
    syscall_counting_problem,
    thread_stats,
)
from bench.relay import BASELINE, SERVERS, SUBJECT, send_stages

ROOT = Path(__file__).resolve().parents[1]


def per_message(
    before: dict[int, ThreadStat],
    after: dict[int, ThreadStat],
    n: int,
    root: int,
    server: str = SUBJECT,
) -> list[dict[str, Any]]:
    """Each thread's use between two readings, per message (µs, and runs). Threads are
    named by role: the server's process is ``root`` (named ``server``), the writer
    process its child; a process's first thread is its ``main``."""
    rows = []
    for tid, end in sorted(after.items()):
        start = before.get(tid, replace(end, user_s=0, system_s=0, run_s=0, wait_s=0, runs=0))
        role = f"{server if end.pid == root else 'child'} {'main' if tid == end.pid else 'thread'}"
        rows.append({
            "pid": end.pid, "tid": tid, "name": end.name, "role": role,
            "cpu_us": round((end.run_s - start.run_s) / n * 1e6, 1),
            "user_us": round((end.user_s - start.user_s) / n * 1e6, 1),
            "system_us": round((end.system_s - start.system_s) / n * 1e6, 1),
            "wait_us": round((end.wait_s - start.wait_s) / n * 1e6, 1),
            "runs": round((end.runs - start.runs) / n, 2),
        })  # fmt: skip
    return rows


def measure(
    spec: LoadSpec, workdir: Path, server_name: str = SUBJECT, syscalls: bool = False
) -> dict[str, Any]:
    """Start a fresh server, run ``spec`` against it, read its threads around the load
    (and, with ``syscalls``, count its system calls over the same span)."""
    argv = SERVERS[server_name][1](workdir)
    marks: dict[str, tuple[dict[int, ThreadStat], tuple[int, int]]] = {}
    counter: SyscallCounter | None = None
    calls: dict[str, int] = {}
    with ServerProcess(argv, log=workdir / f"{server_name}.log", cwd=ROOT) as server:

        def phase(name: str, _reports: list[dict[str, Any]]) -> None:
            nonlocal counter, calls
            if name == "ready" and syscalls:
                counter = SyscallCounter(server.tree())
            if name == "done" and counter is not None:
                calls = counter.stop()
            marks[name] = (thread_stats(server.tree()), machine_cpu_ticks())

        try:
            result = run_load(replace(spec, url=server.url), phase)
        finally:
            if counter is not None and "done" not in marks:  # the load failed midway
                counter.stop()
        stages = send_stages(argv)
        root = server.pid
    (start, ticks0), (end, ticks1) = marks["ready"], marks["done"]
    n = result.messages
    return {
        "server": server_name,
        "spec": asdict(spec),
        "messages": n,
        "msgs_per_s": round(result.rate, 1),
        "p50_ms": round(result.delivery_ms(50), 2),
        "p95_ms": round(result.delivery_ms(95), 2),
        "p99_ms": round(result.delivery_ms(99), 2),
        "machine_busy": round(busy_fraction(ticks0, ticks1), 3),
        "threads": per_message(start, end, n, root, server_name),
        "send_stages_ms": stages,
        "syscalls_per_msg": {name: round(count / n, 2) for name, count in calls.items()}
        if syscalls
        else None,
    }


def render(record: dict[str, Any]) -> str:
    server = record["server"]
    lines = [
        f"{server} at {record['msgs_per_s']:,.0f} msg/s, {record['messages']:,} messages: "
        f"p50 {record['p50_ms']} ms, p95 {record['p95_ms']} ms, p99 {record['p99_ms']} ms; "
        f"both cores {100 * record['machine_busy']:.0f} % busy",
        f"{'pid':>7} {'tid':>7} {'thread':13} {'CPU us/msg':>11} {'user':>7} {'system':>7} "
        f"{'waits us/msg':>13} {'runs/msg':>9}",
    ]
    for t in record["threads"]:
        lines.append(
            f"{t['pid']:>7} {t['tid']:>7} {t['role']:13} {t['cpu_us']:>11,.1f} "
            f"{t['user_us']:>7,.1f} {t['system_us']:>7,.1f} {t['wait_us']:>13,.1f} "
            f"{t['runs']:>9.2f}"
        )
    total = sum(t["cpu_us"] for t in record["threads"])
    lines.append(f"{'':30} {total:>11,.1f}  (whole {server})")
    for stage, (p50, p99) in (record["send_stages_ms"] or {}).items():
        lines.append(f"  {stage:15} p50 {p50} ms, p99 {p99} ms")
    calls = record["syscalls_per_msg"]
    if calls is not None:
        lines.append("system calls per message, all threads:")
        lines.append("  " + "  ".join(f"{name} {count:,.2f}" for name, count in calls.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=float, help="msg/s over all pairs, paced as workload 2")
    load.add_argument("--unloaded", action="store_true", help="one pair, one message in flight")
    parser.add_argument("--seconds", type=float, default=15.0, help="paced run length (default 15)")
    parser.add_argument("--pairs", type=int, default=50, help="sender/recipient pairs (default 50)")
    parser.add_argument(
        "--server", choices=(SUBJECT, BASELINE), default=SUBJECT,
        help=f"the server to read (default {SUBJECT}; {BASELINE}: the baseline of bench/run.py)",
    )  # fmt: skip
    parser.add_argument(
        "--syscalls", action="store_true",
        help="also count the server's system calls per message (perf stat; needs perf)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the record here too")
    args = parser.parse_args(argv)
    if args.rate is not None and (args.rate <= 0 or args.seconds <= 0 or args.pairs < 1):
        parser.error("--rate and --seconds must be positive and --pairs at least 1")
    if args.syscalls and (problem := syscall_counting_problem()) is not None:
        parser.error(f"--syscalls: {problem}")
    if args.unloaded:
        spec = LoadSpec(url="", pairs=1, messages=3000, window=1, workers=1)
    else:
        messages = max(10, min(1000, int(args.rate * args.seconds / args.pairs)))
        spec = LoadSpec(url="", pairs=args.pairs, messages=messages, rate=args.rate)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
            record = measure(spec, Path(tmp), args.server, args.syscalls)
    except (LoadError, ServerError, OSError) as exc:
        print(f"threads: {exc}", file=sys.stderr)
        return 1
    print(render(record))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
