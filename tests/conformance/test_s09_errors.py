"""SPEC §9 Errors: reason only with 1xx codes, retry_after only with 402, what closes."""

from __future__ import annotations

import pytest

from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    BundleFetch,
    Error,
    LogHead,
    LogHeadFetch,
    PrekeysUpload,
    ProfileFetch,
    Send,
    Sent,
    Statement,
)

from .wire import Account, Peer, new_handle, new_msg_id, rng, signed_prekey


async def _errors_of_every_kind(relay) -> list[tuple[Peer, Error]]:
    """One refusal for each code a client can provoke without waiting."""
    alice = await relay.user()
    bob = await relay.user(signed=True)
    out: list[tuple[Peer, Error]] = []

    async def refused(peer: Peer, build) -> None:
        answer = await peer.request(build)
        assert isinstance(answer, Error), answer
        out.append((peer, answer))

    await alice.send_raw(b"\xc1")
    out.append((alice, await alice.recv()))  # 100
    await alice.send_raw(b"\x81\xa1t\x63")
    out.append((alice, await alice.recv()))  # 102
    await refused(
        alice,
        lambda i: PrekeysUpload(id=i, signed_prekey=signed_prekey(IdentityKeyPair.generate(rng))),
    )  # 300
    await refused(
        alice,
        lambda i: Send(id=i, to=new_handle("x"), msg_id=new_msg_id(), intent="chat", body=b"x"),
    )  # 400
    await refused(
        alice,
        lambda i: Send(
            id=i,
            to=bob.handle,
            msg_id=new_msg_id(),
            intent="notification",
            body=b"x",
            category="utility",
        ),
    )  # 202
    msg_id = new_msg_id()
    sent = await alice.request(
        lambda i: Send(id=i, to=bob.handle, msg_id=msg_id, intent="chat", body=b"1")
    )
    assert isinstance(sent, Sent)
    await refused(
        alice, lambda i: Send(id=i, to=bob.handle, msg_id=msg_id, intent="chat", body=b"2")
    )  # 403
    await refused(alice, lambda i: Statement(id=i, statement=b"\x80"))  # 500
    await refused(alice, lambda i: ProfileFetch(id=i, handle=new_handle("x")))  # 601
    fetches = [BundleFetch(id=alice.next_id(), handle=bob.handle) for _ in range(60)]
    for frame in fetches:
        await alice.send(frame)
    answers = [await alice.response(f.id) for f in fetches]
    out.append((alice, next(a for a in answers if isinstance(a, Error))))  # 402
    carol = await relay.connect()
    taken = await carol.register(Account(bob.handle, "user"))
    assert isinstance(taken, Error)
    out.append((carol, taken))  # 201
    dave = await relay.connect()
    forged = await dave.login(Account(bob.handle, "user", IdentityKeyPair.generate(rng)))
    assert isinstance(forged, Error)
    out.append((dave, forged))  # 200
    return out


@pytest.mark.spec("9")
async def test_only_1xx_errors_carry_a_reason_and_only_402_a_retry_after(relay):
    """SPEC §9: "reason (a short human hint, only with 1xx codes). Every other code is
    sent bare"; retry_after "with 402 only"."""
    errors = await _errors_of_every_kind(relay)
    codes = sorted(e.code for _, e in errors)
    assert codes == [100, 102, 200, 201, 202, 300, 400, 402, 403, 500, 601]
    for _, error in errors:
        if error.code >= 200:
            assert error.reason is None, error
        assert (error.retry_after is not None) == (error.code == 402), error


@pytest.mark.spec("9")
async def test_only_closing_codes_close_the_connection(relay):
    """SPEC §9: "all other errors leave it open and usable"; after 200 the relay "MUST send
    no further frame and MUST close the WebSocket connection with … 1008". A connection
    refused before any login (201) shows it is open with a log read (§15.6: no login)."""
    for peer, error in await _errors_of_every_kind(relay):
        if ErrorCode(error.code).closes_connection:
            assert await peer.closed() == 1008, error
            assert peer.pending() == [], error
        elif peer.account is not None:
            assert [f for f in await peer.round_trip() if isinstance(f, Error)] == [], error
        else:
            assert isinstance(await peer.request(lambda i: LogHeadFetch(id=i)), LogHead), error
