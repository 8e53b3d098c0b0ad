"""Who blocked whom, over real sockets: what a blocked, unknown or revoked party observes
(SPEC §7.4–7.7, §11.1; threat model T10, T47, T54).

Each test puts one sender in front of targets in different worlds — the target blocks the
sender, the target never heard of it (or revoked), the target does not exist or is of the
other kind — and compares the raw answers byte for byte where SPEC §11.1 says they must
be the same, and what the sender's next frames get.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from blindrelay.protocol import limits
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    Deliver,
    Error,
    Frame,
    Ok,
    ProfileFetch,
    Send,
    Sent,
    Statement,
    Statements,
    StatementsList,
)
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, db_rows, error_code, relay_with
from .consent_helpers import DAY_MS, issue_badge_for, state, stated, statement_bytes

BACKENDS = ALL_BACKENDS

RID = 4242
"""One request id for every compared request: equal answers are equal bytes."""


async def _raw(client: RawClient, make: Callable[[int], Frame]) -> bytes:
    """The relay's answer to ``make(RID)``, its exact bytes (pushes in between are kept)."""
    await client.ws.send(encode(make(RID)))
    while True:
        data = await client._recv_bytes()
        frame = decode(data)
        if getattr(frame, "re", None) == RID:
            return data
        client.inbox.append(frame)


def _send(to: str, intent: str, **fields: object) -> Callable[[int], Frame]:
    return lambda i: Send(id=i, to=to, msg_id=os.urandom(16), intent=intent, body=b"x", **fields)


def _notification(to: str) -> Callable[[int], Frame]:
    return _send(to, "notification", category="utility")


def _consent_request(to: str) -> Callable[[int], Frame]:
    return _send(to, "consent_request", categories=("utility",))


async def _listed(client: RawClient) -> list[bytes]:
    page = await client.request(lambda i: StatementsList(id=i, after=0))
    assert isinstance(page, Statements)
    return list(page.statements)


