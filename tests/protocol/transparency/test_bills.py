"""Monthly bills closed, verified against the log and reconciled with kept SENTs
(protocol/transparency/bills.py, SPEC §8.5)."""

from __future__ import annotations

import datetime
from dataclasses import asdict

import pytest

from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import InvalidProof, InvalidTreeHead, MalformedLogEntry
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.bills import (
    SentNotification,
    VerifiedBill,
    close_bill,
    month_end,
    month_of,
    month_span,
    reconcile,
    verify_bill,
)
from blindrelay.protocol.transparency.entries import (
    BillItem,
    BillLogged,
    KeyBinding,
    bill_root,
    recipient_commitment,
)
from blindrelay.protocol.transparency.treehead import sign_tree_head

RELAY = IdentityKeyPair(b"\xc0" * 32)
T0 = 1_794_000_000_000  # 2026-11-08
MONTH = month_of(T0)
SALT = b"\x5a" * 16


def sent(i: int, recipient: str = "alice", category: str = "utility") -> SentNotification:
    return SentNotification(bytes([i]) * 16, recipient, category, T0 + 1000 * (i % 3))


KEPT = [sent(1), sent(2, "bob"), sent(3, "carol", "marketing"), sent(4)]


def logged(
    notifications: list[SentNotification], handle: str = "skyways.air", month: str = MONTH
) -> dict[str, object]:
    """A log of three entries whose middle one is the bill, a head over it, and the
    BILL fields as a relay would send them."""
    entry, items = close_bill(handle, month, notifications, SALT, T0 + 10**9)
    key = KeyBinding(v=1, handle=handle, kind="business", identity_key=b"\x01" * 32, at=T0)
    log = [key.to_bytes(), entry.to_bytes(), key.to_bytes()[:-1] + b"\x02"]
    leaves = [merkle.leaf_hash(e) for e in log]
    frontier, nodes = merkle.Frontier(), {}
    for leaf in leaves:
        nodes.update(frontier.append(leaf))
    proof = merkle.inclusion_proof(1, 3, lambda wanted: {n: nodes[n] for n in wanted})
    sth = sign_tree_head(RELAY.sign, 3, merkle.root_of(leaves), T0 + 10**9)
    return {
        "relay_key": RELAY.public, "handle": handle, "month": month, "entry": entry.to_bytes(),
        "index": 1, "proof": proof, "tree_head": sth, "salt": SALT,
        "items": [item.to_bytes() for item in items],
    }  # fmt: skip


def test_a_bill_orders_its_items_by_time_then_msg_id_and_hides_recipients() -> None:
    entry, items = close_bill("skyways.air", MONTH, KEPT, SALT, T0 + 5)
    assert [item.msg_id[0] for item in items] == [3, 1, 4, 2]  # at: +0, +1000, +1000, +2000
    assert (entry.count, entry.root, entry.month, entry.at) == (4, bill_root(items), MONTH, T0 + 5)
    assert items[0].recipient == recipient_commitment("carol", SALT) != b"carol"
    assert close_bill("skyways.air", MONTH, [], SALT, T0)[0].root == merkle.EMPTY_ROOT
    with pytest.raises(ValueError):
        close_bill("skyways.air", MONTH, KEPT, b"short", T0)


def test_a_logged_bill_verifies_and_matches_every_kept_sent() -> None:
    bill = verify_bill(**logged(KEPT))  # type: ignore[arg-type]
    assert (bill.entry.count, bill.index, bill.tree_head.size, bill.salt) == (4, 1, 3, SALT)
    result = reconcile(bill, [*KEPT, sent(9)._replace(at=T0 - 40 * 86_400_000)])  # other month
    assert result.ok and (result.billed, result.matched) == (4, 4)
    assert "every one matches a SENT" in result.summary()


