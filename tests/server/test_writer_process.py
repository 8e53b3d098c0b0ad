"""The writer process (server/store/sqlite/writer_process.py), on its own.

Its responsibilities: answer batches of ``[id, operation, args]`` read from a
socket, committing what has arrived together (at most ``MAX_JOBS_PER_COMMIT``
jobs per transaction) and answering each job in order; run nothing but the
named operations; turn failures into ``[code name, detail]`` or, for anything
that is not a protocol error, type and place only; carry log lines on its
answers; and, as a process, say whether it opened the database, ignore
SIGINT/SIGTERM, finish and checkpoint on EOF, and die with the relay.

``serve`` is driven here in-process over a socketpair; ``main`` as the
subprocess the relay starts, speaking its protocol by hand (no
:class:`~blindrelay.server.store.sqlite.writer.Writer`).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from blindrelay.protocol.errors import ErrorCode
from blindrelay.server.store.sqlite import jobs, writer_process
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

READ_TIMEOUT_S = 10.0
"""Longest wait for the process's next message; a healthy one answers in milliseconds."""


class Peer:
    """Our end of the writer's socket: msgpack messages, read with a timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(READ_TIMEOUT_S)
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, *batches: list[list[Any]]) -> None:
        for batch in batches:
            self.sock.sendall(msgpack.packb(batch, use_bin_type=True))

    def end(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def messages(self) -> list[Any]:
        """Every message until the other side closes."""
        while chunk := self.sock.recv(1 << 16):
            self.unpacker.feed(chunk)
        return list(self.unpacker)

    def next(self) -> Any:
        for message in self.unpacker:
            return message
        while True:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the writer closed its socket"
            self.unpacker.feed(chunk)
            for message in self.unpacker:
                return message


def account(job_id: int, handle: str) -> list[Any]:
    return [job_id, "create_account", [handle, "user", handle.encode().ljust(32, b"."), 0]]


# --- serve: batches in, one commit, answers out ---------------------------------------


@pytest.fixture
def committer(tmp_path: Path) -> Iterator[GroupCommitter]:
    tables = Tables(connect(tmp_path / "relay.db"))
    yield GroupCommitter(tables)
    tables.db.conn.close()


def serve_all(
    committer: GroupCommitter, *batches: list[list[Any]], logs: list[list[Any]] | None = None
) -> list[Any]:
    """Hand ``batches`` to ``serve`` before it starts, then EOF; its messages."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        peer = Peer(ours)
        peer.send(*batches)
        peer.end()
        writer_process.serve(theirs, committer, logs if logs is not None else [])
        theirs.close()
        return peer.messages()


def test_batches_that_arrived_together_are_one_commit_answered_in_order(
    committer: GroupCommitter,
) -> None:
    messages = serve_all(committer, [account(0, "alice"), account(1, "bob")], [account(2, "carol")])
    assert committer.commits == 1 and committer.jobs == 3
    [[answers, logs, (jobs, batch_s, commit_s)]] = messages
    assert (answers, logs) == ([[0, True, None], [1, True, None], [2, True, None]], [])
    assert jobs == 3 and 0 <= commit_s <= batch_s  # what /metrics shows of the group commit


