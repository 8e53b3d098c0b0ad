"""Real-socket harness for relay tests: a relay on 127.0.0.1 port 0 and a raw client.

Async tests run under ``asyncio.run`` via the hook below (no plugin needed);
fixtures that must live in the test's event loop are :class:`AsyncFixture`
instances, entered by the hook before the test body runs. Nothing waits on
wall-clock time: every wait is for a frame, a close, or a writer commit,
bounded by ``TEST_TIMEOUT_S`` so a bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import connect

from blindrelay.protocol import SUBPROTOCOL
from blindrelay.protocol.channel import ClientChannel
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.crypto.keys import signed_prekey_message
from blindrelay.protocol.frames import (
    Deliver,
    Error,
    Frame,
    OneTimePreKeyRecord,
    PrekeysUpload,
    Send,
    SignedPreKeyRecord,
    Welcome,
)
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, serve

from .. import pg
from ..asyncrun import AsyncFixture, async_test_runner
from ..pg import PostgresDatabase
from ..relays import MANY_REGISTRATIONS, QUICK_TREE_HEADS, FakeClock
from ..sealed import SealedSocket

TEST_TIMEOUT_S = 10.0
F = TypeVar("F", bound=Frame)


# --- running async tests --------------------------------------------------------


pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)


# --- the relay ------------------------------------------------------------------


class RelayFixture(AsyncFixture):
    def __init__(self, config: RelayConfig, clock: FakeClock) -> None:
        self.config = config
        self.clock = clock
        self.relay: RunningRelay | None = None

    async def __aenter__(self) -> RunningRelay:
        self.relay = await serve(self.config, clock=self.clock)
        return self.relay

    async def __aexit__(self, *exc: object) -> None:
        if self.relay is not None:
            await self.relay.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


ALL_BACKENDS = ("sqlite", "postgresql")
"""A test module that sets ``BACKENDS = ALL_BACKENDS`` runs each of its tests whose relay
comes from the ``config`` fixture once per store back end (ids ``[sqlite]``,
``[postgresql]``); ``@pytest.mark.sqlite_only`` keeps one test on SQLite,
``@pytest.mark.postgresql_only`` one that needs relay processes sharing a store. The
PostgreSQL runs are marked ``postgres`` (tests/pg.py): without a server they are left
out, with one they must run. Each gets a fresh schema of the module's database."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    backends = getattr(metafunc.module, "BACKENDS", ("sqlite",))
    if metafunc.definition.get_closest_marker("postgresql_only"):
        backends = ("postgresql",)
    elif len(backends) < 2 or metafunc.definition.get_closest_marker("sqlite_only"):
        return
    metafunc.parametrize(
        "backend",
        [pytest.param(b, marks=pytest.mark.postgres) if b == "postgresql" else b for b in backends],
    )


@pytest.fixture
def backend() -> str:
    """The store back end of the ``config`` fixture's relay (see :data:`BACKENDS`)."""
    return "sqlite"


