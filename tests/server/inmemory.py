"""The relay's handlers' world in memory: a context, sessions, a transport, a store.

For the unit tests of what sits between the socket and the handlers
(test_dispatch.py, test_context.py): no sockets, no event loop, no database.
The transport records what the session asked of it; the store records each
call and read and answers only when the test says so, so every callback runs
at a moment the test chose.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import codec
from blindrelay.protocol import frames as f
from blindrelay.server.config import RelayConfig
from blindrelay.server.context import RelayContext, Session
from blindrelay.server.limiters import Limiters
from blindrelay.server.logs import JsonFormatter
from blindrelay.server.registration import RegistrationPolicy
from blindrelay.server.store import Done

from ..protocol.pair import Pair
from ..relays import FakeClock


@dataclass
class RecordingTransport:
    """A :class:`~blindrelay.server.context.Transport` that remembers every request."""

    flushes: int = 0
    written: list[bytes] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    """Reasons holding the connection's frames now, in the order they were taken."""
    holds: int = 0
    """How many times a hold was taken, ever."""
    congested: bool = False
    """Over its outgoing bound (SPEC §1.2.4): never, here."""

    def flush(self) -> None:
        self.flushes += 1

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def hold(self, reason: str) -> None:
        self.held.append(reason)
        self.holds += 1

    def release(self, reason: str) -> None:
        self.held.remove(reason)


@dataclass
class Asked:
    """One call or read the store was asked for, answered when the test says so."""

    name: str
    args: tuple[Any, ...]
    done: Done

    def answer(self, value: Any = None) -> None:
        self.done(True, value)

    def fail(self, exc: BaseException) -> None:
        self.done(False, exc)


class ScriptedStore:
    """The parts of :class:`~blindrelay.server.store.Store` the context uses.

    With ``reads_at_once`` a read is answered before ``read`` returns, from
    ``values`` (as the SQLite store reads on the loop); otherwise it waits in
    ``asked`` like every operation (as a store whose reads are a round trip).
    """

    def __init__(self, *, reads_at_once: bool = False) -> None:
        self.running = True
        self.reads_at_once = reads_at_once
        self.values: dict[str, Any] = {}
        self.asked: list[Asked] = []

    def call(
        self,
        operation: str,
        args: tuple[Any, ...] | list[Any],
        done: Done,
        decided: Callable[[Any], None] | None = None,
    ) -> None:
        """Answered when the test says, after "its commit": never decided earlier."""
        self.asked.append(Asked(operation, tuple(args), done))

    def read(self, name: str, args: tuple[Any, ...] | list[Any], done: Done) -> None:
        if self.reads_at_once:
            done(True, self.values[name])
        else:
            self.asked.append(Asked(name, tuple(args), done))

    def take(self) -> Asked:
        """The oldest unanswered request."""
        return self.asked.pop(0)


def relay_context(store: ScriptedStore | None = None) -> RelayContext:
    config = RelayConfig()
    clock = FakeClock()
    return RelayContext(
        config=config,
        clock=clock,
        relay_key=bytes(SigningKey(b"\x01" * 32).verify_key),
        store=store or ScriptedStore(),  # type: ignore[arg-type]
        limiters=Limiters.from_config(config, clock),
        registration=RegistrationPolicy(config, clock),
    )


@dataclass
class Connected:
    """A session over one end of a :class:`Pair` and the transport it talks to."""

    pair: Pair
    session: Session
    transport: RecordingTransport

    def sent(self) -> list[f.Frame]:
        """The frames the relay's machine queued since the last call."""
        return [codec.decode(data) for data in self.pair.relay.data_to_send()]


def connected(pair: Pair, login_seq: int = 0) -> Connected:
    pair.relay.data_to_send()  # HELLO and WELCOME went out already (Pair.flush)
    transport = RecordingTransport()
    session = Session(pair.relay, transport, peer="127.0.0.1:50000", clock=FakeClock())
    session.login_seq = login_seq
    return Connected(pair, session, transport)


def log_lines(caplog: pytest.LogCaptureFixture) -> Iterator[dict[str, Any]]:
    """The captured records as the relay writes them (one JSON object per line)."""
    for record in caplog.records:
        yield json.loads(JsonFormatter().format(record))
