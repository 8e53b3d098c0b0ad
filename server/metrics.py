"""Health and Prometheus metrics on a listener of their own (issue 19): ``/healthz``,
``/readyz`` and ``/metrics``, none of them on the public WebSocket port.

What is measured never identifies anyone: no handle, message id, address or account
appears in a metric or a label, and every label set is bounded (frame types, error
codes, SEND stages). The exposition is prometheus_client's — its text format, its
families and its WSGI app — in a registry per relay (tests run many relays in one
process).

Why the values are plain ints and lists, read by a collector at scrape time, and not
prometheus_client's ``Counter``/``Histogram``: those take a lock per increment, and a
message makes six of them on the event loop (about 5 µs, measured: workload 1 lost 8%
of its throughput to them). Here the event loop is the only writer; the scrape thread
reads ints and copies lists, each atomic under the GIL. A scrape may see a histogram's
sum one observation behind its counts, which Prometheus tolerates (it rates them
separately).

Readiness is the store's: a store operation committed within ``READY_WINDOW_S`` (the
relay probes with one every ``PROBE_INTERVAL_S``), and no outage reported since. During
a store outage ``/readyz`` answers 503 with the reason, while ``/healthz`` (the process
answers) stays 200.

Not here: where the values come from (the handlers, ``relay``), what each means for an
operator (docs/operations.md, "Health and metrics").
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import CLIENT_FRAMES, FrameType

READY_WINDOW_S = 10.0
"""Ready while a store operation committed this recently."""
PROBE_INTERVAL_S = 2.0
"""How often the relay commits a probe (``noop``) when nothing else shows the store works."""
QUEUE_COUNT_INTERVAL_S = 15.0
"""How often the relay counts the envelopes queued (a scan of the queue's index, off
the event loop and off the writer): the gauge is at most this old."""

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1.0, 2.0, 5.0,
)  # fmt: skip
"""Seconds: from 50 µs (a stage on the event loop) through half a millisecond (an
unloaded commit) to seconds (a stalled store)."""

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

SEND_STAGES = ("loop", "store", "answer")
"""SEND → SENT, split where the time goes: ``loop`` — decoding and checks on the event
loop, up to handing the operation to the store; ``store`` — waiting for the store and its
commit; ``answer`` — SENT encoded and written to the connection."""

DECISION_STAGES = ("wait", "decide", "back")
"""A SEND decided before its commit (SQLite), from its handing to the store until the
decision is back on the event loop, where its DELIVER leaves: ``wait`` — until the
writer takes it up (the loop turn's end, the batch the writer is busy with, a core);
``decide`` — its batch running until the decisions are sent; ``back`` — the decisions'
way to the event loop and the loop's other work before them (issue 19: at half load on
the benchmark machine each was a share of the DELIVER's time, not one of them all of it)."""

DELIVER_PATHS = ("before_decision", "before_commit", "after_commit")
"""How a DELIVER to an online recipient left (SPEC §6.4): as soon as the store decided
its SEND, while the commit was in flight, or once the commit was answered (a back end
that answers only after it commits, PostgreSQL)."""


class Histogram:
    """Prometheus histogram buckets as a list of ints: one bisect and two additions per
    observation, no lock (the event loop is the only writer)."""

    __slots__ = ("bounds", "counts", "labels", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.labels = [repr(float(b)) for b in bounds]
        """The ``le`` of each bound, as prometheus_client writes them (``0.005``, ``1.0``)."""
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket, not cumulative; the last one is above every bound."""
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def exposed(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative buckets with ``+Inf``, sum), from a copy of the counts."""
        counts = list(self.counts)
        buckets: list[tuple[str, float]] = []
        running = 0
        for label, count in zip(self.labels, counts, strict=False):
            running += count
            buckets.append((label, running))
        buckets.append(("+Inf", running + counts[-1]))
        return buckets, self.total


class RelayMetrics:
    """Every metric of one relay process, and its readiness."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.frames_received = [0] * 256
        """By frame type (a u8, SPEC §2.2); only client frame types are exposed."""
        self.frames_sent = [0] * 256
        self.errors = [0] * 1000
        """ERROR frames sent, by code (three digits, SPEC §9)."""
        self.sends_committed = 0
        self.delivers = dict.fromkeys(DELIVER_PATHS, 0)
        self.delivers_paged = 0
        """DELIVERs read from the queue by a page (a login, a window that filled)."""
        self.redeliveries = 0
        self.in_flight = 0
        """DELIVERs pushed and not yet acknowledged, over every connection here."""
        self.queued: int | None = None
        """Envelopes in the store's queue, counted every ``QUEUE_COUNT_INTERVAL_S``."""
        self.stages = {s: Histogram(LATENCY_BUCKETS) for s in (*SEND_STAGES, "total")}
        self.deliver_latency = {p: Histogram(LATENCY_BUCKETS) for p in DELIVER_PATHS}
        self.decision_stages = {s: Histogram(LATENCY_BUCKETS) for s in DECISION_STAGES}
        self.store_round_trip = Histogram(LATENCY_BUCKETS)
        self.batch_operations = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.commit_seconds = Histogram(LATENCY_BUCKETS)
        self.connections: Callable[[], int] = lambda: 0
        self.authenticated: Callable[[], int] = lambda: 0
        self._last_commit = -1e18
        self._store_down: str | None = "not probed yet"
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # --- What the relay reports (on the event loop) -----------------------------------

    def frame(self, frame_type: int) -> None:
        self.frames_received[frame_type] += 1

    def frame_sent(self, frame_type: int) -> None:
        self.frames_sent[frame_type] += 1

    def error(self, code: int) -> None:
        """An ERROR frame with ``code`` was sent."""
        self.frames_sent[FrameType.ERROR] += 1
        if 0 <= code < 1000:
            self.errors[code] += 1

    def send_answered(self, received: float, handed: float, committed: float) -> None:
        """A SEND's SENT was written now; the times it was received, handed to the store
        and answered by it (this clock's)."""
        now = self._clock()
        stages = self.stages
        stages["loop"].observe(handed - received)
        stages["store"].observe(committed - handed)
        stages["answer"].observe(now - committed)
        stages["total"].observe(now - received)
        self.sends_committed += 1
        self.frames_sent[FrameType.SENT] += 1

    def delivered(
        self, received: float | None, before_commit: bool, before_decision: bool = False
    ) -> None:
        """A DELIVER of a SEND this relay received at ``received`` was pushed now
        (None: read by a page, its SEND's time unknown here); ``before_decision``: under
        a delivery lease (SPEC §6.4.6), ``before_commit`` otherwise once decided."""
        self.in_flight += 1
        self.frames_sent[FrameType.DELIVER] += 1
        if received is None:
            self.delivers_paged += 1
            return
        path = (
            "before_decision" if before_decision
            else "before_commit" if before_commit else "after_commit"
        )  # fmt: skip
        self.delivers[path] += 1
        self.deliver_latency[path].observe(self._clock() - received)

    def acknowledged(self, count: int) -> None:
        self.in_flight -= count

    def connection_lost(self, unacknowledged: int) -> None:
        """A connection closed with DELIVERs unacknowledged: each is delivered again at
        the account's next login (SPEC §6.5)."""
        self.in_flight -= unacknowledged
        self.redeliveries += unacknowledged

    def decided(self, wait_s: float, decide_s: float, back_s: float) -> None:
        """A SEND's decision reached the loop before its commit (``Store.on_decided``)."""
        stages = self.decision_stages
        stages["wait"].observe(wait_s)
        stages["decide"].observe(decide_s)
        stages["back"].observe(back_s)

    def committed(self, round_trip_s: float | None = None) -> None:
        """A store operation committed: the store is up."""
        self._last_commit = self._clock()
        self._store_down = None
        if round_trip_s is not None:
            self.store_round_trip.observe(round_trip_s)

    def batch_committed(self, operations: int, batch_s: float, commit_s: float) -> None:
        """A group-committed batch (``Store.on_batch``): the store is up, too."""
        self.batch_operations.observe(operations)
        self.batch_seconds.observe(batch_s)
        self.commit_seconds.observe(commit_s)
        self._last_commit = self._clock()
        self._store_down = None

    def store_failed(self, reason: str) -> None:
        self._store_down = reason

    def ready(self) -> tuple[bool, str]:
        """(ready, why): what ``/readyz`` answers."""
        if self._store_down is not None:
            return False, f"store: {self._store_down}"
        age = self._clock() - self._last_commit
        if age > READY_WINDOW_S:
            return False, f"no store commit for {age:.0f} s"
        return True, "ready"

    def now(self) -> float:
        return self._clock()


_REFUSAL_CLASSES = {
    1: "request", 2: "auth", 3: "prekeys", 4: "delivery", 5: "statement", 6: "business",
    9: "relay",
}  # fmt: skip
"""The hundreds of an error code → its class (SPEC §9)."""

_CODES = tuple(sorted(int(c) for c in ErrorCode))
_CLIENT_TYPES = tuple(sorted(CLIENT_FRAMES))
_RELAY_TYPES = tuple(sorted(t for t in FrameType if t not in CLIENT_FRAMES))


class _Collector(Collector):
    """Families made at scrape time from the relay's ints (module docstring)."""

    def __init__(self, m: RelayMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _by_type(
            "blindrelay_frames_received", "Frames received from clients, by type",
            m.frames_received, _CLIENT_TYPES,
        )  # fmt: skip
        yield _by_type(
            "blindrelay_frames_sent", "Frames sent to clients, by type", m.frames_sent,
            _RELAY_TYPES,
        )  # fmt: skip
        errors = list(m.errors)
        family = CounterMetricFamily(
            "blindrelay_errors_sent", "ERROR frames sent, by code (SPEC §9)", labels=["code"]
        )
        for code in _CODES:
            family.add_metric([str(code)], errors[code])
        yield family
        classes: dict[str, int] = dict.fromkeys((*_REFUSAL_CLASSES.values(), "other"), 0)
        for code, count in enumerate(errors):
            if count:
                classes[_REFUSAL_CLASSES.get(code // 100, "other")] += count
        family = CounterMetricFamily(
            "blindrelay_refusals", "Refusals by class of their code: request (1xx), auth "
            "(2xx), delivery (4xx), relay (9xx) …", labels=["class"],
        )  # fmt: skip
        for name, count in classes.items():
            family.add_metric([name], count)
        yield family
        yield CounterMetricFamily(
            "blindrelay_rate_limited", "Requests refused with 402 RATE_LIMITED",
            value=errors[int(ErrorCode.RATE_LIMITED)],
        )  # fmt: skip
        yield CounterMetricFamily(
            "blindrelay_sends_committed", "SENDs answered with SENT (new and resent)",
            value=m.sends_committed,
        )  # fmt: skip
        family = CounterMetricFamily(
            "blindrelay_delivers_pushed", "DELIVER frames pushed to a connection: a SEND's "
            "to its online recipient (before or after its commit), or read by a page",
            labels=["path"],
        )  # fmt: skip
        for path, count in m.delivers.items():
            family.add_metric([path], count)
        family.add_metric(["paged"], m.delivers_paged)
        yield family
        yield CounterMetricFamily(
            "blindrelay_redeliveries", "DELIVERs left unacknowledged when their connection "
            "closed: each is delivered again at the next login", value=m.redeliveries,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "blindrelay_deliveries_in_flight", "DELIVERs pushed and not acknowledged yet",
            value=m.in_flight,
        )  # fmt: skip
        if m.queued is not None:
            yield GaugeMetricFamily(
                "blindrelay_envelopes_queued", "Envelopes in the store's queue, every "
                "recipient's (counted every 15 s; with PostgreSQL, every worker's)",
                value=m.queued,
            )  # fmt: skip
        histograms = HistogramMetricFamily(
            "blindrelay_send_seconds", "SEND received to SENT written, by stage "
            "(loop, store, answer) and in total", labels=["stage"],
        )  # fmt: skip
        for stage, histogram in m.stages.items():
            histograms.add_metric([stage], *histogram.exposed())
        yield histograms
        histograms = HistogramMetricFamily(
            "blindrelay_deliver_seconds", "SEND received to DELIVER written to its online "
            "recipient, by path (before_decision, before_commit, after_commit)", labels=["path"],
        )  # fmt: skip
        for path, histogram in m.deliver_latency.items():
            histograms.add_metric([path], *histogram.exposed())
        yield histograms
        histograms = HistogramMetricFamily(
            "blindrelay_decision_seconds", "SEND handed to the store until its decision "
            "is back on the event loop, before its commit (SQLite), by stage (wait, "
            "decide, back)", labels=["stage"],
        )  # fmt: skip
        for stage, histogram in m.decision_stages.items():
            histograms.add_metric([stage], *histogram.exposed())
        yield histograms
        yield _histogram(
            "blindrelay_store_round_trip_seconds", "A store operation from submission to "
            "its committed answer (the readiness probe's)", m.store_round_trip,
        )  # fmt: skip
        yield _histogram(
            "blindrelay_commit_batch_operations", "Store operations committed together in "
            "one transaction (the group commit)", m.batch_operations,
        )  # fmt: skip
        yield _histogram(
            "blindrelay_commit_batch_seconds", "One group-committed batch: its operations "
            "and its COMMIT", m.batch_seconds,
        )  # fmt: skip
        yield _histogram(
            "blindrelay_commit_seconds", "The COMMIT of a batch (the fsync, with SQLite's "
            "synchronous=FULL)", m.commit_seconds,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "blindrelay_connections", "WebSocket connections open", value=m.connections()
        )
        yield GaugeMetricFamily(
            "blindrelay_connections_authenticated", "Accounts with a live session here",
            value=m.authenticated(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "blindrelay_store_ready", "1 while the store commits (what /readyz says)",
            value=1.0 if m.ready()[0] else 0.0,
        )  # fmt: skip


def _by_type(name: str, doc: str, counts: list[int], types: Iterable[FrameType]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=["type"])
    counts = list(counts)
    for frame_type in types:
        family.add_metric([frame_type.name], counts[frame_type])
    return family


def _histogram(name: str, doc: str, histogram: Histogram) -> Metric:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], *histogram.exposed())
    return family
# --- The listener -------------------------------------------------------------------

REQUEST_TIMEOUT_S = 5.0
"""How long the listener waits for each read of a request before dropping the connection."""

MAX_CONNECTIONS = 32
"""Connections the listener serves at once: scrapers and probes need a few."""


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: the relay's log is JSON lines, and a scrape is no event.
    Each read of the request waits :data:`REQUEST_TIMEOUT_S` at most."""

    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Threaded(ThreadingMixIn, WSGIServer):
    """A thread per connection, so that one slow or idle client (half a request, never
    finished) holds up no probe; at most :data:`MAX_CONNECTIONS` at once, the rest
    closed unanswered."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on their own address, in threads of
    their own (:class:`_Threaded`)."""

    def __init__(
        self,
        metrics: RelayMetrics,
        host: str,
        port: int,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        """``request_timeout_s``: each read of a request waits this long at most (tests
        shorten it to see the deadline without waiting out the default)."""
        exposition = make_wsgi_app(metrics.registry)
        handler = type("_Handler", (_Quiet,), {"timeout": request_timeout_s})

        def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return exposition(environ, start)  # type: ignore[no-any-return]
            if path == "/healthz":
                return _answer(start, "200 OK", "ok\n")
            if path == "/readyz":
                ready, why = metrics.ready()
                return _answer(start, "200 OK" if ready else "503 Service Unavailable", why + "\n")
            return _answer(start, "404 Not Found", "try /healthz, /readyz or /metrics\n")

        self._server: WSGIServer = make_server(
            host, port, app, server_class=_Threaded, handler_class=handler
        )
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _answer(start: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = text.encode()
    start(status, [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body)))])  # fmt: skip
    return [body]


def parse_listen(value: str) -> tuple[str, int] | None:
    """``--metrics-listen``: ``PORT`` or ``HOST:PORT`` (host: loopback when left out), or
    ``off``/empty for none; ValueError (one line) otherwise."""
    value = value.strip()
    if value in ("", "off"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("metrics_listen must be PORT or HOST:PORT (port 0-65535), or off")
    return host, int(port)
