"""Health and Prometheus metrics on their own listener (server/metrics.py, issue 19)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Ack, Sent
from blindrelay.server.config import RelayConfig
from blindrelay.server.metrics import (
    READY_WINDOW_S,
    Histogram,
    MetricsServer,
    RelayMetrics,
    parse_listen,
)

from .conftest import ALL_BACKENDS, Clients, FakeClock, RelayFixture, error_code, until

BACKENDS = ALL_BACKENDS


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def fetch(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


def sample(text: str, name: str) -> float:
    """The value of the one sample ``name`` (with its labels) in the exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the exposition")


async def test_health_readiness_and_metrics_are_served_apart_from_the_websocket_port(
    config: RelayConfig, clients: Clients, clock: FakeClock, backend: str
) -> None:
    async with RelayFixture(replace(config, metrics_listen="127.0.0.1:0"), clock) as relay:
        assert relay.metrics_server is not None
        base = relay.metrics_server.url
        assert await fetch(base + "/healthz") == (200, "ok\n")
        assert await relay.housekeeping.probe_store()
        assert await fetch(base + "/readyz") == (200, "ready\n")

        alice = await clients.registered(relay.url, "alice")
        await clients.registered(relay.url, "bob")
        for _ in range(3):
            assert isinstance(await alice.send_message("bob", os.urandom(40)), Sent)
        refused = await alice.send_message("nobody", b"x")
        assert error_code(refused) == ErrorCode.RECIPIENT_UNAVAILABLE

        status, text = await fetch(base + "/metrics")
        assert status == 200
        assert sample(text, 'blindrelay_frames_received_total{type="SEND"}') == 4
        assert sample(text, 'blindrelay_errors_sent_total{code="400"}') == 1
        assert sample(text, 'blindrelay_refusals_total{class="delivery"}') == 1
        assert sample(text, "blindrelay_sends_committed_total") == 3
        assert sample(text, 'blindrelay_send_seconds_count{stage="total"}') == 3
        for stage in ("loop", "store", "answer"):
            assert sample(text, f'blindrelay_send_seconds_count{{stage="{stage}"}}') == 3
        # Decided before the commit (SQLite), each SEND's way to its decision, by stage:
        # no longer in all than from its arrival to its SENT.
        decided = 3 if backend == "sqlite" else 0
        split = 0.0
        for stage in ("wait", "decide", "back"):
            assert sample(text, f'blindrelay_decision_seconds_count{{stage="{stage}"}}') == decided
            split += sample(text, f'blindrelay_decision_seconds_sum{{stage="{stage}"}}')
        assert 0 <= split <= sample(text, 'blindrelay_send_seconds_sum{stage="total"}')
        assert sample(text, "blindrelay_connections") == 2
        assert sample(text, "blindrelay_connections_authenticated") == 2
        assert sample(text, "blindrelay_store_ready") == 1
        assert sample(text, "blindrelay_store_round_trip_seconds_count") >= 1
        batches = sample(text, "blindrelay_commit_batch_operations_count")
        assert batches >= 1 and sample(text, "blindrelay_commit_seconds_count") == batches
        assert sample(text, "blindrelay_commit_batch_operations_sum") >= 3  # the SENDs, at least
        assert "alice" not in text and "bob" not in text  # nobody is named
        assert (await fetch(base + "/"))[0] == 404

        # The public port answers a plain GET as before, whatever the path.
        http = relay.url.replace("ws://", "http://")
        assert (await fetch(http + "/metrics"))[0] == 426
        assert (await fetch(http + "/healthz"))[0] == 426


