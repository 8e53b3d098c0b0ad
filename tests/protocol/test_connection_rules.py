"""SPEC §4.5, §9: the connection states' edges the tables of protocol/connection_rules.py
draw — what CLOSED ends, which refusals count towards the error budget — held one by one
(found unheld by mutation analysis; test_connection.py has the machine's main paths)."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindrelay.protocol import codec, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol.connection import (
    ANSWERS,
    LOG_FETCHES,
    RECEIVABLE,
    TRANSITIONS,
    Role,
    State,
)
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    ErrorCode,
    Forbidden,
    HandleTaken,
    MalformedFrame,
    ProtocolError,
    RegistrationRefused,
    UnexpectedFrame,
)
from blindrelay.protocol.frames import FRAME_CLASSES

from .pair import ALICE, Pair, authenticated, register, signer
from .spec import section, table_rows
from .strategies import frame_strategy

T = f.FrameType
_SENDERS = {f.FrameType(int(row[0])): row[2] for row in table_rows(section(2), "t")}
CLIENT_SENT = frozenset(t for t, sender in _SENDERS.items() if sender == "client")
"""SPEC §2.1's sender column: the frames a client sends (every other one the relay)."""
RELAY_SENT = frozenset(t for t, sender in _SENDERS.items() if sender == "relay")
LOG_ANSWERS = frozenset({T.LOG_HEAD, T.LOG_CONSISTENCY, T.LOG_INCLUSION, T.LOG_ENTRIES})


def test_the_tables_are_those_of_spec_section_4_5() -> None:
    """SPEC §4.5, row by row, with §2.1's sender column for "every client/relay frame";
    no side receives anything once CLOSED."""
    assert set(T) == CLIENT_SENT | RELAY_SENT and CLIENT_SENT == f.CLIENT_FRAMES
    assert {
        T.LOG_HEAD_FETCH, T.LOG_CONSISTENCY_FETCH, T.LOG_INCLUSION_FETCH, T.LOG_ENTRIES_FETCH,
    } == LOG_FETCHES  # fmt: skip
    assert {
        Role.RELAY: {
            State.AWAITING_AUTH: {T.REGISTER, T.LOGIN} | LOG_FETCHES,
            State.AUTHENTICATED: CLIENT_SENT - {T.REGISTER, T.LOGIN},
        },
        Role.CLIENT: {
            State.AWAITING_HELLO: {T.HELLO},
            State.AWAITING_AUTH: {T.WELCOME, T.ERROR} | LOG_ANSWERS,
            State.AUTHENTICATED: RELAY_SENT - {T.HELLO, T.WELCOME},
        },
    } == RECEIVABLE
    assert TRANSITIONS == {
        Role.RELAY: {State.AWAITING_AUTH: {T.WELCOME: State.AUTHENTICATED}},
        Role.CLIENT: {
            State.AWAITING_HELLO: {T.HELLO: State.AWAITING_AUTH},
            State.AWAITING_AUTH: {T.WELCOME: State.AUTHENTICATED},
        },
    }


_NEED_AN_ACCOUNT = sorted(CLIENT_SENT - {T.REGISTER, T.LOGIN} - LOG_FETCHES)


@pytest.mark.parametrize("frame_type", _NEED_AN_ACCOUNT, ids=lambda t: t.name)
@settings(max_examples=5)
@given(data=st.data())
def test_every_frame_that_acts_as_an_account_is_103_before_welcome(
    frame_type: f.FrameType, data: st.DataObject
) -> None:
    """SPEC §4.5: before WELCOME the relay takes REGISTER, LOGIN and the log fetches
    only; any other client frame is ERROR 103 with its id, handed to no handler, and
    the connection stays open (no handler may ever run without an account)."""
    frame = data.draw(frame_strategy(f.FRAME_CLASSES[frame_type]))
    pair = Pair()
    pair.relay.receive_data(codec.encode(frame))
    assert pair.relay.events_received() == []
    (error,) = pair.relay_errors()
    assert (error.code, error.re) == (ErrorCode.UNEXPECTED_FRAME, getattr(frame, "id", None))
    assert pair.relay.state is State.AWAITING_AUTH


def _closed() -> Pair:
    """A pair whose relay side sent AUTH_FAILED, which closes (SPEC §9)."""
    pair = Pair()
    pair.relay.send_error(AuthenticationFailed("login signature"), re=1)
    assert pair.relay.state is State.CLOSED
    assert [e.code for e in pair.relay_errors()] == [ErrorCode.AUTH_FAILED]
    return pair


def test_a_closed_relay_side_sends_no_further_frame() -> None:
    """SPEC §9: "After an ERROR whose code closes, the relay MUST send no further frame":
    sending one is the caller's bug, raised, and nothing is queued."""
    pair = _closed()
    with pytest.raises(RuntimeError, match="closed"):
        pair.relay.send(f.Ok(re=1))
    assert pair.relay.data_to_send() == []


def test_a_closed_relay_side_turns_a_late_refusal_into_nothing() -> None:
    """A store answer arriving after the close may still be refused: no ERROR, no raise."""
    pair = _closed()
    pair.relay.send_error(MalformedFrame("late"), re=2)
    assert pair.relay.data_to_send() == []


