"""What the scale-out tests run: relay workers as processes, a load balancer, SDK parties.

- :class:`Worker` — one ``blindrelay serve`` process on a store URL (the CLI, nothing
  imported from ``server``), started, SIGKILLed and started again.
- :class:`Balancer` — a TCP load balancer in the test process, like the one in front
  of a deployment (docs/operations.md): one listening port per *home* worker; a
  connection goes to its home worker, or to another live one while its home is down
  (the SDK reconnects to one URL, so the balancer decides where that lands). After a
  worker is back, :meth:`Balancer.rebalance` drops the connections that failed over, so
  the parties of every conversation sit on different workers again. It counts every
  connection by (home, worker): the proof of where clients were served.
- :class:`Party` — an SDK :class:`~blindrelay.client.sdk.Client` with a wire tap
  (``client.transport.tapped``) counting what crossed its socket: DELIVERs as they
  arrived (duplicates included), SEND frames (resends included) and ERROR codes.

Every wait is for a condition (a line, a process exit, a connection count), bounded
by a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from blindrelay.client.sdk import Backoff, Client
from blindrelay.client.transport import tapped
from blindrelay.protocol.codec import decode
from blindrelay.protocol.errors import ProtocolError
from blindrelay.protocol.frames import Deliver, Error, Send, Sent

START_TIMEOUT_S = 20.0
"""A worker's start: interpreter, imports, store connection and schema check, on a
loaded 2-core machine."""
UNLIMITED = "1000000000"
LOAD_FLAGS = [
    "--log-level", "WARNING",
    "--register-burst", UNLIMITED, "--register-rate-per-h", UNLIMITED,
    "--max-unauthenticated-per-source", UNLIMITED,
    "--connections-per-s-source", UNLIMITED, "--connections-burst-source", UNLIMITED,
    "--send-rate-user", UNLIMITED, "--send-burst-user", UNLIMITED,
    "--send-rate-pair", UNLIMITED, "--send-burst-pair", UNLIMITED,
    "--message-request-max", UNLIMITED,
    "--first-contacts-burst", UNLIMITED, "--first-contacts-per-h", UNLIMITED,
    "--queue-share-strangers", UNLIMITED, "--queue-share-per-sender", UNLIMITED,
    "--bundle-burst", UNLIMITED, "--bundle-rate-per-min", UNLIMITED,
    "--one-time-prekey-burst", UNLIMITED, "--one-time-prekey-rate-per-h", UNLIMITED,
    "--prekeys-upload-burst", UNLIMITED, "--prekeys-upload-rate-per-min", UNLIMITED,
]  # fmt: skip
"""Budgets out of the way of a load test: every party is on 127.0.0.1, senders write to
strangers (message requests) as fast as they can, and nothing here tests a limit."""
SDK_BACKOFF = Backoff(initial=0.05, factor=2.0, cap=0.5)
"""Reconnect quickly: the balancer sends a reconnect to a live worker at once."""

_LISTENING = re.compile(rb"listening (ws://127\.0\.0\.1:(\d+))")


# --- conditions -----------------------------------------------------------------


class Changes:
    """Wake waiters whose condition may have become true (called after every change)."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def changed(self) -> None:
        still = []
        for condition, future in self._waiters:
            if future.done():
                continue
            if condition():
                future.set_result(None)
            else:
                still.append((condition, future))
        self._waiters = still

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Return once ``condition()`` holds; AssertionError naming ``what`` after the timeout."""
        if condition():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise AssertionError(f"not within {timeout_s} s: {what}") from None


# --- relay workers ----------------------------------------------------------------


class Worker:
    """``blindrelay serve --store URL --port 0`` as a child process."""

    def __init__(self, name: str, store_url: str, log: Path, flags: list[str]) -> None:
        self.name = name
        self.store_url = store_url
        self.log = log
        self.flags = flags
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.exit_status: int | None = None
        """How the last process ended when stopped with SIGTERM (0: a clean shutdown)."""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "blindrelay.server.cli", "serve",
                "--host", "127.0.0.1", "--port", "0", "--store", self.store_url, *self.flags,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    line = await self.proc.stdout.readline()
                    assert line, f"{self.name} exited before listening:\n{self.log_tail()}"
                    if match := _LISTENING.search(line):
                        break
        except TimeoutError:
            raise AssertionError(f"{self.name} not listening:\n{self.log_tail()}") from None
        self.port = int(match.group(2))

    def kill(self) -> None:
        """SIGKILL now: no shutdown code runs, connections are cut by the kernel."""
        assert self.proc is not None and self.running, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)

    async def reap(self) -> None:
        assert self.proc is not None
        status = await asyncio.wait_for(self.proc.wait(), START_TIMEOUT_S)
        assert status == -signal.SIGKILL, f"{self.name} exited with {status} before the kill"

    async def stop(self) -> None:
        """SIGTERM (the relay's clean shutdown), SIGKILL if it hangs."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_status = await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def workers(
    store_url: str, logs: Path, count: int, flags: list[str]
) -> AsyncIterator[list[Worker]]:
    """``count`` workers on one store, stopped (SIGTERM) at the end.

    Started one after the other: on a fresh database two first starts at once race to
    create the relay key, which the PostgreSQL store did not survive when this was
    written (create_relay_seed's statement could see neither row); not what these
    tests are about."""
    started = [Worker(f"worker {n}", store_url, logs / f"worker{n}.log", flags)
               for n in range(count)]  # fmt: skip
    try:
        for worker in started:
            await worker.start()
        yield started
    finally:
        await asyncio.gather(*(w.stop() for w in started), return_exceptions=True)


