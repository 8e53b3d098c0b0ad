"""The relay's handle on the writer process (server/store/sqlite/writer.py), on its own.

What this module owns and is tested for here: starting the process and knowing
whether it opened the database, outcomes delivered in submission order,
errors rebuilt on the relay's side (a ProtocolError as its own class, anything
else as a StoreJobError by type and place), merging of consecutive
``call_many`` items, callbacks that raise, the writer's log lines relayed, a
process that dies, and a close that commits what is queued. What the
operations do is tests/server/test_storage.py's and the handlers' business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from blindrelay.protocol.errors import HandleTaken, InternalError
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.logs import JsonFormatter
from blindrelay.server.store import StoreJobError, StoreStartError, settling
from blindrelay.server.store.sqlite import writer as writer_module
from blindrelay.server.store.sqlite.writer import Writer, WriterStartError

from ..asyncrun import AsyncFixture

Outcomes = list[tuple[str, bool, object]]


class RunningWriter(AsyncFixture):
    def __init__(self, path: Path) -> None:
        self.writer = Writer(path, "FULL")

    async def __aenter__(self) -> Writer:
        await self.writer.start()
        return self.writer

    async def __aexit__(self, *exc: object) -> None:
        await self.writer.close()


@pytest.fixture
def writer(tmp_path: Path) -> RunningWriter:
    return RunningWriter(tmp_path / "relay.db")


def recorder(outcomes: Outcomes, name: str) -> Callable[[bool, object], None]:
    return lambda ok, value: outcomes.append((name, ok, value))


def wait_for_exit(pid: int) -> None:
    """Block until ``pid`` has exited, leaving it to its parent to reap (WNOWAIT)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return not stat.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return False


# --- starting -----------------------------------------------------------------------


async def test_a_writer_that_cannot_open_its_database_fails_to_start(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "missing-dir" / "relay.db", "FULL")
    with pytest.raises(WriterStartError, match="No such file or directory") as raised:
        await writer.start()
    assert isinstance(raised.value, StoreStartError)  # the CLI's one-line start failure
    assert not writer.running
    assert writer.pid is not None and not alive(writer.pid)  # reaped, not left behind


async def test_nothing_can_be_called_before_start_or_after_close(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "relay.db", "FULL")
    with pytest.raises(InternalError):
        writer.call("noop", (), lambda ok, value: None)
    await writer.start()
    assert writer.running
    await writer.close()
    assert not writer.running
    with pytest.raises(InternalError):
        writer.call("noop", (), lambda ok, value: None)


# --- outcomes -----------------------------------------------------------------------


async def test_outcomes_come_back_in_submission_order_with_their_values(
    writer: Writer,
) -> None:
    outcomes: Outcomes = []
    for handle in ("alice", "bob", "carol"):
        args = (handle, "user", handle.encode() * 4, 0)
        writer.call("create_account", args, recorder(outcomes, handle))
    writer.call("login_counts", ("bob", 0), recorder(outcomes, "count"))
    writer.call("relay_seed", (), recorder(outcomes, "seed"))
    await writer.submit("noop")
    assert outcomes == [
        ("alice", True, None), ("bob", True, None), ("carol", True, None),
        ("count", True, [0, 0, False, 1]), ("seed", True, None),
    ]  # fmt: skip


async def test_a_protocol_error_in_the_writer_is_raised_again_as_its_own_class(
    writer: Writer,
) -> None:
    await writer.submit("create_account", "alice", "user", b"a" * 32, 0)
    with pytest.raises(HandleTaken):
        await writer.submit("create_account", "alice", "user", b"b" * 32, 0)


async def test_any_other_failure_comes_back_by_type_and_place_only(writer: Writer) -> None:
    """SPEC §9: no message crosses (it may quote input); the type and the line do."""
    with pytest.raises(StoreJobError) as raised:
        await writer.submit("take_budget", "no such budget", "alice", 1.0, 1, 0)
    assert raised.value.exc_type == "ValueError"
    assert raised.value.exc_at.rsplit(":", 1)[0].endswith("sqlite/jobs.py")
    assert "no such budget" not in str(raised.value)
    with pytest.raises(StoreJobError) as unknown:
        await writer.submit("drop_everything")  # not an operation: nothing runs
    assert unknown.value.exc_type == "LookupError"


