"""Peer links: new envelopes straight to the worker that serves their recipient.

Why: with every hint a ``NOTIFY``, an envelope crossing workers was encoded (msgpack,
base64), written into PostgreSQL's notification queue at COMMIT, read by *every*
listening backend, parsed by *every* worker and dropped by all but one (issue 14,
docs/scaling.md). A peer link is one TCP connection from a worker to another, carrying
per batch one frame with the DELIVER frames of the envelopes it committed for that
worker's recipients — nothing else, and only what the recipient will receive.

The rules that keep it a hint (``routing``: the tables are the truth):

- **After COMMIT.** The store decides inside the transaction (``linked``: a link to
  the recipient's worker, read from ``account_sessions`` under the recipient's lock, is
  up) that an envelope gets no NOTIFY, and calls :meth:`PeerLinks.send` only once
  COMMIT has returned, so no worker hears of an envelope that is not durable.
- **A broken link costs latency, never a message.** :meth:`~PeerLinks.send` on a link
  that is down (or backed up past :data:`MAX_BUFFERED_BYTES`) sends QUEUED hints
  (NOTIFY, after the commit) instead: whoever serves the recipient pages. A worker
  whose incoming link ends catches up (every outbox pages again), since frames written
  before the end may be lost. An envelope for a recipient this worker does not serve
  (it moved, or logged in elsewhere meanwhile) is bounced the same way: a QUEUED hint.
- **Order.** A link carries one worker's batches in commit order; against NOTIFY
  hints (a withdrawal, SPEC §7.4) it has none, exactly as two workers' hints never had:
  the outbox pushes an envelope only when every lower id was seen and drops ids a
  withdrawal named (``outbox.Outbox``).
- **Only workers, both ways.** A worker advertises ``host:port`` and a random secret in
  the ``workers`` table, and each end of a link proves to the other that it holds that
  secret before anything is carried (whoever can read the store can do as much anyway).
  The listener proves it first: a worker's row outlives a SIGKILL, and anyone on the
  host may bind the port it freed, so a connecting worker that trusted whoever answers
  there would hand it the DELIVER frames of the dead worker's recipients (found in
  review). A listener that does not prove the secret is ``link_refused``: the link is
  down, and down links cost latency, never a message (above). Links are not encrypted
  and the proofs bind no key: bind them to loopback or a private network, as the
  store's own connections (docs/operations.md); someone on the path reads them anyway.
- **Strangers cost a bound.** Anyone who reaches the port may connect without the
  secret. At most :data:`MAX_UNPROVEN_LINKS` connections that have not proven it are
  open at once — a new one closes the oldest, so holding them is no way to keep a peer
  out — and their refusals share one log budget (``logs.RefusalLog``): one local
  process held thousands, a worker's descriptors with them, and wrote a line per wrong
  proof (found in review, threat model T53).

Handshake (each proof 32 bytes, :func:`proof`: HMAC-SHA256 under the listener's secret
of its role, both challenges and the listener's worker id, so neither end chooses all
it signs and a proof for one direction is never one for the other)::

    listener  -> connector   challenge L (32 random bytes)
    connector -> listener    challenge C (32 random bytes, its own)
    listener  -> connector   proof(LISTENER, L, C)   checked before anything else is sent
    connector -> listener    proof(CONNECTOR, L, C)
    listener  -> connector   ACCEPTED (one byte), then only frames, connector to listener

Frames: a 4-byte big-endian length, then msgpack ``[[recipient, delivery id, previous,
DELIVER bytes], …]``.

Not here: the hint vocabulary and ``NOTIFY`` (``routing``, ``routing_postgresql``),
what a worker does with a DELIVER (``delivery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack

from .logs import RefusalLog, log_event
from .routing import CHANNEL, Hint, HintKind, HintSeal, OnHint

HEADER = struct.Struct(">I")
CHALLENGE_BYTES = 32
PROOF_BYTES = 32
ACCEPTED = b"\x01"
LISTENER = b"blindrelay peer link: listener\x00"
CONNECTOR = b"blindrelay peer link: connector"
"""The roles a :func:`proof` is made for: equal lengths, so the bytes under the HMAC
cannot be read with one role's label as the other's."""
HANDSHAKE_TIMEOUT_S = 5.0
MAX_FRAME_BYTES = 8 * 1024 * 1024
"""A link frame's cap; a batch's envelopes for one worker are split across frames above
it (the largest single DELIVER is far below: protocol ``MAX_FRAME_BYTES``)."""
MAX_BUFFERED_BYTES = 4 * 1024 * 1024
"""What may wait unsent on one link: past it, a slow peer gets QUEUED hints instead
(it pages), so a stalled peer costs it latency and this worker no memory."""
MAX_UNPROVEN_LINKS = 64
"""Incoming connections that have not proven the secret, open at once; past it the
oldest is closed. A peer proves it within a round trip of connecting, and there is
one connection per peer, so only a stranger holds one for long; the bound is what
keeps strangers from taking the process's descriptors (T53)."""
RETRY_S = 1.0
"""A peer that could not be reached is tried again after this (meanwhile: NOTIFY)."""
APPLICATION_NAME = "blindrelay-links"

