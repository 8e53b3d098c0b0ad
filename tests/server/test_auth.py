"""Registration, login, rotation and the one-connection rule (SPEC §1.2, §3.4, §4)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    Ack,
    Deliver,
    Error,
    Frame,
    Login,
    Ok,
    Register,
    RotateIdentity,
    Send,
    Sent,
    Welcome,
)
from blindrelay.protocol.transcripts import login_transcript, rotate_transcript
from blindrelay.server.config import RelayConfig
from blindrelay.server.context import CLOSE_REPLACED
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store.sqlite.writer_process import HOLD_BEFORE_BATCH_ENV

from .conftest import (
    ALL_BACKENDS,
    Clients,
    FakeClock,
    RawClient,
    RelayFixture,
    db_rows,
    error_code,
    relay_with,
    until,
)

BACKENDS = ALL_BACKENDS


async def test_register_answers_welcome_for_a_new_account(
    relay: RunningRelay, clients: Clients
) -> None:
    client = await clients.open(relay.url)
    welcome = await client.register("airline", "business")
    assert (welcome.handle, welcome.kind, welcome.queued) == ("airline", "business", 0)
    assert (welcome.one_time_prekeys, welcome.has_signed_prekey) == (0, False)


async def test_registering_a_taken_handle_is_refused(relay: RunningRelay, clients: Clients) -> None:
    await clients.registered(relay.url, "alice")
    second = await clients.open(relay.url)
    request_id = second.conn.register(
        "alice", "user", bytes(second.key.verify_key), lambda m: second.key.sign(m).signature
    )
    for data in second.conn.data_to_send():
        await second.ws.send(data)
    assert error_code(await second.response(request_id)) == ErrorCode.HANDLE_TAKEN


async def test_login_with_the_account_key_succeeds(relay: RunningRelay, clients: Clients) -> None:
    alice = await clients.registered(relay.url, "alice")
    await alice.close()
    _, welcome = await clients.logged_in(relay.url, "alice", alice.key)
    assert (welcome.handle, welcome.kind) == ("alice", "user")


async def test_login_with_a_wrong_key_fails_and_closes(
    relay: RunningRelay, clients: Clients
) -> None:
    await clients.registered(relay.url, "alice")
    attacker = await clients.open(relay.url)
    request_id = attacker.conn.login("alice", lambda m: SigningKey.generate().sign(m).signature)
    for data in attacker.conn.data_to_send():
        await attacker.ws.send(data)
    assert error_code(await attacker.response(request_id)) == ErrorCode.AUTH_FAILED
    assert await attacker.closed() == 1008


async def test_login_to_an_unknown_handle_fails_like_a_wrong_key(
    relay: RunningRelay, clients: Clients
) -> None:
    client = await clients.open(relay.url)
    key = SigningKey.generate()
    request_id = client.conn.login("nobody", lambda m: key.sign(m).signature)
    for data in client.conn.data_to_send():
        await client.ws.send(data)
    frame = await client.response(request_id)
    assert error_code(frame) == ErrorCode.AUTH_FAILED and frame.reason is None  # type: ignore[union-attr]


async def test_a_replayed_login_signature_is_refused(relay: RunningRelay, clients: Clients) -> None:
    alice = await clients.registered(relay.url, "alice")
    # A signature over an earlier connection's challenge, captured and replayed.
    captured = alice.key.sign(
        login_transcript(alice.relay_key, alice.conn.hello.challenge, "alice", handshake_hash=alice.ws.channel.handshake_hash)  # type: ignore[union-attr]
    ).signature
    replayer = await clients.open(relay.url)
    frame = await replayer.request(lambda i: Login(id=i, handle="alice", signature=captured))
    assert error_code(frame) == ErrorCode.AUTH_FAILED


async def test_an_expired_challenge_is_refused(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    late = await clients.open(relay.url)
    clock.advance(limits.CHALLENGE_TTL_MS + 1)
    request_id = late.conn.login("alice", lambda m: alice.key.sign(m).signature)
    for data in late.conn.data_to_send():
        await late.ws.send(data)
    assert error_code(await late.response(request_id)) == ErrorCode.AUTH_FAILED


async def test_a_signature_bound_to_another_relay_is_refused(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    client = await clients.open(relay.url)
    other_relay_key = bytes(SigningKey.generate().verify_key)
    signature = alice.key.sign(
        login_transcript(other_relay_key, client.conn.hello.challenge, "alice", handshake_hash=client.ws.channel.handshake_hash)  # type: ignore[union-attr]
    ).signature
    frame = await client.request(lambda i: Login(id=i, handle="alice", signature=signature))
    assert error_code(frame) == ErrorCode.AUTH_FAILED


async def test_a_second_proof_on_one_connection_is_refused(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    client = await clients.open(relay.url)
    taken = client.conn.register(
        "alice", "user", bytes(client.key.verify_key), lambda m: client.key.sign(m).signature
    )
    for data in client.conn.data_to_send():
        await client.ws.send(data)
    assert error_code(await client.response(taken)) == ErrorCode.HANDLE_TAKEN
    # The challenge is spent: even the right key cannot use it again.
    signature = alice.key.sign(
        login_transcript(client.relay_key, client.conn.hello.challenge, "alice", handshake_hash=client.ws.channel.handshake_hash)  # type: ignore[union-attr]
    ).signature
    frame = await client.request(lambda i: Login(id=i, handle="alice", signature=signature))
    assert error_code(frame) == ErrorCode.AUTH_FAILED


async def test_frames_before_welcome_are_unexpected(relay: RunningRelay, clients: Clients) -> None:
    client = await clients.open(relay.url)
    frame = await client.request(
        lambda i: Send(id=i, to="alice", msg_id=os.urandom(16), intent="chat", body=b"x")
    )
    assert error_code(frame) == ErrorCode.UNEXPECTED_FRAME


async def test_a_connection_acts_only_as_its_own_account(
    relay: RunningRelay, clients: Clients
) -> None:
    await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    mallory = await clients.registered(relay.url, "mallory")
    assert isinstance(await mallory.send_message("bob", b"hi"), Sent)
    # No frame names the acting account: the relay stamps the proven handle.
    assert (await bob.push(Deliver)).sender == "mallory"


async def test_a_new_login_closes_the_previous_connection_with_4000(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await clients.logged_in(relay.url, "alice", alice.key)
    assert await alice.closed() == 4000
    assert alice.ws.close_reason == "replaced"


async def test_unauthenticated_connections_are_closed_after_the_auth_timeout(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §1.2.2: at AUTH_TIMEOUT_S, not some multiple of it (the bound is what limits
    the descriptors a source's connections hold, with MAX_UNAUTHENTICATED_PER_SOURCE)."""
    async with relay_with(config, clock, auth_timeout_s=0.3) as running:
        idle = await clients.open(running.url)
        assert await asyncio.wait_for(idle.closed(), 2.0) == 1008


