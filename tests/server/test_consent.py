"""Consent enforcement over real sockets: purges after block/revoke, no oracles (SPEC §7.4, §7.7)."""

from __future__ import annotations

import os

from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    Ack,
    Bundle,
    BundleFetch,
    Deliver,
    Ok,
    Send,
    Sent,
    Statement,
    StatementsList,
)
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, db_rows, error_code, relay_with
from .consent_helpers import issue_badge_for, revoke_badges_of, stated, statement_bytes

BACKENDS = ALL_BACKENDS

BOTH = ("utility", "marketing")


async def _notify(airline: RawClient, to: str, category: str, n: int) -> list[bytes]:
    ids = []
    for _ in range(n):
        sent = await airline.send_message(to, os.urandom(32), intent="notification",
                                          category=category)  # fmt: skip
        assert isinstance(sent, Sent), sent
        ids.append(sent.msg_id)
    return ids


async def _after_ok(client: RawClient, data: bytes) -> list[Deliver]:
    """Send a STATEMENT; the deliveries that arrived before its OK."""
    request_id = client.request_id()
    await client.send(Statement(id=request_id, statement=data))
    answer = await client.response(request_id)
    assert isinstance(answer, Ok), answer
    before = [f for f in client.inbox if isinstance(f, Deliver)]
    client.inbox.clear()
    return before


async def _drain(client: RawClient) -> list[Deliver]:
    """Everything delivered from now until a round trip completes, acknowledging as we go."""
    seen: list[Deliver] = []
    while True:
        request_id = client.request_id()
        await client.send(StatementsList(id=request_id))
        await client.response(request_id)
        new = [f for f in client.inbox if isinstance(f, Deliver)]
        client.inbox.clear()
        if not new:
            return seen
        seen.extend(new)
        await client.send(Ack(delivery_ids=tuple(d.delivery_id for d in new)))


async def test_nothing_queued_before_a_block_is_delivered_after_it(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, delivery_window=1) as relay:
        bob = await clients.registered(relay.url, "bob")
        airline = await clients.registered(relay.url, "airline", "business")
        await stated(bob, "grant", "airline", clock.now, BOTH)
        await bob.close()  # offline: everything waits in the queue
        await _notify(airline, "bob", "utility", 5)
        bob, _ = await clients.logged_in(relay.url, "bob", bob.key)
        # With a window of 1 at most one is in flight when the block is acknowledged.
        before = await _after_ok(bob, statement_bytes(bob, "block", "airline", clock.now))
        assert len(before) <= 1
        await bob.send(Ack(delivery_ids=tuple(d.delivery_id for d in before)))
        after = await _drain(bob)
        assert [d for d in after if d.sender == "airline"] == []
        queued = "SELECT COUNT(*) FROM queue WHERE recipient = 'bob'"
        assert db_rows(relay.config, queued) == [(0,)]
        await bob.close()
        _, welcome = await clients.logged_in(relay.url, "bob", bob.key)
        assert welcome.queued == 0


async def test_nothing_paged_into_an_online_outbox_is_pushed_after_a_revoke(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, delivery_window=2) as relay:
        bob = await clients.registered(relay.url, "bob")
        airline = await clients.registered(relay.url, "airline", "business")
        await stated(bob, "grant", "airline", clock.now, BOTH)
        marketing = await _notify(airline, "bob", "marketing", 6)
        utility = await _notify(airline, "bob", "utility", 2)
        first = await bob.deliveries(2)  # the window is full, the rest waits
        # The ACK makes the outbox page the next rows in; the revoke follows at once.
        await bob.send(Ack(delivery_ids=tuple(d.delivery_id for d in first)))
        revoke = statement_bytes(bob, "revoke", "airline", clock.now, ("marketing",))
        before = await _after_ok(bob, revoke)
        await bob.send(Ack(delivery_ids=tuple(d.delivery_id for d in before)))
        after = await _drain(bob)
        assert all(d.category == "utility" for d in after), after
        got = {d.msg_id for d in first + before + after}
        assert set(utility) <= got  # the revoke purged notifications of marketing only
        assert len(got & set(marketing)) < len(marketing)
        bob.inbox.clear()
        await bob.close()
        bob2, welcome = await clients.logged_in(relay.url, "bob", bob.key)
        assert welcome.queued == 0
        assert (
            error_code(
                await airline.send_message("bob", b"x", intent="notification", category="marketing")
            )
            == ErrorCode.RECIPIENT_UNAVAILABLE
        )
        assert bob2.inbox == type(bob2.inbox)()


