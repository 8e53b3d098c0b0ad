"""The relay's log fetches (server/transparency.py, SPEC §15.6, §10, §4.5): how much of
the log's reading a source gets before anyone logs in, and what asking past it costs."""

from __future__ import annotations

from dataclasses import replace

from websockets.asyncio.server import ServerConnection

from blindrelay.protocol import limits
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import BillFetch, Error, LogHead, LogHeadFetch, Ok
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


async def test_a_new_connection_of_an_account_does_not_refill_its_log_fetch_bucket(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10, §15.6: once logged in the log-fetch bucket is the account's, not the
    connection's. Keyed by connection, every login came with a full burst: one account
    reconnecting at its source's connection rate (20 a second, T30) had the writer answer
    20 × 200 = 4,000 fetches a second where the bucket allows 100 (threat model T80). The
    source's bucket before a login is kept apart from any account's, whatever its handle."""
    changed = replace(config, log_fetch_burst=BURST, log_fetch_rate_per_min=1.0)
    running = await serve(changed, clock=clock, source_of=source_from_header)
    try:
        headers = {SOURCE_HEADER: "10.1.2.3"}
        first = await clients.open(running.url, headers=headers)
        await first.register("10.1.2.3")  # a handle that reads as its source's key
        for _ in range(BURST):
            assert isinstance(await first.request(lambda i: LogHeadFetch(id=i)), LogHead)
        assert error_code(await first.request(lambda i: LogHeadFetch(id=i))) == 402

        # The account's next connection (the first one is replaced): still empty.
        second = await clients.open(running.url, headers=headers)
        await second.login("10.1.2.3", first.key)
        again = await second.request(lambda i: LogHeadFetch(id=i))
        assert isinstance(again, Error) and again.code == ErrorCode.RATE_LIMITED
        assert again.retry_after is not None and again.retry_after > 0

        # The source's own bucket, before a login, is another one.
        anonymous = await clients.open(running.url, headers=headers)
        assert isinstance(await anonymous.request(lambda i: LogHeadFetch(id=i)), LogHead)

        clock.advance(60_000)  # one token back for the account
        assert isinstance(await second.request(lambda i: LogHeadFetch(id=i)), LogHead)

        # A business's bill pages take from the same bucket (SPEC §8.5).
        shop = await clients.open(running.url, headers={SOURCE_HEADER: "10.9.9.9"})
        await shop.register("shop", "business")
        for _ in range(BURST):
            assert isinstance(await shop.request(lambda i: LogHeadFetch(id=i)), LogHead)
        bill = await shop.request(lambda i: BillFetch(id=i, month="2026-11"))
        assert error_code(bill) == ErrorCode.RATE_LIMITED
    finally:
        await running.close()