# --- the load balancer ------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One TCP end of a proxied connection; what it reads goes out of the other end."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    def pause_writing(self) -> None:  # the other end reads no faster than this one writes
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _ClientSide(_Side):
    """The client's end: reads nothing until the balancer has connected a worker."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self.link.balancer.connect(self.link))


class _Link:
    """A client connection and the worker connection it was given."""

    def __init__(self, balancer: Balancer, home: int) -> None:
        self.balancer = balancer
        self.home = home
        self.worker: int | None = None
        self.client: _Side = _ClientSide(self)
        self.backend = _Side(self)
        self.closed = False

    def close(self, *, abort: bool = False) -> None:
        """Close both ends (flushing what was read, unless ``abort``): when one end goes,
        the other goes too, as with a TCP load balancer."""
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.backend):
            if side.transport is not None:
                side.transport.abort() if abort else side.transport.close()
        self.balancer.link_closed(self)


class Balancer:
    """A TCP load balancer: one port per home worker, failing over to a live worker."""

    def __init__(self, backends: list[int | None]) -> None:
        self.backends = backends
        """Each worker's port, None while it is down (what a health check would say)."""
        self.ports: list[int] = []
        self.links: set[_Link] = set()
        self.connections: Counter[tuple[int, int]] = Counter()
        """Connections made, by (home, worker that served it)."""
        self.changes = Changes()
        self._servers: list[asyncio.Server] = []

    def url(self, home: int) -> str:
        return f"ws://127.0.0.1:{self.ports[home]}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for home in range(len(self.backends)):
            server = await loop.create_server(
                functools.partial(self._accepted, home), "127.0.0.1", 0
            )
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for link in list(self.links):
            link.close(abort=True)
        for server in self._servers:
            await server.wait_closed()

    def _accepted(self, home: int) -> _Side:
        return _Link(self, home).client

    async def connect(self, link: _Link) -> None:
        """Give ``link`` a worker: its home if up, else the next one up."""
        order = [link.home] + [w for w in range(len(self.backends)) if w != link.home]
        loop = asyncio.get_running_loop()
        for worker in order:
            port = self.backends[worker]
            if port is None or link.closed:
                continue
            try:
                await loop.create_connection(lambda: link.backend, "127.0.0.1", port)
            except OSError:
                continue  # died since the health check: the next one
            if link.closed:  # the client left meanwhile
                assert link.backend.transport is not None
                link.backend.transport.abort()
                return
            link.client.other, link.backend.other = link.backend, link.client
            link.worker = worker
            self.links.add(link)
            self.connections[(link.home, worker)] += 1
            assert link.client.transport is not None
            link.client.transport.resume_reading()
            self.changes.changed()
            return
        link.close(abort=True)  # no worker up: the client retries with backoff

    def link_closed(self, link: _Link) -> None:
        self.links.discard(link)
        self.changes.changed()

    def set_backend(self, worker: int, port: int | None) -> None:
        self.backends[worker] = port

    def live(self, worker: int, home: int | None = None) -> int:
        """Open connections served by ``worker`` (of clients of ``home``, if given)."""
        return sum(1 for link in self.links if link.worker == worker and home in (None, link.home))

    def rebalance(self, worker: int) -> int:
        """Drop the connections of ``worker``'s clients that another worker serves, so they
        reconnect home; how many were dropped."""
        away = [link for link in self.links if link.home == worker and link.worker != worker]
        for link in away:
            link.close(abort=True)
        return len(away)


