"""Health and Prometheus metrics on a listener of their own (issue 19): ``/healthz``,
``/readyz`` and ``/metrics``, none of them on the public WebSocket port.

What is measured never identifies anyone: no handle, message id, address or account
appears in a metric or a label, and every label set is bounded (frame types, error
codes, SEND stages). Metrics are made with prometheus_client — the text format,
counters, histograms and the exposition are that library's — in a registry per relay
(tests run many relays in one process).

Readiness is the store's: a store operation committed within ``READY_WINDOW_S`` (the
relay probes with one every ``PROBE_INTERVAL_S``), and no outage reported since. During
a store outage ``/readyz`` answers 503 with the reason, while ``/healthz`` (the process
answers) stays 200.

The listener is wsgiref's in a daemon thread (prometheus_client's own exposition is a
WSGI app); it reads the relay's state through values the event loop writes and the
collectors' callbacks, each a read of an int.

Not here: where the values come from (the handlers, ``relay``), what each means for an
operator (docs/operations.md, "Health and metrics").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import CLIENT_FRAMES, FrameType

READY_WINDOW_S = 10.0
"""Ready while a store operation committed this recently."""
PROBE_INTERVAL_S = 2.0
"""How often the relay commits a probe (``noop``) when nothing else shows the store works."""

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1.0, 2.0, 5.0,
)  # fmt: skip
"""Seconds: from 50 µs (a stage on the event loop) through half a millisecond (an
unloaded commit) to seconds (a stalled store)."""

SEND_STAGES = ("loop", "store", "answer")
"""SEND → SENT, split where the time goes: ``loop`` — decoding and checks on the event
loop, up to handing the operation to the store; ``store`` — waiting for the store and its
commit; ``answer`` — SENT encoded and written to the connection."""


class RelayMetrics:
    """Every metric of one relay process, and its readiness."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.frames = Counter(
            "blindrelay_frames_received", "Frames received from clients, by type",
            ["type"], registry=registry,
        )  # fmt: skip
        self._frames = {t: self.frames.labels(t.name) for t in CLIENT_FRAMES}
        self.errors = Counter(
            "blindrelay_errors_sent", "ERROR frames sent, by code (SPEC §9)", ["code"],
            registry=registry,
        )  # fmt: skip
        self._errors = {int(c): self.errors.labels(str(int(c))) for c in ErrorCode}
        self.refusals = Counter(
            "blindrelay_refusals", "Refusals by class of their code: request (1xx), auth "
            "(2xx), delivery (4xx), store (9xx) …", ["class"], registry=registry,
        )  # fmt: skip
        self.rate_limited = Counter(
            "blindrelay_rate_limited", "Requests refused with 402 RATE_LIMITED", registry=registry
        )
        self.sent = Counter(
            "blindrelay_sends_committed", "SENDs answered with SENT (new and resent)",
            registry=registry,
        )  # fmt: skip
        self.delivered = Counter(
            "blindrelay_delivers_pushed", "DELIVER frames pushed to a connection",
            registry=registry,
        )  # fmt: skip
        self.send_latency = Histogram(
            "blindrelay_send_seconds", "SEND received to SENT written, by stage "
            "(loop, store, answer) and in total", ["stage"], buckets=LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self._stages = {s: self.send_latency.labels(s) for s in (*SEND_STAGES, "total")}
        self.store_round_trip = Histogram(
            "blindrelay_store_round_trip_seconds", "A store operation from submission to its "
            "committed answer (the readiness probe's)", buckets=LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_operations = Histogram(
            "blindrelay_commit_batch_operations", "Store operations committed together in "
            "one transaction (the group commit)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "blindrelay_commit_batch_seconds", "One group-committed batch: its operations and "
            "its COMMIT", buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "blindrelay_commit_seconds", "The COMMIT of a batch (the fsync, with SQLite's "
            "synchronous=FULL)", buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.connections = Gauge(
            "blindrelay_connections", "WebSocket connections open", registry=registry
        )
        self.authenticated = Gauge(
            "blindrelay_connections_authenticated", "Accounts with a live session here",
            registry=registry,
        )  # fmt: skip
        self.store_up = Gauge(
            "blindrelay_store_ready", "1 while the store commits (what /readyz says)",
            registry=registry,
        )  # fmt: skip
        self.store_up.set_function(lambda: 1.0 if self.ready()[0] else 0.0)
        self._last_commit = -1e18
        self._store_down: str | None = "not probed yet"

    # --- What the relay reports -----------------------------------------------------

    def frame(self, frame_type: FrameType) -> None:
        child = self._frames.get(frame_type)
        if child is not None:
            child.inc()

    def error(self, code: int) -> None:
        child = self._errors.get(code)
        if child is not None:
            child.inc()
        self.refusals.labels(_refusal_class(code)).inc()
        if code == ErrorCode.RATE_LIMITED:
            self.rate_limited.inc()

    def send_answered(self, received: float, handed: float, committed: float) -> None:
        """A SEND's SENT was written now; the times it was received, handed to the store
        and answered by it (this clock's)."""
        now = self._clock()
        stages = self._stages
        stages["loop"].observe(handed - received)
        stages["store"].observe(committed - handed)
        stages["answer"].observe(now - committed)
        stages["total"].observe(now - received)
        self.sent.inc()

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
        self.committed()

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


def _refusal_class(code: int) -> str:
    return _REFUSAL_CLASSES.get(code // 100, "other")


# --- The listener -------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: the relay's log is JSON lines, and a scrape is no event."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on their own address, in a thread."""

    def __init__(self, metrics: RelayMetrics, host: str, port: int) -> None:
        exposition = make_wsgi_app(metrics.registry)

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

        self._server: WSGIServer = make_server(host, port, app, handler_class=_Quiet)
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
