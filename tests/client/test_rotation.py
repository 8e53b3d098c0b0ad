"""Identity rotation and its recovery (client/rotation.py, SPEC §3.4).

The decisions are tested on a keystore alone; the SDK's use of them against an
in-process relay on 127.0.0.1 port 0, where each test produces one interruption
deterministically (no sleeps). The same recovery after SIGKILL at each step of a
rotation is tests/client/test_rotation_crash.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.rotation import KeyNotCurrent, Rotation
from blindrelay.client.sdk import Backoff, Client, Message
from blindrelay.client.sessions import SessionManager
from blindrelay.client.transport import ConnectionLost, WebSocketTransport
from blindrelay.protocol import codec, frames, limits
from blindrelay.protocol.business import BusinessProfile, open_profile
from blindrelay.protocol.crypto.keys import IdentityKeyPair, signed_prekey_message, verify_signature
from blindrelay.protocol.errors import AuthenticationFailed, StaleStatement
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, serve

from ..relays import FakeClock, relay_at
from .harness import (
    Inbox,
    business_online,
    local_ms,
    online,
    shop_open_on_weekdays,
    skewed_relay_clock,
)

T = TypeVar("T")
TIMEOUT_S = 10.0
FAST = Backoff(initial=0.01, factor=2.0, cap=0.05)
REGISTRATIONS = {"register_burst": 1_000, "register_rate_per_h": 1_000.0}
"""Every client of these tests comes from 127.0.0.1 (SPEC §4.6.1)."""


# --- The decisions, on a keystore alone ---------------------------------------------


def account() -> tuple[MemoryKeyStore, SessionManager, Rotation]:
    store = MemoryKeyStore()
    sessions = SessionManager(store)
    sessions.create_identity("owner", "user")
    return store, sessions, Rotation(store, sessions, clock=lambda: 0)


def signed_by_our_identity(store: MemoryKeyStore) -> bool:
    identity, prekey = store.get_identity(), store.current_signed_prekey()
    assert identity is not None and prekey is not None
    try:
        verify_signature(
            identity.identity_public, signed_prekey_message(prekey.public_key), prekey.signature
        )
    except Exception:
        return False
    return True


def test_the_new_key_is_kept_before_a_request_can_name_it_and_reused_until_finished() -> None:
    store, sessions, rotation = account()
    new = rotation.begin(lambda n: bytes(range(n)))
    assert store.rotating_identity_seed() == new.seed
    assert rotation.begin(lambda n: bytes(n)).public == new.public  # another would orphan it
    request = rotation.request(7, bytes(32), 1_000, new)
    assert (request.id, request.new_identity_key) == (7, new.public)

    rotation.finish(new)
    assert sessions.keypair.public == new.public and rotation.pending() is None
    assert rotation.begin(lambda n: bytes(n)).public != new.public


def test_finishing_re_signs_a_business_profile_with_the_new_key_to_be_published() -> None:
    """SPEC §3.4: the relay drops the profile the old key signed; ours is re-signed with
    the new key in the same keystore transaction as the key is replaced (so the away
    replies it decides keep working) and kept as not published until the relay took it."""
    store, sessions, rotation = account()
    old = sessions.keypair
    profile = BusinessProfile(
        v=1, handle="owner", display_name="Owner's", description="", timezone="UTC",
        hours=(), exceptions=(), issued_at=1_000,
    )  # fmt: skip
    store.set_business_profile(profile.sign(old.sign))
    new = rotation.begin(lambda n: bytes(range(n)))
    rotation.finish(new)
    signed = store.business_profile()
    assert signed is not None and open_profile(signed, new.public, "owner") == profile
    assert not store.business_profile_published()


def test_login_offers_the_pending_key_then_the_current_one_then_gives_up() -> None:
    _, sessions, rotation = account()
    current = sessions.keypair
    new = rotation.begin(lambda n: bytes(n))
    assert rotation.login_key().public == new.public
    with pytest.raises(KeyNotCurrent):
        rotation.login_refused(new, AuthenticationFailed())
    assert rotation.login_key().public == current.public
    rotation.login_refused(current, AuthenticationFailed())  # none left: the caller raises
    assert rotation.login_key().public == new.public  # and the next login starts over
    assert rotation.pending() is not None  # both keys kept


def test_a_welcome_for_the_pending_key_finishes_the_rotation() -> None:
    store, sessions, rotation = account()
    new = rotation.begin(lambda n: bytes(n))
    assert rotation.welcomed(new) is None
    assert sessions.keypair.public == new.public and rotation.pending() is None
    assert signed_by_our_identity(store)


def test_a_welcome_for_the_current_key_leaves_the_rotation_to_be_sent_again() -> None:
    store, sessions, rotation = account()
    current = sessions.keypair
    new = rotation.begin(lambda n: bytes(n))
    resend = rotation.welcomed(current)
    assert resend is not None and resend.public == new.public
    assert sessions.keypair.public == current.public and store.rotating_identity_seed() == new.seed


def test_a_seed_left_after_the_identity_was_replaced_is_finished_with_a_prekey_of_the_new_key() -> (
    None
):
    """An older SDK could crash between replacing the identity and signing a prekey with
    it, the seed still pending: its profile must not publish the old key's prekey."""
    store, sessions, _ = account()
    sessions.prekeys_upload(1, relay_one_time=0, relay_has_signed=False)  # signed by the old key
    new = IdentityKeyPair.generate(lambda n: bytes([1]) * n)
    identity = sessions.identity
    store.set_identity(type(identity)(identity.handle, identity.account_kind,
                                      identity.relay_url, new.seed, new.public))  # fmt: skip
    store.set_rotating_identity_seed(new.seed)
    assert not signed_by_our_identity(store)

    rotation = Rotation(store, SessionManager(store), clock=lambda: 0)  # the profile reopened
    key = rotation.login_key()
    assert key.public == new.public
    assert rotation.welcomed(key) is None
    assert rotation.pending() is None and signed_by_our_identity(store)


