"""The writer process: owns the one writing SQLite connection, runs jobs by name.

Why a process: a writer *thread* shared the GIL with the event loop, and every
SQLite call releases and re-acquires it, so the loop and the writer slowed
each other down. Here the writer has its own interpreter; the relay talks to
it over a socketpair (see :mod:`.writer` for the protocol).

Loop: block for the next batch, drain whatever else already arrived (up to
``MAX_JOBS_PER_COMMIT``), run it as one transaction
(:class:`~.commit.GroupCommitter`), send the decisions of its SENDs
(:data:`DECIDED_BEFORE_COMMIT`), COMMIT, answer with one msgpack message holding
every job's outcome and any log lines. Jobs are ``[id, operation, args]``
looked up in :data:`.jobs.OPERATIONS` — nothing else can be run. With
``synchronous=FULL`` the answers wait for an fsync in a thread of their own
(:class:`Durability`) while the loop goes on with the next batch.

Lifetime: the process dies with the relay. ``PR_SET_PDEATHSIG`` makes the
kernel SIGKILL it when the relay dies, even by SIGKILL (an uncommitted
transaction is then rolled back by SQLite on the next open); EOF on the socket
(the relay closed it, or exited) means finish the jobs received, commit, answer
and exit. SIGINT and SIGTERM are ignored: a Ctrl-C reaches the whole process
group, and the relay, not the signal, decides when the last commit has happened.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

from blindrelay.protocol.errors import ProtocolError

from ... import gcpolicy
from ...logs import FIELDS_ATTRIBUTE, LOGGER, log_event
from .commit import MAX_JOBS_PER_COMMIT, GroupCommitter, Job
from .database import checkpoint, connect
from .jobs import OPERATIONS
from .tables import Tables

PR_SET_PDEATHSIG = 1
RECV_BYTES = 1 << 20

DECIDED_BEFORE_COMMIT = frozenset({"send"})
"""Operations whose successful values are sent once their batch has run, before its
COMMIT (``["decided", …]``, :mod:`.writer`): a SEND's envelope can then go to an
online recipient while its commit is in flight (SPEC §6.4); its SENT still waits for
the commit. The message also carries when the writer took the batch and when it sent
the decisions (``time.monotonic``, the same clock in every process on Linux): where a
DELIVER's time goes, for ``/metrics``."""

ANSWERED_WITHOUT_SYNC = frozenset({"acknowledge"})
"""Operations whose answers promise nothing that must survive a crash: the relay sends
no response to an ACK (SPEC §6.5), and a deletion that a crash undoes only makes the
delivery happen again on the next connection, which the client drops by
``(sender, msg_id)`` and acknowledges again (§6.4.3). A batch holding only these is
answered, in order, without waiting for an fsync of its own (:class:`Durability`); its
WAL frames reach the disk with the next batch's fsync or the next checkpoint."""

PAUSE_BEFORE_COMMIT_ENV = "BLINDRELAY_TEST_PAUSE_BEFORE_COMMIT"
"""Fault injection for the crash tests, and nothing else: while the file this variable
names exists, the writer waits after sending a batch's decisions and before its COMMIT
— so a test can kill the relay between a DELIVER and the commit of its envelope. Unset
in any real deployment; read once at start."""

HOLD_BEFORE_BATCH_ENV = "BLINDRELAY_TEST_HOLD_BEFORE_BATCH"
"""Fault injection for tests, and nothing else: while the file this variable names
exists, the writer waits once it has received a job and before it gathers its batch —
so jobs sent meanwhile share one batch, which a test needs in order to build a batch of
several SENDs when an idle writer would otherwise take the first one alone
(:meth:`.writer.Writer.call`). Unset in any real deployment; read once at start."""


class _Collect(logging.Handler):
    """Keeps log records as (level, event, fields) for the relay to log."""

    def __init__(self, out: list[list[Any]]) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, FIELDS_ATTRIBUTE, {})
        self.out.append([record.levelno, record.getMessage(), fields])


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the relay died before prctl took effect
        os._exit(1)


def _error(exc: BaseException) -> list[Any]:
    """(error code name, detail); a non-protocol failure by type and place only."""
    if isinstance(exc, ProtocolError):
        return [exc.code.name, exc.detail]
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    return ["INTERNAL_ERROR", "", type(exc).__name__, where]


def _job(operation: str, args: list[Any]) -> Job:
    function = OPERATIONS[operation]  # KeyError: refused as an internal error
    return lambda tables: function(tables, *args)


def _unknown(operation: str) -> Job:
    def job(tables: Tables) -> None:
        raise LookupError(f"unknown operation {operation!r}")

    return job


