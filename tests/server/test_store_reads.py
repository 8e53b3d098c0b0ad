"""Store reads answered later than asked (``Store.read``, ``RelayContext.read``).

A back end whose reads are a network round trip (PostgreSQL) answers a read in
a later loop turn. :class:`LateReads` plays that back end over real sockets:
the relay's real SQLite store, each read answered on a later loop turn (or when
the test opens its gate), everything else passed through. What must hold: a
connection's later frames wait for the read and reach the store after what it
leads to; other connections do not wait; a read's refusal is the ERROR a
synchronous one gave. And the real SQLite store answers every read before
``read`` returns, so nothing is held and nothing costs more.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol.codec import encode
from blindrelay.protocol.connection import RelayConnection
from blindrelay.protocol.crypto.keys import signed_prekey_message
from blindrelay.protocol.errors import ErrorCode, StoreUnavailable
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    Error,
    Ok,
    OneTimePreKeyRecord,
    PrekeysUpload,
    Send,
    Sent,
    SignedPreKeyRecord,
)
from blindrelay.server.config import RelayConfig
from blindrelay.server.context import RelayContext, Session
from blindrelay.server.limiters import Limiters
from blindrelay.server.registration import RegistrationPolicy
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store import Account, Done, Store, open_store

from .conftest import Clients, FakeClock, RawClient, RelayFixture, error_code


class LateReads:
    """The relay's real store, its reads answered on a later loop turn.

    Each read is run on the real store when it is answered (so it sees what is
    committed then, like a read queued behind operations). Reads about a handle in
    :attr:`gated` wait for :meth:`open_gate`. :attr:`log` is every read and operation in
    the order the handlers asked for them, as ``(kind, name, first argument)``.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.on_lost = inner.on_lost
        self.log: list[tuple[str, str, Any]] = []
        self.gated: set[str] = set()
        self._waiting: list[tuple[str, Callable[[], None]]] = []
        self.asked = asyncio.Event()
        """Set at each read asked; cleared by the test."""
        self.fail_next: Exception | None = None
        """The next read's answer instead of the store's."""

    # --- passed through ---------------------------------------------------------

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def running(self) -> bool:
        return self.inner.running

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        self.open_gate()
        await self.inner.close()

    def call(
        self,
        operation: str,
        args: list[Any] | tuple[Any, ...],
        done: Done,
        decided: Callable[[Any], None] | None = None,
    ) -> None:
        self.log.append(("call", operation, args[0] if args else None))
        self.inner.call(operation, args, done, decided)

    def call_many(self, operation: str, item: Any, done: Done) -> None:
        self.log.append(("call", operation, item[0] if item else None))
        self.inner.call_many(operation, item, done)

    def submit(self, operation: str, *args: Any) -> asyncio.Future[Any]:
        return self.inner.submit(operation, *args)

    def lease_send(self, sender: str, to: str, msg_id: bytes) -> list[int] | None:
        return self.inner.lease_send(sender, to, msg_id)

    # --- reads, later -----------------------------------------------------------

    def read(self, name: str, args: list[Any] | tuple[Any, ...], done: Done) -> None:
        self.log.append(("read", name, args[0]))
        failure, self.fail_next = self.fail_next, None

        def answer() -> None:
            if failure is not None:
                done(False, failure)
            else:
                self.inner.read(name, args, done)

        self._waiting.append((args[0], answer))
        self.asked.set()
        asyncio.get_running_loop().call_soon(self._answer)

    def open_gate(self) -> None:
        self.gated.clear()
        asyncio.get_running_loop().call_soon(self._answer)

    def _answer(self) -> None:
        """Answer what is not gated, in the order asked (a gated read holds those
        asked after it: one ordered stream)."""
        while self._waiting and self._waiting[0][0] not in self.gated:
            self._waiting.pop(0)[1]()

    @property
    def unanswered(self) -> int:
        return len(self._waiting)


class LateReadsRelay(RelayFixture):
    """A relay whose store is :class:`LateReads` around the real one."""

    async def __aenter__(self) -> RunningRelay:
        relay = await super().__aenter__()
        relay.ctx.store = LateReads(relay.ctx.store)
        return relay


@pytest.fixture
def late_relay(config: RelayConfig, clock: FakeClock) -> LateReadsRelay:
    return LateReadsRelay(config, clock)


def late(relay: RunningRelay) -> LateReads:
    store = relay.ctx.store
    assert isinstance(store, LateReads)
    return store


def together(client: RawClient, *frames: bytes) -> None:
    """Write ``frames`` as WebSocket messages in one write to the socket: the relay
    reads them in one go, so the later ones are there while the first is handled."""
    protocol = client.ws.protocol
    for data in frames:
        protocol.send_binary(client.ws.channel.encrypt(data))
    client.ws.transport.write(b"".join(protocol.data_to_send()))


