"""A bill of several pages from a relay that changes them (SPEC §8.5, client/billing.py),
and a bill under a head of a history the business was not shown (§15.6 rule 5).

Each refusal here is a rule of ``billing`` no other test held (mutation analysis: the
test fails with the rule removed): pages whose entry changes, an empty page, a page that
starts elsewhere, a head never held against ours.
"""

from __future__ import annotations

import pytest

from blindrelay.client.business import Business
from blindrelay.protocol import frames, limits
from blindrelay.protocol.errors import (
    ErrorCode,
    InvalidProof,
    LogForked,
    UnexpectedFrame,
)
from blindrelay.protocol.transparency.bills import SentNotification, close_bill
from blindrelay.protocol.transparency.entries import BillLogged

from ..relays import T0
from .fake_relay import URL, FakeLog, FakeRelay, RelayEnd, answer_plainly
from .harness import online, run, within
from .log_relay import filler

MONTH = "2027-01"
COUNT = limits.MAX_BILL_ITEMS + 3
"""Two pages: the first full, the second three items."""


def bill_relay(tamper: str, pages: list[int]) -> tuple[FakeRelay, FakeLog]:
    """A relay that logged ``shop``'s bill of :data:`COUNT` notifications and serves it,
    the second page changed as ``tamper`` says (up to five pages, then NOT_FOUND)."""
    notifications = [
        SentNotification(n.to_bytes(16, "big"), f"customer{n}", "utility", T0 + n)
        for n in range(COUNT)
    ]
    entry, items = close_bill("shop", MONTH, notifications, bytes(16), T0)
    log = FakeLog()
    log.append(entry.to_bytes())
    sth = log.sign_head(T0)
    other = BillLogged(v=1, handle="shop", month=MONTH, count=COUNT, root=bytes(32), at=T0)
    served = [item.to_bytes() for item in items]

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.LogConsistencyFetch) and tamper == "a head of another history":
            end.send(frames.Error(code=ErrorCode.NOT_FOUND, re=frame.id))
        elif isinstance(frame, frames.BillFetch):
            pages.append(frame.start)
            if len(pages) > 5:
                end.send(frames.Error(code=ErrorCode.NOT_FOUND, re=frame.id))
                return
            page = tuple(served[frame.start : frame.start + limits.MAX_BILL_ITEMS])
            logged, start = entry.to_bytes(), frame.start
            if frame.start > 0 and tamper == "another entry":
                logged = other.to_bytes()
            elif frame.start > 0 and tamper == "an empty page":
                page = ()
            elif frame.start > 0 and tamper == "another start":
                start = frame.start + 1
            end.send(frames.Bill(
                re=frame.id, month=MONTH, entry=logged, index=0, proof=(), sth=sth,
                salt=bytes(16), start=start, items=page,
            ))  # fmt: skip
        elif not log.answer(end, frame):
            answer_plainly(end, frame)

    relay = FakeRelay()
    relay.answer = answer
    return relay, log


@pytest.mark.parametrize(
    ("tamper", "raised"),
    [("another entry", InvalidProof), ("an empty page", InvalidProof),
     ("another start", UnexpectedFrame)],
)  # fmt: skip
def test_a_second_page_the_relay_changed_is_refused_at_once(
    tamper: str, raised: type[Exception]
) -> None:
    """The entry must stay the first page's, a page must hold items (an empty one would
    be asked for again and again) and start where it was asked to."""
    pages: list[int] = []

    async def scenario() -> None:
        relay, _log = bill_relay(tamper, pages)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        with pytest.raises(raised):
            await within(shop.bill(MONTH, max_items=COUNT))
        assert pages == [0, limits.MAX_BILL_ITEMS]
        await shop.client.close()

    run(scenario())


def test_an_honest_bill_of_two_pages_verifies() -> None:
    pages: list[int] = []

    async def scenario() -> None:
        relay, _log = bill_relay("nothing", pages)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        bill = await within(shop.bill(MONTH, max_items=COUNT))
        assert len(bill.items) == COUNT and pages == [0, limits.MAX_BILL_ITEMS]
        await shop.client.close()

    run(scenario())


def test_a_bill_under_a_head_of_another_history_is_the_split_view_alarm() -> None:
    """The bill's head is held against the newest head the business verified: one of a
    history it was not shown (no consistency proof joins them) is a fork, before any
    second page."""
    pages: list[int] = []

    async def scenario() -> None:
        relay, _log = bill_relay("a head of another history", pages)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        ours = FakeLog()
        ours.append(*filler(5))
        shop.client.store.set_tree_head(ours.sign_head(T0))
        with pytest.raises(LogForked):
            await within(shop.bill(MONTH, max_items=COUNT))
        assert pages == [0]
        await shop.client.close()

    run(scenario())