async def test_deliveries_in_flight_redeliveries_and_the_queue_are_counted(
    config: RelayConfig, clients: Clients, clock: FakeClock
) -> None:
    async with RelayFixture(replace(config, metrics_listen="127.0.0.1:0"), clock) as relay:
        assert relay.metrics_server is not None
        metrics = relay.ctx.metrics
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        session = relay.ctx.sessions.get("bob")
        assert session is not None and session.outbox is not None
        outbox = session.outbox
        # Bob's first page (of an empty queue) is read: what is decided meanwhile would
        # come by the page after it, whose DELIVERs have no SEND time here.
        await until(lambda: not getattr(outbox, "paging", True))
        for _ in range(3):
            assert isinstance(await alice.send_message("bob", os.urandom(40)), Sent)
        delivered = await bob.deliveries(3)
        await relay.housekeeping.count_queued()
        _, text = await fetch(relay.metrics_server.url + "/metrics")
        pushed = sum(
            sample(text, f'blindrelay_delivers_pushed_total{{path="{path}"}}')
            for path in ("before_decision", "before_commit", "after_commit")
        )  # fmt: skip
        assert pushed == 3  # to an online recipient: its latency is measured
        assert sum(
            sample(text, f'blindrelay_deliver_seconds_count{{path="{path}"}}')
            for path in ("before_decision", "before_commit", "after_commit")
        ) == 3  # fmt: skip
        assert sample(text, 'blindrelay_frames_sent_total{type="DELIVER"}') == 3
        assert sample(text, 'blindrelay_frames_sent_total{type="SENT"}') == 3
        assert sample(text, 'blindrelay_frames_sent_total{type="WELCOME"}') == 2
        assert sample(text, "blindrelay_deliveries_in_flight") == 3
        assert sample(text, "blindrelay_envelopes_queued") == 3  # none acknowledged yet

        await bob.send(Ack(delivery_ids=(delivered[0].delivery_id,)))
        await until(lambda: metrics.in_flight == 2)
        await bob.close()  # two left unacknowledged: delivered again at the next login
        await until(lambda: metrics.redeliveries == 2 and metrics.in_flight == 0)
        await relay.housekeeping.count_queued()
        _, text = await fetch(relay.metrics_server.url + "/metrics")
        assert sample(text, "blindrelay_redeliveries_total") == 2
        assert sample(text, "blindrelay_deliveries_in_flight") == 0
        assert sample(text, "blindrelay_envelopes_queued") == 2

        again, _welcome = await clients.logged_in(relay.url, "bob", bob.key)
        assert len(await again.deliveries(2)) == 2
        _, text = await fetch(relay.metrics_server.url + "/metrics")
        assert sample(text, 'blindrelay_delivers_pushed_total{path="paged"}') == 2


def test_a_connection_that_never_finishes_its_request_blocks_no_probe() -> None:
    """A TCP connection to the metrics port that sends half a request line held every
    /healthz, /readyz and /metrics until it closed (one request at a time, no timeout;
    found in review): a failed liveness probe restarts a healthy relay. Now each
    connection has its own thread and its own deadline."""
    deadline_s = 0.5  # the default REQUEST_TIMEOUT_S is 5 s; the rule is the same
    server = MetricsServer(RelayMetrics(), "127.0.0.1", 0, request_timeout_s=deadline_s)
    holders: list[socket.socket] = []
    try:
        for _ in range(3):
            holder = socket.create_connection((server.host, server.port))
            holder.sendall(b"GET /heal")  # and nothing more
            holders.append(holder)
        for path, expected in (("/healthz", 200), ("/readyz", 503), ("/metrics", 200)):
            started = time.monotonic()
            assert get(server.url + path, timeout=2)[0] == expected, path
            assert time.monotonic() - started < 1.0, path
        for holder in holders:  # each is let go after the deadline, answered or not
            holder.settimeout(deadline_s + 5)
            assert holder.recv(1024) == b""  # closed by the server, not by our timeout
    finally:
        for holder in holders:
            holder.close()
        server.close()


def test_histograms_bucket_as_prometheus_does() -> None:
    """A value on a bound is in that bound's bucket (``le``); buckets are cumulative."""
    histogram = Histogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 0.5):
        histogram.observe(value)
    buckets, total = histogram.exposed()
    assert buckets == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert total == pytest.approx(0.5035)


def test_readiness_follows_the_store() -> None:
    now = [1000.0]
    metrics = RelayMetrics(clock=lambda: now[0])
    assert metrics.ready() == (False, "store: not probed yet")
    metrics.committed(0.002)
    assert metrics.ready() == (True, "ready")
    now[0] += READY_WINDOW_S + 1
    assert metrics.ready()[0] is False  # no commit for a while: not ready
    metrics.committed()
    metrics.store_failed("unavailable, reconnecting")
    assert metrics.ready() == (False, "store: unavailable, reconnecting")
    metrics.committed()
    assert metrics.ready() == (True, "ready")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("", None), ("off", None), ("9465", ("127.0.0.1", 9465)),
     ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))],
)  # fmt: skip
def test_metrics_listen_takes_a_port_or_host_and_port(
    value: str, parsed: tuple[str, int] | None
) -> None:
    assert parse_listen(value) == parsed


@pytest.mark.parametrize("value", ["abc", "host:", "1.2.3.4:70000", "x:y"])
def test_a_bad_metrics_listen_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="metrics_listen"):
        parse_listen(value)
