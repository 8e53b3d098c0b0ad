"""The dispatcher (server/dispatch.py), on its own, in memory.

What it owns: feeding a connection's messages to its machine and each frame
to the handler of its type (with the fast readers for SEND and ACK once
authenticated), refusing what no handler takes or a handler throws, hints
routed to the module that acts on them, the authentication timeout, and the
end of a session. The handlers themselves are stand-ins here: what they do is
tested with their modules.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from blindrelay.protocol import codec
from blindrelay.protocol import frames as f
from blindrelay.protocol.connection import State
from blindrelay.protocol.errors import ErrorCode, RecipientUnavailable
from blindrelay.server import auth, delivery, directory, dispatch
from blindrelay.server.context import CLOSE_GOING_AWAY, RelayContext, Session
from blindrelay.server.dispatch import Dispatcher
from blindrelay.server.routing import Hint, HintKind

from ..protocol.pair import Pair, authenticated
from .inmemory import Connected, ScriptedStore, connected, log_lines, relay_context

MSG_ID = bytes(range(16))
SEND = f.Send(id=7, to="bob", msg_id=MSG_ID, intent="chat", body=b"ciphertext")
ACK = f.Ack(delivery_ids=(3, 4))
FETCH = f.BundleFetch(id=8, handle="bob")


class Handled:
    """Stands in for a handler: remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[RelayContext, Session, f.Frame]] = []

    def __call__(self, ctx: RelayContext, session: Session, frame: f.Frame) -> None:
        self.calls.append((ctx, session, frame))

    @property
    def frames(self) -> list[f.Frame]:
        return [frame for _, _, frame in self.calls]


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> Handled:
    """Every frame type's handler replaced by one recorder."""
    recorder = Handled()
    for frame_type in list(dispatch.HANDLERS):
        monkeypatch.setitem(dispatch.HANDLERS, frame_type, recorder)
    return recorder


@pytest.fixture
def ctx() -> RelayContext:
    return relay_context()


@pytest.fixture
def alice() -> Connected:
    return connected(authenticated("alice"))


def codes(frames: list[f.Frame]) -> list[int]:
    return [frame.code for frame in frames if isinstance(frame, f.Error)]


# --- messages to frames to handlers ---------------------------------------------------


def test_each_frame_reaches_the_handler_of_its_type_then_the_answers_are_flushed(
    ctx: RelayContext, alice: Connected, handled: Handled
) -> None:
    Dispatcher(ctx).data_received(alice.session, codec.encode(FETCH))
    assert handled.calls == [(ctx, alice.session, FETCH)]
    assert alice.transport.flushes == 1


@pytest.mark.parametrize("frame", [SEND, ACK], ids=["SEND", "ACK"])
def test_a_send_or_an_ack_takes_the_fast_reader_to_the_same_frame(
    ctx: RelayContext, alice: Connected, handled: Handled, frame: f.Frame
) -> None:
    Dispatcher(ctx).data_received(alice.session, codec.encode(frame))
    assert handled.frames == [frame]
    assert alice.sent() == [] and alice.transport.flushes == 1


def test_before_authentication_a_send_is_the_machines_to_refuse(
    ctx: RelayContext, handled: Handled
) -> None:
    """The fast path is only for an authenticated connection: before that a SEND is
    not receivable (SPEC §4) and never reaches a handler."""
    pair = Pair()
    waiting = connected(pair)
    Dispatcher(ctx).data_received(waiting.session, codec.encode(SEND))
    assert handled.frames == []
    assert codes(waiting.sent()) == [ErrorCode.UNEXPECTED_FRAME]


