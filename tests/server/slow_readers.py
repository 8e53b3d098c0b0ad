"""What the tests of slow readers build with (tests/server/test_slow_readers.py,
test_outgoing_deliveries.py): a socket that reads little, and a business profile near
its size limit — every answer to fetching it is ~5 KiB, so a few hundred fetches pass
the outgoing bound."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

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


def small_window(url: str) -> socket.socket:
    """A socket connected to the relay with a small receive buffer from the start:
    what its client does not read piles up on the relay's side soon, and what it
    reads the relay sees acknowledged at once."""
    address = urlparse(url)
    assert address.hostname is not None and address.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's own sockets
    sock.connect((address.hostname, address.port))
    return sock
