"""The relay's server: with :mod:`.intake`, :mod:`.transport` and :mod:`.admission`, the
only modules that import websockets (SPEC §1).

It accepts WebSocket connections speaking the ``blindrelay.v2`` subprotocol
(anything else is refused at the handshake), answers the Noise handshake that
opens each one (SPEC §1.3, :class:`~blindrelay.protocol.channel.RelayChannel`),
opens every later message and feeds it to the session's sans-I/O machine
through the :class:`Dispatcher`, and writes out, sealed, what the machine
queued — synchronously, once per loop turn and connection
(:class:`~.transport.WebSocketTransport`), so handlers and store callbacks never await.
Compression is off (ciphertext does not compress; see
/work/shared/notes.md), ``max_size`` is the frame cap plus the Noise tag
(websockets closes bigger messages with 1009), keep-alive comes from the limits
table. A message that fails the channel closes the connection with 4001,
unanswered, and is counted (:attr:`RunningRelay.channel_failures`).

Flow control (SPEC §1.2.4–6): each connection's frames are handled a bounded
number at a time (:class:`~.intake.Intake`), none while the data waiting for it is
over its bound (nor while a store read it asked is unanswered), and a peer that
takes no data for the write timeout is aborted (:class:`~.transport.WebSocketTransport`);
:attr:`RunningRelay.outgoing` is the accounting. What happens on one connection's
socket is :mod:`.intake`'s (reading) and :mod:`.transport`'s (writing); the listener
and the connections' lifecycle are here, the store's periodic jobs (purges,
checkpoints, bills and tree heads, the store probe) in :mod:`.housekeeping`.

:func:`serve` runs a relay in the current event loop and returns a
:class:`RunningRelay` with its URL, so tests and the CLI start it the same way.

Not here: protocol rules (everything else in ``server``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from nacl.signing import SigningKey
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import ConnectionClosed

from blindrelay.protocol import SUBPROTOCOL
from blindrelay.protocol.channel import (
    CLOSE_CHANNEL_FAILED,
    MAX_TRANSPORT_MESSAGE_BYTES,
    ChannelError,
    RelayChannel,
    relay_static_key,
    static_binding,
)
from blindrelay.protocol.connection import RelayConnection, State
from blindrelay.protocol.errors import StoreUnavailable
from blindrelay.protocol.noise import KeyPair

from . import auth, gcpolicy
from .admission import Admission, SourceOf, peer_source
from .config import TRANSPORT_WRITE_LIMIT_BYTES, RelayConfig
from .context import RelayContext, Session
from .dispatch import Dispatcher
from .housekeeping import Housekeeping
from .intake import Intake, RelayWebSocket
from .limiters import Limiters
from .logs import log_event
from .metrics import MetricsServer, parse_listen
from .ratelimit import Clock, TokenBuckets, wall_clock_ms
from .registration import RegistrationPolicy
from .routing import Hint, HintSeal, InProcessRouter, Router, hint_key, open_router
from .store import open_store
from .transport import Flusher, OutgoingStats, WebSocketTransport

Rng = Callable[[int], bytes]


class RunningRelay:
    """A relay serving in this event loop; ``await close()`` stops it cleanly."""

    def __init__(
        self,
        config: RelayConfig,
        ctx: RelayContext,
        rng: Rng,
        source_of: SourceOf,
        router: Router | None = None,
        sign: Callable[[bytes], bytes] | None = None,
        *,
        static_key: KeyPair,
        static_binding: bytes,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self._static_key = static_key
        self._static_binding = static_binding
        """The Noise static key and its binding to the relay key (SPEC §1.3.2)."""
        self.channel_failures = 0
        """Connections closed because a handshake or transport message failed (§1.3.6)."""
        self.router: Router = router or InProcessRouter(ctx.worker_id)
        """How this relay hears what other workers sharing its store committed."""
        self.relay_key = ctx.relay_key
        self.dispatcher = Dispatcher(ctx)
        self._rng = rng
        self._source_of = source_of
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self.housekeeping = Housekeeping(config, ctx, sign)
        """The store's periodic jobs: purge, checkpoint, bills and tree heads, probes."""
        self.metrics_server: MetricsServer | None = None
        """``/healthz``, ``/readyz``, ``/metrics`` (``--metrics-listen``); None when off."""
        self._flusher = Flusher()
        self.admission = Admission(
            config.max_unauthenticated_per_source,
            TokenBuckets(config.connections_per_s_source, config.connections_burst_source,
                         ctx.clock),
        )  # fmt: skip
        """Connections not logged in yet, per source (SPEC §1.2.2)."""
        self.outgoing = OutgoingStats()
        self._closed = gcpolicy.ClosedConnections()
        self._collection: asyncio.TimerHandle | None = None
        self.failed = asyncio.Event()
        """Set when the store was lost under the relay (:attr:`failure` says how): nothing
        can be stored any more, so the CLI stops (a supervisor restarts it; what was
        committed is intact)."""
        self.failure = ""
        self.url = ""

    async def _listen(self) -> None:
        self._server = await websockets_serve(
            self._connection,
            self.config.host,
            self.config.port,
            reuse_port=self.config.reuse_port or None,  # to loop.create_server
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,
            max_size=MAX_TRANSPORT_MESSAGE_BYTES,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            server_header=None,
            create_connection=RelayWebSocket,
            write_limit=TRANSPORT_WRITE_LIMIT_BYTES,
            process_request=lambda ws, _request: self.admission.refusal(ws, self._source_of(ws)),
        )
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self.url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
        metrics = self.ctx.metrics
        metrics.connections = lambda: len(self._sessions)
        metrics.authenticated = lambda: len(self.ctx.sessions)
        self.housekeeping.start()
        listen = parse_listen(self.config.metrics_listen)
        if listen is not None:
            self.metrics_server = MetricsServer(metrics, *listen)

    async def _connection(self, ws: ServerConnection) -> None:
        # "The relay MUST refuse a handshake without the blindrelay.v2 subprotocol":
        # websockets answers 400 when no offered subprotocol matches ours.
        assert isinstance(ws, RelayWebSocket)  # create_connection
        registration = self.ctx.registration
        conn = RelayConnection(
            self.relay_key, self.ctx.clock(), self._rng, registration.proof_of_work
        )
        peer = ws.remote_address
        name = f"{peer[0]}:{peer[1]}" if peer else "?"
        channel = RelayChannel(self._static_key, self._static_binding, self._rng)
        session: Session
        intake = Intake(ws, lambda message: self._received(session, transport, message))
        transport = WebSocketTransport(
            ws, conn, channel, self._flusher, intake=intake,
            bound=self.config.max_outgoing_buffer_bytes,
            write_timeout_s=self.config.write_timeout_s, stats=self.outgoing,
        )  # fmt: skip
        ws.flow = transport
        session = Session(
            conn, transport, peer=name, source=self._source_of(ws), clock=self.ctx.clock,
            on_sent=self.ctx.metrics.frame_sent,
        )
        transport.session = session
        self._sessions.add(session)
        self.admission.opened(session)
        timer = asyncio.get_running_loop().call_later(
            registration.auth_timeout_s, self.dispatcher.auth_expired, session
        )
        log_event(logging.INFO, "connected", peer=session.peer)
        transport.flush()
        ws.direct(intake.received)
        try:
            async for message in ws:  # only what websockets' assembler got
                intake.received(message)
                if not session.open:
                    break
        except ConnectionClosed as exc:
            log_event(logging.INFO, "connection_closed", peer=session.peer, code=_code(exc))
        finally:
            timer.cancel()
            self.dispatcher.session_ended(session)
            self._sessions.discard(session)
            self.admission.closed(session)
            if self._closed.closed(still_open=len(self._sessions)):
                self._collect_soon()
            if transport.closing is not None or conn.state is State.CLOSED:
                await transport.start_pump()  # flush the last frames and close with our code
            else:
                transport.cancel()

    def outgoing_now(self) -> list[int]:
        """What the relay holds for each open connection now, not yet handed to the
        network (SPEC §1.2.4), read from the buffers themselves rather than from
        :attr:`outgoing`, the accounting that enforces the bound: what a test checks
        the bound against."""
        return [
            transport.outgoing_bytes
            for session in self._sessions
            if isinstance(transport := session.transport, WebSocketTransport)
        ]

    def lost(self, failure: str) -> None:
        """The store went away under the relay (:attr:`failed`)."""
        self.failure = failure
        self.ctx.metrics.store_failed(failure)
        self.failed.set()

    def store_available(self, available: bool) -> None:
        """A shared store lost or regained its connection (it reconnects by itself and
        logs both; meanwhile every operation fails with 902, SPEC §6.3). Once it is
        back, what other workers committed meanwhile was announced to nobody here."""
        if available:
            self.catch_up("store")
        else:
            self.ctx.metrics.store_failed("unavailable, reconnecting")

    def hint_received(self, hint: Hint) -> None:
        """What another worker committed that a session here must act on (the router's
        callback)."""
        if self.ctx.stopping:
            return
        try:
            self.dispatcher.hint_received(hint)
        except Exception as exc:  # inside the router's callback: never let it escape
            log_event(logging.ERROR, "hint_failed", kind=hint.kind.name,
                      exc_type=type(exc).__name__)  # fmt: skip

    def catch_up(self, reason: str = "router") -> None:
        """Hints may have been lost: every outbox pages its queue again (the router's
        callback on every connection, and :meth:`store_available`)."""
        if self.ctx.stopping:
            return
        sessions = len(self.ctx.sessions.all())
        if sessions:
            log_event(logging.INFO, "catch_up", reason=reason, sessions=sessions)
        self.dispatcher.catch_up()

    def _collect_soon(self) -> None:
        """Closed connections are cyclic garbage only a full collection frees (gcpolicy)."""
        if self._collection is None and not self.ctx.stopping:
            self._collection = asyncio.get_running_loop().call_later(
                gcpolicy.COLLECT_DELAY_S, self._collect
            )

    def _collect(self) -> None:
        self._collection = None
        gcpolicy.collect_closed()

    def _received(
        self, session: Session, transport: WebSocketTransport, message: bytes | str
    ) -> None:
        """One WebSocket message: the handshake's first, then sealed frames (SPEC §1.3)."""
        if not session.open:
            return
        channel = transport.channel
        try:
            if not channel.established:
                reply = channel.receive_handshake(message)
                assert channel.handshake_hash is not None
                session.conn.bind_channel(channel.handshake_hash)
                transport.handshake_answered(reply)
                return
            data = channel.decrypt(message)
        except ChannelError as exc:
            self._channel_failed(session, transport, exc)
            return
        try:
            self.dispatcher.data_received(session, data)
        except Exception as exc:  # inside websockets' data_received: never let it escape
            self.ctx.refuse(session, None, exc)

    def _channel_failed(
        self, session: Session, transport: WebSocketTransport, exc: ChannelError
    ) -> None:
        """SPEC §1.3.6: "a message that fails [...] closes the connection with 4001; it
        is counted and not answered"."""
        self.channel_failures += 1
        log_event(logging.INFO, "channel_failed", handle=session.handle, peer=session.peer,
                  reason=type(exc).__name__)  # fmt: skip
        session.conn.close()
        transport.close(CLOSE_CHANNEL_FAILED, "channel failed")

    async def close(self) -> None:
        """Stop accepting, finish in-flight commits (their SENTs go out), then close.

        Frames that arrive meanwhile are refused with SHUTTING_DOWN, so every
        SEND either got its SENT or must be resent by the client.
        """
        self.ctx.stopping = True
        await self.router.close()
        if self._collection is not None:
            self._collection.cancel()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await self.housekeeping.stop()
        if self._server is not None:
            self._server.close(close_connections=False)
        if self.ctx.store.running:
            for session in list(self._sessions):  # their accounts' next relay starts from now
                auth.close_session(self.ctx, session)
            try:
                await self.ctx.store.submit("noop")  # every earlier operation committed
            except StoreUnavailable:  # stopping during a store outage: nothing more to wait for
                log_event(logging.WARNING, "stopped_during_store_outage")
        for session in list(self._sessions):
            session.shut_down()
        if self._server is not None:
            await self._server.wait_closed()
        await self.ctx.store.close()
        self.ctx.registration.close()
        log_event(logging.INFO, "stopped")


