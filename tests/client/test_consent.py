"""The user's side of consent and blocking through the SDK (SPEC §7), over real sockets.

A business and users are real :class:`Client` objects against an in-process
relay whose clock is a :class:`FakeClock` far from the wall clock, so every
accepted statement also shows that the SDK dates statements by the relay's
clock from HELLO (SPEC §4.1, §7.4). No sleeps: waits are on futures/events.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.client.sdk import Client, HeldStatement
from blindrelay.protocol.errors import InvalidStatement, RecipientUnavailable
from blindrelay.protocol.signed import Action

from ..relays import relay_at
from ..server.consent_helpers import issue_badge_for
from .harness import Inbox, Statements, online, run, skewed_relay_clock, within


async def notify(business: Client, user: str, text: str, category: str = "utility") -> bytes:
    return await within(business.send(user, text, intent="notification", category=category))


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
