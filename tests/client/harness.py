"""What the SDK's tests share: clients online against a relay, an inbox reader,
businesses and their customers, waits that fail instead of hanging.

Each test starts its own relay in ``tmp_path`` (``relay_at``, tests/relays.py)
and closes everything it opened. Every wait is on a future or an event with a
timeout (:func:`within`); nothing sleeps. Test modules import from here, never
from each other.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import nacl.pwhash.argon2id as argon2id
import pytest

from blindrelay.client.business import Business
from blindrelay.client.keystore import KeyStore, MemoryKeyStore, open_profile
from blindrelay.client.sdk import Backoff, Client, Message, ReceiptEvent
from blindrelay.protocol import frames
from blindrelay.protocol.business import OpeningHours
from blindrelay.protocol.crypto.keys import IdentityKeyPair, SignedPreKey
from blindrelay.protocol.errors import NotFound, StoreUnavailable
from blindrelay.protocol.signed import ConsentStatement
from blindrelay.server import relay as relay_module
from blindrelay.server.config import RelayConfig
from blindrelay.server.store import open_store

from ..relays import FakeClock
from ..server.conftest import RawClient
from ..server.consent_helpers import stated

T = TypeVar("T")

TIMEOUT = 10.0
"""Longest wait for one step on loopback; a healthy run needs milliseconds."""
FAST = Backoff(initial=0.01, factor=2.0, cap=0.05)
"""Reconnections within milliseconds, so tests that drop a link do not wait."""
LOW_COST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
"""Argon2 costs for on-disk profiles made by tests (the real ones take seconds)."""
HOUR_MS = 3600 * 1000


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


async def once_logged(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``'s answer once a signed tree head covers what it asks for: NotFound (601)
    until then, and test relays sign one every 50 ms (tests/relays.py)."""
    for _ in range(200):
        try:
            return await call()
        except NotFound:
            await asyncio.sleep(0.05)
    raise AssertionError("no signed tree head covered it")


# --- clients ---------------------------------------------------------------------------


def make_client(store: KeyStore | None = None, **options: Any) -> Client:
    return Client(store or MemoryKeyStore(), backoff=FAST, jitter=lambda: 0.5, **options)


def cheap_profile(path: Path, passphrase: str) -> Path:
    """An empty, unregistered profile at ``path`` sealed at ``LOW_COST``, for a ``blindrelay
    chat`` whose subject is not registration: the chat registers it at its first run (it
    has no identity yet) and every run unlocks it with the costs its header records, so
    no run pays the default Argon2id (about a second of CPU each). Made through the SDK's
    public ``open_profile``: the chat itself has no way to lower the cost."""
    assert not path.exists(), f"{path} exists already"
    open_profile(path, passphrase, **LOW_COST).close()
    return path


async def online(
    url: str, handle: str, kind: str = "user", *, store: KeyStore | None = None, **options: Any
) -> Client:
    """A new account ``handle`` of ``kind``, connected and registered."""
    client = make_client(store, **options)
    await within(client.connect(url))
    await within(client.register(handle, kind))  # type: ignore[arg-type]
    return client


async def back_online(url: str, store: KeyStore, **options: Any) -> Client:
    """The account of ``store`` again, connected and logged in."""
    client = make_client(store, **options)
    await within(client.connect(url))
    await within(client.login())
    return client


class Inbox:
    """The consumer of ``client.messages()`` and of ``client.receipts()``, read an
    item at a time."""

    def __init__(self, client: Client) -> None:
        self.iterator = client.messages()
        self.receipts = client.receipts()

    async def next(self) -> Message:
        return await within(anext(self.iterator))

    async def next_receipt(self) -> ReceiptEvent:
        return await within(anext(self.receipts))

    async def close(self) -> None:
        await self.iterator.aclose()
        await self.receipts.aclose()


class Crash(Exception):
    """Stands in for the process dying at a chosen point."""


def bundle(handle: str, seed: bytes, kind: str = "user", re: int = 1) -> frames.Bundle:
    """A BUNDLE of the account whose identity seed is ``seed`` (no one-time prekey)."""
    theirs = IdentityKeyPair.from_seed(seed)
    prekey = SignedPreKey.generate(theirs, 1, os.urandom)
    return frames.Bundle(
        re=re, handle=handle, kind=kind, identity_key=theirs.public,
        signed_prekey=frames.SignedPreKeyRecord(1, prekey.public, prekey.signature),
    )  # fmt: skip


def session_with(client: Client, handle: str, seed: bytes, kind: str = "user") -> bytes:
    """Start ``client``'s session with ``handle`` from a bundle made here (no fetch), for
    the account whose identity seed is ``seed``; returns that identity key."""
    made = bundle(handle, seed, kind)
    client.sessions.start_session(made)
    return made.identity_key


# --- the relay -------------------------------------------------------------------------


