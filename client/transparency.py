"""Reading a relay's transparency log (SPEC §15.6), with or without an account.

:class:`LogReader` turns the four log fetches into verified values: a tree head
comes back only once its signature verifies with the relay key (§15.3), and a
proof comes back as the relay sent it, for the caller to check against a head
it holds (the functions of :mod:`blindrelay.protocol.transparency`), because a
proof means nothing without the root it must reach.

Two ways to get one:

- ``client.log`` — the reader of a :class:`~.sdk.Client`, over its link (its
  requests wait for the connection and are sent again after a drop), checked
  against the pinned relay key;
- :func:`open_log_reader` — a connection of its own that never logs in, for an
  auditor or a script: the log is public and read before any login (§15.6).
  The relay ends such a connection at its authentication timeout; the reader
  then opens a new one for the next request, checking it presents the same key.

Every log fetch waits out the relay's ERROR 402 (its ``retry_after``, SPEC §10: the
fetches are rate limited, per source before a login) and keeps to the pace it learns
from it (:class:`~.pacing.Pacer`), within ``LOG_FETCH_RETRIES`` and
``LOG_FETCH_PATIENCE_MS`` a fetch; past them the RateLimited is raised. An auditor
reads the whole log page by page, far past any burst. A reader of its own also bounds
the wait for HELLO and for each answer (``LOG_ANSWER_TIMEOUT_S``): the relay it checks
could otherwise hold it for ever by saying nothing.

Not here: what a client does with what it reads (trust checks, the audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from blindrelay.protocol import frames, limits
from blindrelay.protocol.errors import NotFound, UnexpectedFrame
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.evidence import ConsentEvidence, statement_entry
from blindrelay.protocol.transparency.treehead import TreeHead, open_tree_head

from .connection import Connection, FrameHandlers
from .pacing import Pacer
from .transport import ConnectionLost, WebSocketTransport
from .trust import RelayKeyChanged

Request = Callable[[Callable[[int], frames.Frame]], Awaitable[frames.Frame]]
F = TypeVar("F", bound=frames.Frame)

LOG_FETCH_RETRIES = 50
"""How often one log fetch is asked again after a 402 before the RateLimited is raised:
an honest relay names the wait for a token, so one or two do, with other readers on
the same source's bucket a few more; a relay that answers 402 for ever is given up on."""
LOG_FETCH_PATIENCE_MS = 60_000
"""The most one log fetch waits out in all; a longer ``retry_after`` is not slept."""
LOG_ANSWER_TIMEOUT_S = 30.0
"""How long a reader of its own (:func:`open_log_reader`) waits for HELLO and for each
answer before it gives the connection up: a relay that greets and then never answers
(the reader is what checks it) would otherwise hold an audit for ever. Far above an
honest answer (a few indexed lookups, SPEC §15.2) even on a loaded relay."""
LOG_FETCH_MAX_SPACING_MS = 1_000
"""The widest gap a reader keeps between fetches after a 402 (a relay at 60 fetches a
minute); the default bucket's is 10 ms (SPEC §10: 6,000 a minute)."""


class LogReader:
    """The log's fetches, each answered or raising the relay's named error (§9)."""

    def __init__(
        self,
        request: Request,
        relay_key: Callable[[], bytes | None],
        pacer: Pacer | None = None,
        *,
        hold: Callable[[TreeHead, bytes], Awaitable[None]] | None = None,
    ) -> None:
        """``hold``: what the head under evidence is held against before the evidence is
        handed on (:meth:`consent_evidence`). A client's reader holds it against the head
        it kept (``LogCheck.observe``), which raises the split-view alarm once it stands:
        evidence resting on our side of a fork shows nothing a third party may rely on
        (T75). A reader of its own keeps no head and has nothing to hold it against."""
        self._request = request
        self._relay_key = relay_key
        self._hold = hold
        self._pacer = pacer or Pacer(
            retries=LOG_FETCH_RETRIES,
            patience_ms=LOG_FETCH_PATIENCE_MS,
            max_spacing_ms=LOG_FETCH_MAX_SPACING_MS,
        )

    @property
    def relay_key(self) -> bytes | None:
        """The key heads are checked against (the pinned one, or the first presented)."""
        return self._relay_key()

    async def head(self) -> TreeHead | None:
        """The newest signed tree head, its signature verified; None if there is none."""
        signed = await self.signed_head()
        return None if signed is None else signed[0]

    async def signed_head(self) -> tuple[TreeHead, bytes] | None:
        """:meth:`head` with its signed bytes: the evidence a third party can recheck."""
        answer = await self._ask(lambda i: frames.LogHeadFetch(id=i), frames.LogHead)
        if answer.sth is None:
            return None
        key = self._relay_key()
        if key is None:
            raise RuntimeError("no relay key to check the tree head against; connect first")
        return open_tree_head(answer.sth, key), answer.sth

    async def consistency(self, first: int, second: int) -> list[bytes]:
        """PROOF(first, D[second]) as the relay sent it (check it with ``check_extends``)."""
        answer = await self._ask(
            lambda i: frames.LogConsistencyFetch(id=i, first=first, second=second),
            frames.LogConsistency,
        )
        return list(answer.proof)

    async def inclusion(self, entry: bytes, size: int) -> tuple[int, list[bytes]]:
        """Where ``entry`` (its exact bytes) is in the tree of ``size``, and its path."""
        answer = await self._ask(
            lambda i: frames.LogInclusionFetch(id=i, entry=entry, size=size),
            frames.LogInclusion,
        )
        return answer.index, list(answer.proof)

    async def entries(self, start: int, count: int = limits.MAX_LOG_ENTRIES) -> list[bytes]:
        """Up to ``count`` entries from ``start`` (at most MAX_LOG_ENTRIES per request)."""
        answer = await self._ask(
            lambda i: frames.LogEntriesFetch(
                id=i, start=start, count=min(count, limits.MAX_LOG_ENTRIES)
            ),
            frames.LogEntries,
        )
        if answer.start != start:
            raise UnexpectedFrame(f"asked for entries from {start}, got {answer.start}")
        return list(answer.entries)

    async def consent_evidence(self, signed_statement: bytes) -> ConsentEvidence:
        """Proof for a third party that the relay logged ``signed_statement`` (SPEC §15.5):
        the statement, its entry, index and path in the newest signed head, the path
        verified. Raises NotFound while no signed head covers it yet (within
        ``STH_INTERVAL``), InvalidProof if the relay's path does not reach the head, and
        whatever ``hold`` raises for the head (a client's reader: LogForked)."""
        signed = await self.signed_head()
        if signed is None:
            raise NotFound("the relay has signed no tree head yet")
        head, head_bytes = signed
        entry = statement_entry(signed_statement)
        index, proof = await self.inclusion(entry, head.size)
        # Checked before it is handed on: evidence that fails ``verify-consent`` would be
        # found out only by whoever it was meant to convince (InvalidProof).
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, head.size, proof, head.root)
        if self._hold is not None:
            await self._hold(head, head_bytes)
        return ConsentEvidence(signed_statement, entry, index, tuple(proof), head_bytes)

    async def publish_key(self) -> None:
        """DISCOVERABLE (SPEC §15.6 rule 4): log our key binding, and every later
        rotation. It cannot be undone, and it tells everyone our handle exists."""
        await self._ask(lambda i: frames.Discoverable(id=i), frames.Ok, paced=False)

    async def _ask(
        self, make: Callable[[int], frames.Frame], kind: type[F], *, paced: bool = True
    ) -> F:
        """The answer, of ``kind``; a log fetch's (``paced``) with its 402s waited out."""
        if paced:
            answer = await self._pacer(lambda: self._request(make))
        else:
            answer = await self._request(make)
        if not isinstance(answer, kind):
            raise UnexpectedFrame(f"relay answered with {answer.TYPE.name}")
        return answer


