"""Signed statements of consent and blocking (client/statements.py, SPEC §7.4–7.6): made,
kept and checked.

Unit tests over the in-memory relay of :mod:`.fake_relay`: what is signed and kept,
what a forwarded statement must pass to be kept, the records, the offline check.
Then the user's side through the SDK over real sockets.

A business and users are real :class:`Client` objects against an in-process
relay whose clock is a :class:`FakeClock` far from the wall clock, so every
accepted statement also shows that the SDK dates statements by the relay's
clock from HELLO (SPEC §4.1, §7.4). No sleeps: waits are on futures/events.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blindrelay.client.sdk import Client, HeldStatement
from blindrelay.protocol import frames, limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import (
    InvalidStatement,
    RecipientUnavailable,
    StaleStatement,
    UnexpectedFrame,
    UntrustedIdentity,
)
from blindrelay.protocol.signed import (
    Action,
    ConsentStatement,
    make_statement,
    unverified_body,
    verify_statement,
)

from ..relays import T0, FakeClock, relay_at
from ..server.consent_helpers import issue_badge_for
from .fake_relay import RELAY_KEY, URL, FakeRelay, RelayEnd, answer_plainly
from .harness import Inbox, Statements, online, run, skewed_relay_clock, within


async def notify(business: Client, user: str, text: str, category: str = "utility") -> bytes:
    return await within(business.send(user, text, intent="notification", category=category))


HOUR_MS = 3600 * 1000
BOB = IdentityKeyPair.from_seed(b"\x71" * 32)
"""A user who makes statements to alice (a business here)."""


async def alice_online(relay: FakeRelay, kind: str = "user") -> Client:
    """Alice, whose own clock runs three hours behind the relay's."""
    return await online(
        URL, "alice", kind, open_transport=relay.open, clock=FakeClock(T0 - 3 * HOUR_MS)
    )


def from_bob(
    action: str = "grant",
    *,
    target: str = "alice",
    key: IdentityKeyPair = BOB,
    claimed: bytes | None = None,
    relay_key: bytes | None = None,
) -> bytes:
    """A statement bob signed (with ``key``, claiming ``claimed``) for ``target``."""
    return make_statement(
        action, signer="bob", signer_key=claimed or key.public, target=target,
        relay_key=relay_key or RELAY_KEY.verify_key.encode(), now_ms=T0, rng=os.urandom,
        categories=("utility",) if action in ("grant", "revoke", "deny") else None,
    ).sign(key.sign)  # fmt: skip


def forwarded(signed: bytes, sender: str = "bob") -> frames.Deliver:
    """The DELIVER of a statement the relay forwards: its msg_id is the nonce (SPEC §7.5)."""
    nonce = unverified_body(ConsentStatement, signed).nonce
    return frames.Deliver(
        delivery_id=1, sender=sender, sender_kind="user", msg_id=nonce, intent="statement",
        sent_at=T0, body=signed,
    )  # fmt: skip


async def test_our_statement_is_dated_by_the_relay_s_clock_and_kept_once_it_took_it() -> None:
    relay = FakeRelay()
    alice = await alice_online(relay)
    statement = await within(alice.grant("airline", ["utility"]))
    assert statement.issued_at == T0  # the relay's clock from HELLO, not ours
    (sent,) = relay.ends[0].received(frames.Statement)
    assert alice.consent.records("airline") == [sent.statement]
    verify_statement(
        sent.statement, expected_key=alice.sessions.identity.identity_public,
        relay_key=RELAY_KEY.verify_key.encode(),
    )  # fmt: skip
    assert alice.consent.check(sent.statement).verified
    assert alice.granted_to("airline") == {"utility"}
    await alice.close()


async def test_a_statement_the_relay_refuses_is_not_kept() -> None:
    relay = FakeRelay()

    def refuse_statements(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Statement):
            end.refuse(InvalidStatement(), re=frame.id)
        else:
            answer_plainly(end, frame)

    relay.answer = refuse_statements
    alice = await alice_online(relay)
    with pytest.raises(InvalidStatement):
        await within(alice.block("mallory"))
    assert alice.consent.records("mallory") == [] and alice.consent.counts() == {}
    await alice.close()


