"""The relay link: one account's lasting connection to the relay, across drops.

Theory of operation. One background task owns the connection: it opens the
WebSocket and its Noise channel (``transport``, SPEC §1.3: the relay proves the
key this client pins before anything is sent), serves one
:class:`.connection.Connection` until it ends, and after a drop reconnects with
capped, jittered exponential backoff (:class:`Backoff`) and, once this client
has authenticated, logs in again by itself. A connection is *ready* once its
HELLO arrived and showed the pinned relay key (SPEC §4.1; another key is
:class:`.trust.RelayKeyChanged` before anything is sent), and *online* once its
REGISTER or LOGIN was answered with WELCOME and the account caught up
(:attr:`LinkHandlers.authenticated`).

- :meth:`RelayLink.request` sends a request on the online connection and
  returns its answer, sending it again on the next connection after a drop. A
  connection on which a request goes unanswered too long is dropped like any
  (:class:`.connection.NoAnswer`, ``ANSWER_TIMEOUT_S``); once ``MAX_UNANSWERED``
  connections ended under it, dropped so or closed by the relay, the request
  raises it (T55, T56). A connection that ends under a request asked again does
  not start the backoff again, though it was online: a relay closing every
  connection at one request (a queued SEND, which waits on) is reconnected to ever
  more slowly, not twice a second for ever (T56).
- A failure that is not the network's — a bug, a broken keystore, a relay on
  another version, another relay key, AUTH_FAILED at an automatic login — stops
  the link: every waiting call raises, and nothing more is acknowledged. Any other
  refusal of an automatic login is the relay's to fix: a new connection follows
  (:meth:`RelayLink._logged_in_again`, T55).

Not here: one connection's reading and writing (``connection``), what is
sent and received (``outbox``, ``inbox``), the socket (``transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from blindrelay.protocol import frames
from blindrelay.protocol.connection import State
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    ProtocolError,
    UnexpectedFrame,
    UnsupportedVersion,
)

from .connection import ANSWER_TIMEOUT_S, Connection, FrameHandlers, NoAnswer
from .transport import ConnectionLost, OpenTransport, WebSocketTransport
from .trust import RelayKeyChanged, RelayKeyPin

log = logging.getLogger("blindrelay.client")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: exponential, capped, with jitter so clients do not reconnect in step.

    Attempt n waits between half and all of ``min(cap, initial * factor**n)``
    seconds ("equal jitter"): never zero, never more than the cap.
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    stable_s: float = 10.0
    """How long a connection must have been online for the next reconnection to start
    from the first wait: one dropped sooner counts as a failed attempt (T58), so a relay
    closing every connection just after its WELCOME is reconnected to ever more slowly."""

    def delay(self, attempt: int, jitter: Callable[[], float]) -> float:
        ceiling = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return ceiling / 2 + jitter() * ceiling / 2


DEFAULT_BACKOFF = Backoff()
"""From half a second to 30 s: quick after a blip, gentle on a relay that restarts."""

MAX_UNANSWERED = 3
"""Connections that may end with one request unanswered — left unanswered for
``answer_timeout_s`` (T55), or closed by the relay under it (T56), counted together —
before :meth:`RelayLink.request` raises :class:`.connection.NoAnswer`: a relay that
lost a request once or twice (a crash or a restart before answering) is asked again;
one that never answers it is given up on after about three minutes with the defaults,
one that closes the connection at it (a "poison" request) after three connections."""


@dataclass(frozen=True, slots=True)
class LinkHandlers(FrameHandlers):
    """What the link asks of the account, besides handling frames."""

    log_in: Callable[[Connection], Coroutine[Any, Any, None]]
    """Log in on a new connection (a reconnect), through :meth:`RelayLink.authenticate`."""
    authenticated: Callable[[Connection, frames.Welcome], Awaitable[None]]
    """After WELCOME, before the connection is online: catch up (prekeys, outbox)."""
    online: Callable[[frames.Welcome], None]
    """The connection is online."""
    stopped: Callable[[BaseException], None]
    """The link stopped for good (or the client closes): fail what waits."""


class RelayLink:
    """Connect, reconnect, log in again, know when we are online (module docstring)."""

    def __init__(
        self,
        relay_key: RelayKeyPin,
        *,
        clock: Callable[[], int],
        backoff: Backoff,
        jitter: Callable[[], float],
        open_transport: OpenTransport = WebSocketTransport.open,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self._relay_key = relay_key
        self._answer_timeout_s = answer_timeout_s
        self._open_transport = open_transport
        """Opens each connection, reconnections included (``transport.tapped`` to see it)."""
        self._clock = clock
        self._backoff = backoff
        self._jitter = jitter
        self._handlers: LinkHandlers | None = None
        self._url: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._current: Connection | None = None
        self._ready = asyncio.Event()
        self._online: Connection | None = None
        self._online_since = 0
        """When ``_online`` went online, on the injected clock (ms)."""
        self._online_event = asyncio.Event()
        self._auto_login = False
        self._closing = False
        self._fatal: BaseException | None = None

    def listen(self, handlers: LinkHandlers) -> None:
        """Name where frames and events go; once, before :meth:`connect`."""
        self._handlers = handlers

    @property
    def url(self) -> str | None:
        return self._url

    @property
    def online(self) -> Connection | None:
        """The online connection, None while there is none (sends then wait in the outbox)."""
        online = self._online
        return online if online is not None and not online.lost else None

    @property
    def failed(self) -> bool:
        """The link stopped on a failure that was not the network's."""
        return self._fatal is not None

    def relay_now(self) -> int:
        """The relay's clock as estimated from the last HELLO's ``now`` (SPEC §4.1)."""
        conn = self._online or self._current
        return self._clock() + (conn.clock_offset if conn is not None else 0)

    # --- Lifetime ---------------------------------------------------------------

    async def connect(self, url: str) -> None:
        """Open a connection to ``url`` and wait for its HELLO (see :meth:`Client.connect`).

        Once :class:`.trust.RelayKeyChanged` stopped the link, it may be called
        again (after the key was accepted); a link that was logged in logs in again.
        """
        runner = self._runner
        if runner is not None:
            if not runner.done() or not isinstance(self._fatal, RelayKeyChanged):
                raise RuntimeError("already connected")
            self._runner, self._fatal = None, None
            self._ready.clear()
            self._online_event.clear()
        self._url = url
        transport = await self._open_transport(url)
        self._runner = asyncio.create_task(self._run(transport))
        try:
            await self.wait_ready()
        except RelayKeyChanged:
            with contextlib.suppress(RelayKeyChanged):
                await self._runner  # ended with it; retrieved here
            raise

    async def close(self) -> None:
        """Write out what is queued, close the connection and stop reconnecting."""
        self._closing = True
        conn = self._current
        if conn is not None and not conn.lost:
            await conn.drain()
            with contextlib.suppress(ConnectionLost):
                await conn.transport.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    def stop(self, exc: BaseException) -> None:
        """Stop for good on ``exc`` (a broken keystore): every waiting call raises."""
        self._stopped(exc)
        if self._runner is not None:
            self._runner.cancel()

    def raise_if_fatal(self) -> None:
        fatal = self._fatal
        if isinstance(fatal, RelayKeyChanged):
            raise RelayKeyChanged(fatal.pinned, fatal.presented)
        if fatal is not None:
            raise ConnectionLost("client stopped after an error") from fatal
        if self._closing:
            raise ConnectionLost("client closed")

    async def _run(self, transport: WebSocketTransport | None) -> None:
        """Own the connection: serve it, and after a drop reconnect with backoff."""
        attempt = 0
        try:
            while not self._closing:
                if transport is None:
                    assert self._url is not None
                    try:
                        transport = await self._open_transport(self._url)
                    except ConnectionLost as exc:
                        log.info("reconnect failed: %s", exc)
                        await asyncio.sleep(self._backoff.delay(attempt, self._jitter))
                        attempt += 1
                        continue
                assert self._handlers is not None
                conn = Connection(
                    transport,
                    self._handlers,
                    clock=self._clock,
                    answer_timeout_s=self._answer_timeout_s,
                )
                transport = None
                try:
                    await self._serve(conn)
                except NoAnswer as exc:  # the relay's failure, not the network's (T55)
                    log.warning("connection given up: %s", exc)
                except ConnectionLost as exc:
                    log.info("connection lost: %s", exc)
                finally:
                    # Online long enough: the next wait is the first, unless it ended
                    # under a request that an earlier connection ended under too (T56).
                    if self._online is conn and not conn.lost_again and self._stable():
                        attempt = 0
                    self._drop(conn)
                await asyncio.sleep(self._backoff.delay(attempt, self._jitter))
                attempt += 1
        except asyncio.CancelledError:
            if self._current is not None:
                self._drop(self._current)
            raise
        except BaseException as exc:
            self._stopped(exc)
            raise

    def _stable(self) -> bool:
        """Whether the connection now online has been so for the backoff's ``stable_s``
        (T58; on the injected clock: a clock step changes one wait at most)."""
        return self._clock() - self._online_since >= self._backoff.stable_s * 1000

    def _stopped(self, exc: BaseException) -> None:
        """Not a network problem: a bug, a broken store, a relay on another version.

        Stop without acknowledging anything more; every waiting call raises.
        """
        if self._fatal is None:
            self._fatal = exc
        if self._current is not None:
            self._drop(self._current)
        assert self._handlers is not None
        self._handlers.stopped(exc)
        self._ready.set()
        self._online_event.set()

    async def _serve(self, conn: Connection) -> None:
        self._current = conn
        reader = asyncio.create_task(conn.read())
        try:
            first: list[asyncio.Future[Any]] = [reader, conn.hello]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not conn.hello.done():
                await reader  # raises why the connection ended before HELLO
            self._relay_key.check(conn.hello.result().relay_key)
            self._ready.set()
            if self._auto_login:
                assert self._handlers is not None
                login = asyncio.create_task(self._handlers.log_in(conn))
                await asyncio.wait([reader, login], return_when=asyncio.FIRST_COMPLETED)
                if login.done():
                    await self._logged_in_again(login)
                else:
                    login.cancel()
            await reader
        finally:
            reader.cancel()

    async def _logged_in_again(self, login: asyncio.Task[None]) -> None:
        """Raise what ended the automatic login on a new connection, if anything did.

        Only AUTH_FAILED (the relay refuses our key: the account is gone or was
        rotated elsewhere) and another protocol version stop the link. Any other
        refusal of the LOGIN or of the catching up after its WELCOME (a prekey upload,
        our profile) — 900, 902, 402, a code this version does not know, an answer of
        the wrong type — is the relay's to fix, not a reason to stop for good: the
        connection is dropped and the next one logs in again after the backoff, and
        after ``retry_after`` when the error has one (402, 902), capped at the
        backoff's cap so that a relay naming years does not park the client (T55).
        Before, every such refusal stopped the client ("client stopped after an
        error"), and a 902's ``retry_after`` was slept whole.
        """
        try:
            login.result()
        except (AuthenticationFailed, UnsupportedVersion):
            raise
        except ProtocolError as exc:
            log.warning("the relay refused the login on a new connection: %r", exc)
            retry_after_ms = getattr(exc, "retry_after_ms", None)
            if isinstance(retry_after_ms, int):
                # SPEC §6.3: a 902 (the relay's store is down for now) spent the
                # challenge; a new connection after retry_after logs in again.
                await asyncio.sleep(min(retry_after_ms / 1000, self._backoff.cap))
            raise ConnectionLost(f"the relay refused the login: {exc!r}") from exc

    @property
    def logs_in_again(self) -> bool:
        """Authenticated once: every new connection logs in by itself."""
        return self._auto_login

    def drop(self, conn: Connection) -> None:
        """End ``conn`` now (its requests fail with ConnectionLost); a new one follows."""
        self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        conn.fail(ConnectionLost("connection ended"))
        conn.transport.abort()
        if self._current is conn:
            self._current = None
            self._ready.clear()
        if self._online is conn:
            self._online = None
            self._online_event.clear()

    # --- Authenticating and waiting (SPEC §4) -------------------------------------

    async def authenticate(self, conn: Connection, request_id: int) -> None:
        """Wait for the WELCOME answering the REGISTER or LOGIN queued as ``request_id``;
        then pin the relay key if none is (SPEC §4.1), catch up, and be online."""
        try:
            welcome = await conn.answer_to(request_id)
        except ProtocolError:
            # The challenge is spent: drop this connection now, not when its reader notices,
            # so that a retry made at once (another handle) waits for a fresh one.
            self._drop(conn)
            raise
        if not isinstance(welcome, frames.Welcome):
            # A log answer is receivable before WELCOME (SPEC §4.5), so a relay can send
            # one under the login's id: a refusal, not our bug (T55; an AssertionError
            # stopped the client before).
            self._drop(conn)
            raise UnexpectedFrame(f"relay answered a login with {welcome.TYPE.name}")
        assert self._handlers is not None
        self._relay_key.pin_first(conn.relay_key)
        self._auto_login = True
        await self._handlers.authenticated(conn, welcome)
        self._online = conn
        self._online_since = self._clock()
        self._online_event.set()
        self._handlers.online(welcome)

    async def wait_ready(self) -> Connection:
        """The current connection, once it has its HELLO and is not yet authenticated."""
        while True:
            self.raise_if_fatal()
            conn = self._current
            if self._ready.is_set() and conn is not None:
                if conn.machine.state is not State.AWAITING_AUTH:
                    raise RuntimeError("this connection is authenticated already")
                return conn
            await self._ready.wait()

    async def wait_online(self) -> Connection:
        """The online connection, once there is one."""
        while True:
            self.raise_if_fatal()
            if self._online is not None and not self._online.lost:
                return self._online
            if self._runner is None:
                raise RuntimeError("not connected; call connect() first")
            await self._online_event.wait()

    async def request(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        """The answer to the request ``make(request_id)``, on some connection: sent again
        on the next one after a drop. Raises the relay's named error (SPEC §9), and
        :class:`.connection.NoAnswer` once ``MAX_UNANSWERED`` connections ended with it
        unanswered: left so for ``answer_timeout_s`` (each then dropped, T55), or closed
        under it. Before, a relay that closed the connection whenever the request came
        had it sent again on every new connection for ever: a drop was taken for the
        network's (T56)."""
        ended = 0
        while True:
            conn = await self.wait_online()
            try:
                return await conn.request(make(conn.next_request_id()), again=ended > 0)
            except ConnectionLost as exc:
                ended += 1
                if ended < MAX_UNANSWERED:
                    continue
                self.raise_if_fatal()  # closed or stopped meanwhile: that, not the relay
                if isinstance(exc, NoAnswer):
                    raise
                raise NoAnswer(f"the relay ended {ended} connections under a request") from exc

    async def request_once(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        """:meth:`request` on one online connection: ConnectionLost if it ends before the
        answer, not sent again. For a caller that counts a drop as the relay's refusal
        (``gossip``: a relay must not dodge a check by closing the connection on it)."""
        conn = await self.wait_online()
        return await conn.request(make(conn.next_request_id()))


__all__ = ["DEFAULT_BACKOFF", "MAX_UNANSWERED", "Backoff", "LinkHandlers", "RelayLink"]
