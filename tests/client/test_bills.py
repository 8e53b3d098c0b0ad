"""A business checks its monthly bill with the SDK (SPEC §8.5): the SENTs its outbox kept
against the bill the relay logged — and catches a relay that bills one notification too
many, drops one, or serves items other than the logged ones."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.business import BillTooLarge, Business
from blindrelay.protocol import frames, limits
from blindrelay.protocol.errors import ErrorCode, InvalidProof, NotFound
from blindrelay.protocol.transparency.bills import (
    BillReconciliation,
    SentNotification,
    close_bill,
    month_end,
    month_of,
)
from blindrelay.protocol.transparency.entries import BillItem, BillLogged, StatementLogged

from ..relays import T0, FakeClock, relay_at
from .fake_relay import URL, FakeLog, FakeRelay, RelayEnd, answer_plainly
from .harness import business_online, consented, once_logged, online, run, within


async def _notify(business: Business, customers: list[str], times: int) -> None:
    for n in range(times):
        result = await within(business.notify("utility", f"notice {n}", to=customers))
        assert sorted(result.sent) == sorted(customers)


def _tamper(db: Path, *statements: str) -> None:
    """What a dishonest relay does to its own database (the writer waits for it)."""
    with sqlite3.connect(db, timeout=10) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_a_business_checks_its_bill_and_sees_what_a_dishonest_relay_changed(
    tmp_path: Path,
) -> None:
    clock = FakeClock(time.time_ns() // 1_000_000)  # statements are dated by the clients
    outcome: dict[str | None, BillReconciliation] = {}

    async def scenario() -> None:
        async with relay_at(tmp_path, clock=clock) as relay:
            db = relay.config.db_path
            honest = await business_online(relay.url, "airline")
            over = await business_online(relay.url, "shop.biz")
            under = await business_online(relay.url, "bank.biz")
            businesses = [honest, over, under]
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            for business in businesses:
                handle = business.client.handle
                assert handle is not None
                await within(alice.grant(handle, ["utility"]))
                await within(bob.grant(handle, ["utility"]))
                await consented(business, ["alice", "bob"])
                await _notify(business, ["alice", "bob"], 3)
            month = month_of(clock.now)
            with pytest.raises(NotFound):  # the month is not over
                await within(honest.bill(month))
            # The relay bills one notification twice, and forgets another.
            _tamper(
                db,
                "INSERT INTO bill_notifications SELECT month, business, at + 1, msg_id,"
                " category, recipient FROM bill_notifications WHERE business = 'shop.biz'"
                " ORDER BY at LIMIT 1",
                "DELETE FROM bill_notifications WHERE business = 'bank.biz' AND msg_id ="
                " (SELECT msg_id FROM bill_notifications WHERE business = 'bank.biz'"
                " ORDER BY at, msg_id LIMIT 1)",
            )
            clock.now = month_end(month) + limits.BILL_CLOSE_DELAY_MS
            await relay.housekeeping.close_bills()
            for business in businesses:
                outcome[business.client.handle] = await within(once_logged(lambda b=business: b.check_bill(month)))
            # Items served that are not the logged ones: refused, whatever they say.
            _tamper(db, "DELETE FROM bill_items WHERE business = 'airline' AND idx = 0")
            with pytest.raises(InvalidProof):
                await within(honest.bill(month))
            for client in (alice, bob):
                await client.close()
            for business in businesses:
                await business.close()

    run(scenario())
    honest, over, under = outcome["airline"], outcome["shop.biz"], outcome["bank.biz"]
    assert honest.ok and (honest.billed, honest.matched) == (6, 6)
    assert not over.ok and len(over.extra) == 1 and over.matched == 6
    assert "1 billed without a SENT" in over.summary()
    assert not under.ok and len(under.missing) == 1 and under.billed == 5


def test_a_bill_the_log_does_not_hold_is_refused_at_its_first_page() -> None:
    """The attack (found in review): the relay serves a ``bill logged`` entry it never
    logged, claiming a trillion items, and pages of items for ever. The SDK paged the
    whole bill into memory before it checked the entry against the log, so it never
    got to the check. Now the first page's head, entry and inclusion proof are checked
    before a second page is asked for."""
    month = "2027-01"
    log = FakeLog()
    log.append(StatementLogged(v=1, commitment=bytes(32), at=T0).to_bytes())
    sth = log.sign_head(T0)
    entry = BillLogged(
        v=1, handle="shop", month=month, count=10**12, root=bytes(32), at=T0
    ).to_bytes()
    pages: list[int] = []

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.BillFetch):
            answer_plainly(end, frame)
            return
        pages.append(frame.start)
        if len(pages) > 5:  # enough to show it pages on
            end.send(frames.Error(code=ErrorCode.NOT_FOUND, re=frame.id))
            return
        items = tuple(
            BillItem(
                v=1, msg_id=(frame.start + i).to_bytes(16, "big"), category="utility",
                at=T0, recipient=bytes(32),
            ).to_bytes()
            for i in range(limits.MAX_BILL_ITEMS)
        )  # fmt: skip
        end.send(frames.Bill(
            re=frame.id, month=month, entry=entry, index=0, proof=(), sth=sth,
            salt=bytes(16), start=frame.start, items=items,
        ))  # fmt: skip

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answer
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        with pytest.raises(InvalidProof):
            await within(shop.check_bill(month))
        assert pages == [0]
        await shop.client.close()

    run(scenario())


# --- A logged count past what the business was acknowledged (T56) ------------------------

MONTH = "2027-01"


def sent(n: int) -> SentNotification:
    """The SENT of the business's n-th notification of :data:`MONTH`."""
    return SentNotification(n.to_bytes(16, "big"), f"customer{n}", "utility", T0 + n)


