"""Monthly bills over real sockets, on both back ends (SPEC §8.5): what is billed, when a
bill closes, BILL_FETCH's pages, and the operator's check of it."""

from __future__ import annotations

import asyncio
import os

import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Bill, BillFetch, Sent
from blindrelay.protocol.transparency.bills import (
    SentNotification,
    month_end,
    month_of,
    reconcile,
    verify_bill,
)
from blindrelay.server import cli
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store.transparency import BILLS_PER_CLOSE

from .conftest import (
    ALL_BACKENDS,
    Clients,
    FakeClock,
    RawClient,
    RelayFixture,
    db_rows,
    error_code,
    relay_with,
    store_flags,
)
from .consent_helpers import stated

BACKENDS = ALL_BACKENDS

def _admin(*argv: str) -> int:
    return cli.main(["admin", *argv])


NOTIFICATIONS = limits.MAX_BILL_ITEMS + 4
"""One full page and a few more."""


async def _page(client: RawClient, month: str, start: int = 0) -> Bill | int:
    answer = await client.request(lambda i: BillFetch(id=i, month=month, start=start))
    return answer if isinstance(answer, Bill) else error_code(answer)


@pytest.fixture
def relay(config: RelayConfig, clock: FakeClock) -> RelayFixture:
    """No background closing or signing: each test closes bills and signs heads itself
    (``RunningRelay.close_bills``, ``publish_tree_head``), so the outcomes are its own."""
    return relay_with(config, clock, sth_interval_s=3600.0)


async def test_a_months_notifications_are_billed_once_logged_and_paged(
    relay: RunningRelay, clients: Clients, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "eve")
    await stated(bob, "grant", "airline", clock.now, ("utility", "marketing"))
    month = month_of(clock.now)
    kept: list[SentNotification] = []
    for n in range(NOTIFICATIONS):
        category = ("utility", "marketing")[n % 2]
        msg_id = os.urandom(16)
        sent = await airline.send_message(
            "bob", b"n", msg_id, intent="notification", category=category
        )
        assert isinstance(sent, Sent)
        kept.append(SentNotification(msg_id, "bob", category, sent.at))
        if n % 50 == 0:
            clock.advance(1)
    again = await airline.send_message(  # a resend: billed once
        "bob", b"n", kept[0].msg_id, intent="notification", category=kept[0].category
    )
    assert isinstance(again, Sent) and again.at == kept[0].at
    refused = await airline.send_message("eve", b"n", intent="notification", category="utility")
    assert error_code(refused) == ErrorCode.RECIPIENT_UNAVAILABLE
    assert isinstance(await bob.send_message("airline", b"hi"), Sent)  # free: user-initiated
    assert isinstance(await airline.send_message("bob", b"reply"), Sent)  # free: service reply

    assert await _page(airline, month) == ErrorCode.NOT_FOUND  # the month is not over
    assert await _page(bob, month) == ErrorCode.FORBIDDEN  # a user has no bill
    clock.now = month_end(month) + limits.BILL_CLOSE_DELAY_MS - 1
    assert await relay.close_bills() == []
    later = await airline.send_message("bob", b"n", intent="notification", category="utility")
    assert isinstance(later, Sent) and month_of(later.at) != month  # next month's bill
    clock.advance(1)
    ((business, closed_month, items, index),) = await relay.close_bills()
    assert (business, closed_month, items) == ("airline", month, NOTIFICATIONS)
    assert await relay.close_bills() == []  # closed once

    assert await _page(airline, month) == ErrorCode.NOT_FOUND  # closed, but under no head
    assert await relay.publish_tree_head() is not None
    first = await _page(airline, month)
    assert isinstance(first, Bill)
    assert (first.start, len(first.items), first.index) == (0, limits.MAX_BILL_ITEMS, index)
    rest = await _page(airline, month, len(first.items))
    assert isinstance(rest, Bill) and len(rest.items) == NOTIFICATIONS - limits.MAX_BILL_ITEMS
    assert rest.entry == first.entry
    bill = verify_bill(
        relay.ctx.relay_key, "airline", month, first.entry, first.index, first.proof,
        first.sth, first.salt, [*first.items, *rest.items],
    )  # fmt: skip
    assert reconcile(bill, kept).ok and bill.entry.count == NOTIFICATIONS

    # The handles are gone with the open rows: items name recipients by commitment only.
    where = f"WHERE month = '{month}'"  # YYYY-MM, from month_of
    assert db_rows(relay.config, f"SELECT count(*) FROM bill_notifications {where}") == [(0,)]
    stored = db_rows(relay.config, "SELECT item FROM bill_items")
    assert len(stored) == NOTIFICATIONS and not any(b"bob" in bytes(row[0]) for row in stored)

    args = ["usage", *store_flags(relay.config), "--business", "airline", "--format", "csv"]
    assert await asyncio.to_thread(_admin, *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith(f",logged #{index} ({NOTIFICATIONS} items) ok")
    assert lines[2].endswith(",open (1 kept)")


async def test_bills_close_a_bounded_number_at_a_time_and_all_of_them(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """``close_bills`` closes at most BILLS_PER_CLOSE per transaction; the relay goes on
    until every open bill of the months over is closed."""
    bob = await clients.registered(relay.url, "bob")
    month = month_of(clock.now)
    shops = [f"shop{i}.biz" for i in range(BILLS_PER_CLOSE + 2)]
    for shop in shops:
        client = await clients.registered(relay.url, shop, "business")
        await stated(bob, "grant", shop, clock.now, ("utility",))
        sent = await client.send_message("bob", b"n", intent="notification", category="utility")
        assert isinstance(sent, Sent)
    clock.now = month_end(month) + limits.BILL_CLOSE_DELAY_MS
    closed = await relay.close_bills()
    assert sorted(row[0] for row in closed) == sorted(shops)
    assert len({row[3] for row in closed}) == len(shops)  # one log entry each