async def test_what_we_granted_is_our_statements_folded_and_a_block_withdraws_it() -> None:
    relay = FakeRelay()
    alice = await alice_online(relay)
    await within(alice.grant("airline", ["utility", "marketing"]))
    await within(alice.revoke("airline", ["marketing"]))
    assert alice.granted_to("airline") == {"utility"}
    with pytest.raises(InvalidStatement, match="already granted"):
        await alice.grant("airline", ["utility"])  # refused before anything is sent
    assert len(relay.ends[0].received(frames.Statement)) == 2
    await within(alice.block("airline"))
    assert alice.granted_to("airline") == frozenset()
    assert alice.consent.counts() == {"airline": 3}
    await alice.close()


async def test_a_forwarded_statement_is_kept_once_verified_and_its_signer_pinned() -> None:
    relay = FakeRelay()
    alice = await alice_online(relay, "business")
    heard: list[ConsentStatement] = []
    alice.consent.add_listener(heard.append)
    signed = from_bob()
    alice.consent.receive(forwarded(signed), RELAY_KEY.verify_key.encode())
    alice.consent.receive(forwarded(signed), RELAY_KEY.verify_key.encode())  # redelivered
    assert alice.consent.records("bob") == [signed] and len(heard) == 1
    assert alice.trust.pinned_key("bob") == BOB.public
    assert alice.consent.check(signed).verified
    await alice.close()


@pytest.mark.parametrize(
    "case", ["forged", "another target", "another relay key", "another sender"]
)
async def test_a_forwarded_statement_that_does_not_verify_is_dropped(case: str) -> None:
    relay = FakeRelay()
    alice = await alice_online(relay, "business")
    heard: list[ConsentStatement] = []
    alice.consent.add_listener(heard.append)
    mallory = IdentityKeyPair.from_seed(b"\x72" * 32)
    signed = {
        "forged": lambda: from_bob(key=mallory, claimed=BOB.public),
        "another target": lambda: from_bob(target="carol"),
        "another relay key": lambda: from_bob(relay_key=b"\x73" * 32),
        "another sender": lambda: from_bob(),
    }[case]()
    sender = "mallory" if case == "another sender" else "bob"
    alice.consent.receive(forwarded(signed, sender), RELAY_KEY.verify_key.encode())
    assert alice.consent.counts() == {} and heard == []
    assert alice.trust.pinned_key("bob") is None  # nothing pinned from it
    await alice.close()


async def test_a_forwarded_statement_under_a_changed_key_is_raised_to_be_held() -> None:
    relay = FakeRelay()
    alice = await alice_online(relay, "business")
    alice.trust.pin("bob", BOB.public)
    rotated = IdentityKeyPair.from_seed(b"\x74" * 32)
    with pytest.raises(UntrustedIdentity):
        alice.consent.receive(forwarded(from_bob(key=rotated)), RELAY_KEY.verify_key.encode())
    assert alice.consent.counts() == {}
    assert alice.identity_change_pending("bob")
    await alice.close()


async def test_records_are_read_from_a_count_on_and_checked_offline() -> None:
    relay = FakeRelay()
    alice = await alice_online(relay, "business")
    alice.trust.pin("bob", BOB.public)
    kept = [from_bob("grant"), from_bob("revoke"), from_bob("block")]
    for signed in kept:
        alice.consent.keep("bob", signed)
    assert alice.consent.counts() == {"bob": 3} and sorted(alice.consent.counts()) == ["bob"]
    assert alice.consent.records("bob", start=2) == kept[2:]
    assert [alice.consent.check(s).verified for s in kept] == [True] * 3
    garbage = alice.consent.check(b"not a statement")
    assert garbage.statement is None and not garbage.verified
    other_relay = alice.consent.check(from_bob(relay_key=b"\x73" * 32))
    assert other_relay.statement is not None and not other_relay.verified
    mallory = IdentityKeyPair.from_seed(b"\x72" * 32)
    impostor = alice.consent.check(from_bob(key=mallory))  # sound, but not bob's pinned key
    assert impostor.statement is not None and not impostor.verified
    await alice.close()


async def test_statements_in_force_are_paged_through_and_each_checked() -> None:
    relay = FakeRelay()
    alice = await alice_online(relay, "business")
    alice.trust.pin("bob", BOB.public)
    pages = {0: ((from_bob("grant"),), 5), 5: ((b"altered by the relay",), None)}

    def list_statements(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.StatementsList):
            page, after = pages[frame.after]
            end.send(frames.Statements(re=frame.id, statements=page, next=after))
        else:
            answer_plainly(end, frame)

    relay.answer = list_statements
    listed = await within(alice.statements())
    assert [held.verified for held in listed] == [True, False]
    assert [f.after for f in relay.ends[0].received(frames.StatementsList)] == [0, 5]
    await alice.close()


