"""Log entries byte for byte (SPEC §15.1): encoding, strict decoding, commitments."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from blindrelay.protocol.errors import MalformedFrame, MalformedLogEntry
from blindrelay.protocol.frames import MAX_TIME_MS
from blindrelay.protocol.signed import ConsentStatement
from blindrelay.protocol.transparency import entries as e

K1, K2 = bytes(range(32)), bytes(range(32, 64))
T0 = 1_790_000_000_000


def test_an_entry_is_its_context_a_zero_byte_and_its_canonical_body() -> None:
    entry = e.StatementLogged(v=1, commitment=K1, at=T0)
    data = entry.to_bytes()
    context, _, body = data.partition(b"\x00")
    assert context == b"blindrelay/v1/log/statement"
    assert list(msgpack.unpackb(body)) == ["v", "commitment", "at"]  # the table's order
    assert entry.leaf_hash() == hashlib.sha256(b"\x00" + data).digest()
    assert e.decode_entry(data) == entry


def test_every_context_is_distinct_and_none_is_a_signed_object_context() -> None:
    contexts = [*e.ENTRY_TYPES, e.BillItem.CONTEXT, e.RECIPIENT_CONTEXT]
    signed = {b"blindrelay/v1/statement", b"blindrelay/v1/badge", b"blindrelay/v1/profile",
              b"blindrelay/v1/auth", b"blindrelay/v1/rotate", b"blindrelay/v1/signed-prekey",
              b"blindrelay/v1/tree-head"}  # fmt: skip
    assert len(set(contexts)) == len(contexts) and not set(contexts) & signed
    assert all(b"\x00" not in c for c in contexts)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"blindrelay/v1/log/statement",  # no zero byte
        b"blindrelay/v1/log/unknown\x00" + msgpack.packb({"v": 1}),
        b"blindrelay/v1/bill/item\x00" + msgpack.packb({"v": 1}),  # a bill item is not a log entry
        b"blindrelay/v1/log/statement\x00" + msgpack.packb({"v": 1, "commitment": K1}),
        b"blindrelay/v1/log/statement\x00"
        + msgpack.packb({"v": 1, "commitment": K1, "at": 1, "x": 1}),
        b"blindrelay/v1/log/statement\x00" + msgpack.packb({"v": 2, "commitment": K1, "at": 1}),
        b"blindrelay/v1/log/statement\x00"
        + msgpack.packb({"v": 1, "commitment": K1[:31], "at": 1}),
        # the same fields in another order: valid msgpack, but not the one encoding
        b"blindrelay/v1/log/statement\x00" + msgpack.packb({"at": 1, "v": 1, "commitment": K1}),
        # trailing bytes after the body
        e.StatementLogged(v=1, commitment=K1, at=1).to_bytes() + b"\x00",
        b"x" * (e.MAX_ENTRY_BYTES + 1),
    ],
)
def test_anything_but_an_exact_encoding_is_a_malformed_entry(data: bytes) -> None:
    with pytest.raises(MalformedLogEntry):
        e.decode_entry(data)


def test_fields_are_checked_at_construction() -> None:
    with pytest.raises(MalformedFrame):
        e.KeyBinding(v=1, handle="alice", kind="robot", identity_key=K1, at=T0)
    with pytest.raises(MalformedFrame):
        e.KeyBinding(v=1, handle="alice", kind="user", identity_key=K1, at=T0, previous_key=K1)
    with pytest.raises(MalformedFrame):
        e.BillLogged(v=1, handle="skyways.air", month="2026-13", count=1, root=K1, at=T0)
    with pytest.raises(MalformedFrame):
        e.BillLogged(v=1, handle="skyways.air", month="２０２６-01", count=1, root=K1, at=T0)
    with pytest.raises(MalformedFrame):
        e.BillItem(v=1, msg_id=K1[:16], category="spam", at=T0, recipient=K2)


def test_a_rotation_carries_the_previous_key_and_a_registration_does_not() -> None:
    registered = e.KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=K1, at=T0)
    rotated = e.KeyBinding(
        v=1, handle="skyways.air", kind="business", identity_key=K2, at=T0 + 1, previous_key=K1
    )
    assert b"previous_key" not in registered.to_bytes()
    assert e.decode_entry(rotated.to_bytes()) == rotated


def test_a_statement_commitment_is_the_sha256_of_the_exact_signed_bytes() -> None:
    signed = b"\x82\xa4body\xc4\x01x\xa3sig\xc4\x40" + bytes(64)
    assert e.statement_commitment(signed) == hashlib.sha256(signed).digest()
    # nothing of the statement is readable in the entry
    entry = e.StatementLogged(v=1, commitment=e.statement_commitment(signed), at=T0).to_bytes()
    assert b"body" not in entry and ConsentStatement.CONTEXT not in entry


def test_a_recipient_commitment_needs_the_salt() -> None:
    salt = bytes(16)
    commitment = e.recipient_commitment("alice", salt)
    assert (
        commitment == hashlib.sha256(b"blindrelay/v1/bill/recipient\x00" + salt + b"alice").digest()
    )
    assert commitment != e.recipient_commitment("alice", b"\x01" * 16)
    assert commitment != e.recipient_commitment("alicf", salt)
    with pytest.raises(MalformedFrame):
        e.recipient_commitment("alice", salt[:15])


def test_a_bill_root_covers_every_item_in_order() -> None:
    items = [
        e.BillItem(v=1, msg_id=bytes([i]) * 16, category="utility", at=T0 + i, recipient=K2)
        for i in range(3)
    ]
    root = e.bill_root(items)
    assert root != e.bill_root(items[::-1]) and root != e.bill_root(items[:2])
    assert e.decode_bill_item(items[0].to_bytes()) == items[0]
    with pytest.raises(MalformedLogEntry):
        e.decode_bill_item(e.StatementLogged(v=1, commitment=K1, at=T0).to_bytes())


@pytest.mark.parametrize("month", ["2026-01\n", "2026-1", "2026-00", " 2026-01"])
def test_a_bill_s_month_is_exactly_yyyy_mm(month: str) -> None:
    """A second bill for "2026-01\\n" would not be the second bill for "2026-01" that the
    audit looks for (one per business and month, §8.5): the month admits no trailing
    newline (a regex anchored with ``$`` would)."""
    good = e.BillLogged(v=1, handle="skyways.air", month="2026-01", count=1, root=K1, at=T0)
    with pytest.raises(MalformedFrame, match="month"):
        e.BillLogged(v=1, handle="skyways.air", month=month, count=1, root=K1, at=T0)
    body = msgpack.unpackb(good.to_bytes().partition(b"\x00")[2])
    forged = e.BillLogged.CONTEXT + b"\x00" + msgpack.packb(body | {"month": month})
    with pytest.raises(MalformedLogEntry, match="month"):
        e.decode_entry(forged)


@pytest.mark.parametrize("count", [-1, 2**63])
def test_a_bill_s_count_is_a_tree_size(count: int) -> None:
    with pytest.raises(MalformedFrame, match="count"):
        e.BillLogged(v=1, handle="skyways.air", month="2026-01", count=count, root=K1, at=T0)


def test_times_and_serials_stay_in_their_ranges() -> None:
    """Every ``at`` is a time frames can carry (``MAX_TIME_MS``), and a badge serial a
    signed 63-bit int, at both ends."""
    e.StatementLogged(v=1, commitment=K1, at=MAX_TIME_MS)
    for at in (-1, MAX_TIME_MS + 1):
        with pytest.raises(MalformedFrame, match="at"):
            e.StatementLogged(v=1, commitment=K1, at=at)
    e.BadgeRevoked(v=1, handle="skyways.air", serial=2**63 - 1, at=T0)
    for serial in (-1, 2**63):
        with pytest.raises(MalformedFrame, match="serial"):
            e.BadgeRevoked(v=1, handle="skyways.air", serial=serial, at=T0)


def test_a_binding_s_key_is_32_bytes_and_a_badge_is_never_empty() -> None:
    for key in (K1[:31], K1 + b"\x00"):
        with pytest.raises(MalformedFrame, match="identity_key"):
            e.KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=key, at=T0)
    with pytest.raises(MalformedFrame, match="badge"):
        e.BadgeIssued(v=1, handle="skyways.air", serial=1, badge=b"", at=T0)
    e.BadgeIssued(v=1, handle="skyways.air", serial=1, badge=b"\x01", at=T0)
