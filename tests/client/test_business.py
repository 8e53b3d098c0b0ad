"""The business SDK (client/business.py) against a real relay: SPEC §7.3–7.5, §8. What
the business client decides alone, over the in-memory relay, is in
:mod:`.test_business_decisions`.

Real sockets to an in-process relay on a fake clock; no sleeps. The bulk test
sets its 1,000 customers up cheaply — raw protocol connections that register
and sign statements, and sessions started in-process from bundles built
locally — and checks every count against the relay's own database and meters.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from blindrelay.client.business import Business
from blindrelay.client.sdk import Client, Message
from blindrelay.protocol import limits
from blindrelay.protocol.business import OpeningHours, SpecialDay
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import RecipientUnavailable
from blindrelay.protocol.signed import make_statement

from ..relays import FakeClock, relay_at
from ..server.conftest import RawClient
from .harness import (
    FAST,
    MIX,
    STATEMENTS,
    Inbox,
    Statements,
    business_online,
    customer,
    local_ms,
    online,
    run,
    shop_open_on_weekdays,
    skewed_relay_clock,
    within,
)

DAY_MS = 24 * 3600 * 1000


# --- bulk notifications (SPEC §8.3) ------------------------------------------------


def test_bulk_notification_to_1000_customers_in_every_consent_state(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = skewed_relay_clock()
        async with relay_at(tmp_path, clock) as relay:
            airline = await business_online(relay.url, "airline")
            handles = [f"customer{i:04d}" for i in range(1000)]
            states = {h: MIX[i % len(MIX)] for i, h in enumerate(handles)}
            raws: list[RawClient] = []
            for start in range(0, len(handles), 100):
                batch = handles[start : start + 100]
                raws += await within(
                    asyncio.gather(*(customer(relay.url, h, airline, states[h]) for h in batch)),
                    60,
                )
            forwarded = sum(len(STATEMENTS[s]) for s in states.values())
            await airline.received.wait_for(forwarded)  # type: ignore[attr-defined]
            granted = sorted(h for h, s in states.items() if s == "granted utility")
            assert airline.consenting("utility") == granted
            assert airline.consenting("marketing") == sorted(
                h for h, s in states.items() if s == "granted marketing"
            )

            to_consenting = await within(airline.notify("utility", "BA123 now boards at B7"), 60)
            assert sorted(to_consenting.sent) == granted and to_consenting.skipped == []

            to_everyone = await within(airline.notify("utility", "Gate closes", to=handles), 60)
            assert sorted(to_everyone.sent) == granted  # 167
            # The other 833 are known not to consent: named at once, never sent to.
            assert sorted(to_everyone.not_consented) == sorted(set(handles) - set(granted))
            assert to_everyone.refused == [] and to_everyone.failed == {}
            assert 0 < to_everyone.encrypt_seconds < to_everyone.seconds

            queued = dict(
                sqlite3.connect(relay.config.db_path).execute(
                    "SELECT recipient, count(*) FROM queue WHERE sender = 'airline'"
                    " AND intent = 'notification' GROUP BY recipient"
                )
            )
            assert queued == dict.fromkeys(granted, 2)
            month = datetime.fromtimestamp(clock() / 1000, ZoneInfo("UTC")).strftime("%Y-%m")
            usage = await within(airline.usage(month))
            assert [(c.category, c.count) for c in usage.notifications] == [
                ("utility", 2 * len(granted))
            ]
            for raw in raws:
                await raw.close()
            await airline.close()

    run(scenario())


# --- receipts (SPEC §7.5) ------------------------------------------------------------


def test_a_business_hears_statements_beside_the_application_s_own_listener(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            application = Statements()
            client = await online(relay.url, "shop", "business", on_statement=application)
            heard = Statements()
            shop = Business(client, on_consent_change=heard, on_block=heard)
            alice = await online(relay.url, "alice")
            await within(alice.grant("shop", ["utility"]))
            await within(alice.block("shop"))
            assert [s.action for s in await heard.wait_for(2)] == ["grant", "block"]
            assert [s.action for s in await application.wait_for(2)] == ["grant", "block"]
            await alice.close()
            await shop.close()

    run(scenario())


def test_held_receipts_verify_and_forged_altered_or_wrong_relay_ones_fail(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            shop = await business_online(relay.url, "shop")
            alice = await online(relay.url, "alice")
            await within(alice.grant("shop", ["utility", "marketing"]))
            await within(alice.revoke("shop", ["marketing"]))
            await shop.received.wait_for(2)  # type: ignore[attr-defined]
            held = shop.receipts("alice")
            assert [(h.statement.action, h.verified) for h in held] == [
                ("grant", True), ("revoke", True),
            ]  # fmt: skip
            assert shop.consents() == {"alice": frozenset({"utility"})}

            genuine = held[0].signed

            def by_alice(sign_with: IdentityKeyPair | None = None, **changes: Any) -> bytes:
                fields: dict[str, Any] = {
                    "signer": "alice",
                    "signer_key": alice.sessions.identity.identity_public,
                    "target": "shop",
                    "relay_key": relay.relay_key,
                    "now_ms": held[0].statement.issued_at,
                    "rng": os.urandom,
                    "categories": ("utility",),
                }
                fields.update(changes)
                statement = make_statement("grant", **fields)
                return statement.sign(sign_with.sign if sign_with else alice.sessions.sign)

            forged = by_alice(sign_with=IdentityKeyPair.generate(os.urandom))
            altered = genuine.replace(b"\xa4shop", b"\xa4shoq")  # moved to another business
            wrong_relay = by_alice(relay_key=os.urandom(32))
            garbage = genuine[:-10]
            for bad in (forged, altered, wrong_relay, garbage):
                shop.client.consent.keep("alice", bad)  # a tampered archive
            audit = shop.verify_receipts()
            assert [h.verified for h in audit] == [True, True, False, False, False, False]
            assert audit[3].statement is not None and audit[3].statement.target == "shoq"
            assert audit[5].statement is None
            assert shop.consents() == {"alice": frozenset({"utility"})}
            assert by_alice() != genuine and shop.client.consent.check(by_alice()).verified
            await alice.close()
            await shop.close()

    run(scenario())


# --- service window and away replies (SPEC §7.3, §8.2) -------------------------------


def test_replies_pass_inside_the_service_window_and_not_outside(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = skewed_relay_clock()
        async with relay_at(tmp_path, clock) as relay:
            shop = await business_online(relay.url, "shop")
            incoming: asyncio.Queue[Message] = asyncio.Queue()
            shop.on_message = incoming.put
            shop.start()
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)
            with pytest.raises(RecipientUnavailable):  # no window before the customer writes
                await within(shop.reply("alice", "unsolicited"))
            await within(alice.send("shop", "is my order on its way?"))
            assert (await within(incoming.get())).body == "is my order on its way?"
            await within(shop.reply("alice", "yes, it left today"))
            assert (await inbox.next()).body == "yes, it left today"
            clock.advance(limits.SERVICE_WINDOW_MS - 1)
            await within(shop.reply("alice", "delivered tomorrow"))
            assert (await inbox.next()).body == "delivered tomorrow"
            clock.advance(1)
            with pytest.raises(RecipientUnavailable):
                await within(shop.reply("alice", "too late"))
            await inbox.close()
            await alice.close()
            await shop.close()

    run(scenario())


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles"])
def test_away_reply_once_per_closed_period_across_midnight(tmp_path: Path, zone: str) -> None:
    """Closed Friday 18:00 → Monday 09:00 local (Saturday is a special day, closed).

    The business's clock and the relay's are one injected clock; the customer's
    is the wall clock (its statements follow the relay's clock anyway).
    """

    async def scenario() -> None:
        clock = FakeClock(local_ms(zone, "2027-01-08T23:30"))  # Friday night, local
        async with relay_at(tmp_path, clock) as relay:
            shop = await business_online(
                relay.url, "shop", clock=clock, away_message="Closed — back Monday 9:00."
            )
            weekdays = [OpeningHours(day, 9 * 60, 18 * 60) for day in range(5)]
            await within(
                shop.publish_profile(
                    display_name="Corner Shop",
                    timezone=zone,
                    hours=[*weekdays, OpeningHours(5, 10 * 60, 12 * 60)],
                    exceptions=[SpecialDay("2027-01-09", 0, 0)],
                )
            )
            incoming: asyncio.Queue[Message] = asyncio.Queue()
            shop.on_message = incoming.put
            shop.start()
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)

            async def writes(text: str, at: str) -> None:
                clock.now = local_ms(zone, at)
                await within(alice.send("shop", text))
                assert (await within(incoming.get())).body == text  # away decision made

            async def next_from_shop() -> str:
                body = (await inbox.next()).body
                assert isinstance(body, str)
                return body

            await writes("anyone there?", "2027-01-08T23:30")
            assert await next_from_shop() == "Closed — back Monday 9:00."
            await writes("hello?", "2027-01-09T00:30")  # local midnight passed, same period
            await writes("still closed?", "2027-01-10T20:00")
            await within(shop.reply("alice", "marker 1"))
            assert await next_from_shop() == "marker 1"  # no second away reply came first

            await writes("open now?", "2027-01-11T10:00")  # Monday, open
            await within(shop.reply("alice", "marker 2"))
            assert await next_from_shop() == "marker 2"

            await writes("after hours", "2027-01-11T19:00")  # a new closed period
            assert await next_from_shop() == "Closed — back Monday 9:00."
            await inbox.close()
            await alice.close()
            await shop.close()

    run(scenario())


def test_an_away_reply_the_relay_paces_goes_after_its_retry_after(tmp_path: Path) -> None:
    """SPEC §8.2: one away reply per closed period, remembered before it is sent. It was
    sent with no retries: a 402 (the pair's SEND bucket, or any bucket right after a
    relay restart, SPEC §10) was logged, and the period stayed remembered, so the
    customer got no away reply for the whole night (found in review)."""

    async def scenario() -> None:
        zone = "Asia/Tokyo"
        clock = FakeClock(local_ms(zone, "2027-01-11T10:00"))  # Monday, open
        paced = {"send_burst_business": 2, "send_rate_business": 2.0}  # the customer's not
        async with relay_at(tmp_path, **paced) as relay:
            shop = await business_online(relay.url, "shop", clock=clock, away_message="Closed.")
            weekdays = [OpeningHours(day, 9 * 60, 18 * 60) for day in range(5)]
            await within(shop.publish_profile(display_name="Shop", timezone=zone, hours=weekdays))
            incoming: asyncio.Queue[Message] = asyncio.Queue()
            shop.on_message = incoming.put
            shop.start()
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)
            await within(alice.send("shop", "open?"))
            assert (await within(incoming.get())).body == "open?"
            await within(shop.reply("alice", "yes"))
            await within(shop.reply("alice", "anything else?"))  # the shop's last token
            assert [(await inbox.next()).body for _ in "12"] == ["yes", "anything else?"]
            clock.now = local_ms(zone, "2027-01-11T19:00")  # closed
            await within(alice.send("shop", "still there?"))
            assert (await within(incoming.get())).body == "still there?"
            assert (await inbox.next()).body == "Closed."
            await inbox.close()
            await alice.close()
            await shop.close()

    run(scenario())


def test_no_away_reply_for_a_night_message_read_after_opening(tmp_path: Path) -> None:
    """SPEC §8.2: the business client decides by its own clock when it handles the
    message; written at night while its device was off, read after opening, the
    customer gets a human answer, not "we are closed"."""
    written, read = "2027-01-11T22:00", "2027-01-12T09:30"

    async def scenario() -> None:
        zone = "Europe/Berlin"
        clock = FakeClock(local_ms(zone, written))
        async with relay_at(tmp_path, clock) as relay:
            shop = await shop_open_on_weekdays(relay.url, zone, clock)
            store = shop.client.store
            await shop.client.close()  # the shop's device is off for a while
            alice = await online(relay.url, "alice")
            inbox = Inbox(alice)
            await within(alice.send("shop", "hello"))

            clock.now = local_ms(zone, read)
            client = Client(store, backoff=FAST, jitter=lambda: 0.5, clock=clock)
            await within(client.connect(relay.url))
            await within(client.login())
            shop = Business(client, away_message="Closed.")
            assert shop.profile is not None  # kept in the keystore across the restart
            incoming: asyncio.Queue[Message] = asyncio.Queue()
            shop.on_message = incoming.put
            shop.start()
            message = await within(incoming.get())
            assert message.body == "hello"
            assert message.sent_at == local_ms(zone, written)
            await within(shop.reply("alice", "good morning"))
            body = (await inbox.next()).body
            assert body == "good morning"  # no away reply came first
            await inbox.close()
            await alice.close()
            await shop.close()

    run(scenario())


def test_a_handler_that_raises_does_not_stop_the_dispatcher(tmp_path: Path) -> None:
    """One message whose ``on_message`` raises is logged and acknowledged (as an exception
    in a reading loop acknowledges, docs/sdk.md); the next still reaches the handler. The
    dispatcher's task used to end with the exception, and no message after it was
    dispatched again, without a word."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            shop = await business_online(relay.url, "shop")
            seen: list[str | bytes] = []
            second = asyncio.Event()

            def handler(message: Message) -> None:
                seen.append(message.body)
                if message.body == "first":
                    raise ValueError("the application's bug")
                second.set()

            shop.on_message = handler
            shop.start()
            alice = await online(relay.url, "alice")
            await within(alice.send("shop", "first"))
            await within(alice.send("shop", "second"))
            await within(second.wait())
            assert seen == ["first", "second"]
            await alice.close()
            await shop.close()

    run(scenario())


@pytest.mark.parametrize("stalls", ["away reply", "on_message"])
def test_a_message_not_yet_handled_when_the_business_closes_comes_back(
    tmp_path: Path, stalls: str
) -> None:
    """Closing the business (the person quits, the relay is away for the night) while a
    customer's message waits for its away reply's SENT, or for ``on_message`` to return,
    leaves it unacknowledged: the next run hands it to ``on_message``. The dispatcher
    used to leave its loop with the message in hand, which acknowledged it unseen
    (found in review)."""

    async def scenario() -> None:
        zone = "Europe/Berlin"
        clock = FakeClock(local_ms(zone, "2027-01-11T22:00"))  # Monday night: closed
        async with relay_at(tmp_path, clock) as relay:
            shop = await shop_open_on_weekdays(relay.url, zone, clock)
            store = shop.client.store
            stalled = asyncio.Event()

            async def stall(*args: Any, **kwargs: Any) -> bytes:
                stalled.set()  # SENT never comes, or the handler never finishes
                await asyncio.Event().wait()
                raise AssertionError("unreachable")

            if stalls == "away reply":
                shop.client.send = stall  # type: ignore[method-assign]
            else:
                shop.on_message = stall
            shop.start()
            alice = await online(relay.url, "alice")
            await within(alice.send("shop", "is my order ready?"))
            await within(stalled.wait())
            await within(shop.close())
            pending = [m.sender for m in store.pending_messages()]
            assert pending == ["alice"], "acknowledged unseen"

            client = Client(store, backoff=FAST, jitter=lambda: 0.5, clock=clock)
            await within(client.connect(relay.url))
            await within(client.login())
            shop = Business(client, away_message="Closed.")
            incoming: asyncio.Queue[Message] = asyncio.Queue()
            shop.on_message = incoming.put
            shop.start()
            assert (await within(incoming.get())).body == "is my order ready?"
            await alice.close()
            await shop.close()

    run(scenario())
