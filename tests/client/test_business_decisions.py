"""What the business client decides alone (client/business.py), over the in-memory relay
of :mod:`.fake_relay`: no away reply to a business, ``notify``'s outcomes by the relay's
answer, the error of an unknown category, and a profile the relay refuses not kept.

A relay that answers exactly as each test needs — including as no honest relay would,
such as carrying a business's message to a business (SPEC §7.7) — shows what the client
does on its own judgement; the tests against a real relay are in :mod:`.test_business`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from blindrelay.client.business import Business
from blindrelay.client.sdk import Message
from blindrelay.protocol import frames
from blindrelay.protocol.business import BusinessProfile, OpeningHours
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import (
    BlindrelayError,
    Forbidden,
    InvalidProfile,
    ProtocolError,
    QueueFull,
    RateLimited,
    RecipientUnavailable,
    UnexpectedFrame,
)
from blindrelay.protocol.signed import ConsentStatement, make_statement, unverified_body

from ..relays import T0, FakeClock
from .fake_relay import RELAY_KEY, URL, FakeRelay, RelayEnd, answer_plainly
from .harness import local_ms, online, session_with, within
from .log_relay import Writer

SHOP_ZONE = "UTC"
WEEKDAYS = [OpeningHours(day, 9 * 60, 18 * 60) for day in range(5)]
CUSTOMER_SEEDS = {
    handle: bytes([n]) * 32 for n, handle in enumerate(["ann", "ben", "cat", "dan", "eve"], 1)
}
"""Customers and the seeds of their identity keys."""


def answer_profiles(end: RelayEnd, frame: frames.Frame) -> None:
    """The in-memory relay, also taking every PROFILE_PUT (OK)."""
    if isinstance(frame, frames.ProfilePut):
        end.send(frames.Ok(re=frame.id))
    else:
        answer_plainly(end, frame)


async def shop_on(relay: FakeRelay, **options: Any) -> Business:
    """Business ``shop`` on ``relay``'s clock, with :class:`Business` ``options``."""
    client = await online(URL, "shop", "business", open_transport=relay.open, clock=relay.clock)
    return Business(client, **options)


def grant_of(user: str, category: str = "utility") -> frames.Deliver:
    """``user``'s signed grant of ``category`` to shop, as the relay forwards it (SPEC §7.5)."""
    key = IdentityKeyPair.from_seed(CUSTOMER_SEEDS[user])
    signed = make_statement(
        "grant", signer=user, signer_key=key.public, target="shop",
        relay_key=RELAY_KEY.verify_key.encode(), now_ms=T0, rng=os.urandom,
        categories=(category,),
    ).sign(key.sign)  # fmt: skip
    return frames.Deliver(
        delivery_id=1, sender=user, sender_kind="user", intent="statement", sent_at=T0,
        msg_id=unverified_body(ConsentStatement, signed).nonce, body=signed,
    )  # fmt: skip


def consenting_customers(
    shop: Business, with_session: list[str], without_session: tuple[str, ...] = ()
) -> None:
    """Each customer named grants shop ``utility``; those of ``with_session`` have a session."""
    for user in with_session:
        session_with(shop.client, user, CUSTOMER_SEEDS[user])
    for user in [*with_session, *without_session]:
        shop.client.consent.receive(grant_of(user), RELAY_KEY.verify_key.encode())
    assert shop.consenting("utility") == sorted([*with_session, *without_session])


async def test_no_away_reply_goes_to_a_business_writing_while_we_are_closed() -> None:
    """SPEC §8.2: the away reply answers a customer — a user — who writes outside the
    hours. A message from a business (which a relay refuses to carry, §7.7, unless it
    lies about the sender's kind) gets none, and its sender's closed period is not taken
    (mutation analysis of client/business.py: without ``from_user`` in ``_away_reply``
    the business got one; this relay refuses its BUNDLE_FETCH with 400, as §7.7 has it)."""
    relay = FakeRelay(FakeClock(local_ms(SHOP_ZONE, "2027-01-09T12:00")))  # Saturday: closed

    def refusing_bundles(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.BundleFetch):
            end.refuse(RecipientUnavailable(), re=frame.id)
        else:
            answer_profiles(end, frame)

    relay.answer = refusing_bundles
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    shop = await shop_on(relay, away_message="Closed.", on_message=incoming.put)
    await within(shop.publish_profile(display_name="Shop", timezone=SHOP_ZONE, hours=WEEKDAYS))
    shop.start()
    end = relay.ends[0]
    Writer(relay, shop.client, "airline", b"\x41" * 32, to="shop").deliver("Your order", "business")
    assert (await within(incoming.get())).from_business  # its away decision was made
    Writer(relay, shop.client, "ann", CUSTOMER_SEEDS["ann"], to="shop").deliver("Open?", "user")
    assert (await within(incoming.get())).from_user
    assert [send.to for send in end.received(frames.Send)] == ["ann"]  # the customer's reply
    assert end.received(frames.BundleFetch) == []
    assert shop.client.store.away_reply_period("airline") is None
    assert shop.client.store.away_reply_period("ann") is not None
    await shop.close()


