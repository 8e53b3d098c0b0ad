"""Servers under test as subprocesses: start, wait for the URL, read /proc, stop.

Why subprocesses: the server must not share a process (or a GIL) with the load
generator, and its memory must be read from its own /proc entry. A server is
ready when it prints ``listening ws://HOST:PORT`` on stdout; nothing waits on a
timer. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"listening (ws://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    after_name = stat[stat.rindex(")") + 2 :].split()
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class ThreadStat:
    """One thread's counters so far (``/proc/PID/task/TID/{stat,schedstat}``)."""

    pid: int
    tid: int
    name: str
    user_s: float
    system_s: float
    run_s: float
    wait_s: float
    runs: int


def thread_stats(pids: list[int]) -> dict[int, ThreadStat]:
    """Every thread of ``pids`` by thread id; threads that end meanwhile are left out."""
    stats: dict[int, ThreadStat] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
                run_ns, wait_ns, runs = (task / "schedstat").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            tid = int(task.name)
            stats[tid] = ThreadStat(
                pid, tid, name, int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS,
                int(run_ns) / 1e9, int(wait_ns) / 1e9, int(runs),
            )  # fmt: skip
    return stats


def process_schedstat(pid: int) -> tuple[float, int]:
    """Over the threads of process ``pid`` (``/proc/PID/task/*/schedstat``): seconds spent
    runnable but waiting for a core, and how many times one was put on a core (each
    wake-up from a socket or a lock is one); (0, 0) once it is gone.

    Why: on cores the load generator shares, a message's latency is mostly this wait,
    not the work done for it, and every hop between processes or threads costs a
    wake-up (issue 19) — a benchmark must show both beside the CPU time to say where a
    tail comes from.
    """
    threads = thread_stats([pid]).values()
    return sum(t.wait_s for t in threads), sum(t.runs for t in threads)


def machine_cpu_ticks(stat: str | None = None) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores so far, from ``/proc/stat``'s ``cpu`` line.

    Why: a latency point is only comparable with another when both leave the machine the
    same headroom; at "half load" the server, the load generator and the kernel may
    together keep both cores busy (issue 19), and then the tail is queueing for a core.
    Idle and iowait count as not busy; a guest's steal, when reported, as busy.
    """
    text = stat if stat is not None else Path("/proc/stat").read_text()
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return total - idle, total


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Of all cores' time between two :func:`machine_cpu_ticks` readings, the busy share."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


SYSCALLS = (
    "sendto", "recvfrom", "epoll_wait", "futex", "pwrite64", "pread64", "fcntl", "fsync",
    "fdatasync", "getpid", "write", "read",
)  # fmt: skip
"""The system calls :class:`SyscallCounter` counts: the sockets (clients, the writer's
socketpair), waiting for them, waking threads, and what SQLite does per transaction (WAL
frames written, locks taken, syncs)."""

PERF_SETTLE_S = 0.5
"""How long ``perf stat`` gets to attach before the load starts: counting begins only
once it has opened its events on every thread."""


class SyscallCounter:
    """``perf stat`` on a process tree between two moments: each :data:`SYSCALLS`' calls
    and the context switches, over all threads of ``pids``.

    Why: CPU time says how much, not what for. Comparing the relay with the forwarder call
    by call shows where the relay's extra work goes (issue 19: per message, the writer's
    WAL writes and locks, and the extra hops between processes). Needs ``perf`` and
    permission to read syscall tracepoints (root, or ``perf_event_paranoid`` ≤ 1 and
    tracefs readable); :func:`syscall_counting_problem` says what is missing.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        events = [f"syscalls:sys_enter_{name}" for name in SYSCALLS] + ["context-switches"]
        self._process = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", ",".join(map(str, pids))],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(PERF_SETTLE_S)

    def stop(self) -> dict[str, int]:
        """Stop counting; each event's count (``syscalls:sys_enter_`` left out of names)."""
        self._process.send_signal(signal.SIGINT)
        try:
            _, err = self._process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, err = self._process.communicate()
        return parse_perf_stat(err)