async def test_a_consent_statement_made_while_its_signer_blocks_the_business_is_refused(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """Threat model T54, SPEC §7.4: bob blocked the handle ``newshop`` before anyone held
    it; a business registered it. Bob's block is neither forwarded nor listed to it (T47),
    but the relay accepted bob's grant to it while that block was in force and forwarded
    it, and the business's notification under that grant was then refused with a 400 no
    receipt explains — telling the business that bob blocks it (reproduced: the grant
    was pushed to ``newshop`` and its notification refused). A deny did the same after
    its cooldown, for a business that may ask strangers. A grant, deny or revoke by an
    account that blocks its target is now refused with 500, by the signer's own state:
    the block refuses everything the business could send under it anyway. Once bob
    unblocks (not forwarded either), his grant goes through and the notification too."""
    bob = await clients.registered(relay.url, "bob")
    await stated(bob, "block", "newshop", clock.now)
    shop = await clients.registered(relay.url, "newshop", "business")
    await shop.upload_prekeys()
    for action in ("grant", "deny"):
        answer = await state(bob, action, "newshop", clock.now, ("utility",))
        assert error_code(answer) == ErrorCode.INVALID_STATEMENT, (action, answer)
    from_bob = "SELECT COUNT(*) FROM queue WHERE recipient = 'newshop' AND sender = 'bob'"
    assert db_rows(relay.config, from_bob) == [(0,)]
    assert await _listed(shop) == []
    # What the business observes of bob: the same as of a handle nobody holds.
    assert await _raw(shop, _notification("bob")) == await _raw(shop, _notification("nobody"))
    # Unblocked, bob may grant; the business then notifies as its receipt says.
    await stated(bob, "unblock", "newshop", clock.now)
    granted = statement_bytes(bob, "grant", "newshop", clock.now, ("utility",))
    assert isinstance(await bob.request(lambda i: Statement(id=i, statement=granted)), Ok)
    assert (await shop.push(Deliver)).body == granted
    assert isinstance(await shop.request(_notification("bob")), Sent)


async def test_a_consent_statement_to_a_business_the_signer_blocks_is_refused_whenever_it_blocked(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.4: the refusal is one rule, whatever the block: made once the business
    existed (forwarded) or before (not), the signer gets the same 500 — it depends on
    the signer's own word only, and tells it nothing about when the handle was taken."""
    bob = await clients.registered(relay.url, "bob")
    await stated(bob, "block", "early", clock.now)
    early = await clients.registered(relay.url, "early", "business")
    late = await clients.registered(relay.url, "late", "business")
    await stated(bob, "block", "late", clock.now)
    answers = {
        target: await _raw(
            bob,
            lambda i, t=target: Statement(
                id=i, statement=statement_bytes(bob, "grant", t, clock.now, ("utility",))
            ),
        )
        for target in ("early", "late")
    }
    assert answers["early"] == answers["late"]
    assert error_code(decode(answers["early"])) == ErrorCode.INVALID_STATEMENT
    # The business that existed holds bob's block (forwarded), and nothing after it.
    assert (await late.push(Deliver)).body == (await _listed(late))[0]
    assert len(await _listed(late)) == 1 and await _listed(early) == []
    # A consent statement to a user or nobody stays the 400 it was, blocked or not.
    await clients.registered(relay.url, "carol")
    await stated(bob, "block", "carol", clock.now)
    await stated(bob, "block", "ghost", clock.now)
    refusals = {
        target: await _raw(
            bob,
            lambda i, t=target: Statement(
                id=i, statement=statement_bytes(bob, "grant", t, clock.now, ("utility",))
            ),
        )
        for target in ("carol", "ghost", "nobody")
    }
    assert len(set(refusals.values())) == 1
    assert error_code(decode(refusals["carol"])) == ErrorCode.RECIPIENT_UNAVAILABLE
    # A business's block of bob refuses him nothing here: his grant is accepted (held
    # back, §7.5) as where nothing blocks, so the rule tells him nothing of that block.
    await clients.registered(relay.url, "welcoming", "business")
    shy = await clients.registered(relay.url, "shy", "business")
    await stated(shy, "block", "bob", clock.now)
    accepted = {
        target: await _raw(
            bob,
            lambda i, t=target: Statement(
                id=i, statement=statement_bytes(bob, "grant", t, clock.now, ("utility",))
            ),
        )
        for target in ("shy", "welcoming")
    }
    assert accepted["shy"] == accepted["welcoming"] == encode(Ok(re=RID))


async def test_what_a_business_observes_of_a_block_made_before_it_registered(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.5, §11.1 (lead 1 of the review, T47's residual): every frame a business
    can send to a user who blocked its handle before it registered gets the answer it
    gets for a handle nobody holds and for another business, byte for byte. Only a
    verified business, which may ask and fetch from strangers, tells a user who never
    heard of it (SENT, BUNDLE) from one who blocked it (400) — what the block does;
    it can read that as a block only if it knows the handle exists (REGISTER's 201, a
    published key, §11.1)."""
    for name in ("pre", "fresh"):
        user = await clients.registered(relay.url, name)
        await user.upload_prekeys(one_time=2)
    pre = clients.opened[0]
    await stated(pre, "block", "verified", clock.now)
    await stated(pre, "block", "plain", clock.now)
    verified = await clients.registered(relay.url, "verified", "business")
    plain = await clients.registered(relay.url, "plain", "business")
    other = await clients.registered(relay.url, "other", "business")
    await other.upload_prekeys()
    issue_badge_for(relay.config, "verified", clock.now)

    frames = {
        "notification": _notification,
        "service reply": lambda to: _send(to, "chat"),
        "consent request": _consent_request,
        "bundle fetch": lambda to: lambda i: BundleFetch(id=i, handle=to),
        "profile fetch": lambda to: lambda i: ProfileFetch(id=i, handle=to),
    }
    for business in (verified, plain):
        for name, make in frames.items():
            answers = {to: await _raw(business, make(to)) for to in ("pre", "nobody", "other")}
            if name == "profile fetch":  # a business's profile is public (§8.2)
                del answers["other"]
            assert len(set(answers.values())) == 1, (business.handle, name, answers)
            if name != "profile fetch":
                assert decode(answers["pre"]) == Error(code=400, re=RID), (business.handle, name)
        # A user who never heard of it: the same too, but for what a badge allows (§7.3).
        for name, make in frames.items():
            answer = decode(await _raw(business, make("fresh")))
            allowed = business is verified and name in ("consent request", "bundle fetch")
            if allowed:
                assert isinstance(answer, Sent | Bundle), (name, answer)
            elif name == "profile fetch":
                assert error_code(answer) == ErrorCode.NOT_FOUND
            else:
                assert answer == Error(code=400, re=RID), (business.handle, name, answer)
    # Nothing of the block is listed or forwarded to either business (T47).
    assert await _listed(verified) == [] and await _listed(plain) == []


async def test_a_block_made_before_the_business_registered_starts_the_cooldown_a_block_of_it_would(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """Threat model T57, SPEC §7.4: a user's block of a business makes every category
    revoked(now + CONSENT_COOLDOWN_MS), so once unblocked the business may not ask again
    before that cooldown ends. A block of a handle nobody held did not: bob blocked
    ``early`` before it was registered and ``late`` a moment after, unblocked both a day
    later, and the verified ``early`` could ask him for consent (and fetch his bundle) at
    once where ``late`` got the 400 for 30 days (reproduced on both stores). Such a block
    now takes effect on the business as a block made when it registered, its revocation
    applied when the block is lifted: each business observes bob exactly as the other
    does, and as a handle nobody holds, at every step — nothing tells it when he blocked
    (T47)."""
    bob = await clients.registered(relay.url, "bob")
    await bob.upload_prekeys(one_time=4)
    await stated(bob, "block", "early", clock.now)
    early = await clients.registered(relay.url, "early", "business")
    late = await clients.registered(relay.url, "late", "business")
    await stated(bob, "block", "late", clock.now)
    for business in (early, late):
        issue_badge_for(relay.config, business.handle, clock.now, validity_ms=60 * DAY_MS)
    await late.push(Deliver)  # bob's block, forwarded (§7.5)
    clock.advance(DAY_MS)
    for business in (early, late):
        await stated(bob, "unblock", business.handle, clock.now)
    await late.push(Deliver)  # and its unblock
    frames = {
        "consent request": _consent_request,
        "bundle fetch": lambda to: lambda i: BundleFetch(id=i, handle=to),
    }
    refused = encode(Error(code=400, re=RID))
    # A day after the blocks, then the last ms of the cooldown that began at both.
    for step in (0, limits.CONSENT_COOLDOWN_MS - DAY_MS - 1):
        clock.advance(step)
        seen = {
            business.handle: {
                name: {to: await _raw(business, make(to)) for to in ("bob", "nobody")}
                for name, make in frames.items()
            }
            for business in (early, late)
        }
        assert seen["early"] == seen["late"], step
        for name, answers in seen["early"].items():
            assert set(answers.values()) == {refused}, (step, name, answers)
    clock.advance(1)
    for business in (early, late):
        assert isinstance(await business.request(_consent_request("bob")), Sent)
    assert await _listed(early) == []  # neither the block nor its unblock (T47)


async def test_what_a_user_observes_of_a_user_who_blocked_it(
    config: RelayConfig, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.7, §11.1: every frame a user can send naming another account — a chat, a
    bundle fetch, a profile fetch, each statement — gets the same bytes whether that
    account blocks it or does not exist; and what it sends next behaves alike: a refused
    chat spends none of the first-contact budget and counts no message request."""
    async with relay_with(config, clock, first_contacts_burst=1) as tight:
        carol = await clients.registered(tight.url, "carol")
        await carol.upload_prekeys(one_time=1)
        dave = await clients.registered(tight.url, "dave")
        eve = await clients.registered(tight.url, "eve")
        for target in ("dave", "eve"):
            await clients.registered(tight.url, target + "2")
        await stated(carol, "block", "dave", clock.now)
        pairs = {"dave": "carol", "eve": "nobody"}
        for sender in (dave, eve):
            to = pairs[sender.handle]
            assert error_code(await sender.send_message(to, b"hi")) == 400
            # The one token of the first-contact budget is still there, in both worlds.
            assert isinstance(await sender.send_message(sender.handle + "2", b"hi"), Sent)

        def frames(to: str) -> dict[str, Callable[[int], Frame]]:
            made: dict[str, Callable[[int], Frame]] = {
                "chat": _send(to, "chat"),
                "bundle fetch": lambda i: BundleFetch(id=i, handle=to),
                "profile fetch": lambda i: ProfileFetch(id=i, handle=to),
            }
            return made

        for name in frames("x"):
            seen = decode(await _raw(dave, frames("carol")[name]))
            unknown = decode(await _raw(eve, frames("nobody")[name]))
            assert seen == unknown, (name, seen, unknown)
        for action in ("block", "unblock", "grant", "deny", "revoke"):
            cats = ("utility",) if action in ("grant", "deny", "revoke") else None
            answers = []
            for sender, to in ((dave, "carol"), (eve, "nobody")):
                data = statement_bytes(sender, action, to, clock.now, cats)
                answers.append(await _raw(sender, lambda i, d=data: Statement(id=i, statement=d)))
            assert answers[0] == answers[1], (action, [decode(a) for a in answers])