def serving(log: FakeLog, entry: bytes, items: list[bytes], pages: list[int]) -> Any:
    """A relay serving the bill ``entry`` (logged in ``log``) with ``items``, page by page,
    up to 20 pages (then 601, so a client that pages on ends); the rest plainly."""
    sth = log.sign_head(T0)

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.BillFetch):
            answer_plainly(end, frame)
            return
        pages.append(frame.start)
        if len(pages) > 20:
            end.send(frames.Error(code=ErrorCode.NOT_FOUND, re=frame.id))
            return
        page = items[frame.start : frame.start + limits.MAX_BILL_ITEMS]
        end.send(frames.Bill(
            re=frame.id, month=MONTH, entry=entry, index=0, proof=(), sth=sth,
            salt=bytes(16), start=frame.start, items=tuple(page),
        ))  # fmt: skip

    return answer


def logged_bill(notifications: list[SentNotification]) -> tuple[FakeLog, bytes, list[bytes]]:
    """The bill of ``shop`` for :data:`MONTH` over ``notifications``, logged alone."""
    entry, items = close_bill("shop", MONTH, notifications, bytes(16), T0)
    log = FakeLog()
    log.append(entry.to_bytes())
    return log, entry.to_bytes(), [item.to_bytes() for item in items]


def test_a_logged_bill_far_larger_than_what_was_sent_is_not_paged_into_memory() -> None:
    """T56: the relay logs a bill of a million items for a business that sent three
    notifications (logged, so the entry and its proof hold) and serves pages of items
    for as long as asked: the SDK paged the logged count into memory — 3,907 pages here,
    ~170 bytes an item, and a count up to 2^63 − 1 is allowed. Now the count is held
    against the SENTs the profile kept for the month before a second page is asked for:
    an honest bill has one item per notification the relay acknowledged (SPEC §8.4), so
    past twice that (at least a page more) it raises BillTooLarge — the logged entry
    itself shows at least the difference billed without a SENT."""
    kept = [sent(n) for n in range(3)]
    log = FakeLog()
    entry = BillLogged(
        v=1, handle="shop", month=MONTH, count=10**6, root=bytes(32), at=T0
    ).to_bytes()
    log.append(entry)
    pages: list[int] = []

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = serving(log, entry, _invented(), pages)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        for notification in kept:
            shop.client.store.keep_sent_notification(notification)
        with pytest.raises(BillTooLarge) as raised:
            await within(shop.check_bill(MONTH))
        assert (raised.value.logged.count, raised.value.kept) == (10**6, 3)
        assert "at least 999997 billed without a SENT" in str(raised.value)
        assert pages == [0]
        await shop.client.close()

    run(scenario())


def _invented() -> list[bytes]:
    """Items for twenty pages (what the relay serves before it stops)."""
    return [
        BillItem(v=1, msg_id=n.to_bytes(16, "big"), category="utility", at=T0, recipient=bytes(32))
        .to_bytes()
        for n in range(20 * limits.MAX_BILL_ITEMS)
    ]


@pytest.mark.parametrize(("billed", "max_items"), [(600, None), (601, None), (601, 601)])
def test_a_bill_up_to_twice_what_was_sent_is_checked_item_by_item(
    billed: int, max_items: int | None
) -> None:
    """The honest side of that bound: with 300 SENTs kept, a bill of 600 (300 billed
    twice over, or a profile that lacks half its SENTs) is fetched and reconciled item
    by item; 601 is refused unless the caller raises the bound (``max_items``)."""
    kept = [sent(n) for n in range(300)]
    log, entry, items = logged_bill([sent(n) for n in range(billed)])
    pages: list[int] = []
    outcome: list[BillReconciliation | BillTooLarge] = []

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = serving(log, entry, items, pages)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        for notification in kept:
            shop.client.store.keep_sent_notification(notification)
        try:
            outcome.append(await within(shop.check_bill(MONTH, max_items=max_items)))
        except BillTooLarge as exc:
            outcome.append(exc)
        await shop.client.close()

    run(scenario())
    [result] = outcome
    if billed == 601 and max_items is None:
        assert isinstance(result, BillTooLarge) and pages == [0]
    else:
        assert isinstance(result, BillReconciliation)
        assert (result.billed, result.matched, len(result.extra)) == (billed, 300, billed - 300)