async def _raw_answer(client: RawClient, frame: Send | BundleFetch) -> bytes:
    await client.ws.send(encode(frame))
    data = await client._recv_bytes()
    return data


async def test_refusals_are_byte_identical_whatever_the_reason(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.7: missing, non-consenting, blocking and blocked-by-business users."""
    airline = await clients.registered(relay.url, "airline", "business")
    carol = await clients.registered(relay.url, "carol")
    for handle in ("nonconsenting", "blocking", "blockedbyus"):
        user = await clients.registered(relay.url, handle)
        await user.upload_prekeys(one_time=1)
        if handle == "blocking":
            await stated(user, "block", "airline", clock.now)
            await stated(user, "block", "carol", clock.now)
    await stated(airline, "block", "blockedbyus", clock.now)
    sender = await clients.open(relay.url)
    sender.key = airline.key
    welcome = await sender.login("airline", airline.key)  # a fresh connection
    await sender.deliveries(welcome.queued)  # the block receipt; then nothing is pushed
    targets = ("missing", "nonconsenting", "blocking", "blockedbyus")
    msg_id, body = os.urandom(16), os.urandom(64)
    notify = {
        to: await _raw_answer(sender, Send(id=77, to=to, msg_id=msg_id, body=body,
                                           intent="notification", category="utility"))
        for to in targets
    }  # fmt: skip
    assert len(set(notify.values())) == 1, notify
    fetch = {to: await _raw_answer(sender, BundleFetch(id=77, handle=to)) for to in targets[::2]}
    assert len(set(fetch.values())) == 1
    assert set(fetch.values()) == set(notify.values())
    # And from a user: a missing account, one blocking her, one she blocks.
    chat = {
        to: await _raw_answer(carol, Send(id=77, to=to, msg_id=os.urandom(16), body=body,
                                          intent="chat"))
        for to in ("missing", "blocking")
    }  # fmt: skip
    await stated(carol, "block", "nonconsenting", clock.now)
    chat["nonconsenting"] = await _raw_answer(
        carol, Send(id=77, to="nonconsenting", msg_id=os.urandom(16), body=body, intent="chat")
    )
    assert len(set(chat.values())) == 1
    assert set(chat.values()) == set(notify.values())  # one frame: ERROR 400 re 77, bare


async def test_consent_requests_are_rate_limited_per_business(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, consent_request_burst=2) as relay:
        airline = await clients.registered(relay.url, "airline", "business")
        shop = await clients.registered(relay.url, "shop", "business")
        for business in ("airline", "shop"):  # verified: they may ask strangers (SPEC §7.3)
            issue_badge_for(relay.config, business, clock.now)
        for n in range(3):
            await clients.registered(relay.url, f"user{n}")
        ask = {"intent": "consent_request", "categories": ("utility",)}
        assert isinstance(await airline.send_message("user0", b"please", **ask), Sent)
        assert isinstance(await airline.send_message("user1", b"please", **ask), Sent)
        limited = await airline.send_message("user2", b"please", **ask)
        assert error_code(limited) == ErrorCode.RATE_LIMITED
        assert isinstance(await shop.send_message("user2", b"please", **ask), Sent)
        clock.advance(3_600_000 // 10_000 * 2)  # the default rate refills a token
        assert isinstance(await airline.send_message("user2", b"please", **ask), Sent)


async def test_a_users_message_opens_the_window_for_replies_until_it_expires(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    bob = await clients.registered(relay.url, "bob")
    airline = await clients.registered(relay.url, "airline", "business")
    unavailable = ErrorCode.RECIPIENT_UNAVAILABLE
    assert error_code(await airline.send_message("bob", b"hi")) == unavailable
    assert isinstance(await bob.send_message("airline", b"where is my bag?"), Sent)
    clock.advance(relay.config.service_window_ms - 1)
    assert isinstance(await airline.send_message("bob", b"found it"), Sent)
    clock.advance(1)
    assert error_code(await airline.send_message("bob", b"anything else?")) == unavailable
    assert isinstance(await bob.send_message("airline", b"thanks"), Sent)  # refreshes it
    assert isinstance(await airline.send_message("bob", b"welcome"), Sent)


async def test_an_outbox_never_pushes_rows_withdrawn_after_it_paged_them(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.4: a page read before a revoke committed is filtered when it is pushed."""
    bob = await clients.registered(relay.url, "bob")
    airline = await clients.registered(relay.url, "airline", "business")
    await stated(bob, "grant", "airline", clock.now, BOTH)
    session = relay.ctx.sessions.get("bob")
    assert session is not None and session.outbox is not None
    outbox = session.outbox
    await bob.close()
    await _notify(airline, "bob", "marketing", 2)
    page = await relay.ctx.store.submit("page", "bob", 0, 10, 0)
    rows = page[0]
    assert len(rows) == 2
    pushed: list[int] = []
    outbox.session = type("Recorder", (), {
        "handle": "bob", "open": True, "outbox": outbox, "transport": outbox.session.transport,
        "send_encoded": lambda _self, data: pushed.append(decode(data).delivery_id),
    })()  # fmt: skip
    outbox.withdraw([rows[0][0]])  # the revoke committed after the page was read
    outbox._push_page(page, limit=10)
    assert pushed == [rows[1][0]]


async def test_a_business_is_refused_another_business_like_an_unknown_recipient(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.3, §7.7: business → business is refused with the one ERROR 400, not 202:
    a refusal that depends on the recipient's kind must not tell its kind (or existence)."""
    airline = await clients.registered(relay.url, "airline", "business")
    hotel = await clients.registered(relay.url, "hotel", "business")
    await hotel.upload_prekeys(one_time=1)
    body = os.urandom(64)
    for intent, fields in (
        ("chat", {}),
        ("notification", {"category": "utility"}),
        ("consent_request", {"categories": ("utility",)}),
    ):
        answers = {
            to: await _raw_answer(airline, Send(id=78, to=to, msg_id=os.urandom(16), body=body,
                                                intent=intent, **fields))
            for to in ("hotel", "nohotel")
        }  # fmt: skip
        assert answers["hotel"] == answers["nohotel"], (intent, answers)
        assert error_code(decode(answers["hotel"])) == ErrorCode.RECIPIENT_UNAVAILABLE
    fetches = {to: await _raw_answer(airline, BundleFetch(id=79, handle=to))
               for to in ("hotel", "nohotel")}  # fmt: skip
    assert fetches["hotel"] == fetches["nohotel"]


async def test_an_unverified_business_cannot_cold_request_consent(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """Issue 13 item 10: any unbadged business got one free consent request per user. Now
    it may ask only users who wrote to it; a badge in force for its current key lifts that,
    read at every request (a revoked badge stops counting at once)."""
    shop = await clients.registered(relay.url, "shop", "business")
    bob = await clients.registered(relay.url, "bob")
    await bob.upload_prekeys(one_time=2)
    carol = await clients.registered(relay.url, "carol")
    dave = await clients.registered(relay.url, "dave")
    ask = {"intent": "consent_request", "categories": ("utility",)}
    reference = await _raw_answer(shop, Send(id=80, to="nobody", msg_id=os.urandom(16),
                                             body=b"x", intent="chat"))  # fmt: skip
    cold = await _raw_answer(shop, Send(id=80, to="bob", msg_id=os.urandom(16), body=b"x", **ask))
    assert cold == reference
    assert await _raw_answer(shop, BundleFetch(id=80, handle="bob")) == reference
    assert isinstance(await carol.send_message("shop", b"hello"), Sent)
    assert isinstance(await shop.send_message("carol", b"may we?", **ask), Sent)
    issue_badge_for(relay.config, "shop", clock.now)
    assert isinstance(await shop.send_message("bob", b"may we?", **ask), Sent)
    assert isinstance(await shop.request(lambda i: BundleFetch(id=i, handle="bob")), Bundle)
    revoke_badges_of(relay.config, "shop", clock.now)
    assert error_code(await shop.send_message("dave", b"may we?", **ask)) == 400
    await dave.close()