@pytest.mark.parametrize("cursor", ["the same", "backwards", "an empty page"])
async def test_a_listing_whose_cursor_does_not_advance_is_refused(cursor: str) -> None:
    """T55: a relay answering every STATEMENTS_LIST with a full page and a ``next`` that
    does not pass ``after`` (or a page that promises more and holds none) had
    ``statements()`` ask for ever, keeping every page: 4,600 pages (276,000 statements)
    in two seconds over the in-memory relay, never returning. SPEC §7.6: ``next`` is the
    number of the last statement returned, so it passes ``after``; refused."""
    relay = FakeRelay()
    alice = await alice_online(relay, "business")
    asked: list[int] = []
    full = (from_bob("grant"),) * limits.MAX_LISTED_STATEMENTS

    def list_for_ever(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.StatementsList):
            asked.append(frame.after)
            if cursor == "the same":
                page, after = full, max(frame.after, 7)
            elif cursor == "backwards":
                page, after = full, 3 if frame.after == 9 else 9
            else:
                page, after = (), frame.after + 1
            end.send(frames.Statements(re=frame.id, statements=page, next=after))
        else:
            answer_plainly(end, frame)

    relay.answer = list_for_ever
    with pytest.raises(UnexpectedFrame, match="cursor"):
        await within(alice.statements(), 2)
    assert len(asked) <= 2
    await alice.close()


def test_consent_request_grant_then_a_notification_arrives_decrypted(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = skewed_relay_clock()
        async with relay_at(tmp_path, clock) as relay:
            received = Statements()
            airline = await online(relay.url, "airline", "business", on_statement=received)
            issue_badge_for(relay.config.db_path, "airline", clock())  # may ask strangers
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)

            await within(
                airline.send(
                    "alice",
                    "May we send you gate changes for your flights?",
                    intent="consent_request",
                    categories=("utility",),
                )
            )
            request = await inbox.next()
            assert request.is_consent_request and request.from_business
            assert (request.sender, request.categories) == ("airline", ("utility",))
            assert request.body == "May we send you gate changes for your flights?"

            granted = await within(alice.grant(request.sender, request.categories or ()))
            assert abs(granted.issued_at - clock()) < 1000  # SPEC §4.1: relay's clock
            [receipt] = await received.wait_for(1)
            assert receipt == granted  # verified and kept by the business
            assert airline.consent.check(airline.consent.records("alice")[0]).verified

            await notify(airline, "alice", "BA123: gate B7")
            notification = await inbox.next()
            assert (notification.intent, notification.category, notification.body) == (
                "notification", "utility", "BA123: gate B7",
            )  # fmt: skip
            with pytest.raises(RecipientUnavailable):  # marketing was never granted
                await notify(airline, "alice", "50% off", "marketing")
            await inbox.close()
            await alice.close()
            await airline.close()

    run(scenario())


@pytest.mark.parametrize("action", ["deny", "revoke", "block"])
def test_deny_revoke_and_block_from_the_sdk_stop_delivery(tmp_path: Path, action: str) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            received = Statements()
            shop = await online(relay.url, "shop", "business", on_statement=received)
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)
            if action == "deny":
                # A verified business may ask a stranger (SPEC §7.3).
                issue_badge_for(relay.config.db_path, "shop", relay.ctx.clock())
                await within(
                    shop.send(
                        "alice", "Offers?", intent="consent_request", categories=("marketing",)
                    )
                )
                request = await inbox.next()
                await within(alice.deny("shop", request.categories or ()))
                [statement] = await received.wait_for(1)
                with pytest.raises(RecipientUnavailable):  # asking again in the cooldown
                    await within(
                        shop.send(
                            "alice", "Now?", intent="consent_request", categories=("marketing",)
                        )
                    )
            else:
                await within(alice.grant("shop", ["utility", "marketing"]))
                await received.wait_for(1)
                await notify(shop, "alice", "your parcel left")
                assert (await inbox.next()).body == "your parcel left"
                if action == "revoke":
                    await within(alice.revoke("shop", ["utility"]))
                else:
                    await within(alice.block("shop"))
                [_, statement] = await received.wait_for(2)
            assert statement.action == action and statement.signer == "alice"
            with pytest.raises(RecipientUnavailable):
                await notify(shop, "alice", "refused")
            if action == "revoke":  # the other category stays granted
                await notify(shop, "alice", "still wanted", "marketing")
                assert (await inbox.next()).body == "still wanted"
            if action == "block":  # chat from the blocked business is refused too
                with pytest.raises(RecipientUnavailable):
                    await within(shop.send("alice", "hello?"))
                await within(alice.unblock("shop"))
                [*_, unblocked] = await received.wait_for(3)
                assert unblocked.action == Action.UNBLOCK
                with pytest.raises(RecipientUnavailable):  # a block revoked all consent
                    await notify(shop, "alice", "after unblock")
            await inbox.close()
            await alice.close()
            await shop.close()

    run(scenario())