async def test_notify_raises_value_error_for_a_category_there_is_not() -> None:
    """docs/sdk.md: ``notify`` raises ``ValueError`` for an unknown category — the
    caller's mistake, before anything is sent, not one of the relay's named errors
    (mutation analysis of client/business.py: without the check no error was raised at
    all, and ``notify`` answered "no recipients" as if nobody had opted in)."""
    relay = FakeRelay()
    shop = await shop_on(relay)
    consenting_customers(shop, ["ann", "ben"])
    for to in (None, ["ann", "ben"]):
        with pytest.raises(ValueError, match="unknown category 'gossip'") as raised:
            await within(shop.notify("gossip", "psst", to=to))
        assert not isinstance(raised.value, BlindrelayError)
    assert relay.ends[0].received(frames.Send) == []
    assert (await within(shop.notify("utility", "gate change"))).sent == ["ann", "ben"]
    await shop.close()


async def test_a_recipient_the_relay_refuses_with_400_is_refused_and_others_failed() -> None:
    """SPEC §7.7, docs/sdk.md: a recipient the relay refuses with ERROR 400 (no consent,
    blocked, no such account) is reported in ``refused`` — at its SEND, or at the bundle
    fetch of one without a session; any other error per recipient in ``failed``
    (mutation analysis of client/business.py: the 400 counted in ``failed`` passed)."""
    relay = FakeRelay()

    def refusing(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.BundleFetch) or (
            isinstance(frame, frames.Send) and frame.to == "ben"
        ):
            end.refuse(RecipientUnavailable(), re=frame.id)
        elif isinstance(frame, frames.Send) and frame.to == "dan":
            end.refuse(QueueFull(), re=frame.id)
        else:
            answer_plainly(end, frame)

    relay.answer = refusing
    shop = await shop_on(relay)
    consenting_customers(shop, ["ann", "ben", "cat", "dan"], without_session=("eve",))
    result = await within(shop.notify("utility", "gate change"))
    assert (result.sent, result.refused) == (["ann", "cat"], ["ben", "eve"])
    assert list(result.failed) == ["dan"] and isinstance(result.failed["dan"], QueueFull)
    assert [f.handle for f in relay.ends[0].received(frames.BundleFetch)] == ["eve"]
    await shop.close()


@pytest.mark.parametrize("refusal", [InvalidProfile, RateLimited, Forbidden])
async def test_a_profile_the_relay_refuses_is_not_kept(refusal: type[ProtocolError]) -> None:
    """SPEC §8.2: the profile kept — what away replies and :attr:`Business.profile` go
    by — is the one the relay took (OK). One refused (600 malformed, 402 paced, 202 not
    a business) raises that error and leaves the last one taken (mutation analysis of
    client/business.py: a profile kept whatever the answer passed)."""
    relay = FakeRelay()
    shop = await shop_on(relay)

    def refusing_profiles(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.ProfilePut):
            end.refuse(refusal(), re=frame.id)
        else:
            answer_plainly(end, frame)

    async def publish(name: str) -> BusinessProfile:
        return await within(
            shop.publish_profile(display_name=name, timezone=SHOP_ZONE, hours=WEEKDAYS)
        )

    relay.answer = refusing_profiles
    with pytest.raises(refusal):
        await publish("Refused Shop")
    assert shop.profile is None and shop.client.store.business_profile() is None
    relay.answer = answer_profiles
    taken = await publish("Corner Shop")
    relay.answer = refusing_profiles
    with pytest.raises(refusal):
        await publish("Renamed Shop")
    assert shop.profile == taken
    await shop.close()


async def test_a_profile_put_answered_with_another_frame_keeps_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC §2.2: OK alone answers PROFILE_PUT. The connection's machine drops any other
    answer before the link returns it; should one get through, ``publish_profile`` raises
    UnexpectedFrame and keeps nothing (mutation analysis of client/business.py: the
    check removed, a LOG_HEAD was taken for the OK)."""
    relay = FakeRelay()
    shop = await shop_on(relay)

    async def another_frame(make: Callable[[int], frames.Frame]) -> frames.Frame:
        return frames.LogHead(re=make(1).id, sth=None)  # type: ignore[attr-defined]

    monkeypatch.setattr(shop.client.link, "request", another_frame)
    with pytest.raises(UnexpectedFrame, match="PROFILE_PUT"):
        await within(shop.publish_profile(display_name="Shop", timezone=SHOP_ZONE, hours=[]))
    assert shop.profile is None and shop.client.store.business_profile() is None
    monkeypatch.undo()
    await shop.close()