def test_a_refused_message_is_logged_once_with_its_size_and_no_handler_runs(
    ctx: RelayContext, alice: Connected, handled: Handled, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"\x81\xa1t\xcc\xff"  # a map with an unknown frame type
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        Dispatcher(ctx).data_received(alice.session, garbage)
    assert handled.frames == []
    assert codes(alice.sent()) == [ErrorCode.UNKNOWN_FRAME_TYPE]
    [line] = [line for line in log_lines(caplog) if line["event"] == "refused"]
    assert (line["handle"], line["size"], line["closed"]) == ("alice", len(garbage), False)


def test_a_frame_without_a_handler_is_refused_not_dropped(
    ctx: RelayContext, alice: Connected, handled: Handled, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(dispatch.HANDLERS, f.FrameType.BUNDLE_FETCH)
    Dispatcher(ctx).data_received(alice.session, codec.encode(FETCH))
    [error] = alice.sent()
    assert isinstance(error, f.Error)
    assert (error.code, error.re) == (ErrorCode.UNEXPECTED_FRAME, FETCH.id)


def test_every_frame_a_client_may_send_has_a_handler() -> None:
    """The refusal above is for a future protocol's frames: v1 is served in full."""
    assert set(dispatch.HANDLERS) == f.CLIENT_FRAMES


def test_what_a_handler_raises_is_refused_on_its_request(
    ctx: RelayContext, alice: Connected, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def refuses(ctx: RelayContext, session: Session, frame: Any) -> None:
        raise RecipientUnavailable()

    def breaks(ctx: RelayContext, session: Session, frame: Any) -> None:
        raise KeyError("secret-handle")

    monkeypatch.setitem(dispatch.HANDLERS, f.FrameType.SEND, refuses)
    monkeypatch.setitem(dispatch.HANDLERS, f.FrameType.BUNDLE_FETCH, breaks)
    dispatcher = Dispatcher(ctx)
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        dispatcher.data_received(alice.session, codec.encode(SEND))
        dispatcher.data_received(alice.session, codec.encode(FETCH))
    refused, broken = alice.sent()
    assert isinstance(refused, f.Error) and isinstance(broken, f.Error)
    assert (refused.code, refused.re) == (ErrorCode.RECIPIENT_UNAVAILABLE, SEND.id)
    assert (broken.code, broken.re, broken.reason) == (ErrorCode.INTERNAL_ERROR, FETCH.id, None)
    assert alice.session.open  # neither closes the connection
    [internal] = [line for line in log_lines(caplog) if line["event"] == "internal_error"]
    assert (internal["type"], internal["exc_type"]) == ("BUNDLE_FETCH", "KeyError")
    assert "secret-handle" not in caplog.text


def test_a_stopping_relay_answers_any_message_with_shutting_down(
    ctx: RelayContext, alice: Connected, handled: Handled
) -> None:
    ctx.stopping = True
    Dispatcher(ctx).data_received(alice.session, codec.encode(FETCH))
    assert handled.frames == []
    assert codes(alice.sent()) == [ErrorCode.SHUTTING_DOWN]
    assert alice.transport.closed == [(CLOSE_GOING_AWAY, "shutting down")]


def test_a_message_for_an_ended_session_is_ignored(
    ctx: RelayContext, alice: Connected, handled: Handled
) -> None:
    """Frames already read when a newer login replaced the session are not served."""
    alice.session.ended = True
    Dispatcher(ctx).data_received(alice.session, codec.encode(FETCH))
    assert handled.frames == [] and alice.sent() == [] and alice.transport.flushes == 0


# --- hints ----------------------------------------------------------------------------


ROUTES = [
    (Hint(HintKind.ENVELOPE, "bob", "w2", value=4, envelope=b"row"), delivery,
     "committed_elsewhere"),
    (Hint(HintKind.QUEUED, "bob", "w2"), delivery, "queued_elsewhere"),
    (Hint(HintKind.WITHDRAWN, "bob", "w2", ids=(5, 6)), delivery, "withdrawn_elsewhere"),
    (Hint(HintKind.LOGIN, "bob", "w2", value=9), auth, "logged_in_elsewhere"),
    (Hint(HintKind.PREKEYS_LOW, "bob", "w2", value=3), directory, "prekeys_low"),
    (Hint(HintKind.DELIVER, "bob", "", value=4, ids=(5,), envelope=b"deliver"), delivery,
     "delivered_elsewhere"),
]  # fmt: skip


def _expected_args(hint: Hint) -> tuple[Any, ...]:
    return {
        HintKind.ENVELOPE: (hint,),
        HintKind.QUEUED: (hint.handle,),
        HintKind.WITHDRAWN: (hint.handle, hint.ids),
        HintKind.LOGIN: (hint.handle, hint.value),
        HintKind.PREKEYS_LOW: (hint.handle, hint.value),
        HintKind.DELIVER: (hint,),
    }[hint.kind]


@pytest.mark.parametrize(("hint", "module", "function"), ROUTES, ids=[k.name for k in HintKind])
def test_each_kind_of_hint_goes_to_the_module_that_acts_on_the_same_change_here(
    ctx: RelayContext, monkeypatch: pytest.MonkeyPatch, hint: Hint, module: Any, function: str
) -> None:
    called: list[tuple[Any, ...]] = []
    for _, other_module, name in ROUTES:
        monkeypatch.setattr(
            other_module, name, lambda *args, name=name: called.append((name, *args))
        )
    Dispatcher(ctx).hint_received(hint)
    assert called == [(function, ctx, *_expected_args(hint))]


def test_every_kind_of_hint_has_a_route() -> None:
    assert {hint.kind for hint, _, _ in ROUTES} == set(HintKind)


def test_catching_up_reads_both_queues_and_logins(
    ctx: RelayContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hints lost while the router was away: queues paged again, logins compared."""
    called: list[str] = []
    monkeypatch.setattr(delivery, "catch_up", lambda ctx: called.append("queues"))
    monkeypatch.setattr(auth, "catch_up_logins", lambda ctx: called.append("logins"))
    Dispatcher(ctx).catch_up()
    assert called == ["queues", "logins"]


# --- authentication timeout and the end of a session -----------------------------------


def test_a_connection_still_unauthenticated_at_the_timeout_is_closed(ctx: RelayContext) -> None:
    """SPEC §4.1: AUTH_TIMEOUT_S after HELLO without a WELCOME, ERROR 200 closes it."""
    waiting = connected(Pair())
    Dispatcher(ctx).auth_expired(waiting.session)
    assert codes(waiting.sent()) == [ErrorCode.AUTH_FAILED]
    assert waiting.session.conn.state is State.CLOSED


def test_the_timeout_of_a_connection_that_already_ended_refuses_nothing(
    ctx: RelayContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that left before authenticating: its timer still fires, and must neither
    log a refusal nor count an ERROR 200 in the metrics that was never sent."""
    left = connected(Pair())
    left.session.ended = True
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        Dispatcher(ctx).auth_expired(left.session)
    assert left.sent() == [] and caplog.records == []
    assert ctx.metrics.errors[ErrorCode.AUTH_FAILED] == 0


def test_the_timeout_leaves_an_authenticated_connection_alone(
    ctx: RelayContext, alice: Connected
) -> None:
    Dispatcher(ctx).auth_expired(alice.session)
    assert alice.sent() == [] and alice.session.open


def test_an_ended_session_leaves_the_live_sessions_and_its_outbox(
    ctx: RelayContext, alice: Connected, caplog: pytest.LogCaptureFixture
) -> None:
    ctx.sessions.attach(alice.session)
    outbox_closed: list[bool] = []
    alice.session.outbox = SimpleNamespace(close=lambda: outbox_closed.append(True))  # type: ignore[assignment]
    alice.session.refusals.suppressed = 3
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        Dispatcher(ctx).session_ended(alice.session)
    assert ctx.sessions.get("alice") is None
    assert alice.session.ended and alice.session.outbox is None
    assert outbox_closed == [True]  # what it had in flight is counted for redelivery
    [line] = [line for line in log_lines(caplog) if line["event"] == "disconnected"]
    assert (line["handle"], line["peer"], line["refusals_suppressed"]) == (
        "alice", "127.0.0.1:50000", 3,
    )  # fmt: skip


def test_the_end_of_a_recorded_session_is_recorded_in_the_store(alice: Connected) -> None:
    """SPEC §10: the account's next connection, on any relay process, starts from the
    buckets as they stood at this end."""
    store = ScriptedStore()
    ctx = relay_context(store)
    alice.session.recorded = True
    Dispatcher(ctx).session_ended(alice.session)
    asked = store.take()
    assert asked.name == "close_session"
    assert asked.args == ("alice", ctx.worker_id, alice.session.number, ctx.clock())
    Dispatcher(ctx).session_ended(alice.session)  # only once
    assert store.asked == []