_REGISTER = (
    "INSERT INTO workers (worker, address, secret, started_at) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (worker) DO UPDATE SET address = excluded.address, secret = excluded.secret"
)
_LOOKUP = "SELECT address, secret FROM workers WHERE worker = $1"
_FORGET = "DELETE FROM workers WHERE worker = $1"
_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


def proof(
    secret: bytes, role: bytes, listener_challenge: bytes, connector_challenge: bytes, worker: str
) -> bytes:
    """What the end in ``role`` (:data:`LISTENER`, :data:`CONNECTOR`) of a link to
    ``worker`` sends to show it holds ``secret``: HMAC-SHA256 under it of the role, both
    ends' challenges and the listening worker's id."""
    if role not in (LISTENER, CONNECTOR):
        raise ValueError("not a link role")
    if len(listener_challenge) != CHALLENGE_BYTES or len(connector_challenge) != CHALLENGE_BYTES:
        raise ValueError("not a link challenge")
    signed = role + listener_challenge + connector_challenge + worker.encode()
    return hmac.new(secret, signed, hashlib.sha256).digest()


class _Unproven(ConnectionError):
    """The listener a worker reached did not prove it holds the secret (``link_refused``)."""


def encode_frames(envelopes: list[list[Any]]) -> list[bytes]:
    """``envelopes`` as link frames (header and body), split under :data:`MAX_FRAME_BYTES`."""
    body = msgpack.packb(envelopes)
    if len(body) <= MAX_FRAME_BYTES or len(envelopes) == 1:
        return [HEADER.pack(len(body)), body]
    half = len(envelopes) // 2
    return encode_frames(envelopes[:half]) + encode_frames(envelopes[half:])


