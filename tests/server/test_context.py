"""What every handler works with (server/context.py), on its own, in memory.

Its responsibilities: a :class:`Session` that queues frames only while open and
holds its later frames while a store read is out; :class:`Sessions`, one live
session per account across relay processes (SPEC §1.2.3, §4.4);
:class:`RelayContext` turning exceptions into ERROR frames in one place
(SPEC §9), running store operations and reads with their callbacks, and
keeping a connection's frames in order around a read that is not answered
at once.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from blindrelay.protocol import frames as f
from blindrelay.protocol.errors import ErrorCode, RateLimited, RecipientUnavailable
from blindrelay.server import context
from blindrelay.server.context import (
    CLOSE_GOING_AWAY,
    CLOSE_REPLACED,
    READ_HOLD,
    RelayContext,
    Sessions,
)
from blindrelay.server.store import Account, StoreJobError

from ..protocol.pair import Pair, authenticated
from .inmemory import Connected, ScriptedStore, connected, log_lines, relay_context

FETCH = f.BundleFetch(id=8, handle="bob")
ALICE = Account("alice", "user", b"a" * 32)


@pytest.fixture
def store() -> ScriptedStore:
    return ScriptedStore()


@pytest.fixture
def ctx(store: ScriptedStore) -> RelayContext:
    return relay_context(store)


@pytest.fixture
def alice() -> Connected:
    return connected(authenticated("alice"))


def error_of(connection: Connected) -> f.Error:
    [error] = connection.sent()
    assert isinstance(error, f.Error)
    return error


# --- Session ---------------------------------------------------------------------------


def test_a_session_queues_frames_only_while_it_is_open(alice: Connected) -> None:
    """Store callbacks may arrive after the connection has gone."""
    alice.session.send(FETCH)
    alice.session.send_encoded(b"encoded")
    assert alice.sent() == [FETCH] and alice.transport.written == [b"encoded"]
    assert alice.transport.flushes == 1
    alice.session.ended = True
    alice.session.send(FETCH)
    alice.session.send_encoded(b"late")
    assert alice.sent() == [] and alice.transport.written == [b"encoded"]


def test_shutting_down_sends_901_then_closes_with_1001_once(alice: Connected) -> None:
    alice.session.shut_down()
    assert error_of(alice).code == ErrorCode.SHUTTING_DOWN
    alice.session.shut_down()  # the machine is closed now: nothing more
    assert alice.sent() == []
    assert alice.transport.closed == [(CLOSE_GOING_AWAY, "shutting down")]


def test_reads_waiting_at_once_hold_the_connection_once(alice: Connected) -> None:
    session = alice.session
    session.wait_for_read()
    session.wait_for_read()
    assert alice.transport.held == [READ_HOLD] and session.waiting_for_read
    session.read_answered()
    assert alice.transport.held == [READ_HOLD]
    session.read_answered()
    assert alice.transport.held == [] and not session.waiting_for_read
    assert alice.transport.holds == 1


# --- Sessions: one live session per account ----------------------------------------------


def login(handle: str, login_seq: int) -> Connected:
    return connected(authenticated(handle), login_seq=login_seq)


def test_a_new_login_replaces_the_accounts_previous_session() -> None:
    """SPEC §4.4: "A new login MUST close the account's previous connection (4000
    replaced)"."""
    sessions = Sessions()
    first, second = login("alice", 1), login("alice", 2)
    outbox_closed: list[bool] = []
    first.session.outbox = SimpleNamespace(close=lambda: outbox_closed.append(True))  # type: ignore[assignment]
    assert sessions.attach(first.session) and sessions.attach(second.session)
    assert sessions.get("alice") is second.session
    assert first.transport.closed == [(CLOSE_REPLACED, "replaced")]
    assert first.session.ended and first.session.outbox is None
    assert outbox_closed == [True]  # what it had in flight is counted for redelivery
    assert second.transport.closed == [] and sessions.all() == [second.session]


