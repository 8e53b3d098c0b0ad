"""The writer process: owns the one writing SQLite connection, runs jobs by name.

Why a process: a writer *thread* shared the GIL with the event loop, and every
SQLite call releases and re-acquires it, so the loop and the writer slowed
each other down. Here the writer has its own interpreter; the relay talks to
it over a socketpair (see :mod:`.writer` for the protocol).

Loop: block for the next batch, drain whatever else already arrived (up to
``MAX_JOBS_PER_COMMIT``), run it as one transaction
(:class:`~.tables.GroupCommitter`), send the decisions of its SENDs
(:data:`DECIDED_BEFORE_COMMIT`), COMMIT, answer with one msgpack message holding
every job's outcome and any log lines. Jobs are ``[id, operation, args]``
looked up in :data:`.jobs.OPERATIONS` — nothing else can be run.

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
import time
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

from blindrelay.protocol.errors import ProtocolError

from ... import gcpolicy
from ...logs import _FIELDS, LOGGER, log_event
from .jobs import OPERATIONS
from .tables import MAX_JOBS_PER_COMMIT, GroupCommitter, Job, Tables, checkpoint, connect

PR_SET_PDEATHSIG = 1
RECV_BYTES = 1 << 20

DECIDED_BEFORE_COMMIT = frozenset({"send"})
"""Operations whose successful values are sent once their batch has run, before its
COMMIT (``["decided", …]``, :mod:`.writer`): a SEND's envelope can then go to an
online recipient while its commit is in flight (SPEC §6.4); its SENT still waits for
the commit."""

PAUSE_BEFORE_COMMIT_ENV = "BLINDRELAY_TEST_PAUSE_BEFORE_COMMIT"
"""Fault injection for the crash tests, and nothing else: while the file this variable
names exists, the writer waits after sending a batch's decisions and before its COMMIT
— so a test can kill the relay between a DELIVER and the commit of its envelope. Unset
in any real deployment; read once at start."""


class _Collect(logging.Handler):
    """Keeps log records as (level, event, fields) for the relay to log."""

    def __init__(self, out: list[list[Any]]) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append([record.levelno, record.getMessage(), getattr(record, _FIELDS, {})])


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


def serve(
    sock: socket.socket,
    committer: GroupCommitter,
    logs: list[list[Any]],
    pause: Path | None = None,
) -> None:
    """Answer batches until EOF; every job received before EOF is committed and answered."""
    unpacker = msgpack.Unpacker(raw=False)
    packer = msgpack.Packer(use_bin_type=True)

    def decided(batch: list[list[Any]], outcomes: list[tuple[bool, Any]]) -> None:
        decisions = [
            [job[0], value]
            for job, (ok, value) in zip(batch, outcomes, strict=True)
            if ok and job[1] in DECIDED_BEFORE_COMMIT
        ]  # fmt: skip
        if decisions:
            sock.sendall(packer.pack(["decided", decisions]))
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
        jobs = [_job(op, args) if op in OPERATIONS else _unknown(op) for _id, op, args in batch]
        started = time.perf_counter()
        outcomes = committer.commit(jobs, partial(decided, batch))
        stats = [len(jobs), time.perf_counter() - started, committer.last_commit_s]
        answers = [
            [job[0], True, value] if ok else [job[0], False, _error(value)]
            for job, (ok, value) in zip(batch, outcomes, strict=True)
        ]
        try:
            message = packer.pack([answers, logs, stats])
        except (TypeError, ValueError) as exc:  # an operation returned a non-msgpack value
            packable = [_packable(packer, answer, exc) for answer in answers]
            message = packer.pack([packable, logs, stats])
        logs.clear()
        sock.sendall(message)


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
        tables = Tables(connect(Path(path), synchronous))
    except Exception as exc:
        sock.sendall(msgpack.packb(["error", type(exc).__name__, str(exc)]))
        return 1
    # Started and the database open: freeze what lives as long as the process (gcpolicy);
    # the log line goes out with the first answer.
    frozen = gcpolicy.apply(int(gc_threshold))
    log_event(logging.INFO, "gc_policy", role="writer", threshold=int(gc_threshold), frozen=frozen)
    sock.sendall(msgpack.packb(["ready", os.getpid()]))
    pause = os.environ.get(PAUSE_BEFORE_COMMIT_ENV)
    try:
        serve(sock, GroupCommitter(tables), logs, Path(pause) if pause else None)
        checkpoint(tables.db)  # a stopped relay leaves nothing in its WAL (SPEC §11.2)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the relay is gone; nothing left to answer
    finally:
        tables.db.conn.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