def test_a_closed_relay_side_handles_no_further_frame() -> None:
    """SPEC §4.4.1: after AUTH_FAILED the client reconnects for a fresh challenge; a LOGIN
    still read from the closed connection is not handed on, nor answered."""
    pair = _closed()
    pair.client.login("alice", signer(ALICE))
    (login,) = pair.client.data_to_send()
    pair.relay.receive_data(login)
    assert pair.relay.events_received() == []
    assert pair.relay.data_to_send() == []


@pytest.mark.parametrize(
    "refusal",
    [HandleTaken(), Forbidden(), RegistrationRefused()],
    ids=lambda e: e.code.name,
)
def test_refusals_with_other_2xx_codes_do_not_count_towards_the_budget(
    refusal: ProtocolError,
) -> None:
    """SPEC §4.5: "every 200 AUTH_FAILED" counts, and "no other code": 201, 202 and 203
    answer well-formed requests (a taken handle, a user asking what only a business may,
    a registration without its proof of work) and leave the connection open."""
    pair = authenticated()
    for n in range(1, 3 * limits.MAX_PROTOCOL_ERRORS):
        pair.relay.send_error(refusal, re=n)
    assert pair.relay.state is State.AUTHENTICATED
    codes = {e.code for e in map(codec.decode, pair.relay.data_to_send())}  # type: ignore[union-attr]
    assert codes == {refusal.code}


@pytest.mark.parametrize("answer", ["login", "register"])
def test_an_authenticated_client_has_no_challenge_left_to_answer(answer: str) -> None:
    """SPEC §4.4.1: after WELCOME a REGISTER or LOGIN is a frame the state does not allow;
    the client refuses to make one (its bug, raised) rather than spend a signature on it."""
    pair = authenticated()
    with pytest.raises(RuntimeError, match="no challenge"):
        if answer == "login":
            pair.client.login("alice", signer(ALICE))
        else:
            pair.client.register("alice", "user", ALICE.verify_key.encode(), signer(ALICE))
    assert pair.client.data_to_send() == []


def test_an_error_with_a_code_the_client_does_not_know_leaves_it_open() -> None:
    """SPEC §9, §12.3: "a client treats a code it does not know as 900", which does not
    close — a newer relay's code must not end an older client's connection."""
    pair = authenticated()
    pair.relay.send(f.Error(code=950))
    _, (error,) = pair.flush()
    assert error == f.Error(code=950)
    assert pair.client.state is State.AUTHENTICATED



ANSWERED_WITH = {T[row[0]]: T[row[1]] for row in table_rows(section(2), "request")}
"""SPEC §2.2's table: the one frame type, besides ERROR, that answers each request."""
_KINDS = {f.FrameType(int(row[0])): row[3] for row in table_rows(section(2), "t")}


def test_every_request_has_the_answer_spec_section_2_2_names() -> None:
    assert dict(ANSWERS) == ANSWERED_WITH
    assert set(ANSWERED_WITH) == {t for t, kind in _KINDS.items() if kind == "request"}


RESPONSES = sorted(t for t in RELAY_SENT if "re" in {x.name for x in fields(FRAME_CLASSES[t])})
"""Every frame the relay may send under a request's ``re``, ERROR aside."""


@settings(max_examples=60, deadline=None)
@given(
    request=st.sampled_from(sorted(set(ANSWERS) - {T.REGISTER, T.LOGIN})),
    answer=st.sampled_from([t for t in RESPONSES if t is not T.ERROR]),
    data=st.data(),
)
def test_a_client_refuses_an_answer_of_another_type_than_its_request_s(
    request: f.FrameType, answer: f.FrameType, data: st.DataObject
) -> None:
    """SPEC §2.2 rule 1: a request is answered by "its response type, OK, or ERROR". The
    client machine checked only that ``re`` was pending, so a relay could answer a
    STATEMENT with a BUNDLE, a SEND with an OK, a fetch with another fetch's answer, and
    each caller had to notice (found in review: the STATEMENT, PREKEYS_UPLOAD,
    PROFILE_PUT and ROTATE_IDENTITY callers took any answer but an ERROR as OK). Now the
    machine refuses it, as the relay's fault (§9); the right one, and an ERROR, it takes."""
    pair = authenticated()
    request_id = pair.client.next_request_id()
    asked = data.draw(frame_strategy(FRAME_CLASSES[request]))
    pair.client.send(replace(asked, id=request_id))  # type: ignore[type-var]
    pair.client.data_to_send()
    reply = replace(data.draw(frame_strategy(FRAME_CLASSES[answer])), re=request_id)  # type: ignore[type-var]
    if answer is ANSWERS[request]:
        pair.client.receive_data(codec.encode(reply))
        assert pair.client.pending == {}
    else:
        with pytest.raises(UnexpectedFrame):  # a WELCOME: by the state, the rest: by this
            pair.client.receive_data(codec.encode(reply))
        assert pair.client.pending == {request_id: request}


def test_a_login_answered_with_a_log_answer_is_refused_by_the_machine() -> None:
    """T55 caught a log answer under the login's id in the SDK (receivable before
    WELCOME, §4.5); the machine now refuses it itself."""
    pair = Pair()
    frame = register(pair)
    reply = f.LogHead(re=frame.id, sth=None)
    with pytest.raises(UnexpectedFrame, match="answered"):
        pair.client.receive_data(codec.encode(reply))