def test_a_user_lists_and_verifies_their_statements_and_keeps_copies(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            businesses = [await online(relay.url, f"shop{i}", "business") for i in range(3)]
            bob = await online(relay.url, "bob")
            alice = await online(relay.url, "alice")
            for i in range(3):
                await within(alice.grant(f"shop{i}", ["utility"]))
            await within(alice.revoke("shop0", ["utility"]))
            await within(alice.block("bob"))

            listed = await within(alice.statements())
            assert all(held.verified for held in listed)
            in_force = {(h.statement.action, h.statement.target) for h in listed}
            assert in_force == {
                ("revoke", "shop0"), ("grant", "shop1"), ("grant", "shop2"), ("block", "bob"),
            }  # fmt: skip
            assert [len(alice.consent.records(h)) for h in ("shop0", "shop1", "bob")] == [2, 1, 1]
            assert sorted(alice.consent.counts()) == ["bob", "shop0", "shop1", "shop2"]

            # A statement the relay altered (the grant moved to another business) fails.
            original = alice.consent.records("shop1")[0]
            altered = alice.consent.check(original.replace(b"shop1", b"shop2"))
            assert altered.statement.target == "shop2" and not altered.verified
            for client in (*businesses, bob, alice):
                await client.close()

    run(scenario())


def test_the_business_drops_a_forwarded_statement_that_does_not_verify(tmp_path: Path) -> None:
    """SPEC §7.5: only verified statements are kept; a mismatching one is acked and dropped."""

    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            received = Statements()
            shop = await online(relay.url, "shop", "business", on_statement=received)
            alice = await online(relay.url, "alice")
            await within(alice.grant("shop", ["utility"]))
            await received.wait_for(1)
            signed = shop.consent.records("alice")[0]
            tampered = bytearray(signed)
            tampered[-1] ^= 1
            assert shop.consent.check(signed).verified
            assert not shop.consent.check(bytes(tampered)).verified
            assert shop.consent.check(b"\x80") == HeldStatement(None, b"\x80", verified=False)
            await alice.close()
            await shop.close()

    run(scenario())


def test_grant_and_revoke_send_only_the_categories_that_change(tmp_path: Path) -> None:
    """SPEC §7.4: the relay refuses whole a statement that changes nothing for one of its
    categories, so "a client sends exactly the categories that change". The SDK knows them
    from the statements it made: granting what is granted (or revoking what is not) is left
    out, and a statement that would change nothing is refused before anything is sent."""

    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            received = Statements()
            shop = await online(relay.url, "shop", "business", on_statement=received)
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)
            await within(alice.grant("shop", ["utility"]))
            both = await within(alice.grant("shop", ["utility", "marketing"]))
            assert both.categories == ("marketing",)
            await notify(shop, "alice", "50% off", "marketing")
            assert (await inbox.next()).body == "50% off"
            with pytest.raises(InvalidStatement):  # nothing would change
                await within(alice.grant("shop", ["marketing", "utility"]))
            revoked = await within(alice.revoke("shop", ["marketing"]))
            assert revoked.categories == ("marketing",)
            again = await within(alice.revoke("shop", ["utility", "marketing"]))
            assert again.categories == ("utility",)
            with pytest.raises(InvalidStatement):
                await within(alice.revoke("shop", ["utility"]))
            await within(alice.block("shop"))  # a block revokes everything (SPEC §7.4)
            await within(alice.unblock("shop"))
            regranted = await within(alice.grant("shop", ["utility", "marketing"]))
            assert regranted.categories == ("utility", "marketing")
            seen = await received.wait_for(7)
            assert [s.action for s in seen] == [
                "grant", "grant", "revoke", "revoke", "block", "unblock", "grant",
            ]  # fmt: skip
            await inbox.close()
            await alice.close()
            await shop.close()

    run(scenario())