@pytest.fixture
def config(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> RelayConfig:
    if backend == "postgresql":
        database: PostgresDatabase = request.getfixturevalue("pg_database")
        return RelayConfig(
            host="127.0.0.1", port=0, store=database.fresh_schema(),
            **MANY_REGISTRATIONS, **QUICK_TREE_HEADS,
        )
    return RelayConfig(
        host="127.0.0.1", port=0, db_path=tmp_path / "relay.db",
        **MANY_REGISTRATIONS, **QUICK_TREE_HEADS,
    )


@pytest.fixture
def relay(config: RelayConfig, clock: FakeClock) -> RelayFixture:
    return RelayFixture(config, clock)


def relay_with(config: RelayConfig, clock: FakeClock, **changes: Any) -> RelayFixture:
    """A relay with other config values, for ``async with`` inside a test."""
    return RelayFixture(replace(config, **changes), clock)


def store_flags(config: RelayConfig) -> list[str]:
    """The operator's commands' flags naming a relay's store (``--db`` or ``--store``)."""
    return ["--store", config.store] if config.store else ["--db", str(config.db_path)]


def db_rows(
    where: Path | RelayConfig, sql: str, params: tuple[object, ...] = ()
) -> list[tuple[Any, ...]]:
    """Read the relay's database from outside, as an auditor would: a SQLite file, or
    the store of a relay's configuration (SQL both back ends read alike)."""
    if isinstance(where, RelayConfig):
        if where.store.startswith("postgresql://"):
            return pg.rows(where.store, sql, params)
        where = where.db_path
    conn = sqlite3.connect(where.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# --- the raw client -------------------------------------------------------------


async def sealed_connect(url: str, **connect_kwargs: Any) -> SealedSocket:
    """Connect and run the client's side of the handshake (SPEC §1.3)."""
    ws = await connect(url, **connect_kwargs)
    channel = ClientChannel(os.urandom)
    await ws.send(channel.start())
    channel.receive_handshake(await asyncio.wait_for(ws.recv(), TEST_TIMEOUT_S))
    return SealedSocket(ws, channel)


class RawClient:
    """Speaks frames directly: ClientConnection for the handshake, the codec after.

    Frames not yet asked for (pushes, other responses) wait in ``inbox``. ``ws`` seals
    and opens them in the connection's channel (:class:`SealedSocket`).
    """

    def __init__(self, ws: SealedSocket, conn: ClientConnection) -> None:
        self.ws = ws
        self.conn = conn
        self.inbox: deque[Frame] = deque()
        self._next_id = 1000
        self.key = SigningKey.generate()
        self.handle = ""

    @classmethod
    async def open(
        cls, url: str, headers: dict[str, str] | None = None, **connect_kwargs: Any
    ) -> RawClient:
        """Connect and read HELLO; ``connect_kwargs`` go to websockets' ``connect``."""
        ws = await sealed_connect(
            url, subprotocols=[SUBPROTOCOL], compression=None, max_size=None,
            additional_headers=headers, **connect_kwargs,
        )  # fmt: skip
        conn = ClientConnection(ws.channel.handshake_hash, ws.channel.relay_key)
        client = cls(ws, conn)
        conn.receive_data(await client._recv_bytes())
        assert conn.hello is not None
        return client

    @property
    def relay_key(self) -> bytes:
        assert self.conn.hello is not None
        return self.conn.hello.relay_key

    def request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def _recv_bytes(self) -> bytes:
        data = await asyncio.wait_for(self.ws.recv(), TEST_TIMEOUT_S)
        assert isinstance(data, bytes)
        return data

    async def recv(self) -> Frame:
        """The next frame from the relay, in arrival order."""
        if self.inbox:
            return self.inbox.popleft()
        return decode(await self._recv_bytes())

    async def response(self, request_id: int) -> Frame:
        """The response (or ERROR) to ``request_id``; other frames stay in the inbox."""
        for index, frame in enumerate(self.inbox):
            if getattr(frame, "re", None) == request_id:
                del self.inbox[index]
                return frame
        while True:
            frame = decode(await self._recv_bytes())
            if getattr(frame, "re", None) == request_id:
                return frame
            self.inbox.append(frame)

    async def push(self, cls: type[F]) -> F:
        """The next pushed frame of type ``cls`` (others stay queued)."""
        for index, frame in enumerate(self.inbox):
            if isinstance(frame, cls):
                del self.inbox[index]
                return frame
        while True:
            frame = decode(await self._recv_bytes())
            if isinstance(frame, cls):
                return frame
            self.inbox.append(frame)

    async def send(self, frame: Frame) -> None:
        await self.ws.send(encode(frame))

    async def request(self, make: Callable[[int], Frame]) -> Frame:
        request_id = self.request_id()
        await self.send(make(request_id))
        return await self.response(request_id)

    async def register(self, handle: str, kind: str = "user") -> Welcome:
        self.handle = handle
        request_id = self.conn.register(
            handle, kind, bytes(self.key.verify_key), lambda m: self.key.sign(m).signature
        )
        return await self._welcome(request_id)

    async def login(self, handle: str, key: SigningKey) -> Welcome:
        self.handle, self.key = handle, key
        request_id = self.conn.login(handle, lambda m: key.sign(m).signature)
        return await self._welcome(request_id)

    async def _welcome(self, request_id: int) -> Welcome:
        for data in self.conn.data_to_send():
            await self.ws.send(data)
        frame = await self.response(request_id)
        assert isinstance(frame, Welcome), frame
        return frame

    async def send_message(
        self, to: str, body: bytes, msg_id: bytes | None = None, **fields: Any
    ) -> Frame:
        msg_id = msg_id or os.urandom(16)
        fields.setdefault("intent", "chat")
        return await self.request(lambda i: Send(id=i, to=to, msg_id=msg_id, body=body, **fields))

    async def upload_prekeys(self, one_time: int = 0, first_id: int = 1) -> Frame:
        public = os.urandom(32)
        signed = SignedPreKeyRecord(
            key_id=1,
            public=public,
            signature=self.key.sign(signed_prekey_message(public)).signature,
        )
        keys = tuple(
            OneTimePreKeyRecord(key_id=first_id + n, public=os.urandom(32)) for n in range(one_time)
        )
        return await self.request(
            lambda i: PrekeysUpload(id=i, signed_prekey=signed, one_time=keys)
        )

    async def deliveries(self, count: int) -> list[Deliver]:
        return [await self.push(Deliver) for _ in range(count)]

    async def closed(self) -> int | None:
        """Wait for the relay to close the socket; its close code."""
        with contextlib.suppress(Exception):
            while True:
                frame = decode(await self._recv_bytes())
                self.inbox.append(frame)
        await self.ws.wait_closed()
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


async def until(condition: Callable[[], bool]) -> None:
    """What the relay does after a frame with no answer (an ACK, a close) happens soon:
    wait for it, up to 10 s."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the relay never got there")


def error_code(frame: Frame) -> int:
    assert isinstance(frame, Error), f"expected ERROR, got {frame!r}"
    return frame.code


class Clients(AsyncFixture):
    """Opens raw clients against a relay URL and closes them all at the end."""

    def __init__(self) -> None:
        self.opened: list[RawClient] = []

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.opened:
            with contextlib.suppress(Exception):
                await client.close()

    async def open(
        self, url: str, headers: dict[str, str] | None = None, **connect_kwargs: Any
    ) -> RawClient:
        client = await RawClient.open(url, headers, **connect_kwargs)
        self.opened.append(client)
        return client

    async def registered(
        self, url: str, handle: str, kind: str = "user", **connect_kwargs: Any
    ) -> RawClient:
        client = await self.open(url, **connect_kwargs)
        await client.register(handle, kind)
        return client

    async def logged_in(self, url: str, handle: str, key: SigningKey) -> tuple[RawClient, Welcome]:
        client = await self.open(url)
        welcome = await client.login(handle, key)
        return client, welcome


@pytest.fixture
def clients() -> Clients:
    return Clients()


# --- a writer held, an outbox settled (SPEC §6.4.5–6.4.6) ------------------------------


@contextlib.asynccontextmanager
async def released(pause: Path) -> AsyncIterator[None]:
    """Whatever happens in the test, the writer is let go before the relay closes (it
    would wait for the held batch forever)."""
    try:
        yield
    finally:
        pause.unlink(missing_ok=True)


def outbox_of(relay: RunningRelay, handle: str) -> Any:
    """The outbox of ``handle``'s live connection."""
    session = relay.ctx.sessions.get(handle)
    assert session is not None and session.outbox is not None
    return session.outbox


async def settled(relay: RunningRelay, handle: str) -> None:
    """``handle``'s first page (of its queue at login) has been read: an envelope
    decided from now on is pushed at once, not by the page after it."""
    outbox = outbox_of(relay, handle)
    await until(lambda: not getattr(outbox, "paging", True))