async def test_a_future_cancelled_before_its_answer_leaves_the_others_alone(
    writer: Writer,
) -> None:
    abandoned = writer.submit("create_account", "alice", "user", b"a" * 32, 0)
    abandoned.cancel()
    assert (await writer.submit("login_counts", "alice", 0))[3] == 1  # it still committed


async def test_a_callback_that_raises_loses_no_other_outcome(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: Outcomes = []

    def broken(ok: bool, value: object) -> None:
        raise RuntimeError("bug in a handler")

    writer.call("noop", (), recorder(outcomes, "before"))
    writer.call("noop", (), broken)
    writer.call("noop", (), recorder(outcomes, "after"))
    with caplog.at_level(logging.ERROR, logger="blindrelay"):
        await writer.submit("noop")
    assert [name for name, _, _ in outcomes] == ["before", "after"]
    [line] = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert (line["event"], line["exc_type"]) == ("internal_error", "RuntimeError")
    assert "bug in a handler" not in caplog.text


async def test_the_writers_log_lines_are_logged_by_the_relay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer process has no log of its own: its lines ride on its answers."""
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        async with RunningWriter(tmp_path / "relay.db") as writer:
            await writer.submit("noop")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    [policy] = [line for line in lines if line["event"] == "gc_policy"]
    assert policy["role"] == "writer"


# --- merging --------------------------------------------------------------------------


def in_flight(writer: Writer) -> None:
    """A job in flight: the writer is busy, so what is called next waits for the turn's
    end and may merge (an idle writer gets the first job at once, alone)."""
    writer.call("noop", (), lambda ok, value: None)


async def test_consecutive_merged_items_each_get_their_own_result(writer: Writer) -> None:
    for handle in ("alice", "bob", "carol"):
        await writer.submit("create_account", handle, "user", handle.encode() * 4, 0)
    outcomes: Outcomes = []
    in_flight(writer)
    writer.call_many("acknowledge", ["bob", [1, 2]], recorder(outcomes, "bob"))
    writer.call_many("acknowledge", ["carol", [3]], recorder(outcomes, "carol"))
    writer.call_many("acknowledge", ["nobody", [4]], recorder(outcomes, "nobody"))
    await writer.submit("noop")
    assert outcomes == [("bob", True, 0), ("carol", True, 0), ("nobody", True, 0)]


async def test_merged_items_commit_or_fail_together(writer: Writer) -> None:
    """One job: an item that breaks it fails every item merged with it."""
    outcomes: Outcomes = []
    in_flight(writer)
    writer.call_many("acknowledge", ["bob", [1]], recorder(outcomes, "fine"))
    writer.call_many("acknowledge", ["bob", 7], recorder(outcomes, "not a list"))
    await writer.submit("noop")
    assert [(name, ok) for name, ok, _ in outcomes] == [("fine", False), ("not a list", False)]
    assert all(isinstance(error, StoreJobError) for _, _, error in outcomes)


async def test_another_job_in_between_ends_the_merge(writer: Writer) -> None:
    """Merging never reorders: after an unrelated job, items start a new job, so the
    failure of the later one no longer touches the earlier one."""
    outcomes: Outcomes = []
    in_flight(writer)
    writer.call_many("acknowledge", ["bob", [1]], recorder(outcomes, "fine"))
    writer.call("noop", (), recorder(outcomes, "between"))
    writer.call_many("acknowledge", ["bob", 7], recorder(outcomes, "not a list"))
    await writer.submit("noop")
    assert [(name, ok) for name, ok, _ in outcomes] == [
        ("fine", True), ("between", True), ("not a list", False),
    ]  # fmt: skip


async def test_items_of_different_operations_are_not_merged(writer: Writer) -> None:
    outcomes: Outcomes = []
    in_flight(writer)
    writer.call_many("acknowledge", ["bob", [1]], recorder(outcomes, "ack"))
    writer.call_many("login_seqs", "bob", recorder(outcomes, "seqs"))
    writer.call_many("login_seqs", ["x"], recorder(outcomes, "bad seqs"))  # breaks its job
    await writer.submit("noop")
    assert [(name, ok) for name, ok, _ in outcomes] == [
        ("ack", True), ("seqs", False), ("bad seqs", False),
    ]  # fmt: skip


async def test_an_item_for_an_idle_writer_leaves_alone_and_the_next_one_is_not_lost(
    writer: Writer,
) -> None:
    """The first item goes at once to an idle writer; the next cannot join a job that has
    left, so it starts its own — and gets its own outcome."""
    outcomes: Outcomes = []
    writer.call_many("acknowledge", ["bob", [1]], recorder(outcomes, "fine"))
    writer.call_many("acknowledge", ["bob", 7], recorder(outcomes, "not a list"))
    await writer.submit("noop")
    assert [(name, ok) for name, ok, _ in outcomes] == [("fine", True), ("not a list", False)]


def committed_handles(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT handle FROM accounts")}


async def test_an_idle_writer_gets_a_job_at_once_and_the_rest_of_the_turn_at_its_end(
    tmp_path: Path,
) -> None:
    """Issue 19: the writer starts on the first job of a turn while the loop is still busy
    with the rest of it. Seen from outside: with the loop held inside one turn, the first
    job's row is committed and the second's is not, until the turn ends."""
    path = tmp_path / "relay.db"
    async with RunningWriter(path) as writer:
        outcomes: Outcomes = []
        writer.call("create_account", ("alice", "user", b"a" * 32, 0), recorder(outcomes, "a"))
        writer.call("create_account", ("bob", "user", b"b" * 32, 0), recorder(outcomes, "b"))
        deadline = time.monotonic() + 10
        while "alice" not in committed_handles(path):  # the loop does not run meanwhile
            assert time.monotonic() < deadline, "the first job did not leave during the turn"
            time.sleep(0.01)
        time.sleep(0.2)  # time enough for the second, had it left too
        assert committed_handles(path) == {"alice"}
        assert outcomes == []  # answers wait for the loop
        await writer.submit("noop")
        assert outcomes == [("a", True, None), ("b", True, None)]
        assert committed_handles(path) == {"alice", "bob"}


async def test_each_decision_reports_its_wait_its_batch_and_its_way_back(
    tmp_path: Path,
) -> None:
    """Issue 19: where a decision's time goes (``Writer.on_decided``), split at the two
    moments the writer process stamps. With the loop held for 0.2 s inside the turn that
    calls two SENDs, the second leaves only at the turn's end: its ``wait`` is at least
    the hold. The first went at once; whatever the writer took, its decision reached
    the loop only after the hold, so its three stages add up to at least that. Neither
    adds up to more than the call to its ``decided`` callback took here."""
    async with RunningWriter(tmp_path / "relay.db") as writer:
        for handle in ("alice", "bob"):
            await writer.submit("create_account", handle, "user", handle.encode() * 16, 0)
        rules = list(send_rules(RelayConfig()))
        stages: list[tuple[float, float, float]] = []
        writer.on_decided = lambda *split: stages.append(split)
        called: list[float] = []
        took: list[float] = []
        outcomes: Outcomes = []
        for n in (1, 2):
            called.append(time.monotonic())
            writer.call(
                "send", ("alice", "user", "bob", bytes([n]) * 16, "chat", None, None, b"x", 5,
                         rules),
                recorder(outcomes, f"send {n}"),
                lambda _value, n=n: took.append(time.monotonic() - called[n - 1]),
            )  # fmt: skip
        time.sleep(HOLD_S)  # the loop, inside the turn
        await writer.submit("noop")
        assert [(name, ok) for name, ok, _value in outcomes] == [("send 1", True), ("send 2", True)]
        assert len(stages) == len(took) == 2
        (wait_1, decide_1, back_1), (wait_2, decide_2, back_2) = stages
        assert min(*stages[0], *stages[1]) >= 0
        assert wait_2 >= HOLD_S
        assert wait_1 + decide_1 + back_1 >= HOLD_S
        assert wait_1 + decide_1 + back_1 <= took[0]
        assert wait_2 + decide_2 + back_2 <= took[1]


HOLD_S = 0.2


# --- losing the process, closing ------------------------------------------------------


async def test_a_writer_process_that_dies_fails_every_waiting_job_and_says_so(
    writer: Writer,
) -> None:
    lost: list[bool] = []
    writer.on_lost = lambda: lost.append(True)
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    wait_for_exit(writer.pid)
    waiting = writer.submit("noop")
    with pytest.raises(InternalError):
        await waiting
    assert lost == [True] and not writer.running
    with pytest.raises(InternalError):
        writer.submit("noop")


async def test_close_commits_and_answers_what_was_queued_then_stops_the_process(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path / "relay.db", "FULL")
    await writer.start()
    lost: list[bool] = []
    writer.on_lost = lambda: lost.append(True)
    queued = writer.submit("create_account", "alice", "user", b"a" * 32, 0)
    await writer.close()  # in the same loop turn: the job had not been handed over
    assert queued.done() and queued.result() is None
    assert writer.pid is not None and not alive(writer.pid)
    assert lost == []  # an ordinary stop is no loss

    again = Writer(tmp_path / "relay.db", "FULL")
    await again.start()
    try:
        with pytest.raises(HandleTaken):  # committed before the process stopped
            await again.submit("create_account", "alice", "user", b"a" * 32, 0)
    finally:
        await again.close()


# --- deferrable jobs (issue 19: an idle writer took every chat and every ACK alone) ---


def account(handle: str) -> tuple[str, str, bytes, int]:
    return (handle, "user", handle.encode() * 8, 0)


async def test_deferrable_jobs_called_close_together_leave_together_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called over several loop turns within the spacing, they wait for it and leave in
    one hand-over: one batch, outcomes in call order. Without the spacing the first
    would have gone at once to the idle writer and the others after it."""
    monkeypatch.setattr(writer_module, "HAND_OVER_SPACING_S", 0.5)
    path = tmp_path / "relay.db"
    async with RunningWriter(path) as writer:
        await writer.submit("noop")  # a hand-over just now
        batches: list[int] = []
        writer.on_batch = lambda jobs, _batch_s, _commit_s: batches.append(jobs)
        outcomes: Outcomes = []
        for handle in ("alice", "bob", "carol"):
            writer.call("create_account", account(handle), recorder(outcomes, handle), None, True)
            await asyncio.sleep(0)  # the loop turns, the writer idles
        await asyncio.sleep(0.1)
        assert committed_handles(path) == set()  # still waiting for the spacing
        await writer.submit("noop")  # not deferrable: takes them along, after them
        assert outcomes == [(h, True, None) for h in ("alice", "bob", "carol")]
        assert batches == [4]


async def test_deferred_jobs_leave_once_the_spacing_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "HAND_OVER_SPACING_S", 0.2)
    path = tmp_path / "relay.db"
    async with RunningWriter(path) as writer:
        await writer.submit("noop")
        done = asyncio.get_running_loop().create_future()
        writer.call("create_account", account("alice"), settling(done), None, True)
        started = time.monotonic()
        await asyncio.wait_for(done, timeout=10)
        assert time.monotonic() - started >= 0.15  # not at once: the spacing held it
        assert committed_handles(path) == {"alice"}