# --- SDK parties -------------------------------------------------------------------


@dataclass
class Wire:
    """What crossed one client's socket (all its connections), decoded."""

    delivered: Counter[tuple[str, bytes]] = field(default_factory=Counter)
    """DELIVERs by (sender, msg_id), as many as arrived: redeliveries included."""
    sends: Counter[bytes] = field(default_factory=Counter)
    """SEND frames by msg_id, resends included."""
    sent: set[bytes] = field(default_factory=set)
    """msg_ids the relay answered SENT."""
    errors: Counter[int] = field(default_factory=Counter)
    error_times: list[tuple[float, int]] = field(default_factory=list)
    """(time.monotonic(), code) of every ERROR, for outage windows."""

    def tap(self, direction: str, data: bytes) -> None:
        try:
            frame = decode(data)
        except ProtocolError:
            return  # the SDK itself refuses it; nothing to count
        if direction == "out":
            if isinstance(frame, Send):
                self.sends[frame.msg_id] += 1
        elif isinstance(frame, Deliver):
            self.delivered[(frame.sender, frame.msg_id)] += 1
        elif isinstance(frame, Sent):
            self.sent.add(frame.msg_id)
        elif isinstance(frame, Error):
            self.errors[frame.code] += 1
            self.error_times.append((time.monotonic(), frame.code))


class Party:
    """An SDK client with an in-memory keystore, its socket tapped (:class:`Wire`)."""

    def __init__(self, handle: str, url: str) -> None:
        self.handle = handle
        self.url = url
        self.wire = Wire()
        self.client = Client.open(
            None, backoff=SDK_BACKOFF, auto_delivered_receipts=False,
            open_transport=tapped(self.wire.tap),  # its reconnections too
        )  # fmt: skip
        self.received: Counter[tuple[str, bytes]] = Counter()
        """What the application saw (``Client.messages``), by (sender, msg_id)."""
        self.bodies: dict[tuple[str, bytes], str] = {}
        self.order: dict[str, list[int]] = {}
        """Per sender, the sequence numbers in the order the application saw them."""
        self._reader: asyncio.Task[None] | None = None

    async def register(self) -> None:
        await self.client.connect(self.url)
        await self.client.register(self.handle)

    def read(self, changes: Changes) -> None:
        """Consume ``Client.messages`` in the background, noting each message."""

        async def reader() -> None:
            async for message in self.client.messages():
                key = (message.sender, message.msg_id)
                self.received[key] += 1
                assert isinstance(message.body, str), message
                self.bodies[key] = message.body
                self.order.setdefault(message.sender, []).append(int(message.body.split(":")[1]))
                changes.changed()

        self._reader = asyncio.create_task(reader())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.client.close()


def body(sender: str, seq: int) -> str:
    """A message's text: who sent it and its place in that sender's stream."""
    return f"{sender}:{seq}"


@contextlib.contextmanager
def timed(laps: dict[str, float], name: str) -> Iterator[None]:
    """Record the block's wall time in seconds as ``laps[name]`` (for the report line)."""
    started = time.monotonic()
    try:
        yield
    finally:
        laps[name] = round(time.monotonic() - started, 2)