async def test_a_connection_that_never_starts_the_handshake_is_closed_without_a_frame(
    config: RelayConfig, clock: FakeClock
) -> None:
    """SPEC §1.3.7: closed with 1008 at the authentication timeout; no ERROR can be sent
    outside the channel, so nothing at all is (HELLO waited for the handshake too)."""
    async with relay_with(config, clock, auth_timeout_s=0.05) as running:
        async with connect(running.url, subprotocols=[SUBPROTOCOL], compression=None) as ws:  # type: ignore[list-item]
            received = []
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    received.append(message)
        assert received == []
        assert ws.close_code == 1008


def _rotation(
    client_key: SigningKey, new_key: SigningKey, relay_key: bytes, handle: str, issued_at: int
) -> tuple[bytes, bytes]:
    transcript = rotate_transcript(
        relay_key, handle, bytes(client_key.verify_key), bytes(new_key.verify_key), issued_at
    )
    return client_key.sign(transcript).signature, new_key.sign(transcript).signature


async def test_rotation_replaces_the_key_and_deletes_prekeys(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    assert isinstance(await alice.upload_prekeys(one_time=3), Ok)
    new_key = SigningKey.generate()
    old_sig, new_sig = _rotation(alice.key, new_key, alice.relay_key, "alice", clock.now)
    frame = await alice.request(
        lambda i: RotateIdentity(
            id=i, new_identity_key=bytes(new_key.verify_key), issued_at=clock.now,
            old_signature=old_sig, new_signature=new_sig,
        )
    )  # fmt: skip
    assert isinstance(frame, Ok)
    await alice.close()
    old_login = await clients.open(relay.url)
    request_id = old_login.conn.login("alice", lambda m: alice.key.sign(m).signature)
    for data in old_login.conn.data_to_send():
        await old_login.ws.send(data)
    assert error_code(await old_login.response(request_id)) == ErrorCode.AUTH_FAILED
    _, welcome = await clients.logged_in(relay.url, "alice", new_key)
    assert (welcome.has_signed_prekey, welcome.one_time_prekeys) == (False, 0)


async def test_rotation_with_a_bad_signature_is_an_invalid_statement(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    new_key = SigningKey.generate()
    _, new_sig = _rotation(alice.key, new_key, alice.relay_key, "alice", clock.now)
    forged, _ = _rotation(SigningKey.generate(), new_key, alice.relay_key, "alice", clock.now)
    frame = await alice.request(
        lambda i: RotateIdentity(
            id=i, new_identity_key=bytes(new_key.verify_key), issued_at=clock.now,
            old_signature=forged, new_signature=new_sig,
        )
    )  # fmt: skip
    assert error_code(frame) == ErrorCode.INVALID_STATEMENT
    assert isinstance(await alice.upload_prekeys(), Ok)  # still open, old key still current


async def test_rotation_outside_the_clock_skew_is_stale(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    new_key = SigningKey.generate()
    issued_at = clock.now - limits.STATEMENT_SKEW_MS - 1
    old_sig, new_sig = _rotation(alice.key, new_key, alice.relay_key, "alice", issued_at)
    frame = await alice.request(
        lambda i: RotateIdentity(
            id=i, new_identity_key=bytes(new_key.verify_key), issued_at=issued_at,
            old_signature=old_sig, new_signature=new_sig,
        )
    )  # fmt: skip
    assert error_code(frame) == ErrorCode.STALE_STATEMENT


# --- a rotation and a LOGIN with the old key at once (SPEC §3.4, §4.3) ---------------


async def _handled(client: RawClient, authenticated: bool) -> None:
    """Wait until the relay has handled every frame ``client`` sent so far: a frame it
    refuses at once, without the store (103), is answered after them."""
    if authenticated:  # REGISTER after WELCOME
        frame: Frame = Register(
            id=client.request_id(), handle="nobody", kind="user",
            identity_key=bytes(32), signature=bytes(64),
        )  # fmt: skip
    else:  # an ACK before WELCOME
        frame = Ack(delivery_ids=(1,))
    await client.send(frame)
    while not isinstance(reply := await client.recv(), Error):
        client.inbox.append(reply)
    assert reply.code == ErrorCode.UNEXPECTED_FRAME


def _rotate_frame(alice: RawClient, new_key: SigningKey, now: int) -> RotateIdentity:
    old_sig, new_sig = _rotation(alice.key, new_key, alice.relay_key, "alice", now)
    return RotateIdentity(
        id=alice.request_id(), new_identity_key=bytes(new_key.verify_key), issued_at=now,
        old_signature=old_sig, new_signature=new_sig,
    )  # fmt: skip


def _login_frame(client: RawClient, handle: str, key: SigningKey) -> int:
    """Queue LOGIN on ``client``'s machine; its request id (send ``data_to_send()``)."""
    return client.conn.login(handle, lambda m: key.sign(m).signature)


@pytest.mark.sqlite_only
async def test_a_login_with_the_old_key_is_refused_once_the_rotation_committed(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SPEC §3.4, §4.3: a LOGIN succeeds only with the account's current key. One whose
    key was read before a rotation committed was welcomed after it: an attacker holding
    the leaked key alice rotates away from, logging in as she rotates, acted as her with
    it after the relay had told her OK (reproduced against a real relay in one try of 20,
    /tmp/audit-channel/poc_rotation_race.py). Held by the writer, the rotation is decided
    first, then the LOGIN's count, which finds the key replaced: AUTH_FAILED."""
    hold = tmp_path / "hold"
    monkeypatch.setenv(HOLD_BEFORE_BATCH_ENV, str(hold))
    async with RelayFixture(config, clock) as relay:
        try:
            alice = await clients.registered(relay.url, "alice")
            attacker = await clients.open(relay.url)
            hold.touch()
            rotate = _rotate_frame(alice, SigningKey.generate(), clock.now)
            await alice.send(rotate)
            await _handled(alice, authenticated=True)  # read the key, asked the writer
            login_id = _login_frame(attacker, "alice", alice.key)
            for data in attacker.conn.data_to_send():
                await attacker.ws.send(data)
            await _handled(attacker, authenticated=False)  # read the old key: verified
        finally:
            hold.unlink(missing_ok=True)
        assert isinstance(await alice.response(rotate.id), Ok)
        assert error_code(await attacker.response(login_id)) == ErrorCode.AUTH_FAILED
        assert await attacker.closed() == 1008
        await alice.upload_prekeys()  # alice is still the account's connection


@pytest.mark.sqlite_only
async def test_a_rotation_is_refused_once_a_newer_login_of_the_account_committed(
    config: RelayConfig, clients: Clients, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SPEC §3.4: only the account's newest connection rotates its key. A LOGIN with the
    old key counted before the rotation committed made that connection the account's,
    and the rotation then replaced the key under it: a session authenticated by a key
    that was no longer the account's. Now the rotation is refused and the key stays."""
    hold = tmp_path / "hold"
    monkeypatch.setenv(HOLD_BEFORE_BATCH_ENV, str(hold))
    async with RelayFixture(config, clock) as relay:
        try:
            alice = await clients.registered(relay.url, "alice")
            attacker = await clients.open(relay.url)
            hold.touch()
            login_id = _login_frame(attacker, "alice", alice.key)
            for data in attacker.conn.data_to_send():
                await attacker.ws.send(data)
            await _handled(attacker, authenticated=False)  # verified, counting asked for
            await alice.send(_rotate_frame(alice, SigningKey.generate(), clock.now))
            await _handled(alice, authenticated=True)
        finally:
            hold.unlink(missing_ok=True)
        assert isinstance(await attacker.response(login_id), Welcome)
        assert await alice.closed() == CLOSE_REPLACED
        await until(lambda: relay.ctx.sessions.get("alice") is not None)
        await relay.ctx.store.submit("noop")  # the rotation's job is done
        rows = db_rows(config, "SELECT identity_key FROM accounts WHERE handle = 'alice'")
        assert rows == [(bytes(alice.key.verify_key),)]  # the key the live session proved