def _code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


async def serve(
    config: RelayConfig,
    *,
    clock: Clock | None = None,
    rng: Rng | None = None,
    source_of: SourceOf = peer_source,
) -> RunningRelay:
    """Open the store, load or create the relay key, and start listening.

    ``clock``, ``rng`` and ``source_of`` are injected by tests; ``source_of``
    lets a test give connections from 127.0.0.1 other source addresses.
    """
    clock = clock or wall_clock_ms
    rng = rng or os.urandom
    store = open_store(config.store_url, config)
    await store.start()
    now = clock()

    try:
        seed = await store.submit("relay_seed")
        if seed is None:
            new_seed = rng(32)
            public = bytes(SigningKey(new_seed).verify_key)
            seed = await store.submit("create_relay_seed", new_seed, public, now)
    except BaseException:
        await store.close()
        raise
    relay_signing_key = SigningKey(seed)
    ctx = RelayContext(
        config=config,
        clock=clock,
        relay_key=bytes(relay_signing_key.verify_key),
        store=store,
        limiters=Limiters.from_config(config, clock),
        registration=RegistrationPolicy(config, clock),
        worker_id=store.origin,  # one id for this process: in its hints and its sessions
    )
    # Hints between workers are sealed under a key only readers of the store's tables
    # can derive (routing's docstring: anyone who can connect may LISTEN and NOTIFY).
    store.hint_seal = HintSeal(hint_key(seed))
    router = open_router(
        config.store_url, store.origin, ctx.sessions.serves, config.peer_links, store.hint_seal
    )
    static_key = relay_static_key(seed)
    relay = RunningRelay(
        config, ctx, rng, source_of, router,
        sign=lambda message: relay_signing_key.sign(message).signature,
        static_key=static_key,
        static_binding=static_binding(relay_signing_key, static_key.public),
    )  # fmt: skip
    store.on_lost = relay.lost
    store.on_available = relay.store_available
    store.on_batch = ctx.metrics.batch_committed
    store.on_decided = ctx.metrics.decided
    store.links = router.envelope_links
    try:
        # Hearing other workers' hints before the first connection is accepted.
        await relay.router.start(relay.hint_received, relay.catch_up)
        await relay._listen()
    except BaseException:
        await relay.router.close()
        await store.close()
        raise
    log_event(logging.INFO, "listening", url=relay.url, store=store.location,
              worker=store.origin)  # fmt: skip
    return relay
