"""A WELCOME for another account than the one that logged in (SPEC §4.4, T56).

Over the in-memory relay of :mod:`.fake_relay`, whose protocol machine would never send
one: the lying WELCOME is written to the client's end as bytes.
"""

from __future__ import annotations

import pytest

from blindrelay.client.sdk import ConnectionLost
from blindrelay.protocol import codec, frames

from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly, welcome
from .harness import make_client, online, within

LIES = {"another handle": ("mallory", "user"), "another kind": ("alice", "business")}


@pytest.mark.parametrize("lie", LIES)
async def test_a_welcome_for_another_account_at_the_automatic_login_is_not_taken(
    lie: str,
) -> None:
    """T56: the relay answered alice's LOGIN after a reconnect with a WELCOME for
    ``mallory`` (or for alice as a business): the client took it and was online as that
    account — its outbox sent again and any DELIVER acknowledged on a connection the
    relay says is another account's, ``client.welcome`` naming it. Now the WELCOME is
    refused like any invalid frame: the connection ends and the next one logs in."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open)
    handle, kind = LIES[lie]
    lied = False

    def lie_once(end: RelayEnd, frame: frames.Frame) -> None:
        nonlocal lied
        if isinstance(frame, frames.Login) and not lied:
            lied = True
            end.transport.deliver(codec.encode(welcome(frame.id, handle, kind)))
        else:
            answer_plainly(end, frame)

    relay.answer = lie_once
    relay.ends[0].drop()
    await within(relay.connection(2))  # never opened before: online on the lying one
    await within(alice.wait_online())
    assert alice.welcome is not None and (alice.welcome.handle, alice.welcome.kind) == (
        "alice", "user",
    )  # fmt: skip
    assert alice.connection_count == 2  # the registration's and the honest login's
    await alice.close()


async def test_a_welcome_for_another_handle_at_registration_is_an_error() -> None:
    """T56: the same at REGISTER: the profile is not taken as registered."""
    relay = FakeRelay()

    def welcome_mallory(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Register):
            end.transport.deliver(codec.encode(welcome(frame.id, "mallory", frame.kind)))
        else:
            answer_plainly(end, frame)

    relay.answer = welcome_mallory
    alice = make_client(open_transport=relay.open)
    await within(alice.connect(URL))
    with pytest.raises(ConnectionLost):
        await within(alice.register("alice"))
    assert not alice.store.is_registered() and alice.welcome is None
    await alice.close()