def upload_frame(client: RawClient, request_id: int, key_ids: range) -> PrekeysUpload:
    public = os.urandom(32)
    signed = SignedPreKeyRecord(
        key_id=1, public=public, signature=client.key.sign(signed_prekey_message(public)).signature
    )
    keys = tuple(OneTimePreKeyRecord(key_id=n, public=os.urandom(32)) for n in key_ids)
    return PrekeysUpload(id=request_id, signed_prekey=signed, one_time=keys)


def calls_of(store: LateReads, handle: str) -> list[str]:
    return [f"{kind} {name}" for kind, name, first in store.log if first == handle]


async def test_frames_after_a_late_read_reach_the_store_after_what_it_leads_to(
    late_relay: RunningRelay, clients: Clients
) -> None:
    """PREKEYS_UPLOAD reads the account (and the upload check) before it stores; a
    BUNDLE_FETCH and a SEND behind it on the same connection must wait, or their
    operations would overtake the upload's."""
    relay, store = late_relay, late(late_relay)
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=2), Ok)
    store.log.clear()
    store.gated.add("alice")
    store.asked.clear()
    upload, fetch, send = alice.request_id(), alice.request_id(), alice.request_id()
    together(
        alice,
        encode(upload_frame(alice, upload, range(1, 4))),
        encode(BundleFetch(id=fetch, handle="bob")),
        encode(Send(id=send, to="bob", msg_id=os.urandom(16), intent="chat", body=b"hi")),
    )
    await store.asked.wait()
    # Another connection's request and answer: the relay has read on meanwhile.
    assert isinstance(await bob.send_message("nobody", b"x"), Error)
    session = relay.ctx.sessions.get("alice")
    assert session is not None and session.waiting_for_read
    assert calls_of(store, "alice") == ["read account"]  # the fetch and the send wait
    store.open_gate()
    answers = [await alice.recv() for _ in range(3)]
    assert [type(a) for a in answers] == [Ok, Bundle, Sent]
    assert [getattr(a, "re", None) for a in answers] == [upload, fetch, send]
    assert calls_of(store, "alice") == [
        "read account", "read check_prekey_upload", "call upload_prekeys",
        "call take_bundle", "call send",
    ]  # fmt: skip
    assert not session.waiting_for_read


async def test_a_late_read_holds_only_its_own_connection(
    late_relay: RunningRelay, clients: Clients
) -> None:
    relay, store = late_relay, late(late_relay)
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    carol = await clients.registered(relay.url, "carol")
    assert isinstance(await carol.upload_prekeys(one_time=1), Ok)
    store.gated.add("alice")
    store.asked.clear()
    upload = alice.request_id()
    await alice.send(upload_frame(alice, upload, range(1, 2)))
    await store.asked.wait()
    # Alice waits for her read; Bob and Carol are served meanwhile.
    assert isinstance(await bob.send_message("carol", b"to carol"), Sent)
    assert (await carol.deliveries(1))[0].body == b"to carol"
    assert isinstance(await bob.request(lambda i: BundleFetch(id=i, handle="carol")), Bundle)
    # Bob's own read is asked at once (his frame is not held); its answer comes in the
    # store's order, behind Alice's.
    store.asked.clear()
    bob_upload = bob.request_id()
    await bob.send(upload_frame(bob, bob_upload, range(1, 2)))
    await store.asked.wait()
    assert store.unanswered == 2 and not alice.inbox
    alice_session, bob_session = relay.ctx.sessions.get("alice"), relay.ctx.sessions.get("bob")
    assert alice_session is not None and bob_session is not None
    assert alice_session.waiting_for_read and bob_session.waiting_for_read
    store.open_gate()
    assert isinstance(await alice.response(upload), Ok)
    assert isinstance(await bob.response(bob_upload), Ok)


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (StoreUnavailable(retry_after_ms=250), ErrorCode.STORE_UNAVAILABLE),
        (RuntimeError("the store broke"), ErrorCode.INTERNAL_ERROR),
    ],
)
async def test_a_late_read_that_fails_is_refused_with_its_code_and_frees_the_connection(
    late_relay: RunningRelay, clients: Clients, failure: Exception, code: ErrorCode
) -> None:
    relay, store = late_relay, late(late_relay)
    alice = await clients.registered(relay.url, "alice")
    await clients.registered(relay.url, "bob")
    store.fail_next = failure
    upload, send = alice.request_id(), alice.request_id()
    together(
        alice,
        encode(upload_frame(alice, upload, range(1, 2))),
        encode(Send(id=send, to="bob", msg_id=os.urandom(16), intent="chat", body=b"hi")),
    )
    refused = await alice.recv()
    assert isinstance(refused, Error) and (refused.code, refused.re) == (code, upload)
    if code == ErrorCode.STORE_UNAVAILABLE:
        assert refused.retry_after == 250
    assert "call upload_prekeys" not in calls_of(store, "alice")  # refused: nothing stored
    sent = await alice.recv()  # the frame behind it is handled once the refusal is out
    assert isinstance(sent, Sent) and sent.re == send


