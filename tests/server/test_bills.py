"""Monthly bills over real sockets, on both back ends (SPEC §8.5): what is billed, when a
bill closes, BILL_FETCH's pages, and the operator's check of it."""

from __future__ import annotations

import asyncio
import os
import sqlite3

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
from blindrelay.protocol.transparency.entries import (
    BillLogged,
    bill_root,
    decode_bill_item,
    decode_entry,
    recipient_commitment,
)
from blindrelay.server import cli
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store.transparency import BILL_CHUNK_ITEMS

from .. import pg
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
    (``Housekeeping.close_bills``, ``publish_tree_head``), so the outcomes are its own."""
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
    assert await relay.housekeeping.close_bills() == []
    later = await airline.send_message("bob", b"n", intent="notification", category="utility")
    assert isinstance(later, Sent) and month_of(later.at) != month  # next month's bill
    clock.advance(1)
    ((business, closed_month, items, index),) = await relay.housekeeping.close_bills()
    assert (business, closed_month, items) == ("airline", month, NOTIFICATIONS)
    assert await relay.housekeeping.close_bills() == []  # closed once

    assert await _page(airline, month) == ErrorCode.NOT_FOUND  # closed, but under no head
    assert await relay.housekeeping.publish_tree_head() is not None
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


def _execute(config: RelayConfig, sql: str) -> None:
    """Write the relay's database from outside (SQL both back ends run alike)."""
    if config.store:
        pg.execute(config.store, sql)
        return
    conn = sqlite3.connect(config.db_path, timeout=10)
    with conn:
        conn.execute(sql)
    conn.close()


async def test_a_large_bill_closes_a_chunk_per_operation_and_logs_once(
    relay: RunningRelay, clock: FakeClock
) -> None:
    """SPEC §8.5: a bill of more than BILL_CHUNK_ITEMS notifications closes over several
    store operations (each bounded, so the writer is never held long), is served only
    once all of it is made, and its logged root is the one of all its items in order."""
    month = month_of(clock.now)
    count = BILL_CHUNK_ITEMS + 7
    # Rows as the SEND job writes them, in an order the bill must sort (at, msg_id).
    series = (
        "generate_series(0, {n}) AS g(i)" if relay.config.store
        else "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
        " SELECT i FROM s) AS g"
    ).format(n=count - 1)  # fmt: skip
    msg_id = (
        "decode(lpad(to_hex(i), 32, '0'), 'hex')" if relay.config.store
        else "CAST(zeroblob(8) || printf('%08d', i) AS BLOB)"
    )  # fmt: skip
    _execute(relay.config,
             "INSERT INTO bill_notifications (month, business, at, msg_id, category, recipient)"
             f" SELECT '{month}', 'shop.biz', {clock.now} + (i % 97), {msg_id}, 'utility',"
             f" 'user' || (i % 13) FROM {series}")  # fmt: skip
    clock.now = month_end(month) + limits.BILL_CLOSE_DELAY_MS
    before = month_of(month_end(month))
    first, more = await relay.ctx.store.submit("close_bills", before, clock.now)
    assert (first, more) == ([], True)  # one chunk made, the bill not finished
    assert await relay.housekeeping.publish_tree_head() is None  # nothing logged yet
    ((business, closed, items, index),) = await relay.housekeeping.close_bills()  # the rest
    assert (business, closed, items) == ("shop.biz", month, count)
    assert await relay.housekeeping.close_bills() == []

    salt, = db_rows(relay.config, "SELECT salt FROM bills")[0]
    rows = db_rows(relay.config, "SELECT msg_id, recipient, category, at FROM"
                   " bill_notifications")  # fmt: skip
    assert rows == []
    stored = [bytes(r[0]) for r in db_rows(relay.config, "SELECT item FROM bill_items ORDER BY idx")]
    assert len(stored) == count
    decoded = [decode_bill_item(item) for item in stored]
    assert decoded == sorted(decoded, key=lambda item: (item.at, item.msg_id))
    (entry,) = db_rows(relay.config, f"SELECT data FROM log_entries WHERE seq = {index}")
    logged = decode_entry(bytes(entry[0]))
    assert isinstance(logged, BillLogged) and logged.count == count
    assert logged.root == bill_root(decoded)
    assert recipient_commitment("user0", bytes(salt)) in {item.recipient for item in decoded}


async def test_the_operator_check_compares_each_category_with_the_logged_bill(
    relay: RunningRelay, clients: Clients, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The amounts are priced per category from the meter (``usage``); the logged bill
    names each item's category. A meter that moved a count from utility to marketing
    (priced higher) kept the total, and the check said ``ok`` (found in review): now
    each category's metered count must be the number of the bill's items in it."""
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")
    await stated(bob, "grant", "airline", clock.now, ("utility", "marketing"))
    month = month_of(clock.now)
    for category in ("utility", "utility", "utility", "marketing"):
        sent = await airline.send_message("bob", b"n", intent="notification", category=category)
        assert isinstance(sent, Sent)
    clock.now = month_end(month) + limits.BILL_CLOSE_DELAY_MS
    assert len(await relay.housekeeping.close_bills()) == 1
    assert await relay.housekeeping.publish_tree_head() is not None
    args = ["usage", *store_flags(relay.config), "--business", "airline", "--format", "csv"]
    assert await asyncio.to_thread(_admin, *args) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(" (4 items) ok")
    for category, change in (("utility", "- 1"), ("marketing", "+ 1")):
        _execute(relay.config, f"UPDATE usage SET count = count {change} WHERE business ="
                 f" 'airline' AND month = '{month}' AND category = '{category}'")  # fmt: skip
    assert await asyncio.to_thread(_admin, *args) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert "MISMATCH" in line and "utility 2 metered, 3 billed" in line, line


async def test_the_operator_check_of_a_store_without_the_relay_key_says_so(
    relay: RunningRelay, clients: Clients, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store whose relay key is gone (an edited or damaged copy) cannot have its bills
    checked: the line says so. An ``assert`` stood there, so the check of such a store
    ended in a traceback (found in review)."""
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")
    await stated(bob, "grant", "airline", clock.now, ("utility",))
    month = month_of(clock.now)
    sent = await airline.send_message("bob", b"n", intent="notification", category="utility")
    assert isinstance(sent, Sent)
    clock.now = month_end(month) + limits.BILL_CLOSE_DELAY_MS
    assert len(await relay.housekeeping.close_bills()) == 1
    assert await relay.housekeeping.publish_tree_head() is not None
    _execute(relay.config, "DELETE FROM relay_identity")
    args = ["usage", *store_flags(relay.config), "--business", "airline", "--format", "csv"]
    assert await asyncio.to_thread(_admin, *args) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert "INVALID: no relay key in the store" in line, line
