"""The relay's I/O: the only module that imports websockets (SPEC §1).

It accepts WebSocket connections speaking the ``blindrelay.v1`` subprotocol
(anything else is refused at the handshake), feeds each binary message to the
session's sans-I/O machine through the :class:`Dispatcher`, and writes out
what the machine queued. One pump task per connection does all writing, so
handlers and writer callbacks never await. Compression is off (ciphertext
does not compress; see /work/shared/notes.md), ``max_size`` is the frame cap
(websockets closes bigger messages with 1009), keep-alive comes from the
limits table.

:func:`serve` runs a relay in the current event loop and returns a
:class:`RunningRelay` with its URL, so tests and the CLI start it the same way.

Not here: protocol rules (everything else in ``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from nacl.signing import SigningKey
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import ConnectionClosed

from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.connection import RelayConnection, State

from .config import RelayConfig
from .context import Limiters, RelayContext, Session
from .dispatch import Dispatcher
from .logs import log_event
from .ratelimit import Clock
from .storage import Accounts, connect_reader
from .writer import Writer

Rng = Callable[[int], bytes]

CLOSE_POLICY = 1008


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _WebSocketTransport:
    """A session's writing side: one task sends queued frames in order, then closes."""

    def __init__(self, ws: ServerConnection, conn: RelayConnection) -> None:
        self._ws = ws
        self._conn = conn
        self._wake = asyncio.Event()
        self.closing: tuple[int, str] | None = None

    def flush(self) -> None:
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
        self._wake.set()

    async def pump(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                for data in self._conn.data_to_send():
                    await self._ws.send(data)
                if self.closing is None and self._conn.state is State.CLOSED:
                    self.closing = (CLOSE_POLICY, "protocol error")
                if self.closing is not None:
                    await self._ws.close(*self.closing)
                    return
        except ConnectionClosed:
            return


class RunningRelay:
    """A relay serving in this event loop; ``await close()`` stops it cleanly."""

    def __init__(
        self, config: RelayConfig, ctx: RelayContext, rng: Rng, reader_close: Callable[[], None]
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.relay_key = ctx.relay_key
        self.dispatcher = Dispatcher(ctx)
        self._rng = rng
        self._reader_close = reader_close
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._purger: asyncio.Task[None] | None = None
        self.url = ""

    async def _listen(self) -> None:
        self._server = await websockets_serve(
            self._connection,
            self.config.host,
            self.config.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,
            max_size=limits.MAX_FRAME_BYTES,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            server_header=None,
        )
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self.url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
        self._purger = asyncio.create_task(self._purge_periodically())

    async def _connection(self, ws: ServerConnection) -> None:
        # "The relay MUST refuse a handshake without the blindrelay.v1 subprotocol":
        # websockets answers 400 when no offered subprotocol matches ours.
        conn = RelayConnection(self.relay_key, self.ctx.clock(), self._rng)
        transport = _WebSocketTransport(ws, conn)
        peer = ws.remote_address
        session = Session(conn, transport, peer=f"{peer[0]}:{peer[1]}" if peer else "?")
        self._sessions.add(session)
        pump = asyncio.create_task(transport.pump())
        timer = asyncio.get_running_loop().call_later(
            self.config.auth_timeout_s, self.dispatcher.auth_expired, session
        )
        log_event(logging.INFO, "connected", peer=session.peer)
        transport.flush()
        try:
            async for message in ws:
                self.dispatcher.data_received(session, message)
                if not session.open:
                    break
        except ConnectionClosed as exc:
            log_event(logging.INFO, "connection_closed", peer=session.peer, code=_code(exc))
        finally:
            timer.cancel()
            self.dispatcher.session_ended(session)
            self._sessions.discard(session)
            if transport.closing is not None or conn.state is State.CLOSED:
                await pump  # flush the last frames and close with our code
            else:
                pump.cancel()

    async def purge_expired(self) -> tuple[int, int]:
        """SPEC §6.6: drop envelopes and remembered msg_ids older than the queue TTL."""
        before = self.ctx.clock() - self.config.queue_ttl_ms
        envelopes, ids = await self.ctx.writer.submit("purge", before)
        if envelopes or ids:
            log_event(logging.INFO, "purged", envelopes=envelopes, msg_ids=ids)
        return envelopes, ids

    async def _purge_periodically(self) -> None:
        while True:
            await self.purge_expired()
            await asyncio.sleep(self.config.purge_interval_s)

    async def close(self) -> None:
        """Stop accepting, finish in-flight commits (their SENTs go out), then close.

        Frames that arrive meanwhile are refused with SHUTTING_DOWN, so every
        SEND either got its SENT or must be resent by the client.
        """
        self.ctx.stopping = True
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        if self._server is not None:
            self._server.close(close_connections=False)
        await self.ctx.writer.submit("noop")  # every earlier job committed
        for session in list(self._sessions):
            session.shut_down()
        if self._server is not None:
            await self._server.wait_closed()
        await self.ctx.writer.close()
        self._reader_close()
        log_event(logging.INFO, "stopped")


def _code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


async def serve(
    config: RelayConfig, *, clock: Clock | None = None, rng: Rng | None = None
) -> RunningRelay:
    """Open the database, load or create the relay key, and start listening."""
    clock = clock or wall_clock_ms
    rng = rng or os.urandom
    writer = Writer(config.db_path, config.synchronous)
    await writer.start()
    now = clock()

    try:
        seed = await writer.submit("relay_seed")
        if seed is None:
            new_seed = rng(32)
            public = bytes(SigningKey(new_seed).verify_key)
            seed = await writer.submit("create_relay_seed", new_seed, public, now)
    except BaseException:
        await writer.close()
        raise
    reader = connect_reader(config.db_path)
    ctx = RelayContext(
        config=config,
        clock=clock,
        relay_key=bytes(SigningKey(seed).verify_key),
        writer=writer,
        accounts=Accounts(reader),
        limiters=Limiters.from_config(config, clock),
    )
    relay = RunningRelay(config, ctx, rng, reader.conn.close)
    try:
        await relay._listen()
    except BaseException:
        await writer.close()
        reader.conn.close()
        raise
    log_event(
        logging.INFO, "listening", url=relay.url, db=str(config.db_path),
        synchronous=config.synchronous,
    )  # fmt: skip
    return relay
