"""What a business knows of its customers' consent (client/customer_consent.py, SPEC
§7.3–7.5): their kept statements folded by the relay's own effects, and waiting for
a grant instead of notifying nobody.

A grant reaches the business only when the relay forwards its statement; until
then ``notify`` says who it did not send to, and ``wait_for_consent`` waits for
the grant — or raises as soon as the customer's word is no. Real sockets to an
in-process relay; no sleeps.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.business import Business, ConsentRefused
from blindrelay.client.keystore import KeyStore, MemoryKeyStore
from blindrelay.client.sdk import Client, ConnectionLost
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.signed import Action, make_statement

from ..relays import relay_at
from ..server.consent_helpers import issue_badge_for
from .harness import (
    TIMEOUT,
    Inbox,
    Statements,
    business_online,
    make_client,
    online,
    run,
    skewed_relay_clock,
    within,
)


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


async def test_a_revoke_whose_grant_the_relay_withdrew_still_revokes_at_the_business(
    tmp_path: Path,
) -> None:
    """SPEC §7.5: a business's queue keeps one receipt per customer and family, so a
    grant still queued when the customer revokes it is withdrawn, and the business,
    offline meanwhile, receives the revoke alone. The relay's table would refuse that
    revoke (marketing was never granted, as far as the business saw) and, refused
    whole, it left utility granted at the business (found in review)."""
    async with relay_at(tmp_path) as relay:
        store = MemoryKeyStore()
        shop = Business(await online(relay.url, "shop", "business", store=store))
        alice = await online(relay.url, "alice")
        await within(alice.grant("shop", ["utility"]))
        await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))
        await shop.close()

        await within(alice.grant("shop", ["marketing"]))  # queued for the shop
        await within(alice.revoke("shop", ["utility", "marketing"]))  # withdraws it
        received = Statements()
        client = make_client(store)  # the listener is attached before the login's pushes
        shop = Business(client, on_consent_change=received, on_block=received)
        await within(client.connect(relay.url))
        await within(client.login())
        (revoke,) = await received.wait_for(1)
        assert revoke.action == Action.REVOKE
        with pytest.raises(ConsentRefused):
            await within(shop.wait_for_consent("alice", "utility", timeout=TIMEOUT))
        kept = [held.statement for held in shop.receipts("alice")]
        assert [(s.action, set(s.categories or ())) for s in kept if s is not None] == [
            (Action.GRANT, {"utility"}), (Action.REVOKE, {"utility", "marketing"}),
        ]  # fmt: skip: the grant of marketing never came
        assert shop.consents() == {}
        result = await within(shop.notify("utility", "after the revoke", to=["alice"]))
        assert (result.not_consented, result.refused) == (["alice"], [])
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


# --- Folding what is kept (SPEC §7.4; issue 13 item 5) -------------------------------------


def test_consents_follow_every_new_statement_and_keep_unchanged_folds(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            shop = await business_online(relay.url, "shop")
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            seen = 0
            folded: list[str] = []  # whose statements consents() reads
            held_statements = shop.client.consent.records

            def counted(counterpart: str, start: int = 0) -> list[bytes]:
                folded.append(counterpart)
                return held_statements(counterpart, start)

            shop.client.consent.records = counted  # type: ignore[method-assign]

            async def step(statement: Any) -> dict[str, frozenset[str]]:
                nonlocal seen
                await within(statement)
                seen += 1
                await shop.received.wait_for(seen)  # type: ignore[attr-defined]
                return shop.consents()

            assert await step(bob.grant("shop", ["marketing"])) == {"bob": {"marketing"}}
            folded.clear()
            assert await step(alice.grant("shop", ["utility", "marketing"])) == {
                "alice": {"utility", "marketing"}, "bob": {"marketing"},
            }  # fmt: skip
            assert folded == ["alice"]  # bob's unchanged record: not folded again
            assert await step(alice.revoke("shop", ["marketing"])) == {
                "alice": {"utility"}, "bob": {"marketing"},
            }  # fmt: skip
            assert await step(alice.block("shop")) == {"bob": {"marketing"}}
            assert await step(alice.unblock("shop")) == {"bob": {"marketing"}}
            assert await step(alice.grant("shop", ["utility"])) == {
                "alice": {"utility"}, "bob": {"marketing"},
            }  # fmt: skip
            # A held statement that does not verify is not kept folded: checked every time.
            forged = make_statement(
                "grant", signer="carol", signer_key=IdentityKeyPair.generate(os.urandom).public,
                target="shop", relay_key=relay.relay_key, now_ms=shop.client.relay_now(),
                rng=os.urandom, categories=("utility",),
            ).sign(IdentityKeyPair.generate(os.urandom).sign)  # fmt: skip
            shop.client.consent.keep("carol", forged)
            folded.clear()
            assert "carol" not in shop.consents() and "carol" not in shop.consents()
            assert folded == ["carol", "carol"]  # read again each time, the others not
            for client in (alice, bob):
                await client.close()
            await shop.close()

    run(scenario())


def row_size(fields: Sequence[Any]) -> int:
    """Bytes of a row's fields, an int as the u64 a store could keep it in."""
    return sum(8 if isinstance(field, int) else len(field) for field in fields)


class CountingStore(MemoryKeyStore):
    """Counts the bytes every row and log write hands to the storage (``base.Storage``)."""

    written = 0

    def _put(self, table: str, key: bytes, fields: Sequence[Any]) -> None:
        self.written += len(key) + row_size(fields)
        super()._put(table, key, fields)

    def _append(self, table: str, group: str, record: bytes) -> None:
        self.written += len(group) + len(record)
        super()._append(table, group, record)


def shop_with_a_customer(store: KeyStore) -> tuple[Business, IdentityKeyPair, bytes]:
    """A business profile (no relay) that pinned alice's key and a relay key."""
    client = Client(store)
    client.sessions.create_identity("shop", "business")
    relay_key = IdentityKeyPair.generate(os.urandom).public
    client.accept_relay_key(relay_key)
    alice = IdentityKeyPair.generate(os.urandom)
    client.trust.pin("alice", alice.public)
    return Business(client), alice, relay_key


def test_each_kept_statement_costs_the_same_however_many_are_kept() -> None:
    """11,000 grants made every statement rewrite the whole list (0.6 → 13 ms each);
    now a statement is two small writes and the business folds only the new one."""
    store = CountingStore()
    shop, alice, relay_key = shop_with_a_customer(store)
    read: list[int] = []
    held_statements = shop.client.consent.records

    def counted(counterpart: str, start: int = 0) -> list[bytes]:
        statements = held_statements(counterpart, start)
        read.append(len(statements))
        return statements

    shop.client.consent.records = counted  # type: ignore[method-assign]
    costs = []
    for i in range(400):
        action = "grant" if i % 2 == 0 else "revoke"
        signed = make_statement(
            action, signer="alice", signer_key=alice.public, target="shop",
            relay_key=relay_key, now_ms=1_700_000_000_000 + i, rng=os.urandom,
            categories=("utility",),
        ).sign(alice.sign)  # fmt: skip
        before = store.written
        shop.client.consent.keep("alice", signed)
        costs.append(store.written - before - len(signed))
        assert shop.consents() == ({"alice": frozenset({"utility"})} if i % 2 == 0 else {})
    assert set(costs) == {costs[0]}  # the bytes besides the statement never grow
    assert read == [1] * 400  # each consents() read only the statement kept since the last
    assert len(shop.client.consent.records("alice")) == 400