def test_a_login_another_worker_has_superseded_is_closed_instead_of_attached() -> None:
    """SPEC §1.2.3: its LOGIN hint came while this login was still being committed."""
    sessions = Sessions()
    sessions.logged_in_elsewhere("alice", 5)
    late = login("alice", 4)
    assert not sessions.attach(late.session)
    assert late.transport.closed == [(CLOSE_REPLACED, "replaced")]
    assert sessions.get("alice") is None
    newer = login("alice", 6)
    assert sessions.attach(newer.session)


def test_a_login_elsewhere_replaces_only_an_older_session_here() -> None:
    sessions = Sessions()
    alice, bob = login("alice", 3), login("bob", 3)
    sessions.attach(alice.session)
    sessions.attach(bob.session)
    sessions.logged_in_elsewhere("bob", 2)  # an older login than the one here
    sessions.logged_in_elsewhere("alice", 4)
    assert sessions.get("bob") is bob.session and bob.transport.closed == []
    assert sessions.get("alice") is None
    assert alice.transport.closed == [(CLOSE_REPLACED, "replaced")]


def test_newer_logins_heard_of_are_remembered_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(context, "NEWER_LOGINS_KEPT", 2)
    sessions = Sessions()
    for handle in ("alice", "bob", "carol"):
        sessions.logged_in_elsewhere(handle, 5)
    assert sessions.attach(login("alice", 1).session)  # forgotten: the oldest
    assert not sessions.attach(login("carol", 1).session)


def test_only_the_live_session_is_detached() -> None:
    sessions = Sessions()
    first, second = login("alice", 1), login("alice", 2)
    sessions.attach(first.session)
    sessions.attach(second.session)
    sessions.detach(first.session)  # the replaced one ends later: nothing to undo
    assert sessions.get("alice") is second.session
    sessions.detach(second.session)
    assert sessions.get("alice") is None and sessions.all() == []


def test_an_account_is_served_here_while_its_live_session_has_an_outbox() -> None:
    """``Store.serves``: what a shared store's hints need not carry to the others."""
    sessions = Sessions()
    alice = login("alice", 1)
    sessions.attach(alice.session)
    assert not sessions.serves("alice")  # logging in: nothing pushed here yet
    alice.session.outbox = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    assert sessions.serves("alice") and not sessions.serves("bob")
    sessions.detach(alice.session)
    assert not sessions.serves("alice")


# --- RelayContext.refuse: the one place exceptions become ERROR frames ---------------------


