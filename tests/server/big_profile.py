"""A business profile near its size limit, for the tests of what slow readers make the
relay hold (tests/server/test_slow_readers.py, test_outgoing_deliveries.py): every
answer to fetching it is ~5 KiB, so a few hundred fetches pass the outgoing bound."""

from __future__ import annotations

from blindrelay.protocol.business import BusinessProfile, OpeningHours, SpecialDay

from .conftest import RawClient


def big_profile(client: RawClient, now: int) -> bytes:
    """``client``'s profile, signed by it, as large as a valid one gets."""
    profile = BusinessProfile(
        v=1, handle=client.handle, display_name="Ä" * 64, description="✈" * 512,
        timezone="Europe/Berlin",
        hours=tuple(OpeningHours(day=d % 7, open=d, close=1440) for d in range(28)),
        exceptions=tuple(
            SpecialDay(date=f"2027-{m:02d}-{d:02d}", open=60, close=1380)
            for m in range(1, 13) for d in range(1, 6)
        ),
        issued_at=now,
    )  # fmt: skip
    return profile.sign(lambda m: client.key.sign(m).signature)