class Durability:
    """``synchronous=FULL``'s promise with the fsync off the writer's path.

    The connection commits with ``synchronous=NORMAL``: COMMIT writes the batch's WAL
    frames (to the page cache) and returns, and the writer goes on with the next batch at
    once. This thread then fsyncs the WAL file — every batch committed so far in one
    fsync — and only then sends those batches' answers, in order. So no SENT (nor any
    other answer) leaves before its transaction is on disk, exactly as with FULL, whose
    COMMIT syncs the WAL before returning; what changes is that the writer no longer
    waits for the disk between batches (issue 19: a SEND arriving during a batch's fsync
    waited for it before its own batch could even start, and its DELIVER with it).

    Why this is FULL's durability: what an answer acknowledges is in WAL frames written
    before the fsync that precedes the answer. SQLite overwrites WAL frames only after a
    checkpoint has copied them into the database file, and with NORMAL a checkpoint syncs
    the WAL first and the database file after. Readers may see a batch before its fsync;
    nothing a reader serves on the event loop (accounts, prekey checks) acknowledges a
    write. If an fsync fails, the process exits at once: nothing more is answered, the
    relay fails what was waiting, and whether those batches survived is left to SQLite's
    recovery — the senders resend (SPEC §6.3).

    A batch of :data:`ANSWERED_WITHOUT_SYNC` jobs alone needs no fsync: when every batch
    due holds only those, their answers go out without one, and when nothing is ahead
    of such a batch its answer leaves at once, from the writer's own thread (issue 19:
    each delivered message's ACK cost an fsync, a thread hop and their wake-ups, on the
    cores the next SEND needed).
    """

    def __init__(self, wal: Path, sock: socket.socket, lock: threading.Lock) -> None:
        self.wal = wal
        self.sock = sock
        self.lock = lock
        self._waiting: list[tuple[list[Any], bool]] = []
        """Committed batches' ``[answers, logs, stats]``, each with whether it needs an fsync."""
        self._packer = msgpack.Packer(use_bin_type=True)
        """The writer thread's own, for answers that leave without a sync."""
        self._syncing = 0
        """Batches in the fsync under way."""
        self._gone = False
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="durability", daemon=True)
        self._thread.start()

    def answer(self, message: list[Any], durable: bool = True) -> None:
        """``[answers, logs, stats]`` of a batch just committed: sent once it is on disk, or,
        if not ``durable`` (:data:`ANSWERED_WITHOUT_SYNC`), once every earlier answer is."""
        with self._ready:
            if not durable and not self._waiting and not self._syncing and not self._gone:
                # Nothing ahead of it: no reason to wake the thread. Sent under the
                # condition, so the thread cannot send a later answer first.
                try:
                    with self.lock:
                        self.sock.sendall(_pack(self._packer, message, 0.0))
                except OSError:
                    self._gone = True
                    self._ready.notify_all()
                return
            self._waiting.append((message, durable))
            self._ready.notify_all()

    def wait_behind(self, batches: int) -> None:
        """Return once at most ``batches`` committed batches await their fsync.

        The bound is what keeps group commit grouping: unbounded, the writer would
        commit every SEND alone while the disk syncs, and spend its CPU on COMMITs
        (measured: server CPU per message doubled at half load). One batch ahead is
        enough for a SEND arriving during an fsync to be decided at once.
        """
        with self._ready:
            while not self._gone and len(self._waiting) + self._syncing > batches:
                self._ready.wait()

    def close(self) -> None:
        """Every answer handed over is synced and sent before this returns."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        while True:
            with self._ready:
                while not self._waiting and not self._closing:
                    self._ready.wait()
                if not self._waiting:
                    return
                due, self._waiting = self._waiting, []
                self._syncing = len(due)
            fsync_s = 0.0
            if any(durable for _message, durable in due):
                started = time.perf_counter()
                try:
                    sync_file(self.wal)
                except OSError:
                    os._exit(3)  # the disk failed us: answer nothing more (class docstring)
                fsync_s = time.perf_counter() - started
            data = b"".join(_pack(packer, message, fsync_s) for message, _durable in due)
            try:
                with self.lock:
                    self.sock.sendall(data)
            except OSError:  # the relay is gone: nobody to answer, nobody to wait for
                with self._ready:
                    self._gone = True
                    self._waiting.clear()
                    self._syncing = 0
                    self._ready.notify_all()
                return
            with self._ready:
                self._syncing = 0
                self._ready.notify_all()


def sync_file(path: Path) -> None:
    """fsync ``path`` through a descriptor of its own: Linux syncs the file's pages,
    whoever wrote them. Opened each time, so a WAL truncated or made anew is the one
    synced; none at all means nothing was written to it since the last checkpoint,
    which synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pack(packer: msgpack.Packer, message: list[Any], fsync_s: float) -> bytes:
    answers, logs, stats = message
    stats[1] += fsync_s  # the batch and its COMMIT include the sync that made it durable
    stats[2] += fsync_s
    data: bytes
    try:
        data = packer.pack([answers, logs, stats])
    except (TypeError, ValueError) as exc:  # an operation returned a non-msgpack value
        data = packer.pack([[_packable(packer, a, exc) for a in answers], logs, stats])
    return data


