"""Connections not logged in yet, bounded per source address (server/admission.py,
SPEC §1.2.2): one address could open them until the relay ran out of descriptors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidStatus

from blindrelay.protocol import limits
from blindrelay.protocol.frames import Welcome
from blindrelay.server.admission import Admission, peer_source
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


def test_a_source_whose_connections_all_closed_is_forgotten() -> None:
    """Sources are chosen by whoever connects (IPv6 /64s): one kept after its last
    connection closed would hold that connection's session for ever."""
    admission = Admission(limit=2)
    connection = Connection("2001:db8::/64")
    admission.opened(connection)
    admission.closed(connection)
    assert admission.waiting("2001:db8::/64") == 0


def test_refusals_are_logged_once_per_thousand(caplog: pytest.LogCaptureFixture) -> None:
    """A refused upgrade costs its sender nothing, so a line per refusal would let one
    address write the operator's disk as fast as it connects."""
    admission = Admission(limit=1)
    admission.opened(Connection("a"))
    with caplog.at_level(logging.WARNING, logger="blindrelay"):
        for _ in range(1001):
            assert admission.refusal(_Refused(), "a") == 503  # type: ignore[arg-type]
    logged = [r for r in caplog.records if r.getMessage() == "connections_refused"]
    assert admission.refused == 1001 and len(logged) == 2  # the 1st and the 1001st


class _Refused:
    """What ``Admission.refusal`` needs of a websockets connection to answer 503."""

    def respond(self, status: int, text: str) -> object:
        return status


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        (("2001:db8:1:2:aaaa::1", 443, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:203.0.113.7", 443, 0, 0), "203.0.113.7"),
        (("203.0.113.7", 443), "203.0.113.7"),
        (None, "?"),
    ],
)
def test_a_connections_source_is_its_ipv4_address_or_ipv6_slash_64(
    peer: tuple[object, ...] | None, source: str
) -> None:
    """SPEC §1.2.2, §4.6.1: counted per IPv6 /64, not per address, of which one host
    has 2^64 to connect from (the tests of the bound name their sources themselves)."""
    assert peer_source(SimpleNamespace(remote_address=peer)) == source  # type: ignore[arg-type]


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
        assert running.admission.refused == 1
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