async def test_a_late_reads_refusal_is_the_same_error_as_at_once(
    late_relay: RunningRelay, clients: Clients
) -> None:
    """check_prekey_upload refuses a stored id (300) and LOGIN an unknown handle (200),
    late as at once; the connection's next frame is still handled."""
    relay = late_relay
    alice = await clients.registered(relay.url, "alice")
    assert isinstance(await alice.request(lambda i: upload_frame(alice, i, range(1, 3))), Ok)
    again = await alice.request(lambda i: upload_frame(alice, i, range(2, 4)))
    assert error_code(again) == ErrorCode.INVALID_PREKEYS
    assert isinstance(await alice.request(lambda i: upload_frame(alice, i, range(3, 4))), Ok)
    stranger = await clients.open(relay.url)
    stranger.conn.login("nobody", lambda m: SigningKey.generate().sign(m).signature)
    for data in stranger.conn.data_to_send():
        await stranger.ws.send(data)
    assert error_code(await stranger.recv()) == ErrorCode.AUTH_FAILED
    await alice.close()
    _, welcome = await clients.logged_in(relay.url, "alice", alice.key)  # a late read too
    assert welcome.handle == "alice"
    logins = [first for kind, name, first in late(relay).log if name == "account_for_login"]
    assert logins == ["nobody", "alice"]


# --- the real SQLite store: answered at once, nothing held ---------------------------


class _NoHolds:
    """A transport that fails the test if anything holds the connection."""

    congested = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def flush(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        pass

    def hold(self, reason: str) -> None:
        raise AssertionError(f"held for {reason}: the SQLite store answers reads at once")

    def release(self, reason: str) -> None:
        raise AssertionError(f"released {reason}: nothing was held")


async def test_the_sqlite_store_answers_every_read_before_read_returns(tmp_path: Path) -> None:
    config = RelayConfig(db_path=tmp_path / "relay.db")
    store = open_store(config.store_url, config)
    await store.start()
    clock = FakeClock()
    try:
        await store.submit("create_account", "alice", "user", b"k" * 32, 0)
        await store.submit("upload_prekeys", "alice", b"k" * 32, None, [[1, b"p" * 32]], 10, 0)
        ctx = RelayContext(
            config=config, clock=clock, relay_key=b"r" * 32, store=store,
            limiters=Limiters.from_config(config, clock),
            registration=RegistrationPolicy(config, clock),
        )  # fmt: skip
        conn = RelayConnection(b"r" * 32, clock(), os.urandom)
        session = Session(conn, _NoHolds(), peer="127.0.0.1:40000")
        results: list[Any] = []
        alice = Account("alice", "user", b"k" * 32)
        reads: list[tuple[str, tuple[Any, ...], Any]] = [
            ("account", ("alice",), alice),
            ("account_for_login", ("alice",), alice),
            ("account_for_login", ("nobody",), None),
            ("check_prekey_upload", ("alice", [2], 10), None),
        ]
        for name, args, expected in reads:
            ctx.read(session, None, name, args, results.append)
            assert results[-1] == expected and not session.waiting_for_read  # at once
        assert len(results) == len(reads)
        ctx.read(session, None, "check_prekey_upload", ("alice", [1], 10), results.append)
        assert len(results) == len(reads) and not session.waiting_for_read  # refused at once
    finally:
        await store.close()


class _CountingReads:
    """The relay's real store, counting whether each read was answered before
    ``read`` returned (what lets ``RelayContext.read`` hold nothing)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.at_once = 0
        self.later = 0

    def read(self, name: str, args: list[Any] | tuple[Any, ...], done: Done) -> None:
        answered: list[bool] = []

        def answer(ok: bool, value: Any) -> None:
            answered.append(True)
            done(ok, value)

        self.inner.read(name, args, answer)
        if answered:
            self.at_once += 1
        else:
            self.later += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_sqlite_relay_answers_its_handlers_reads_at_once(
    relay: RunningRelay, clients: Clients
) -> None:
    counting = _CountingReads(relay.ctx.store)
    relay.ctx.store = counting  # type: ignore[assignment]
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=2), Ok)
    assert isinstance(await alice.request(lambda i: BundleFetch(id=i, handle="bob")), Bundle)
    await bob.close()
    await clients.logged_in(relay.url, "bob", bob.key)
    assert (counting.at_once, counting.later) == (3, 0)  # account, check, account_for_login