def test_a_resent_rotation_refused_as_not_current_is_retried_once() -> None:
    _, _, rotation = account()
    with pytest.raises(KeyNotCurrent):
        rotation.resend_refused(StaleStatement())
    rotation.resend_refused(StaleStatement())  # the second in a row: left pending
    with pytest.raises(KeyNotCurrent):
        rotation.resend_refused(StaleStatement())


# --- The SDK against a relay ------------------------------------------------------


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT_S)


class RelayClock:
    """The relay's milliseconds: the wall clock's at start, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


class Refusals(logging.Handler):
    """Sets ``seen`` when the SDK logs that a rotation stays pending."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "rotation still pending" in record.getMessage():
            self.seen.set()


async def start_relay(tmp_path: Path, clock: RelayClock | None = None) -> RunningRelay:
    config = RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db", **REGISTRATIONS)
    return await serve(config, clock=clock)


async def exchange(url: str, owner: Client) -> None:
    """A new contact establishes a session with ``owner`` and both exchange a message."""
    peer = Client(MemoryKeyStore(), backoff=FAST)
    await within(peer.connect(url))
    await within(peer.register("peer"))
    await within(peer.send("owner", "hello"))
    owner_inbox, peer_inbox = owner.messages(), peer.messages()
    got = await within(anext(owner_inbox))
    assert (got.sender, got.body) == ("peer", "hello")
    await within(owner.send("peer", "hello back"))
    reply = await within(anext(peer_inbox))
    assert (reply.sender, reply.body) == ("owner", "hello back")
    assert peer.safety_number("owner") == owner.safety_number("peer")
    await owner_inbox.aclose()
    await peer_inbox.aclose()
    await peer.close()


