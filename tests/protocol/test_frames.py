"""Frame rules that tie one field to another or hold where the codec is not asked (SPEC §2,
§9): each found unheld by mutation analysis. test_spec_fields.py probes every field's
own bounds through the codec; these are the rules it cannot see."""

from __future__ import annotations

import msgpack
import pytest

from blindrelay.protocol import codec, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol.errors import ErrorCode, FrameTooLarge, MalformedFrame


@pytest.mark.parametrize("code", [code for code in ErrorCode if code >= 200], ids=lambda c: c.name)
def test_an_error_carries_a_reason_only_with_a_1xx_code(code: ErrorCode) -> None:
    """SPEC §9: "`reason` MAY come only with 1xx codes; every other code is sent bare: a
    refusal tells the peer the code and nothing else" — neither built nor decoded."""
    retry_after = {"retry_after": 5} if code in (402, 902) else {}
    bare = f.Error(code=code, re=1, **retry_after)
    with pytest.raises(MalformedFrame, match="reason"):
        f.Error(code=code, re=1, reason="blocked by bob", **retry_after)
    message = {**msgpack.unpackb(codec.encode(bare)), "reason": "blocked by bob"}
    with pytest.raises(MalformedFrame, match="reason"):
        codec.decode(msgpack.packb(message))


def test_an_ack_built_in_code_holds_at_most_max_ack_ids() -> None:
    """SPEC §6.5: an ACK names 1 … MAX_ACK_IDS deliveries. On the wire the msgpack layer
    refuses a longer array first (MAX_ARRAY_ITEMS is as large), so only the frame's own
    check stops a client from building an ACK the relay would answer with 101."""
    f.Ack(delivery_ids=tuple(range(1, limits.MAX_ACK_IDS + 1)))
    with pytest.raises(FrameTooLarge):
        f.Ack(delivery_ids=tuple(range(1, limits.MAX_ACK_IDS + 2)))


@pytest.mark.parametrize("month", ["2027-01\n", "\n2027-01", "2027-01\r\n"])
def test_a_month_has_no_line_break_before_or_after_it(month: str) -> None:
    """SPEC §8.4: a month is exactly YYYY-MM; `$` rather than `\\Z` would take a trailing
    newline, a second spelling of the month the metering counts under."""
    with pytest.raises(MalformedFrame, match="month"):
        f.UsageFetch(id=1, month=month)
    with pytest.raises(MalformedFrame, match="month"):
        f.BillFetch(id=1, month=month)
