"""Connections not yet logged in, bounded per source address (SPEC §1.2.2).

A connection that has not authenticated costs the relay its socket, its Noise and
WebSocket state and a timer, for up to ``AUTH_TIMEOUT_S`` (120 s with proof of work),
and proves nothing about its sender; one address could open them until the process
runs out of descriptors and nobody else can connect. So the relay counts them per
*source* — the IPv4 address or IPv6 /64 of SPEC §4.6.1 — and refuses the upgrade of
one more past ``max_unauthenticated_per_source`` with HTTP 503. Logged-in connections
are not counted: they are one per account (SPEC §1.2.3), and many people share an
address behind a carrier's NAT.

Counting is lazy: a connection is added when it opens and forgotten when it closes;
those that logged in meanwhile are dropped from their source's set when the next
connection from that source is admitted, so each is looked at once after its login.

Not here: how an address becomes a source (``registration.source_key``), the
authentication timeout (``dispatch``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from blindrelay.protocol.errors import RateLimited

from .logs import log_event
from .ratelimit import TokenBuckets
from .registration import source_key

SourceOf = Callable[[ServerConnection], str]
"""A connection's source (SPEC §4.6.1); tests name their own."""


def peer_source(ws: ServerConnection) -> str:
    """A connection's source: its peer's address, IPv6 by /64 (SPEC §4.6.1).

    Behind a reverse proxy every peer is the proxy, and the limits per source then
    count everyone together: raise them, or let the relay see the clients' addresses.
    """
    peer = ws.remote_address
    return source_key(str(peer[0])) if peer else "?"


class Waiting(Protocol):
    """What admission needs of a connection (``context.Session``)."""

    source: str

    @property
    def handle(self) -> str | None: ...

    @property
    def open(self) -> bool: ...


class Admission:
    """The unauthenticated connections of each source, and whether one more may open;
    and, with ``rate``, how fast a source may open them at all."""

    def __init__(self, limit: int, rate: TokenBuckets | None = None) -> None:
        self.limit = limit
        self.rate = rate
        """New connections per source (``connections_per_s_source``): each costs the
        relay about a millisecond of its loop, whether it ever logs in or not."""
        self.refused = 0
        """Upgrades refused since start (for tests and the log)."""
        self._waiting: dict[str, set[Waiting]] = {}

    def admits(self, source: str) -> bool:
        """Whether a new connection from ``source`` may open; counted as refused if not."""
        waiting = self._waiting.get(source)
        if waiting is None:
            return True
        done = {c for c in waiting if c.handle is not None or not c.open}
        waiting -= done
        if not waiting:
            del self._waiting[source]
            return True
        if len(waiting) < self.limit:
            return True
        self.refused += 1
        return False

    def refusal(self, ws: ServerConnection, source: str) -> Response | None:
        """websockets' ``process_request``: None to go on with the upgrade; else 429 with
        Retry-After past the source's rate, 503 past its connections not logged in (SPEC
        §1.2.2), logged once per thousand refusals (an attack must not flood the log)."""
        if self.rate is not None:
            try:
                self.rate.take(source)
            except RateLimited as limited:
                self.refused += 1
                self._refused("connections_per_source")
                response = ws.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many connections\n")
                seconds = max(1, math.ceil(limited.retry_after_ms / 1000))
                response.headers["Retry-After"] = str(seconds)
                return response
        if self.admits(source):
            return None
        self._refused("unauthenticated_per_source")
        return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections not logged in\n")

    def _refused(self, reason: str) -> None:
        if self.refused % 1000 == 1:
            log_event(logging.WARNING, "connections_refused", reason=reason, refused=self.refused)

    def opened(self, connection: Waiting) -> None:
        self._waiting.setdefault(connection.source, set()).add(connection)

    def closed(self, connection: Waiting) -> None:
        waiting = self._waiting.get(connection.source)
        if waiting is not None:
            waiting.discard(connection)
            if not waiting:
                del self._waiting[connection.source]

    def waiting(self, source: str) -> int:
        """Connections from ``source`` counted now (logged-in ones may linger until the
        next admission from it)."""
        return len(self._waiting.get(source, ()))