def skewed_relay_clock() -> FakeClock:
    """Three hours ahead of this machine: far outside the relay's statement skew, so a
    statement accepted shows the SDK dated it by the relay's clock (SPEC §4.1, §7.4)."""
    return FakeClock(time.time_ns() // 1_000_000 + 3 * HOUR_MS)


def replace_relay_key(db_path: Path) -> None:
    """What a new operator (or another server answering at the relay's address) looks like."""
    seed = os.urandom(32)
    with sqlite3.connect(db_path) as db:
        public = IdentityKeyPair.from_seed(seed).public
        db.execute("UPDATE relay_identity SET seed = ?, public_key = ?", (seed, public))
    db.close()


class OutageStore:
    """The relay's real store, whose first ``outages`` SENDs fail as in a store outage
    (SPEC §6.3: ERROR 902 with retry_after) — after the envelope was committed for the
    first, as when the connection to PostgreSQL drops between COMMIT and its answer."""

    def __init__(self, store: Any, outages: int, operation: str = "send") -> None:
        self.store = store
        self.outages = outages
        self.operation = operation
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def call(self, operation: str, args: Any, done: Any, decided: Any = None) -> None:
        if operation != self.operation or self.refused >= self.outages:
            self.store.call(operation, args, done, decided)
            return
        self.refused += 1
        unavailable = StoreUnavailable(retry_after_ms=20)
        if self.refused == 1:  # committed, but the answer (and any decision) was lost
            self.store.call(operation, args, lambda ok, value: done(False, unavailable))
        else:
            done(False, unavailable)


def store_outage(
    monkeypatch: pytest.MonkeyPatch, outages: int, operation: str = "send"
) -> list[OutageStore]:
    """Relays started from now on in this test open their store behind an :class:`OutageStore`
    (listed in the order they were opened)."""
    stores: list[OutageStore] = []

    def open_with_outage(url: str, config: RelayConfig) -> Any:
        stores.append(OutageStore(open_store(url, config), outages, operation))
        return stores[-1]

    monkeypatch.setattr(relay_module, "open_store", open_with_outage)
    return stores


# --- consent and businesses ------------------------------------------------------------


class Statements:
    """Collects the statements a client is forwarded; wait for the n-th."""

    def __init__(self) -> None:
        self.seen: list[ConsentStatement] = []
        self._changed = asyncio.Event()

    def __call__(self, statement: ConsentStatement) -> None:
        self.seen.append(statement)
        self._changed.set()

    async def wait_for(self, count: int) -> list[ConsentStatement]:
        async def wait() -> None:
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()

        await within(wait())
        return self.seen


async def business_online(url: str, handle: str, **options: Any) -> Business:
    """A business account; the statements it hears are in ``business.received``."""
    received = Statements()
    client_options = {k: options.pop(k) for k in ("clock", "operator_key") if k in options}
    client = await online(url, handle, "business", **client_options)
    business = Business(client, on_consent_change=received, on_block=received, **options)
    business.received = received  # type: ignore[attr-defined]
    return business


def local_ms(zone: str, text: str) -> int:
    """``text`` (ISO, no zone) as wall time in ``zone``, in ms since the epoch."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


async def shop_open_on_weekdays(url: str, zone: str, clock: FakeClock) -> Business:
    """Business ``shop``, open Monday to Friday 9:00-18:00 in ``zone`` by its published
    profile, whose away message is ``Closed.`` (SPEC §8.2)."""
    shop = await business_online(url, "shop", clock=clock, away_message="Closed.")
    await within(
        shop.publish_profile(
            display_name="Corner Shop",
            timezone=zone,
            hours=[OpeningHours(day, 9 * 60, 18 * 60) for day in range(5)],
        )
    )
    return shop


async def consented(business: Business, handles: list[str], category: str = "utility") -> None:
    """Until ``business`` holds each customer's grant of ``category`` (they are forwarded)."""
    for handle in handles:
        await business.wait_for_consent(handle, category, timeout=TIMEOUT)


MIX = ("granted utility", "granted marketing", "denied", "revoked", "blocked", "never asked")
"""Customer i is in state MIX[i % 6]; the statements each state takes, in order:"""
STATEMENTS: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {
    "granted utility": [("grant", ("utility",))],
    "granted marketing": [("grant", ("marketing",))],
    "denied": [("deny", ("utility",))],
    "revoked": [("grant", ("utility",)), ("revoke", ("utility",))],
    "blocked": [("grant", ("utility",)), ("block", None)],
    "never asked": [],
}


async def customer(url: str, handle: str, business: Business, state: str) -> RawClient:
    """A registered customer in ``state`` (raw protocol, cheap by the thousand), with the
    business holding a session to it."""
    raw = await RawClient.open(url)
    await raw.register(handle)
    session_with(business.client, handle, bytes(raw.key))
    hello = raw.conn.hello
    assert hello is not None
    for action, categories in STATEMENTS[state]:
        await stated(raw, action, business.handle, hello.now, categories)
    return raw


class Requests:
    """Stands in for the connection: numbers requests and keeps each one's future."""

    def __init__(self) -> None:
        self.sent: list[tuple[frames.PrekeysUpload, asyncio.Future[frames.Frame]]] = []
        self._ids = itertools.count(1)

    def next_request_id(self) -> int:
        return next(self._ids)

    def request(self, frame: frames.PrekeysUpload) -> asyncio.Future[frames.Frame]:
        future: asyncio.Future[frames.Frame] = asyncio.get_running_loop().create_future()
        self.sent.append((frame, future))
        return future
