"""A business waits for consent instead of notifying nobody (client/business.py,
client/customer_consent.py; SPEC §7.3–7.5).

A grant reaches the business only when the relay forwards its statement; until
then ``notify`` says who it did not send to, and ``wait_for_consent`` waits for
the grant — or raises as soon as the customer's word is no. Real sockets to an
in-process relay; no sleeps.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blindrelay.client.business import Business, ConsentRefused
from blindrelay.client.sdk import ConnectionLost
from blindrelay.protocol.signed import Action

from ..relays import relay_at
from ..server.consent_helpers import issue_badge_for
from .harness import TIMEOUT, Inbox, business_online, online, within


async def notifications_accepted(business: Business) -> dict[str, int]:
    """Per category, the notifications the relay accepted from ``business`` this month
    (its meter, SPEC §8.4: what was sent, whether or not it was delivered since)."""
    month = datetime.fromtimestamp(business.client.relay_now() / 1000, UTC).strftime("%Y-%m")
    usage = await within(business.usage(month))
    return {count.category: count.count for count in usage.notifications}


async def test_a_notification_after_the_grant_waits_for_it_instead_of_reaching_nobody(
    tmp_path: Path,
) -> None:
    async with relay_at(tmp_path) as relay:
        shop = await business_online(relay.url, "shop")
        alice = await online(relay.url, "alice")
        inbox = Inbox(alice)
        waiting = asyncio.ensure_future(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))

        early = await within(shop.notify("utility", "too early", to=["alice"]))
        assert (early.not_consented, early.sent, early.refused) == (["alice"], [], [])
        assert early.skipped == ["alice"] and early.no_recipients
        to_all = await within(shop.notify("utility", "to everyone who consents"))
        assert to_all.no_recipients and to_all.not_consented == []
        assert not waiting.done()

        await within(alice.grant("shop", ["utility"]))
        assert await within(waiting) is None
        assert shop.consenting("utility") == ["alice"]
        result = await within(shop.notify("utility", "your parcel left"))
        assert (result.sent, result.skipped, result.no_recipients) == (["alice"], [], False)
        assert (await inbox.next()).body == "your parcel left"  # the first one it was sent
        await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))  # known: at once
        for closing in (inbox, alice, shop):
            await closing.close()


@pytest.mark.parametrize("answer", ["deny", "block"])
async def test_waiting_for_consent_raises_when_the_customer_says_no(
    tmp_path: Path, answer: str
) -> None:
    async with relay_at(tmp_path) as relay:
        shop = await business_online(relay.url, "shop")
        issue_badge_for(relay.config.db_path, "shop", relay.ctx.clock())  # may ask strangers
        alice = await online(relay.url, "alice")
        inbox = Inbox(alice)
        await within(shop.request_consent("alice", ["utility"], "Parcel updates?"))
        assert (await inbox.next()).is_consent_request
        waiting = asyncio.ensure_future(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))

        if answer == "deny":
            await within(alice.deny("shop", ["utility"]))
        else:
            await within(alice.block("shop"))
        with pytest.raises(ConsentRefused) as refused:
            await within(waiting)
        assert (refused.value.user, refused.value.category) == ("alice", "utility")
        assert refused.value.action == Action(answer)
        with pytest.raises(ConsentRefused):  # the word kept before a call counts too
            await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))
        for closing in (inbox, alice, shop):
            await closing.close()


async def test_a_revoke_kept_before_the_wait_raises_at_once_and_stops_notifications(
    tmp_path: Path,
) -> None:
    async with relay_at(tmp_path) as relay:
        shop = await business_online(relay.url, "shop")
        alice = await online(relay.url, "alice")
        await within(alice.grant("shop", ["utility", "marketing"]))
        await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))
        await within(alice.revoke("shop", ["utility"]))
        await shop.received.wait_for(2)  # type: ignore[attr-defined]

        with pytest.raises(ConsentRefused) as refused:
            await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))
        assert refused.value.action is Action.REVOKE
        await within(shop.wait_for_consent("alice", "marketing", timeout=TIMEOUT))
        result = await within(shop.notify("utility", "after the revoke", to=["alice"]))
        assert (result.not_consented, result.refused) == (["alice"], [])
        assert await notifications_accepted(shop) == {}
        await alice.close()
        await shop.close()


async def test_notify_to_sends_to_those_who_consent_and_names_the_others_at_once(
    tmp_path: Path,
) -> None:
    async with relay_at(tmp_path) as relay:
        shop = await business_online(relay.url, "shop")
        users = {handle: await online(relay.url, handle) for handle in ("alice", "bob", "carol")}
        await within(users["alice"].grant("shop", ["utility"]))
        await within(users["bob"].grant("shop", ["marketing"]))
        await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))
        await within(shop.wait_for_consent("bob", "marketing", timeout=TIMEOUT))

        result = await within(
            shop.notify("utility", "gate change", to=["alice", "bob", "carol", "nobody"])
        )
        assert result.sent == ["alice"]
        assert result.not_consented == ["bob", "carol", "nobody"]  # never sent: not refused
        assert (result.refused, result.failed, result.no_recipients) == ([], {}, False)
        assert await notifications_accepted(shop) == {"utility": 1}  # alice's alone
        for user in users.values():
            await user.close()
        await shop.close()


async def test_waiting_for_consent_times_out_and_ends_when_the_business_closes(
    tmp_path: Path,
) -> None:
    async with relay_at(tmp_path) as relay:
        shop = await business_online(relay.url, "shop")
        with pytest.raises(ValueError, match="unknown category"):
            await shop.wait_for_consent("alice", "gossip", timeout=TIMEOUT)
        with pytest.raises(TimeoutError):
            await shop.wait_for_consent("alice", "utility", timeout=0.01)
        waiting = asyncio.ensure_future(shop.wait_for_consent("alice", "utility", timeout=None))
        await asyncio.sleep(0)  # one turn: the wait has started
        assert not waiting.done()
        await shop.close()
        with pytest.raises(ConnectionLost, match="business closed"):
            await within(waiting)
