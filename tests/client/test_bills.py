"""A business checks its monthly bill with the SDK (SPEC §8.5): the SENTs its outbox kept
against the bill the relay logged — and catches a relay that bills one notification too
many, drops one, or serves items other than the logged ones."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from blindrelay.client.business import Business
from blindrelay.protocol import frames, limits
from blindrelay.protocol.errors import ErrorCode, InvalidProof, NotFound
from blindrelay.protocol.transparency.bills import BillReconciliation, month_end, month_of
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
