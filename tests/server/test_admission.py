"""Connections not logged in yet, bounded per source address (server/admission.py,
SPEC §1.2.2): one address could open them until the relay ran out of descriptors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidStatus

from blindrelay.protocol import limits
from blindrelay.protocol.frames import Welcome
from blindrelay.server.admission import Admission
from blindrelay.server.config import RelayConfig
from blindrelay.server.registration import source_key
from blindrelay.server.relay import serve

from .conftest import Clients, FakeClock

SOURCE_HEADER = "X-Test-Source"
LIMIT = 3


def source_from_header(ws: ServerConnection) -> str:
    """The source the test names (real sockets all come from 127.0.0.1)."""
    assert ws.request is not None
    return source_key(ws.request.headers[SOURCE_HEADER])


@dataclass(eq=False)
class Connection:
    source: str
    handle: str | None = None
    open: bool = True


def test_a_source_is_admitted_up_to_the_limit_of_connections_not_logged_in() -> None:
    admission = Admission(limit=2)
    first, second = Connection("a"), Connection("a")
    for connection in (first, second):
        assert admission.admits("a")
        admission.opened(connection)
    assert not admission.admits("a") and admission.refused == 1
    assert admission.admits("b")  # another source is not affected
    second.handle = "alice"  # logged in: no longer counted
    assert admission.admits("a") and admission.waiting("a") == 1
    admission.opened(Connection("a"))
    first.open = False  # gone without closing yet: not counted either
    assert admission.admits("a")
    admission.closed(first)
    assert admission.waiting("a") == 1


def test_the_default_bound_is_the_specs() -> None:
    assert RelayConfig().max_unauthenticated_per_source == limits.MAX_UNAUTHENTICATED_PER_SOURCE


async def test_past_the_bound_an_address_is_refused_its_upgrade_until_one_logs_in(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §1.2.2: the (LIMIT+1)-th connection not logged in from one source gets HTTP
    503 and no WebSocket; another source connects; once one of the first logs in, its
    source may open another."""
    changed = replace(config, max_unauthenticated_per_source=LIMIT)
    running = await serve(changed, clock=clock, source_of=source_from_header)
    try:
        crowd = [
            await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:5:6::1"})
            for _ in range(LIMIT)
        ]
        with pytest.raises(InvalidStatus) as refused:
            await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:5:6::99"})
        assert refused.value.response.status_code == 503
        assert running.admission.refused == 1
        other = await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:5:7::1"})
        assert isinstance(await other.register("carol"), Welcome)

        assert isinstance(await crowd[0].register("alice"), Welcome)
        again = await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:5:6::2"})
        assert isinstance(await again.register("bob"), Welcome)
    finally:
        await running.close()


async def test_a_source_opening_connections_too_fast_is_refused_with_429(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §1.2.2: each connection costs the relay about a millisecond of its loop
    (upgrade, handshake, HELLO; 500 took 0.5 s of CPU), so one address opening and
    closing them in a loop could take the loop whole, whatever the bound on those open
    at once. Past its burst a source is refused with 429 and Retry-After until the
    rate refills; another source is not."""
    changed = replace(
        config, connections_per_s_source=2.0, connections_burst_source=3,
        max_unauthenticated_per_source=100,
    )  # fmt: skip
    running = await serve(changed, clock=clock, source_of=source_from_header)
    try:
        for _ in range(3):
            client = await clients.open(running.url, headers={SOURCE_HEADER: "198.51.100.9"})
            await client.close()
        with pytest.raises(InvalidStatus) as refused:
            await clients.open(running.url, headers={SOURCE_HEADER: "198.51.100.9"})
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "1"
        await clients.open(running.url, headers={SOURCE_HEADER: "198.51.100.10"})
        clock.advance(500)  # one token at two a second
        await clients.open(running.url, headers={SOURCE_HEADER: "198.51.100.9"})
    finally:
        await running.close()


def test_the_default_connection_rate_is_the_specs() -> None:
    config = RelayConfig()
    assert (config.connections_per_s_source, config.connections_burst_source) == (
        limits.CONNECTIONS_PER_S_SOURCE, limits.CONNECTIONS_BURST_SOURCE,
    )  # fmt: skip