def dropping_the_first_statement(*, taken: bool) -> Callable[[RelayEnd, frames.Frame], None]:
    """A relay whose connection drops at the first STATEMENT, before the OK, having
    ``taken`` it or not; after that it answers as SPEC §7.4 says: a ``(signer, nonce)``
    seen before gets 501, and the statements taken are listed to their signer (§7.6)."""
    accepted: list[bytes] = []

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Statement):
            first = not end.relay.ends.index(end) and not end.received(frames.Statement)[:-1]
            if first and not taken:
                end.drop()
            elif frame.statement in accepted:
                end.refuse(StaleStatement(), re=frame.id)
            else:
                accepted.append(frame.statement)
                if first:
                    end.drop()
                else:
                    end.send(frames.Ok(re=frame.id))
        elif isinstance(frame, frames.StatementsList):
            end.send(frames.Statements(re=frame.id, statements=list(accepted)))
        else:
            answer_plainly(end, frame)

    return answer


@pytest.mark.parametrize("taken", [False, True], ids=["not taken", "taken"])
async def test_a_statement_cut_off_by_a_drop_is_asked_again_with_the_same_nonce(
    taken: bool,
) -> None:
    """A grant whose connection dropped before the OK raised ConnectionLost: the caller
    could not tell whether the relay had taken it, and calling again makes a new
    statement (refused if the first was taken: it changes nothing). It is now asked
    again on the next connection with the same bytes, which the relay applies once
    (SPEC §7.4): OK if the first was not taken; if it was, the 501 of a nonce seen
    before, settled by the listing (§7.6) — the grant returns and is kept either way."""
    relay = FakeRelay()
    relay.answer = dropping_the_first_statement(taken=taken)
    alice = await alice_online(relay)
    statement = await within(alice.grant("airline", ["utility"]))
    (first,) = relay.ends[0].received(frames.Statement)
    (again,) = relay.ends[1].received(frames.Statement)
    assert again.statement == first.statement
    assert unverified_body(ConsentStatement, first.statement) == statement
    assert alice.consent.records("airline") == [first.statement]
    assert alice.granted_to("airline") == {"utility"}
    await alice.close()


async def test_a_stale_statement_not_asked_again_is_raised() -> None:
    """A 501 on the first try (the relay's clock far from ours) is the relay's answer:
    raised, nothing kept, no listing asked for."""
    relay = FakeRelay()

    def stale(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Statement):
            end.refuse(StaleStatement(), re=frame.id)
        else:
            answer_plainly(end, frame)

    relay.answer = stale
    alice = await alice_online(relay)
    with pytest.raises(StaleStatement):
        await within(alice.grant("airline", ["utility"]))
    assert alice.consent.records("airline") == []
    assert relay.ends[0].received(frames.StatementsList) == []
    await alice.close()


@pytest.mark.parametrize("action", ["grant", "deny", "revoke"])
async def test_a_consent_statement_to_a_business_we_block_is_refused_before_sending(
    action: str,
) -> None:
    """SPEC §7.4 (T54): the relay refuses a grant, deny or revoke while its signer
    blocks the business, with a bare 500. The SDK knows it blocks the business and
    refuses first, saying to unblock; nothing is sent. After the unblock it goes."""
    relay = FakeRelay()
    alice = await alice_online(relay)
    if action == "revoke":
        await within(alice.grant("airline", ["utility"]))
    await within(alice.block("airline"))
    with pytest.raises(InvalidStatement, match="unblock it first"):
        await within(getattr(alice, action)("airline", ["utility"]))
    sent = [
        unverified_body(ConsentStatement, s.statement).action
        for s in relay.ends[0].received(frames.Statement)
    ]
    assert sent[-1] == "block"
    await within(alice.unblock("airline"))
    if action != "revoke":  # the block revoked utility already
        await within(getattr(alice, action)("airline", ["utility"]))
    await alice.close()