def serve(
    sock: socket.socket,
    committer: GroupCommitter,
    logs: list[list[Any]],
    pause: Path | None = None,
    durability: Durability | None = None,
    hold: Path | None = None,
) -> None:
    """Answer batches until EOF; every job received before EOF is committed and answered.

    With ``durability``, answers go out through it, after the fsync that makes them
    durable; without, the COMMIT itself was durable and they go out at once."""
    unpacker = msgpack.Unpacker(raw=False)
    packer = msgpack.Packer(use_bin_type=True)
    lock = durability.lock if durability is not None else threading.Lock()

    def send(data: bytes) -> None:
        with lock:
            sock.sendall(data)

    def decided(batch: list[list[Any]], taken: float, outcomes: list[tuple[bool, Any]]) -> None:
        decisions = [
            [job[0], value]
            for job, (ok, value) in zip(batch, outcomes, strict=True)
            if ok and job[1] in DECIDED_BEFORE_COMMIT
        ]  # fmt: skip
        if decisions:
            send(packer.pack(["decided", decisions, taken, time.monotonic()]))
            while pause is not None and pause.exists():
                time.sleep(0.01)

    recv = sock.recv
    queued: list[list[Any]] = []
    eof = False
    while True:
        if not queued:
            if eof:
                return
            data = recv(RECV_BYTES)
            if not data:
                eof = True
                continue
            unpacker.feed(data)
            for batch in unpacker:
                queued.extend(batch)
        if durability is not None:
            durability.wait_behind(1)  # meanwhile more jobs arrive: a larger batch
        while hold is not None and hold.exists():
            time.sleep(0.01)
        while not eof and len(queued) < MAX_JOBS_PER_COMMIT:
            try:
                data = recv(RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            unpacker.feed(data)
            for batch in unpacker:
                queued.extend(batch)
        batch, queued = queued[:MAX_JOBS_PER_COMMIT], queued[MAX_JOBS_PER_COMMIT:]
        taken = time.monotonic()
        jobs = [_job(op, args) if op in OPERATIONS else _unknown(op) for _id, op, args in batch]
        started = time.perf_counter()
        outcomes = committer.commit(jobs, partial(decided, batch, taken))
        stats = [len(jobs), time.perf_counter() - started, committer.last_commit_s]
        answers = [
            [job[0], True, value] if ok else [job[0], False, _error(value)]
            for job, (ok, value) in zip(batch, outcomes, strict=True)
        ]
        message = [answers, list(logs), stats]
        logs.clear()
        if durability is not None:
            durability.answer(message, any(op not in ANSWERED_WITHOUT_SYNC for _, op, _ in batch))
        else:
            send(_pack(packer, message, 0.0))


def _packable(packer: msgpack.Packer, answer: list[Any], exc: Exception) -> list[Any]:
    try:
        packer.pack(answer)
    except (TypeError, ValueError):
        return [answer[0], False, _error(exc)]
    return answer


def main(argv: list[str]) -> int:
    """``writer_process FD PARENT_PID DB_PATH SYNCHRONOUS LOG_LEVEL GC_THRESHOLD``."""
    fd, parent_pid, path, synchronous, level, gc_threshold = argv
    _die_with_parent(int(parent_pid))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(True)
    logs: list[list[Any]] = []
    LOGGER.setLevel(int(level))
    LOGGER.addHandler(_Collect(logs))
    LOGGER.propagate = False
    try:
        # FULL: commits with NORMAL, and the Durability thread syncs before answering.
        tables = Tables(connect(Path(path), "NORMAL" if synchronous == "FULL" else synchronous))
        if synchronous == "FULL":
            sync_file(Path(f"{path}-wal"))  # the schema, if this start made or upgraded it
    except Exception as exc:
        sock.sendall(msgpack.packb(["error", type(exc).__name__, str(exc)]))
        return 1
    # Started and the database open: freeze what lives as long as the process (gcpolicy);
    # the log line goes out with the first answer.
    frozen = gcpolicy.apply(int(gc_threshold))
    log_event(logging.INFO, "gc_policy", role="writer", threshold=int(gc_threshold), frozen=frozen)
    sock.sendall(msgpack.packb(["ready", os.getpid()]))
    pause = os.environ.get(PAUSE_BEFORE_COMMIT_ENV)
    hold = os.environ.get(HOLD_BEFORE_BATCH_ENV)
    durability = (
        Durability(Path(f"{path}-wal"), sock, threading.Lock()) if synchronous == "FULL" else None
    )
    try:
        try:
            serve(
                sock, GroupCommitter(tables), logs, Path(pause) if pause else None, durability,
                Path(hold) if hold else None,
            )  # fmt: skip
        finally:
            if durability is not None:
                durability.close()
        checkpoint(tables.db)  # a stopped relay leaves nothing in its WAL (SPEC §11.2)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the relay is gone; nothing left to answer
    finally:
        tables.db.conn.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
