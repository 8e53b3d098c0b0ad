"""The relay's log fetches (server/transparency.py, SPEC §15.6, §10, §4.5): how much of
the log's reading a source gets before anyone logs in, and what asking past it costs."""

from __future__ import annotations

from dataclasses import replace

from websockets.asyncio.server import ServerConnection

from blindrelay.protocol import limits
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Error, LogHead, LogHeadFetch, Ok
from blindrelay.server.config import RelayConfig
from blindrelay.server.registration import source_key
from blindrelay.server.relay import serve

from .conftest import Clients, FakeClock, RelayFixture, error_code

SOURCE_HEADER = "X-Test-Source"
BURST = 3


def source_from_header(ws: ServerConnection) -> str:
    """The source the test names (real sockets all come from 127.0.0.1)."""
    assert ws.request is not None
    return source_key(ws.request.headers[SOURCE_HEADER])


async def test_connections_not_logged_in_share_their_sources_log_fetch_bucket(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §15.6: before a login the log-fetch bucket is the source's, not the
    connection's. Keyed by connection, every new connection came with a full burst, so
    one address with 32 connections (and 20 new ones a second) had the writer answer
    ~3,600 fetches a second, no account needed: an honest pair's SEND p50 went from
    2.6 to 35 ms (found in review, /tmp/audit-channel/flood_log.py)."""
    changed = replace(config, log_fetch_burst=BURST, log_fetch_rate_per_min=1.0)
    running = await serve(changed, clock=clock, source_of=source_from_header)
    try:
        first = await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:1:2::1"})
        for _ in range(BURST):
            assert isinstance(await first.request(lambda i: LogHeadFetch(id=i)), LogHead)
        refused = await first.request(lambda i: LogHeadFetch(id=i))
        assert error_code(refused) == ErrorCode.RATE_LIMITED

        # Another connection of the same /64: the same bucket, still empty.
        second = await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:1:2::9"})
        again = await second.request(lambda i: LogHeadFetch(id=i))
        assert isinstance(again, Error) and again.code == ErrorCode.RATE_LIMITED
        assert again.retry_after is not None and again.retry_after > 0

        # Another source is served; a connection that logged in has a bucket of its own.
        other = await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:9:9::1"})
        assert isinstance(await other.request(lambda i: LogHeadFetch(id=i)), LogHead)
        await second.register("auditor")
        assert isinstance(await second.request(lambda i: LogHeadFetch(id=i)), LogHead)

        clock.advance(60_000)  # one token back for the source
        third = await clients.open(running.url, headers={SOURCE_HEADER: "2001:db8:1:2::3"})
        assert isinstance(await third.request(lambda i: LogHeadFetch(id=i)), LogHead)
    finally:
        await running.close()


async def test_a_connection_not_logged_in_that_asks_on_past_402_is_closed(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §4.5: before WELCOME a 402 counts towards the error budget, so refusals past
    the source's bucket end the connection (1008) instead of costing the relay's loop
    for nothing until the authentication timeout; after a login they do not count."""
    changed = replace(config, log_fetch_burst=1, log_fetch_rate_per_min=1.0)
    async with RelayFixture(changed, clock) as running:
        reader = await clients.open(running.url)
        assert isinstance(await reader.request(lambda i: LogHeadFetch(id=i)), LogHead)
        for _ in range(limits.MAX_PROTOCOL_ERRORS + 1):
            await reader.send(LogHeadFetch(id=reader.request_id()))
        assert await reader.closed() == 1008
        codes = [error_code(frame) for frame in reader.inbox]
        assert codes == [ErrorCode.RATE_LIMITED] * (limits.MAX_PROTOCOL_ERRORS + 1) + [
            ErrorCode.TOO_MANY_ERRORS
        ]

        alice = await clients.registered(running.url, "alice")
        for _ in range(limits.MAX_PROTOCOL_ERRORS + 5):
            await alice.request(lambda i: LogHeadFetch(id=i))
        assert isinstance(await alice.upload_prekeys(), Ok)  # still open