async def test_a_deferrable_job_after_a_quiet_spell_leaves_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to wait for: the last hand-over is older than the spacing, so a lone chat
    at low rates pays nothing — seen from outside as for any job to an idle writer, its
    row committed while the loop is still inside the turn that called it."""
    monkeypatch.setattr(writer_module, "HAND_OVER_SPACING_S", 0.05)
    path = tmp_path / "relay.db"
    async with RunningWriter(path) as writer:
        await writer.submit("noop")
        await asyncio.sleep(0.1)
        writer.call("create_account", account("alice"), lambda ok, value: None, None, True)
        deadline = time.monotonic() + 10
        while "alice" not in committed_handles(path):  # the loop does not run meanwhile
            assert time.monotonic() < deadline, "the job did not leave at once"
            time.sleep(0.01)


async def test_merged_deferrable_items_join_across_turns_and_close_sends_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ACK deletions held for the spacing still merge into one job while nothing else is
    called in between, and a close hands over what waits rather than dropping it."""
    monkeypatch.setattr(writer_module, "HAND_OVER_SPACING_S", 60.0)
    path = tmp_path / "relay.db"
    writer = Writer(path, "FULL")
    await writer.start()
    await writer.submit("create_account", *account("bob"))
    outcomes: Outcomes = []
    writer.call_many("acknowledge", ["bob", [1]], recorder(outcomes, "one"), True)
    await asyncio.sleep(0)
    writer.call_many("acknowledge", ["bob", 7], recorder(outcomes, "breaks the job"), True)
    writer.call("create_account", account("carol"), recorder(outcomes, "carol"), None, True)
    await asyncio.wait_for(writer.close(), timeout=10)
    assert [(name, ok) for name, ok, _ in outcomes] == [
        ("one", False), ("breaks the job", False), ("carol", True),
    ]  # fmt: skip
    assert committed_handles(path) == {"bob", "carol"}