def parse_perf_stat(text: str) -> dict[str, int]:
    """Counts from ``perf stat -x ,`` output (``value,unit,event,…`` per line); events
    perf could not count (``<not counted>``, ``<not supported>``) are left out."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3:
            continue
        try:
            value = int(float(fields[0]))
        except ValueError:
            continue
        counts[fields[2].removeprefix("syscalls:sys_enter_")] = value
    return counts


def syscall_counting_problem() -> str | None:
    """Why :class:`SyscallCounter` cannot run here, in one line saying what to do; or None."""
    if shutil.which("perf") is None:
        return "perf is not installed; install it (Debian: linux-perf) to count system calls"
    probe = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", f"syscalls:sys_enter_{SYSCALLS[0]}", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0 or f"sys_enter_{SYSCALLS[0]}" not in probe.stderr:
        return (
            "perf cannot read syscall tracepoints here; run as root, or lower "
            "/proc/sys/kernel/perf_event_paranoid to 1 and make tracefs readable"
        )
    return None


def process_memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process ``pid`` in KiB; (0, 0) once it is gone."""
    fields: dict[str, int] = {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # exited since it was listed
        return 0, 0
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the new limit.

    Only the calling process (and what it starts later) is affected, never the system:
    10,000 idle connections need more descriptors than the usual soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ServerError(RuntimeError):
    """The server did not start, or exited with an error."""


class ServerProcess:
    """One running server; use as a context manager so it is always stopped."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            cwd=cwd,
            preexec_fn=raise_nofile_limit,  # the server holds one descriptor per connection
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        self._pump_thread = threading.Thread(
            target=self._pump, args=(self.proc.stdout,), daemon=True
        )
        self._pump_thread.start()
        self.url = self._wait_for_url(timeout_s)

    def last_log_line(self) -> str:
        """The log's last non-empty line: the benchmarks' working directories are
        temporary, so a failure names what went wrong rather than a file that is gone."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return lines[-1][-300:] if lines else "(empty)"

    def _pump(self, stream: IO[bytes]) -> None:
        # Keeps reading so that a chatty server never blocks on a full pipe.
        for raw in stream:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def _wait_for_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self.stop()
                raise ServerError(
                    f"{self.argv[:4]} exited before listening (code {self.proc.returncode});"
                    f" the last of its log: {self.last_log_line()!r}"
                )
            if match := LISTENING.search(line):
                return match.group(1)
        self.stop()
        raise ServerError(f"{self.argv[:4]} did not print its URL within {timeout_s} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        """The server and every process it started (the relay has a writer process).

        A server's cost is its whole tree: leaving a helper process out would make
        it look cheaper than it is.
        """
        pids, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                    queue.extend(int(child) for child in task.read_text().split())
        return pids

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB over the process tree: resident now, and peak so far
        (the sum of each process's own peak, an upper bound of the tree's peak)."""
        rss = hwm = 0
        for pid in self.tree():
            own_rss, own_hwm = process_memory_kib(pid)
            rss += own_rss
            hwm += own_hwm
        return rss, hwm

    def cpu_s(self) -> float:
        """User + system CPU seconds the server's process tree has used so far."""
        return sum(process_cpu_s(pid) for pid in self.tree())

    def schedstat(self) -> tuple[float, int]:
        """:func:`process_schedstat` over the server's process tree."""
        stats = [process_schedstat(pid) for pid in self.tree()]
        return sum(wait for wait, _ in stats), sum(runs for _, runs in stats)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in STOP_TIMEOUT_S; returns the status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._log_file.close()
        # The pump ends at EOF, unless a process the server started still holds the pipe.
        self._pump_thread.join(timeout=STOP_TIMEOUT_S)
        if not self._pump_thread.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