def test_a_connection_lost_after_the_relay_took_the_new_key_recovers_at_the_automatic_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OK is lost with the connection: rotate_identity raises ConnectionLost, and the
    reconnection logs in with the pending key, which the relay holds, and adopts it."""
    rotations: list[frames.RotateIdentity] = []
    lost: list[frames.Ok] = []
    send, recv = WebSocketTransport.send, WebSocketTransport.recv

    async def noting_send(self: WebSocketTransport, data: bytes) -> None:
        frame = codec.decode(data)
        if isinstance(frame, frames.RotateIdentity):
            rotations.append(frame)
        await send(self, data)

    async def losing_the_ok(self: WebSocketTransport) -> bytes:
        data = await recv(self)
        frame = codec.decode(data)
        if isinstance(frame, frames.Ok) and rotations and not lost and frame.re == rotations[0].id:
            lost.append(frame)
            raise ConnectionLost("lost with the OK of the rotation")
        return data

    async def scenario() -> None:
        relay = await start_relay(tmp_path)
        owner = Client(MemoryKeyStore(), backoff=FAST)
        # From the start: a reader is always inside a recv call, waiting for the next one.
        monkeypatch.setattr(WebSocketTransport, "send", noting_send)
        monkeypatch.setattr(WebSocketTransport, "recv", losing_the_ok)
        try:
            await within(owner.connect(relay.url))
            await within(owner.register("owner"))
            connections = owner.connection_count
            with pytest.raises(ConnectionLost):
                await within(owner.rotate_identity())
            await within(owner.wait_online())  # the reconnection's WELCOME
            assert owner.connection_count == connections + 1
            assert lost and len(rotations) == 1  # adopted from the login, not sent again
            assert owner.sessions.identity.identity_public == rotations[0].new_identity_key
            await exchange(relay.url, owner)
        finally:
            await owner.close()
            await relay.close()

    run(scenario())


def test_a_resent_rotation_refused_twice_stays_pending_and_a_later_login_completes_it(
    tmp_path: Path,
) -> None:
    """A rotation pending from a run that died before sending it is sent again at login.
    Refused as stale (the relay's clock jumps after each WELCOME here), the relay is
    asked once more on a new connection which key it holds; refused again, the client
    stays logged in with its current key, both keys kept, and a later login completes
    the rotation."""
    clock = RelayClock()
    store = MemoryKeyStore()
    welcomes: list[frames.Welcome] = []

    def clock_jumps(welcome: frames.Welcome) -> None:
        welcomes.append(welcome)
        clock.now += 2 * limits.STATEMENT_SKEW_MS  # issued_at, from HELLO, is stale

    async def scenario() -> None:
        relay = await start_relay(tmp_path, clock)
        try:
            first = Client(store, backoff=FAST)
            await within(first.connect(relay.url))
            await within(first.register("owner"))
            old = first.sessions.identity.identity_public
            await first.close()
            new = IdentityKeyPair.generate(lambda n: bytes([7]) * n)
            store.set_rotating_identity_seed(new.seed)  # what rotate_identity keeps first

            jumpy = Client(store, backoff=FAST, on_connected=clock_jumps)
            refusals = Refusals()
            logging.getLogger("blindrelay.client").addHandler(refusals)
            try:
                await within(jumpy.connect(relay.url))
                await within(jumpy.login())
                await within(refusals.seen.wait())  # the second refusal, which is only logged
            finally:
                logging.getLogger("blindrelay.client").removeHandler(refusals)
            await within(jumpy.wait_online())  # still logged in
            assert len(welcomes) == 2  # with the current key, on two connections
            assert jumpy.sessions.identity.identity_public == old
            assert store.rotating_identity_seed() == new.seed
            await jumpy.close()

            later = Client(store, backoff=FAST)
            await within(later.connect(relay.url))
            await within(later.login())
            assert later.sessions.identity.identity_public == new.public
            assert store.rotating_identity_seed() is None
            await exchange(relay.url, later)
            await later.close()
        finally:
            await relay.close()

    run(scenario())


# --- A business's profile across a rotation (SPEC §3.4, §8.2) ------------------------


def test_a_business_that_rotates_its_key_keeps_its_profile_and_away_replies(
    tmp_path: Path,
) -> None:
    """SPEC §3.4, §8.2: the profile was signed by the old key. After a rotation the
    business's own copy must still open (its away replies are decided by it), and
    customers must be shown the profile again, signed by the new key, not refused as
    InvalidProfile for good: the relay drops the old key's profile and the SDK
    publishes it again signed by the new key."""

    async def scenario() -> None:
        zone = "Europe/Berlin"
        clock = FakeClock(local_ms(zone, "2027-01-08T23:30"))  # Friday night: closed
        async with relay_at(tmp_path, clock) as relay:
            shop = await shop_open_on_weekdays(relay.url, zone, clock)
            alice = await online(relay.url, "alice")
            before = await within(alice.business_info("shop"))
            assert before.profile is not None

            await within(shop.client.rotate_identity())
            new_key = shop.client.sessions.identity.identity_public
            assert new_key != before.identity_key
            assert shop.profile is not None and shop.profile.display_name == "Corner Shop"

            after = await within(alice.business_info("shop"))  # InvalidProfile before
            assert after.identity_key == new_key and after.key_changed
            assert after.profile is not None and after.profile.display_name == "Corner Shop"

            incoming: asyncio.Queue[Message] = asyncio.Queue()
            shop.on_message = incoming.put
            shop.start()
            bob = await online(relay.url, "bob")
            inbox = Inbox(bob)
            await within(bob.send("shop", "anyone there?"))
            assert (await within(incoming.get())).body == "anyone there?"
            assert (await inbox.next()).body == "Closed."  # no away reply came before
            await inbox.close()
            await bob.close()
            await alice.close()
            await shop.close()

    run(scenario())


def test_a_profile_a_rotation_left_unpublished_is_published_at_the_next_login(
    tmp_path: Path,
) -> None:
    """The profile re-signed by a rotation goes out after it; a client that ended before
    the relay took it (its own copy re-signed and kept as not published, the relay's
    dropped with the old key) publishes it at its next login."""

    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            shop = await business_online(relay.url, "shop")
            await within(shop.publish_profile(display_name="Corner Shop", timezone="UTC", hours=[]))
            await within(shop.client.rotate_identity())
            store = shop.client.store
            kept = store.business_profile()
            assert kept is not None and store.business_profile_published()
            await shop.client.close()
            # As the client leaves it if it ends between the rotation and PROFILE_PUT:
            store.set_business_profile(kept, published=False)
            with sqlite3.connect(relay.config.db_path) as db:
                db.execute("DELETE FROM profiles WHERE handle = 'shop'")
            alice = await online(relay.url, "alice")
            assert (await within(alice.business_info("shop"))).profile is None

            client = Client(store, backoff=FAST)
            await within(client.connect(relay.url))
            await within(client.login())
            assert store.business_profile_published()
            info = await within(alice.business_info("shop"))
            assert info.profile is not None and info.profile.display_name == "Corner Shop"
            await alice.close()
            await client.close()

    run(scenario())


def test_a_profile_put_the_relay_paces_after_a_rotation_goes_after_its_retry_after(
    tmp_path: Path,
) -> None:
    """The rotation drops the old key's profile and the SDK publishes it again, signed by
    the new key. A 402 on that PROFILE_PUT (a profile published just before, or any
    bucket right after a relay restart, SPEC §10) was logged and left to the next login
    — for a business's long-running client, days without a profile or badge for its
    customers, right after it changed its key (found in review)."""

    async def scenario() -> None:
        paced = {"profile_put_burst": 1, "profile_put_rate_per_min": 60.0}  # 1 s a token
        async with relay_at(tmp_path, **paced) as relay:
            shop = await business_online(relay.url, "shop")
            await within(shop.publish_profile(display_name="Corner Shop", timezone="UTC", hours=[]))
            await within(shop.client.rotate_identity())  # its PROFILE_PUT meets the 402
            assert shop.client.store.business_profile_published()
            alice = await online(relay.url, "alice")
            info = await within(alice.business_info("shop"))
            assert info.profile is not None and info.profile.display_name == "Corner Shop"
            await alice.close()
            await shop.close()

    run(scenario())