def test_a_commit_holds_at_most_max_jobs_per_commit(
    committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound on the first job's latency: five jobs, two per commit, three answers."""
    monkeypatch.setattr(writer_process, "MAX_JOBS_PER_COMMIT", 2)
    messages = serve_all(committer, [account(n, f"user{n}") for n in range(5)])
    assert committer.commits == 3
    assert [[answer[0] for answer in answers] for answers, _, _ in messages] == [[0, 1], [2, 3], [4]]


def test_a_protocol_error_is_answered_as_its_code_name_and_detail(
    committer: GroupCommitter,
) -> None:
    [[answers, _, _]] = serve_all(committer, [account(0, "alice"), account(1, "alice")])
    assert answers[0] == [0, True, None]
    job_id, ok, (code, detail) = answers[1]
    assert (job_id, ok, code) == (1, False, ErrorCode.HANDLE_TAKEN.name)
    assert isinstance(detail, str)


def test_only_named_operations_run_and_other_failures_carry_no_message(
    committer: GroupCommitter,
) -> None:
    """SPEC §9: an internal error is its type and place; its message may quote input."""
    [[answers, _, _]] = serve_all(committer, [
        [0, "__import__", ["os"]],
        [1, "take_budget", ["secret-name", "alice", 1.0, 1, 0]],
        account(2, "alice"),
    ])  # fmt: skip
    assert answers[0][:2] == [0, False]
    assert answers[0][2][0] == "INTERNAL_ERROR" and answers[0][2][2] == "LookupError"
    code, detail, exc_type, exc_at = answers[1][2]
    assert (code, detail, exc_type) == ("INTERNAL_ERROR", "", "ValueError")
    assert exc_at.rsplit(":", 1)[0].endswith("sqlite/jobs.py")
    assert "secret-name" not in repr(answers)
    assert answers[2] == [2, True, None]  # its neighbours are committed


def test_a_result_msgpack_cannot_carry_fails_only_its_own_job(
    committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(jobs.OPERATIONS, "unpackable", lambda tables: object())
    [[answers, _, _]] = serve_all(committer, [account(0, "alice"), [1, "unpackable", []]])
    assert answers[0] == [0, True, None]
    assert answers[1][:2] == [1, False] and answers[1][2][0] == "INTERNAL_ERROR"
    assert answers[1][2][2] == "TypeError"


def test_log_lines_ride_on_the_next_answer_once(committer: GroupCommitter) -> None:
    logs: list[list[Any]] = [[20, "gc_policy", {"role": "writer"}]]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        peer = Peer(ours)
        peer.send([account(0, "alice")])
        peer.end()
        writer_process.serve(theirs, committer, logs)
        first = peer.next()
    assert first[1] == [[20, "gc_policy", {"role": "writer"}]] and logs == []


def test_jobs_received_before_eof_are_all_answered(committer: GroupCommitter) -> None:
    """EOF is how the relay stops its writer: nothing sent before it is dropped."""
    batches = [[account(n, f"user{n}")] for n in range(20)]
    messages = serve_all(committer, *batches)
    assert [answer[0] for answers, _, _ in messages for answer in answers] == list(range(20))


class DurableWriter:
    """``serve`` on a thread with a :class:`~writer_process.Durability` whose fsync waits
    for ``gate``: what the writer answers before and after the disk has synced."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path / "relay.db"
        self.synced: list[Path] = []
        self.gate = threading.Event()

        def slow_sync(path: Path) -> None:
            self.gate.wait(READ_TIMEOUT_S)
            self.synced.append(path)

        monkeypatch.setattr(writer_process, "sync_file", slow_sync)
        Tables(connect(self.path)).db.conn.close()  # the schema, before any reader
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.peer = Peer(self.ours)
        self.durability = writer_process.Durability(
            tmp_path / "relay.db-wal", self.theirs, threading.Lock()
        )
        self.thread = threading.Thread(target=self._serve)

    def _serve(self) -> None:
        tables = Tables(connect(self.path, "NORMAL"))  # on this thread
        try:
            writer_process.serve(self.theirs, GroupCommitter(tables), [], None, self.durability)
        finally:
            tables.db.conn.close()

    def wait_for_accounts(self, count: int) -> None:
        """Until a reader sees ``count`` accounts: their batch has committed, so the
        writer has taken it and anything sent now is a batch of its own."""
        reader = sqlite3.connect(self.path)
        try:
            for _ in range(500):
                if reader.execute("SELECT count(*) FROM accounts").fetchone()[0] == count:
                    return
                time.sleep(0.01)
            raise AssertionError(f"{count} accounts never committed")
        finally:
            reader.close()

    def silent_for(self, seconds: float) -> bool:
        """Nothing arrives from the writer within ``seconds``."""
        self.peer.sock.settimeout(seconds)
        try:
            self.peer.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.peer.sock.settimeout(READ_TIMEOUT_S)
        return False

    def finish(self) -> list[Any]:
        """Open the gate, end, and every answer in the order it came."""
        self.gate.set()
        self.peer.end()
        self.thread.join(READ_TIMEOUT_S)
        self.durability.close()
        self.theirs.close()
        answers = [answer for message in self.peer.messages() for answer in message[0]]
        self.ours.close()
        return answers


def ack(job_id: int, handle: str, *delivery_ids: int) -> list[Any]:
    return [job_id, "acknowledge", [[[handle, list(delivery_ids)]]]]


def test_with_durability_no_answer_leaves_before_the_wal_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Durability``: the writer commits without syncing and goes on; each answer waits
    for an fsync of the WAL that came after its COMMIT — FULL's promise, off the path."""
    w = DurableWriter(tmp_path, monkeypatch)
    w.peer.send([account(0, "alice")])
    w.thread.start()
    # The batch is committed (a reader sees alice) and the writer waits for more,
    # while its answer waits for the sync.
    w.wait_for_accounts(1)
    assert w.silent_for(0.2)
    w.peer.send([account(1, "bob")])  # the next batch goes on meanwhile
    assert w.finish() == [[0, True, None], [1, True, None]]
    assert w.synced and set(w.synced) == {tmp_path / "relay.db-wal"}


def test_a_batch_of_acks_alone_is_answered_without_waiting_for_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ACK has no response and a crash that undoes its deletion only delivers again
    (SPEC §6.5): its batch costs no fsync, so its answer comes while the disk would
    still be syncing — and no sync happened."""
    w = DurableWriter(tmp_path, monkeypatch)
    w.peer.send([ack(0, "alice", 1, 2), ack(1, "bob", 3)])
    w.thread.start()
    assert w.peer.next()[0] == [[0, True, [0]], [1, True, [0]]]
    assert not w.gate.is_set() and w.synced == []
    assert w.finish() == []


def test_a_batch_of_acks_behind_a_durable_batch_waits_for_its_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers leave in submission order (the relay depends on it): an ACK batch that
    needs no sync still waits behind an earlier batch's; one sync serves both, and a
    durable batch after them is synced again."""
    w = DurableWriter(tmp_path, monkeypatch)
    w.peer.send([account(0, "alice")])
    w.thread.start()
    w.wait_for_accounts(1)  # alice's answer now waits for the sync
    w.peer.send([ack(1, "alice", 1)])
    assert w.silent_for(0.2)
    w.peer.send([account(2, "bob")])
    assert w.finish() == [[0, True, None], [1, True, [0]], [2, True, None]]
    assert len(w.synced) >= 2  # alice's batch, and bob's after it


# --- main: the process the relay starts -------------------------------------------------


class WriterProcess:
    """``python -m …writer_process`` started as the relay starts it, and our socket."""

    def __init__(self, path: Path, parent_pid: int | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [str(theirs.fileno()), str(parent_pid or os.getpid()), str(path), "FULL", "20",
                "700"]  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blindrelay.server.store.sqlite.writer_process", *args],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        self.peer = Peer(ours)

    def exit_code(self) -> int:
        return self.process.wait(READ_TIMEOUT_S)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.peer.sock.close()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[WriterProcess]:
    process = WriterProcess(tmp_path / "relay.db")
    try:
        assert process.peer.next() == ["ready", process.process.pid]
        yield process
    finally:
        process.close()


@pytest.mark.slow
def test_the_process_answers_jobs_and_stops_cleanly_at_eof(
    started: WriterProcess, tmp_path: Path
) -> None:
    started.peer.send([account(0, "alice")])
    answers, logs, _stats = started.peer.next()
    assert answers == [[0, True, None]]
    assert "gc_policy" in [event for _level, event, _fields in logs]  # its start-up line
    started.peer.end()
    assert started.peer.messages() == [] and started.exit_code() == 0
    with sqlite3.connect(tmp_path / "relay.db") as db:
        assert db.execute("SELECT handle FROM accounts").fetchall() == [("alice",)]


@pytest.mark.slow
def test_a_stopped_writer_leaves_nothing_in_the_wal(started: WriterProcess, tmp_path: Path) -> None:
    """SPEC §11.2: the last commit is checkpointed and the WAL truncated before exit,
    even while another connection (an operator's ``inspect``) keeps the WAL file."""
    reader = sqlite3.connect(tmp_path / "relay.db")
    try:
        reader.execute("SELECT COUNT(*) FROM accounts").fetchone()
        started.peer.send([account(0, "alice")])
        started.peer.next()
        assert (tmp_path / "relay.db-wal").stat().st_size > 0
        started.peer.end()
        assert started.exit_code() == 0
        assert (tmp_path / "relay.db-wal").stat().st_size == 0
    finally:
        reader.close()


@pytest.mark.slow
def test_a_database_that_cannot_be_opened_is_reported_then_the_process_exits_1(
    tmp_path: Path,
) -> None:
    process = WriterProcess(tmp_path / "missing-dir" / "relay.db")
    try:
        tag, exc_type, message = process.peer.next()
        assert (tag, exc_type) == ("error", "FileNotFoundError")
        assert "No such file or directory" in message
        assert process.exit_code() == 1
    finally:
        process.close()


@pytest.mark.slow
def test_sigint_and_sigterm_leave_the_writer_running(started: WriterProcess) -> None:
    """A Ctrl-C reaches the whole process group: the relay, not the signal, decides
    when the last commit has happened."""
    with open(f"/proc/{started.process.pid}/status") as status:
        ignored = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1)) and ignored & (1 << (signal.SIGTERM - 1))
    started.process.send_signal(signal.SIGTERM)
    started.process.send_signal(signal.SIGINT)
    started.peer.send([account(0, "alice")])
    assert started.peer.next()[0] == [[0, True, None]]
    assert started.process.poll() is None


@pytest.mark.slow
def test_a_writer_whose_parent_is_already_gone_exits_at_once(tmp_path: Path) -> None:
    """``PR_SET_PDEATHSIG`` comes too late for a relay that died first: checked."""
    process = WriterProcess(tmp_path / "relay.db", parent_pid=1)
    try:
        assert process.exit_code() == 1
        assert process.peer.messages() == []  # not even "ready"
        assert not (tmp_path / "relay.db").exists()
    finally:
        process.close()


_RELAY = """
import asyncio, sys
from pathlib import Path
from blindrelay.server.store.sqlite.writer import Writer
async def main():
    writer = Writer(Path(sys.argv[1]), "FULL")
    await writer.start()
    print(writer.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")  # exited, not yet reaped
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_the_writer_process_dies_with_a_sigkilled_relay(tmp_path: Path) -> None:
    relay = subprocess.Popen(
        [sys.executable, "-c", _RELAY, str(tmp_path / "r.db")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert relay.stdout is not None
        writer_pid = int(relay.stdout.readline())
        assert not _gone(writer_pid)
        os.kill(relay.pid, signal.SIGKILL)
        relay.wait()
        deadline = time.monotonic() + 5
        while not _gone(writer_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gone(writer_pid)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
        if relay.stdout is not None:
            relay.stdout.close()