def decode_frame(body: bytes) -> list[tuple[str, int, int, bytes]]:
    """A link frame's envelopes; ValueError if it is not one (plain msgpack values only)."""
    try:
        items = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError("not a link frame") from exc
    if not isinstance(items, list):
        raise ValueError("not a link frame")
    envelopes = []
    for item in items:
        if not isinstance(item, list) or len(item) != 4:
            raise ValueError("not a link envelope")
        handle, delivery_id, previous, data = item
        if (
            type(handle) is not str or type(delivery_id) is not int
            or type(previous) is not int or type(data) is not bytes
        ):  # fmt: skip
            raise ValueError("not a link envelope")
        envelopes.append((handle, delivery_id, previous, data))
    return envelopes


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Link:
    """One outgoing link: ready once the peer accepted our proof."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.ready = False


class PeerLinks:
    """This worker's links: a listener for its peers, a connection to each peer it sends to."""

    def __init__(
        self, url: str, worker_id: str, host: str, serves: Callable[[str], bool],
        *, seal: HintSeal,
    ) -> None:  # fmt: skip
        self.url = url
        self.seal = seal
        """The store's hint seal, for the QUEUED hints of :meth:`fallback` (``routing``)."""
        self.worker_id = worker_id
        self.host = host
        self.serves = serves
        """Whether a recipient's live connection is here (``Sessions.serves``)."""
        self.address = ""
        """``host:port`` the listener is bound to, as advertised to the peers."""
        self._secret = os.urandom(32)
        self._on_hint: OnHint = _ignore
        self._on_lost: Callable[[], None] = _nothing
        self._server: asyncio.Server | None = None
        self._db: Any = None
        self._db_lock = asyncio.Lock()
        """One operation at a time on ``_db`` (an asyncpg connection runs one)."""
        self._out: dict[str, _Link] = {}
        self._retry_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._incoming: set[asyncio.StreamWriter] = set()
        self._unproven: dict[asyncio.StreamWriter, None] = {}
        """Incoming connections not proven yet, oldest first (:data:`MAX_UNPROVEN_LINKS`)."""
        self._refusals = RefusalLog(_monotonic_ms)
        self._closed = False
        self.sent = 0
        self.received = 0
        self.fallbacks = 0
        """Envelopes sent, received, and turned into QUEUED hints (tests, logs)."""
        self.refused = 0
        """Incoming connections closed unproven: a wrong proof, or the oldest past
        :data:`MAX_UNPROVEN_LINKS` (tests, logs)."""

    async def start(self, on_hint: OnHint, on_lost: Callable[[], None]) -> None:
        """Listen, and advertise where (raises what connecting or binding raises)."""
        self._on_hint, self._on_lost = on_hint, on_lost
        self._server = await asyncio.start_server(self._accepted, self.host, 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        await self._on_database(
            _REGISTER, self.worker_id, self.address, self._secret, int(time.time() * 1000)
        )
        log_event(logging.INFO, "links_listening", address=self.address)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for link in self._out.values():
            if link.writer is not None:
                link.writer.close()
        self._out.clear()
        for writer in list(self._incoming):
            writer.close()  # its reader ends, and so does its handler
        if self._server is not None:
            self._server.close()
        if self._db is not None:
            with contextlib.suppress(Exception):  # a dead row only costs a peer a retry
                await self._on_database(_FORGET, self.worker_id)
            with contextlib.suppress(Exception):
                await self._db.close()
            self._db = None

    def disconnect(self) -> None:
        """Break every link, both ways, as a network fault would (they are made again
        on demand after :data:`RETRY_S`): for fault-injection tests and operators."""
        for worker, link in list(self._out.items()):
            self._unlink(worker, link, "disconnected")
        for writer in list(self._incoming):
            writer.close()

    # --- sending ---------------------------------------------------------------------

    def linked(self, worker: str) -> bool:
        link = self._out.get(worker)
        if link is not None:
            writer = link.writer
            return link.ready and writer is not None and not writer.is_closing()
        if worker == self.worker_id or self._closed:
            return False
        if time.monotonic() < self._retry_at.get(worker, 0.0):
            return False
        self._out[worker] = _Link()
        self._spawn(self._connect(worker))
        return False

    def send(self, worker: str, envelopes: list[list[Any]]) -> None:
        link = self._out.get(worker)
        writer = link.writer if link is not None and link.ready else None
        if (
            writer is None or writer.is_closing()
            or writer.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES
        ):  # fmt: skip
            self.fallback([envelope[0] for envelope in envelopes])
            return
        writer.writelines(encode_frames(envelopes))
        self.sent += len(envelopes)

    def fallback(self, handles: list[str]) -> None:
        """QUEUED hints for ``handles`` (committed, not carried): whoever serves one pages."""
        self.fallbacks += len(handles)
        unique = list(dict.fromkeys(handles))
        for handle in unique:
            if self.serves(handle):  # connected here since: our own NOTIFY is not heard
                self._on_hint(Hint(HintKind.QUEUED, handle, self.worker_id))
        payloads = [self.seal.seal(Hint(HintKind.QUEUED, h, self.worker_id)) for h in unique]
        self._spawn(self._notify(payloads))

    async def _notify(self, payloads: list[str]) -> None:
        try:
            await self._on_database(_NOTIFY, CHANNEL, payloads)
        except Exception as exc:  # the store is away: every worker catches up when back
            log_event(logging.WARNING, "links_notify_failed", exc_type=type(exc).__name__)

    async def _on_database(self, query: str, *args: Any) -> Any:
        """``query``'s rows on this worker's own connection, one query at a time; tried
        once more on a new connection if the old one was lost (a database restart)."""
        import asyncpg

        async with self._db_lock:
            for attempt in (1, 2):
                if self._db is None or self._db.is_closed():
                    self._db = await asyncpg.connect(
                        self.url, server_settings={"application_name": APPLICATION_NAME}
                    )
                try:
                    return await self._db.fetch(query, *args)
                except (asyncpg.PostgresConnectionError, ConnectionError, OSError):
                    self._db.terminate()
                    self._db = None
                    if attempt == 2:
                        raise
            return None

    async def _connect(self, worker: str) -> None:
        link = self._out[worker]
        address = ""
        try:
            rows = await self._on_database(_LOOKUP, worker)
            if not rows:
                raise LookupError("no such worker")
            row = rows[0]
            address = str(row["address"])
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*split_address(address)), HANDSHAKE_TIMEOUT_S
            )
            link.writer = writer
            secret = bytes(row["secret"])
            theirs = await asyncio.wait_for(
                reader.readexactly(CHALLENGE_BYTES), HANDSHAKE_TIMEOUT_S
            )
            ours = os.urandom(CHALLENGE_BYTES)
            writer.write(ours)
            # Nothing that the secret makes (our proof) or that it guards (frames) is
            # written before the listener proved it holds the secret.
            try:
                answer = await asyncio.wait_for(
                    reader.readexactly(PROOF_BYTES), HANDSHAKE_TIMEOUT_S
                )
            except (asyncio.IncompleteReadError, TimeoutError) as exc:
                raise _Unproven(type(exc).__name__) from exc
            if not hmac.compare_digest(answer, proof(secret, LISTENER, theirs, ours, worker)):
                raise _Unproven("wrong_proof")
            writer.write(proof(secret, CONNECTOR, theirs, ours, worker))
            if await asyncio.wait_for(reader.readexactly(1), HANDSHAKE_TIMEOUT_S) != ACCEPTED:
                raise ConnectionError("refused")
        except _Unproven as exc:
            log_event(
                logging.WARNING, "link_refused", worker=worker, peer=address,
                direction="outgoing", reason=str(exc),
            )  # fmt: skip
            self._unlink(worker, link, "unproven")
            return
        except Exception as exc:
            self._unlink(worker, link, type(exc).__name__)
            return
        link.ready = True
        log_event(logging.INFO, "link_up", worker=worker)
        # The peer never writes after accepting: its end (or an error) is the link's end.
        with contextlib.suppress(Exception):
            await reader.read(1)
        self._unlink(worker, link, "closed")

    def _unlink(self, worker: str, link: _Link, reason: str) -> None:
        if self._out.get(worker) is link:
            del self._out[worker]
        if link.writer is not None:
            link.writer.close()
        self._retry_at[worker] = time.monotonic() + RETRY_S
        if not self._closed:
            log_event(logging.INFO, "link_down", worker=worker, reason=reason)

    # --- receiving -------------------------------------------------------------------

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        authenticated = False
        self._incoming.add(writer)
        self._admit(writer)
        try:
            ours = os.urandom(CHALLENGE_BYTES)
            writer.write(ours)
            theirs = await asyncio.wait_for(
                reader.readexactly(CHALLENGE_BYTES), HANDSHAKE_TIMEOUT_S
            )
            writer.write(proof(self._secret, LISTENER, ours, theirs, self.worker_id))
            answer = await asyncio.wait_for(reader.readexactly(PROOF_BYTES), HANDSHAKE_TIMEOUT_S)
            expected = proof(self._secret, CONNECTOR, ours, theirs, self.worker_id)
            if not hmac.compare_digest(answer, expected):
                self._refused(writer, "wrong_proof")
                return
            if writer not in self._unproven:
                return  # closed as the oldest while its proof was on the way
            del self._unproven[writer]
            writer.write(ACCEPTED)
            authenticated = True
            while True:
                (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if size > MAX_FRAME_BYTES:
                    raise ValueError("link frame too large")
                self.received_frame(await reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError) as exc:
            if authenticated and not self._closed:
                log_event(logging.INFO, "link_ended", exc_type=type(exc).__name__)
        finally:
            writer.close()
            self._incoming.discard(writer)
            self._unproven.pop(writer, None)
            if authenticated and not self._closed:
                self._on_lost()  # frames written before the end may be lost: page again

    def _admit(self, writer: asyncio.StreamWriter) -> None:
        """Count ``writer`` as unproven, closing the oldest unproven connection if that
        makes one too many (its handler's read ends, and so does the handler)."""
        while len(self._unproven) >= MAX_UNPROVEN_LINKS:
            oldest = next(iter(self._unproven))
            del self._unproven[oldest]
            oldest.close()
            self._refused(oldest, "too_many_unproven")
        self._unproven[writer] = None

    def _refused(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self.refused += 1
        peer = str(writer.get_extra_info("peername"))
        self._refusals.log(
            logging.WARNING, "link_refused", peer=peer, direction="incoming", reason=reason
        )

    def received_frame(self, body: bytes) -> None:
        """Push what a peer committed for recipients here; bounce the others."""
        envelopes = decode_frame(body)
        self.received += len(envelopes)
        bounced = []
        serves, on_hint = self.serves, self._on_hint
        for handle, delivery_id, previous, data in envelopes:
            if serves(handle):
                on_hint(Hint(HintKind.DELIVER, handle, "", previous, (delivery_id,), data))
            else:
                bounced.append(handle)
        if bounced:
            self.fallback(bounced)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


def _ignore(_hint: Hint) -> None:
    return None


def _nothing() -> None:
    return None
