"""A business's bill for a month: fetched page by page, verified, held against its SENTs
(SPEC §8.4–8.5).

- **The log first.** The first page's tree head, ``bill logged`` entry and inclusion
  proof are checked before a second page is asked for: a relay claiming a count it
  never logged served pages for ever (found in review).
- **What was acknowledged bounds the count** (T56). A relay may log any count (up to
  2^63 − 1) and serve pages up to it; each item is kept until the bill is verified. An
  honest bill holds one item per notification the relay acknowledged (§8.4), and the
  profile keeps the SENT of each it sent; so a logged count past
  :func:`default_bound` of them is refused with :class:`BillTooLarge` before any page
  more — the signed entry alone shows at least the difference billed without a SENT.

Not here: the bill's cryptography and the reconciliation (``protocol.transparency.bills``),
the facade (``business``), where SENTs are kept (``outbox``).
"""

from __future__ import annotations

from blindrelay.protocol import frames, limits
from blindrelay.protocol.errors import BlindrelayError, InvalidProof, UnexpectedFrame
from blindrelay.protocol.transparency.bills import (
    BillReconciliation,
    VerifiedBill,
    reconcile,
    verify_bill,
    verify_bill_entry,
)
from blindrelay.protocol.transparency.entries import BillLogged
from blindrelay.protocol.transparency.treehead import TreeHead

from .sdk import Client


class BillTooLarge(BlindrelayError):
    """The relay logged a bill of more items than the profile may fetch: by default,
    more than twice (and a page more than) the SENTs of notifications it kept for the
    month (T56). ``logged`` is the entry under ``tree_head``, verified: at least
    ``logged.count − kept`` notifications billed without a SENT this profile kept. A
    profile that did not send all of the month's notifications passes ``max_items``.
    A client-side error: no wire code."""

    def __init__(self, logged: BillLogged, tree_head: TreeHead, kept: int, bound: int) -> None:
        super().__init__(
            f"the relay logged a bill of {logged.count} items for {logged.month}, this "
            f"profile kept {kept} SENTs of it: at least {logged.count - kept} billed "
            f"without a SENT (not fetched past {bound} items; max_items fetches more)"
        )
        self.logged = logged
        self.tree_head = tree_head
        self.kept = kept
        self.bound = bound


def default_bound(kept: int) -> int:
    """The items a bill may have when the profile kept ``kept`` SENTs for its month: twice
    them, and at least a page more — so a bill off by a few, or billed twice over, is
    still reconciled item by item, and what is held stays within twice what the profile
    already keeps (~170 bytes an item)."""
    return kept + max(kept, limits.MAX_BILL_ITEMS)


async def fetch_bill(client: Client, month: str, max_items: int | None) -> VerifiedBill:
    """:meth:`.business.Business.bill`."""
    kept = len(client.store.sent_notifications(month))
    return await _fetch(client, month, kept, max_items)


async def check_bill(client: Client, month: str, max_items: int | None) -> BillReconciliation:
    """:meth:`.business.Business.check_bill`."""
    kept = client.store.sent_notifications(month)
    return reconcile(await _fetch(client, month, len(kept), max_items), kept)


async def _fetch(client: Client, month: str, kept: int, max_items: int | None) -> VerifiedBill:
    handle, relay_key = client.handle, client.relay_key
    if handle is None or relay_key is None:
        raise UnexpectedFrame("a bill before a login")
    # A logged bill is worth checking because everyone is shown the same one; a relay
    # caught showing two histories no longer does, so "matches" would mean nothing (T75).
    client.log_check.raise_if_forked()
    first = await _page(client, month, 0)
    # The entry, its proof and head first: the logged count is what bounds the pages
    # asked for, and a head that does not extend ours is a fork before any paging.
    logged, head = verify_bill_entry(
        relay_key, handle, month, first.entry, first.index, first.proof, first.sth
    )
    await client.log_check.observe(head, first.sth)
    bound = default_bound(kept) if max_items is None else max_items
    if logged.count > bound:
        raise BillTooLarge(logged, head, kept, bound)
    items = list(first.items)
    while len(items) < logged.count:
        page = await _page(client, month, len(items))
        if page.entry != first.entry or not page.items:
            raise InvalidProof("the bill changed between its pages")
        items += page.items
    return verify_bill(
        relay_key, handle, month, first.entry, first.index, first.proof, first.sth,
        first.salt, items,
    )  # fmt: skip


async def _page(client: Client, month: str, start: int) -> frames.Bill:
    answer = await client.link.request(
        lambda rid: frames.BillFetch(id=rid, month=month, start=start)
    )
    if not isinstance(answer, frames.Bill) or answer.start != start:
        raise UnexpectedFrame("relay answered BILL_FETCH with another frame")
    return answer


__all__ = ["BillTooLarge", "check_bill", "default_bound", "fetch_bill"]