@pytest.mark.parametrize(
    "change, error",
    [
        ({"handle": "other.shop"}, InvalidProof),  # another business's bill
        ({"month": "2026-10"}, InvalidProof),
        ({"index": 0}, InvalidProof),  # the proof is for leaf 1
        ({"relay_key": IdentityKeyPair(b"\xc1" * 32).public}, InvalidTreeHead),
        ({"salt": b"\x00" * 15}, InvalidProof),
        ({"entry": b"blindrelay/v1/log/nothing\x00"}, MalformedLogEntry),
    ],
)
def test_a_bill_that_is_not_the_logged_one_is_refused(
    change: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        verify_bill(**{**logged(KEPT), **change})  # type: ignore[arg-type]


def test_items_that_are_not_the_logged_ones_are_refused() -> None:
    fields = logged(KEPT)
    items = list(fields["items"])  # type: ignore[call-overload]
    for wrong in (
        items[:-1],  # one dropped after logging
        [*items, items[0]],  # one added
        [items[1], items[0], *items[2:]],  # reordered
        [BillItem(v=1, msg_id=b"\x07" * 16, category="utility", at=T0,
                  recipient=b"\x00" * 32).to_bytes(), *items[1:]],  # replaced
    ):  # fmt: skip
        with pytest.raises(InvalidProof):
            verify_bill(**{**fields, "items": wrong})  # type: ignore[arg-type]


def _verified(notifications: list[SentNotification]) -> VerifiedBill:
    return verify_bill(**logged(notifications))  # type: ignore[arg-type]


def test_over_billing_dropped_and_differing_items_are_each_named() -> None:
    extra = sent(7, "dave")
    over = reconcile(_verified([*KEPT, extra]), KEPT)
    assert not over.ok and [i.msg_id for i in over.extra] == [extra.msg_id]
    assert "1 billed without a SENT" in over.summary()

    dropped = reconcile(_verified(KEPT[1:]), KEPT)
    assert dropped.missing == (KEPT[0],) and dropped.matched == 3 and not dropped.ok

    differing = [KEPT[0]._replace(category="marketing"), KEPT[1]._replace(recipient="eve"),
                 KEPT[2]._replace(at=KEPT[2].at + 1), KEPT[3]]  # fmt: skip
    result = reconcile(_verified(differing), KEPT)
    assert [pair[0] for pair in result.differing] == KEPT[:3] and result.matched == 1

    twice = reconcile(_verified([*KEPT, KEPT[0]]), KEPT)
    assert [i.msg_id for i in twice.extra] == [KEPT[0].msg_id] and twice.matched == 4


def test_months_are_utc_calendar_months() -> None:
    assert month_end("2026-11") == month_span(T0)[1]
    assert month_end("2026-12") == int(
        datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC).timestamp() * 1000
    )
    assert month_of(month_end("2026-11") - 1) == "2026-11"
    assert month_of(month_end("2026-11")) == "2026-12"


def logged_as(entry: bytes, fields: dict[str, object]) -> dict[str, object]:
    """``fields`` with its bill entry replaced by ``entry``, proven in a log like logged()'s."""
    key = KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=b"\x01" * 32, at=T0)
    log = [key.to_bytes(), entry, key.to_bytes()[:-1] + b"\x02"]
    leaves = [merkle.leaf_hash(e) for e in log]
    frontier, nodes = merkle.Frontier(), {}
    for leaf in leaves:
        nodes.update(frontier.append(leaf))
    proof = merkle.inclusion_proof(1, 3, lambda wanted: {n: nodes[n] for n in wanted})
    sth = sign_tree_head(RELAY.sign, 3, merkle.root_of(leaves), T0 + 10**9)
    return {**fields, "entry": entry, "proof": proof, "tree_head": sth}


def test_a_logged_count_other_than_the_items_is_refused_even_with_their_root() -> None:
    """The relay logs the root of the items it shows but another count (the one it
    invoices by): the count the log holds must be the items' (SPEC §8.5)."""
    fields = logged(KEPT)
    entry, _ = close_bill("skyways.air", MONTH, KEPT, SALT, T0 + 10**9)
    for count in (entry.count - 1, entry.count + 1):
        lying = BillLogged(**{**asdict(entry), "count": count}).to_bytes()
        with pytest.raises(InvalidProof, match="items given for a bill of"):
            verify_bill(**logged_as(lying, fields))  # type: ignore[arg-type]
    verify_bill(**logged_as(entry.to_bytes(), fields))  # type: ignore[arg-type]


def test_a_proven_entry_that_is_not_a_bill_is_an_invalid_proof() -> None:
    binding = KeyBinding(
        v=1, handle="skyways.air", kind="business", identity_key=b"\x03" * 32, at=T0
    ).to_bytes()
    with pytest.raises(InvalidProof, match="not a bill"):
        verify_bill(**logged_as(binding, logged(KEPT)))  # type: ignore[arg-type]


def test_items_of_one_time_are_ordered_by_msg_id_whatever_order_they_came_in() -> None:
    same_time = [sent(i)._replace(at=T0) for i in (9, 2, 5)]
    _, items = close_bill("skyways.air", MONTH, same_time, SALT, T0 + 5)
    assert [item.msg_id[0] for item in items] == [2, 5, 9]


def test_a_bill_whose_only_fault_is_a_differing_item_does_not_match() -> None:
    result = reconcile(_verified([KEPT[0]._replace(category="marketing")]), KEPT[:1])
    assert len(result.differing) == 1 and not result.ok
    assert "1 differing" in result.summary()