def test_a_protocol_error_is_refused_with_its_code_on_its_request(
    ctx: RelayContext, alice: Connected, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        ctx.refuse(alice.session, FETCH, RateLimited("bucket", retry_after_ms=1500))
    error = error_of(alice)
    assert (error.code, error.re, error.retry_after) == (ErrorCode.RATE_LIMITED, FETCH.id, 1500)
    assert alice.transport.flushes == 1
    [line] = list(log_lines(caplog))
    assert (line["event"], line["type"]) == ("refused", "BUNDLE_FETCH")
    assert line["code"] == ErrorCode.RATE_LIMITED


def test_any_other_exception_is_an_internal_error_with_no_detail(
    ctx: RelayContext, alice: Connected, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §9: "Internal errors MUST NOT carry detail"; the log has type and place."""
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        try:
            raise ValueError("alice's secret")
        except ValueError as exc:
            ctx.refuse(alice.session, FETCH, exc)
        ctx.refuse(alice.session, None, StoreJobError("IntegrityError", "tables.py:7"))
    first, second = alice.sent()
    assert first == f.Error(code=ErrorCode.INTERNAL_ERROR, re=FETCH.id)
    assert second == f.Error(code=ErrorCode.INTERNAL_ERROR)
    logged = [(line["exc_type"], line["exc_at"]) for line in log_lines(caplog)]
    exc_type, exc_at = logged[0]
    assert exc_type == "ValueError" and exc_at.split(":")[0].endswith("test_context.py")
    assert logged[1] == ("IntegrityError", "tables.py:7")  # where the store raised it
    assert "secret" not in caplog.text


def test_nothing_is_sent_on_a_session_that_has_gone(ctx: RelayContext, alice: Connected) -> None:
    alice.session.ended = True
    ctx.refuse(alice.session, FETCH, RecipientUnavailable())
    assert alice.sent() == [] and alice.transport.flushes == 0


def test_guard_refuses_what_its_action_raises(ctx: RelayContext, alice: Connected) -> None:
    def action() -> None:
        raise RecipientUnavailable()

    ctx.guard(alice.session, FETCH, action)
    assert error_of(alice).code == ErrorCode.RECIPIENT_UNAVAILABLE


# --- store operations and reads ----------------------------------------------------------


def test_an_operations_result_goes_to_its_callback_after_the_commit(
    ctx: RelayContext, store: ScriptedStore, alice: Connected
) -> None:
    results: list[object] = []
    ctx.run_job(alice.session, FETCH, "take_bundle", ("alice", "bob"), results.append)
    assert results == []  # nothing before the store answers
    asked = store.take()
    assert (asked.name, asked.args) == ("take_bundle", ("alice", "bob"))
    asked.answer([1, 2])
    assert results == [[1, 2]] and alice.sent() == []


def test_an_operations_failure_or_its_callbacks_is_refused(
    ctx: RelayContext, store: ScriptedStore, alice: Connected
) -> None:
    def broken(value: object) -> None:
        raise RecipientUnavailable()

    ctx.run_job(alice.session, FETCH, "take_bundle", (), broken)
    ctx.run_job(alice.session, FETCH, "take_bundle", (), broken)
    store.take().fail(RateLimited("bucket", retry_after_ms=5))
    store.take().answer(None)
    assert [e.code for e in alice.sent() if isinstance(e, f.Error)] == [
        ErrorCode.RATE_LIMITED, ErrorCode.RECIPIENT_UNAVAILABLE,
    ]  # fmt: skip


def test_a_read_answered_at_once_runs_its_callback_before_returning_and_holds_nothing(
    alice: Connected,
) -> None:
    store = ScriptedStore(reads_at_once=True)
    store.values["account"] = ALICE
    ctx = relay_context(store)
    found: list[Account] = []
    ctx.read_account(alice.session, FETCH, found.append)
    assert found == [ALICE] and alice.transport.holds == 0


def test_a_read_answered_later_holds_the_connections_frames_until_its_callback_ran(
    ctx: RelayContext, store: ScriptedStore, alice: Connected
) -> None:
    """What the callback calls reaches the store before the next frame's operations
    (SPEC §6.4 per-pair order): the hold is released only after it."""
    order: list[str] = []

    def on_result(value: object) -> None:
        order.append(f"callback, held: {alice.transport.held}")
        ctx.run_job(alice.session, FETCH, "take_bundle", (), lambda value: None)

    ctx.read(alice.session, FETCH, "account", ("alice",), on_result)
    assert alice.transport.held == [READ_HOLD]
    store.take().answer(ALICE)
    assert order == ["callback, held: ['read']"]
    assert alice.transport.held == [] and store.take().name == "take_bundle"


def test_a_read_answered_after_the_session_ended_releases_without_calling_back(
    ctx: RelayContext, store: ScriptedStore, alice: Connected
) -> None:
    called: list[object] = []
    ctx.read(alice.session, FETCH, "account", ("alice",), called.append)
    alice.session.ended = True
    store.take().answer(ALICE)
    assert called == [] and alice.transport.held == []


def test_a_failed_read_is_refused_and_releases_the_hold(
    ctx: RelayContext, store: ScriptedStore, alice: Connected
) -> None:
    ctx.read(alice.session, FETCH, "account", ("alice",), lambda value: None)
    store.take().fail(RateLimited("bucket", retry_after_ms=5))
    assert error_of(alice).code == ErrorCode.RATE_LIMITED
    assert alice.transport.held == []


def test_read_account_asks_for_the_sessions_own_account(
    ctx: RelayContext, store: ScriptedStore, alice: Connected
) -> None:
    found: list[Account] = []
    ctx.read_account(alice.session, None, found.append)
    asked = store.take()
    assert (asked.name, asked.args) == ("account", ("alice",))
    asked.answer(ALICE)
    assert found == [ALICE]


def test_an_unauthenticated_session_has_no_account_to_read(ctx: RelayContext) -> None:
    waiting = connected(Pair())
    with pytest.raises(AssertionError):
        ctx.read_account(waiting.session, None, lambda account: None)
