"""Our signed prekey is rotated and its old private key deleted (client/sessions.py,
client/prekeys.py; SPEC §13.3, X3DH §3.2 and §4.6).

Found in review: a signed prekey was made only when the relay held none and never
deleted, so a first message sent without a one-time prekey had no forward secrecy and
stayed replayable for the life of the account. Now at each login a signed prekey a
week old is replaced, the relay's OK starts the old one's grace period (first messages
still queued for us, ``QUEUE_TTL_MS`` and a day), and after it the private key goes.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore, SignedPreKeyRecord
from blindrelay.client.prekeys import PrekeyPublisher
from blindrelay.client.sessions import (
    ONE_TIME_PREKEY_TARGET,
    SIGNED_PREKEY_GRACE_MS,
    SIGNED_PREKEY_ROTATION_MS,
    SessionManager,
)
from blindrelay.client.transport import ConnectionLost
from blindrelay.protocol import frames, limits
from blindrelay.protocol.content import Content, Text, encode_content
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    SignedPreKey,
    signed_prekey_message,
    verify_signature,
)
from blindrelay.protocol.errors import InvalidKey

from ..relays import relay_at
from .fake_relay import welcome
from .harness import Inbox, Requests, back_online, online, run, within

DAY = 24 * 3600 * 1000
T0 = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Bob:
    """An account whose logins are driven by hand: WELCOME in, the upload answered."""

    def __init__(self, seed: int = 2) -> None:
        self.clock = Clock()
        self.sessions = SessionManager(
            MemoryKeyStore(), rng=random.Random(seed).randbytes, clock=self.clock
        )
        self.sessions.create_identity("bob", "user")
        self.publisher = PrekeyPublisher(self.sessions)
        self.relay_signed: frames.SignedPreKeyRecord | None = None
        """The signed prekey the relay serves (what it took last)."""

    @property
    def store(self) -> MemoryKeyStore:
        return self.sessions.store  # type: ignore[return-value]

    async def login(self, *, ok: bool = True) -> frames.PrekeysUpload | None:
        """One WELCOME (the relay full of one-time prekeys); the upload answered OK or lost."""
        conn = Requests()
        hello = welcome(
            1, "bob", "user", one_time_prekeys=ONE_TIME_PREKEY_TARGET,
            has_signed_prekey=self.relay_signed is not None,
        )  # fmt: skip
        task = asyncio.ensure_future(self.publisher.welcomed(conn, hello))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        if not conn.sent:
            await within(task)
            return None
        ((upload, answer),) = conn.sent
        if ok:
            answer.set_result(frames.Ok(re=upload.id))
            await within(task)
            if upload.signed_prekey is not None:
                self.relay_signed = upload.signed_prekey
        else:
            answer.set_exception(ConnectionLost("dropped"))
            with pytest.raises(ConnectionLost):
                await within(task)
        return upload

    def bundle(self) -> frames.Bundle:
        """What a fetch now gets: the relay's signed prekey, no one-time prekey."""
        assert self.relay_signed is not None
        identity = self.sessions.identity
        return frames.Bundle(
            re=1, handle="bob", kind="user", identity_key=identity.identity_public,
            signed_prekey=self.relay_signed,
        )  # fmt: skip


def first_message(to: Bob, sender: str, seed: int) -> frames.Deliver:
    """A first message to ``to`` from a new account, on the bundle the relay serves now."""
    them = SessionManager(MemoryKeyStore(), rng=random.Random(seed).randbytes)
    them.create_identity(sender, "user")
    them.start_session(to.bundle())
    msg_id = random.Random(seed).randbytes(16)
    body = them.encrypt("bob", encode_content(Content(msg_id, Text(f"from {sender}"))))
    return frames.Deliver(
        delivery_id=seed, sender=sender, sender_kind="user", msg_id=msg_id, intent="chat",
        sent_at=T0, body=body,
    )  # fmt: skip


def test_the_rotation_period_and_the_grace_period() -> None:
    assert SIGNED_PREKEY_ROTATION_MS == 7 * DAY
    assert SIGNED_PREKEY_GRACE_MS == limits.QUEUE_TTL_MS + DAY


async def test_a_signed_prekey_a_week_old_is_replaced_at_login() -> None:
    bob = Bob()
    first = await bob.login()
    assert first is not None and first.signed_prekey is not None

    bob.clock.now += 7 * DAY - 1
    assert await bob.login() is None  # not yet

    bob.clock.now += 1
    upload = await bob.login()
    assert upload is not None and upload.signed_prekey is not None and not upload.one_time
    new = upload.signed_prekey
    assert new.key_id != first.signed_prekey.key_id and new.public != first.signed_prekey.public
    verify_signature(bob.sessions.identity.identity_public, signed_prekey_message(new.public),
                     new.signature)  # fmt: skip
    current = bob.store.current_signed_prekey()
    assert current is not None and current.key_id == new.key_id
    assert bob.store.published_signed_prekey() == new.key_id
    assert bob.store.load_signed_prekey(first.signed_prekey.key_id) is not None  # grace
    assert await bob.login() is None  # the relay holds it: nothing more to send