class _Anonymous:
    """One unauthenticated connection at a time, opened again when the relay ends it."""

    def __init__(self, url: str, relay_key: bytes | None) -> None:
        self.url = url
        self.relay_key = relay_key
        self._conn: Connection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def request(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        """The answer, on a new connection once if the relay ended the current one."""
        try:
            return await self._ask(make)
        except ConnectionLost:
            await self.close()
            return await self._ask(make)

    async def _ask(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        conn = await self._connection()
        return await _answer(conn, make(conn.next_request_id()), self._reader)

    async def _connection(self) -> Connection:
        if self._conn is not None and self._reader is not None and not self._reader.done():
            return self._conn
        await self.close()
        transport = await WebSocketTransport.open(self.url)
        conn = Connection(transport, _REFUSE_PUSHES, clock=_now_ms)
        reader = asyncio.create_task(conn.read())
        self._conn, self._reader = conn, reader
        waiting: list[asyncio.Future[Any]] = [reader, conn.hello]
        timeout = LOG_ANSWER_TIMEOUT_S
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not conn.hello.done():
            await self.close()
            if reader.done():
                raise ConnectionLost(f"{self.url} closed the connection before HELLO")
            raise ConnectionLost(f"no HELLO from {self.url} within {timeout:g} s")
        presented = conn.hello.result().relay_key
        if self.relay_key is None:
            self.relay_key = presented  # first seen: the caller may pin it
        elif presented != self.relay_key:
            await self.close()
            raise RelayKeyChanged(self.relay_key, presented)
        return conn

    async def close(self) -> None:
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.transport.close()


async def _answer(
    conn: Connection, frame: frames.Frame, reader: asyncio.Task[None] | None
) -> frames.Frame:
    """The answer to ``frame``, or ConnectionLost if the connection ends first or no
    answer comes within :data:`LOG_ANSWER_TIMEOUT_S`."""
    future = conn.request(frame)
    assert reader is not None
    waiting: list[asyncio.Future[Any]] = [future, reader]
    timeout = LOG_ANSWER_TIMEOUT_S
    await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if future.done():
        return future.result()
    future.cancel()
    if not reader.done():
        raise ConnectionLost(f"no answer from the relay within {timeout:g} s")
    ended = None if reader.cancelled() else reader.exception()
    if isinstance(ended, ConnectionLost):
        raise ended
    raise ConnectionLost("the relay closed the connection")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unexpected_push(*_args: object) -> None:
    raise UnexpectedFrame("a push on a connection that never logged in")


_REFUSE_PUSHES = FrameHandlers(
    deliver_received=_unexpected_push,
    prekeys_low=_unexpected_push,
    send_answered=_unexpected_push,
)


@contextlib.asynccontextmanager
async def open_log_reader(url: str, relay_key: bytes | None = None) -> AsyncIterator[LogReader]:
    """A reader over connections of its own that never log in (SPEC §15.6).

    ``relay_key``: the key the relay must present (:class:`~.trust.RelayKeyChanged`
    otherwise); None takes the first one presented, which the caller should pin —
    everything the reader verifies is only as good as that key.
    """
    anonymous = _Anonymous(url, relay_key)
    try:
        yield LogReader(anonymous.request, lambda: anonymous.relay_key)
    finally:
        await anonymous.close()


__all__ = ["LogReader", "open_log_reader"]
