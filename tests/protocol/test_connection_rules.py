"""SPEC §4.5, §9: the connection states' edges the tables of protocol/connection_rules.py
draw — what CLOSED ends, which refusals count towards the error budget — held one by one
(found unheld by mutation analysis; test_connection.py has the machine's main paths)."""

from __future__ import annotations

import pytest

from blindrelay.protocol import codec, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol.connection import State
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    ErrorCode,
    Forbidden,
    HandleTaken,
    MalformedFrame,
    ProtocolError,
    RegistrationRefused,
)

from .pair import ALICE, Pair, authenticated, signer


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