async def test_a_retired_signed_prekey_reads_queued_first_messages_until_its_grace_ends() -> None:
    bob = Bob()
    await bob.login()
    old = bob.relay_signed
    assert old is not None
    queued = [first_message(bob, f"user{i}", 10 + i) for i in range(2)]  # queued for bob

    bob.clock.now += 8 * DAY
    await bob.login()  # rotated; the relay's OK retires the old one now
    retired_at = bob.clock.now
    assert bob.relay_signed is not None and bob.relay_signed.key_id != old.key_id
    assert bob.store.retired_signed_prekeys() == {old.key_id: retired_at}

    bob.clock.now = retired_at + limits.QUEUE_TTL_MS  # the last day it can still be queued
    await bob.login()
    incoming = bob.sessions.receive(queued[0])
    assert incoming is not None and incoming.content.body == Text("from user0")

    bob.clock.now = retired_at + SIGNED_PREKEY_GRACE_MS
    await bob.login()
    assert bob.store.load_signed_prekey(old.key_id) is None  # the private key is gone
    assert old.key_id not in bob.store.retired_signed_prekeys()
    with pytest.raises(InvalidKey):
        bob.sessions.receive(queued[1])
    later = first_message(bob, "carol", 30)  # on the key the relay serves now
    assert bob.sessions.receive(later) is not None


async def test_a_rotation_whose_upload_failed_retires_nothing_and_is_sent_again() -> None:
    bob = Bob()
    await bob.login()
    old = bob.relay_signed
    assert old is not None

    bob.clock.now += 8 * DAY
    lost = await bob.login(ok=False)
    assert lost is not None and lost.signed_prekey is not None
    assert bob.store.retired_signed_prekeys() == {}  # the relay may still serve the old one

    bob.clock.now += 3600 * 1000
    again = await bob.login()  # the relay said it has one: it is not ours yet
    assert again is not None and again.signed_prekey == lost.signed_prekey
    assert bob.store.retired_signed_prekeys() == {old.key_id: bob.clock.now}
    assert bob.store.load_signed_prekey(old.key_id) is not None


async def test_prekeys_low_carries_a_due_rotation_and_its_ok_retires_the_old_one() -> None:
    bob = Bob()
    await bob.login()
    old = bob.relay_signed
    assert old is not None
    bob.clock.now += 8 * DAY
    conn = Requests()
    bob.publisher.running_low(conn, 3)  # type: ignore[arg-type]
    ((upload, answer),) = conn.sent
    assert upload.signed_prekey is not None and upload.signed_prekey.key_id != old.key_id
    answer.set_result(frames.Ok(re=upload.id))
    await asyncio.sleep(0)
    assert bob.store.published_signed_prekey() == upload.signed_prekey.key_id
    assert bob.store.retired_signed_prekeys() == {old.key_id: bob.clock.now}


async def test_a_signed_prekey_of_an_earlier_identity_key_is_deleted_at_login() -> None:
    """An older SDK kept the old key's signed prekeys after an identity rotation."""
    bob = Bob()
    await bob.login()
    earlier = IdentityKeyPair.generate(random.Random(5).randbytes)
    (key_id,) = bob.store.allocate_prekey_ids(1)
    prekey = SignedPreKey.generate(earlier, key_id, random.Random(6).randbytes)
    bob.store.store_signed_prekey(SignedPreKeyRecord(
        key_id, prekey.keypair.private, prekey.public, prekey.signature, T0 - DAY,
    ))  # fmt: skip
    await bob.login()
    assert bob.store.load_signed_prekey(key_id) is None
    assert bob.store.current_signed_prekey() is not None


async def test_a_profile_from_before_rotation_rotates_and_retires_its_signed_prekey() -> None:
    """No record of what the relay took: the current one is what it serves."""
    bob = Bob()
    upload = bob.sessions.prekeys_upload(1, relay_one_time=0, relay_has_signed=False)
    assert upload is not None and upload.signed_prekey is not None
    bob.relay_signed = upload.signed_prekey  # taken, as an older SDK did it: no record
    assert bob.store.published_signed_prekey() is None
    assert await bob.login() is None
    bob.clock.now += 8 * DAY
    rotated = await bob.login()
    assert rotated is not None and rotated.signed_prekey is not None
    assert bob.store.retired_signed_prekeys() == {upload.signed_prekey.key_id: bob.clock.now}


# --- Against a real relay ---------------------------------------------------------------


def test_a_rotated_signed_prekey_is_what_the_relay_serves(tmp_path: Path) -> None:
    """A week later bob's login publishes a new signed prekey; past the grace the old one
    is gone, and a first message started on a bundle fetched then still reads."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            clock = Clock()
            clock.now = 2_000_000_000_000
            store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=store, clock=clock)
            first = store.current_signed_prekey()
            await bob.close()
            assert first is not None

            clock.now += 8 * DAY
            bob = await back_online(relay.url, store, clock=clock)
            current = store.current_signed_prekey()
            assert current is not None and current.key_id != first.key_id
            assert store.published_signed_prekey() == current.key_id
            await bob.close()

            clock.now += SIGNED_PREKEY_GRACE_MS
            bob = await back_online(relay.url, store, clock=clock)  # rotates again
            assert store.load_signed_prekey(first.key_id) is None
            alice = await online(relay.url, "alice")
            inbox = Inbox(bob)
            await within(alice.send("bob", "hello"))
            message = await inbox.next()
            assert message.body == "hello"
            await inbox.close()
            await bob.close()
            await alice.close()

    run(scenario())
