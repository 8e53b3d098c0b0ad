"""SPEC §4 Connection and authentication: HELLO, REGISTER, LOGIN, proofs, states."""

from __future__ import annotations

import time
from dataclasses import replace

import msgpack
import pytest

from blindrelay.protocol import PROTOCOL_VERSION, limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.frames import (
    Ack,
    BundleFetch,
    Deliver,
    Error,
    Login,
    Register,
    Send,
    Sent,
    Welcome,
)
from blindrelay.protocol.transcripts import login_transcript, register_transcript

from .wire import Account, error_code, new_handle, new_msg_id, rng


def _register_frame(
    peer, account: Account, *, relay_key=None, challenge=None, key=None, handshake_hash=None
):
    transcript = register_transcript(
        relay_key or peer.hello.relay_key,
        challenge or peer.hello.challenge,
        account.handle,
        account.kind,
        account.public,
        handshake_hash=handshake_hash or peer.channel.handshake_hash,
    )
    signature = (key or account.key).sign(transcript)
    return Register(
        id=peer.next_id(),
        handle=account.handle,
        kind=account.kind,
        identity_key=account.public,
        signature=signature,
    )


def _login_frame(
    peer, account: Account, *, relay_key=None, challenge=None, key=None, request_id=None,
    handshake_hash=None,
):
    transcript = login_transcript(
        relay_key or peer.hello.relay_key, challenge or peer.hello.challenge, account.handle,
        handshake_hash=handshake_hash or peer.channel.handshake_hash,
    )
    return Login(
        id=request_id or peer.next_id(),
        handle=account.handle,
        signature=(key or account.key).sign(transcript),
    )


async def _refused_and_closed(peer, frame) -> None:
    """SPEC §4.4.1: ERROR 200 answering the proof, then the relay closes — §9: "with 1008
    (policy violation) after every other closing code (104, 105, 200)"."""
    await peer.send(frame)
    error = await peer.response(frame.id)
    assert isinstance(error, Error) and error.code == 200, error
    assert await peer.closed() == 1008
    assert peer.pending() == []


@pytest.mark.spec("4.1")
async def test_hello_carries_version_relay_key_fresh_challenge_and_clock(relay):
    """HELLO: version 2, a 32-byte relay key, a challenge "unique to this connection",
    `expires_at` CHALLENGE_TTL_MS after HELLO (POW_CHALLENGE_TTL_MS with `pow`, §4.4.1)
    and the relay clock `now`."""
    before = time.time_ns() // 1_000_000
    first = await relay.connect()
    second = await relay.connect()
    for hello in (first.hello, second.hello):
        assert hello.version == PROTOCOL_VERSION == 2
        assert len(hello.relay_key) == 32 and len(hello.challenge) == limits.CHALLENGE_BYTES
        ttl = limits.CHALLENGE_TTL_MS if hello.pow is None else limits.POW_CHALLENGE_TTL_MS
        assert hello.expires_at - hello.now == ttl
        assert abs(hello.now - before) < limits.STATEMENT_SKEW_MS
    assert first.hello.relay_key == second.hello.relay_key
    assert first.hello.challenge != second.hello.challenge


@pytest.mark.spec("4.2")
@pytest.mark.parametrize("kind", ["user", "business"])
async def test_register_answers_welcome_for_the_new_account(relay, kind):
    """SPEC: "on success it creates the account and answers WELCOME, which authenticates the
    connection" (§4.4.4 fields: nothing queued, no prekeys yet)."""
    peer = await relay.connect()
    account = Account(new_handle("reg"), kind)
    welcome = await peer.register(account)
    assert isinstance(welcome, Welcome)
    assert (welcome.handle, welcome.kind) == (account.handle, kind)
    assert (welcome.queued, welcome.one_time_prekeys, welcome.has_signed_prekey) == (0, 0, False)


@pytest.mark.spec("4.2")
async def test_register_with_a_signature_by_another_key_fails_and_closes(relay):
    """SPEC: "The relay MUST verify the signature against identity_key (proof of possession)"."""
    peer = await relay.connect()
    frame = _register_frame(peer, Account(new_handle(), "user"), key=IdentityKeyPair.generate(rng))
    await _refused_and_closed(peer, frame)


@pytest.mark.spec("4.2")
async def test_register_of_a_taken_handle_gets_201_and_spends_the_challenge(relay):
    """SPEC: "refuse a taken handle with ERROR 201 HANDLE_TAKEN"; "HANDLE_TAKEN leaves the
    connection open but the challenge is spent" (a second proof gets 200, §4.4.1)."""
    owner = await relay.user()
    peer = await relay.connect()
    taken = await peer.register(Account(owner.handle, "user"))
    assert isinstance(taken, Error) and taken.code == 201
    await _refused_and_closed(peer, _register_frame(peer, Account(new_handle(), "user")))


@pytest.mark.spec("4.2")
async def test_registration_is_not_possible_with_another_relays_key(relay):
    """The transcript binds the relay key (§4.4.2): signed for another relay, it fails."""
    peer = await relay.connect()
    frame = _register_frame(peer, Account(new_handle(), "user"), relay_key=bytes(32))
    await _refused_and_closed(peer, frame)


@pytest.mark.spec("4.3")
async def test_login_with_the_current_key_answers_welcome(relay):
    """LOGIN signed by "the account's current identity key over the login transcript"."""
    alice = await relay.business()
    again = await relay.connect()
    welcome = await again.login(alice.account)
    assert isinstance(welcome, Welcome)
    assert (welcome.handle, welcome.kind) == (alice.handle, "business")


@pytest.mark.spec("4.3")
async def test_unknown_handle_fails_exactly_like_a_wrong_signature(relay):
    """SPEC: "An unknown handle MUST fail exactly like a wrong signature (ERROR 200, same
    frame)": byte-identical answers for the same request id, and both close."""
    known = await relay.user()
    wrong_key = await relay.connect()
    unknown = await relay.connect()
    forged = Account(known.handle, "user", IdentityKeyPair.generate(rng))
    nobody = Account(new_handle("nobody"), "user")
    answers = []
    for peer, account in ((wrong_key, forged), (unknown, nobody)):
        frame = _login_frame(peer, account, request_id=41)
        await peer.send(frame)
        answer = await peer.response_raw(41)
        assert isinstance(answer.frame, Error) and (answer.frame.code, answer.frame.re) == (200, 41)
        answers.append(answer.raw)
        assert await peer.closed() is not None
    assert answers[0] == answers[1]


@pytest.mark.spec("4.4.1")
async def test_login_replayed_from_another_connection_fails_and_closes(relay):
    """SPEC: "a captured transcript is worthless on any other connection": a login signed over
    another connection's challenge gets 200 and the connection closes."""
    alice = await relay.user()
    other = await relay.connect()
    victim = await relay.connect()
    frame = _login_frame(victim, alice.account, challenge=other.hello.challenge)
    await _refused_and_closed(victim, frame)


@pytest.mark.spec("4.4.2")
async def test_login_signed_over_another_channel_fails_and_closes(relay):
    """SPEC §4.4.2: "the signature the client makes covers the forwarder's channel and the
    relay refuses it": right key, relay key and challenge, another channel's hash."""
    alice = await relay.user()
    other = await relay.connect()
    peer = await relay.connect()
    frame = _login_frame(peer, alice.account, handshake_hash=other.channel.handshake_hash)
    await _refused_and_closed(peer, frame)


@pytest.mark.spec("4.4.2")
async def test_register_signed_over_another_channel_fails_and_closes(relay):
    other = await relay.connect()
    peer = await relay.connect()
    account = Account(new_handle("chan"), "user")
    frame = _register_frame(peer, account, handshake_hash=other.channel.handshake_hash)
    await _refused_and_closed(peer, frame)


@pytest.mark.spec("4.4.1")
async def test_login_signed_for_another_relay_fails_and_closes(relay):
    """SPEC: "The relay key in the transcript binds it to one relay"."""
    alice = await relay.user()
    peer = await relay.connect()
    await _refused_and_closed(peer, _login_frame(peer, alice.account, relay_key=bytes(range(32))))


@pytest.mark.spec("4.4.1")
async def test_a_failed_proof_spends_the_challenge(relay):
    """SPEC: "A challenge MUST be accepted at most once": after a failed proof the relay closes,
    so a correct proof can no longer follow on that connection."""
    alice = await relay.user()
    peer = await relay.connect()
    bad = _login_frame(peer, alice.account, key=IdentityKeyPair.generate(rng))
    good = _login_frame(peer, alice.account)
    await peer.send(bad)
    await peer.send(good)
    error = await peer.response(bad.id)
    assert isinstance(error, Error) and error.code == 200
    await peer.closed()
    assert not any(isinstance(f, Welcome) for f in peer.pending())


@pytest.mark.spec("4.4.1")
async def test_a_second_proof_after_welcome_is_refused(relay):
    """SPEC: "After WELCOME, REGISTER and LOGIN are frames the state does not allow
    (§4.5): ERROR 103 `UNEXPECTED_FRAME`, the connection stays open and keeps acting as
    the account it authenticated." """
    alice = await relay.user()
    carol = await relay.user()  # alice's correspondent: the second account
    bob = await relay.user()
    frame = _login_frame(alice, bob.account)
    await alice.send(frame)
    error = await alice.response(frame.id)
    assert isinstance(error, Error) and error.code == 103, error
    await alice.request(
        lambda i: Send(id=i, to=carol.handle, msg_id=new_msg_id(), intent="chat", body=b"who")
    )
    assert (await carol.push(Deliver)).sender == alice.handle


@pytest.mark.spec("4.4.4")
async def test_welcome_reports_queue_and_prekeys(relay):
    """WELCOME: `queued` envelopes waiting, `one_time_prekeys` left, `has_signed_prekey`."""
    alice = await relay.user()
    bob = await relay.user(one_time=3)
    await bob.close()
    for n in range(2):
        sent = await alice.request(
            lambda i, n=n: Send(
                id=i, to=bob.handle, msg_id=new_msg_id(), intent="chat", body=b"%d" % n
            )
        )
        assert isinstance(sent, Sent)
    again = await relay.login(bob)
    assert again.welcome is not None
    assert (again.welcome.queued, again.welcome.one_time_prekeys) == (2, 3)
    assert again.welcome.has_signed_prekey is True


@pytest.mark.spec("4.4.5")
async def test_a_connection_acts_only_as_its_own_account(relay):
    """SPEC: "From WELCOME on, every request acts as that handle and only that handle"."""
    alice = await relay.user()
    bob = await relay.user()
    await alice.request(
        lambda i: Send(id=i, to=bob.handle, msg_id=new_msg_id(), intent="chat", body=b"me")
    )
    delivery = await bob.push(Deliver)
    assert (delivery.sender, delivery.sender_kind) == (alice.handle, "user")
    # Acknowledging someone else's delivery does not act on their queue (§6.5).
    await alice.send(Ack(delivery_ids=(delivery.delivery_id,)))
    assert await alice.round_trip() == []
    bob_again = await relay.login(bob)
    assert (await bob_again.push(Deliver)).msg_id == delivery.msg_id


@pytest.mark.spec("4.5")
async def test_frames_before_welcome_get_103_and_the_connection_stays_open(relay):
    """SPEC: "A frame outside the set allowed in the current state is answered with ERROR 103
    UNEXPECTED_FRAME and the connection stays open"."""
    peer = await relay.connect()
    fetch = BundleFetch(id=peer.next_id(), handle=new_handle())
    await peer.send(fetch)
    error = await peer.response(fetch.id)
    assert isinstance(error, Error) and (error.code, error.re) == (103, fetch.id)
    await peer.send(Ack(delivery_ids=(1,)))
    error = await peer.recv()
    assert isinstance(error, Error) and (error.code, error.re) == (103, None)
    assert isinstance(await peer.register(Account(new_handle(), "user")), Welcome)


@pytest.mark.spec("4.5")
async def test_too_many_protocol_errors_close_with_105(relay):
    """SPEC §4.5: "The ERROR that takes the count over MAX_PROTOCOL_ERRORS is sent as usual
    and followed by ERROR 105 TOO_MANY_ERRORS, a push", then the relay closes with 1008."""
    peer = await relay.user()
    for _ in range(limits.MAX_PROTOCOL_ERRORS):
        await peer.send_raw(b"\xc1")
    request_id = peer.next_id()
    await peer.send_raw(msgpack.packb({"t": 11, "id": request_id, "handle": "B"}), expect_re=request_id)
    errors = []
    for _ in range(limits.MAX_PROTOCOL_ERRORS + 2):
        error = await peer.recv()
        assert isinstance(error, Error)
        errors.append((error.code, error.re))
    assert errors == [(100, None)] * limits.MAX_PROTOCOL_ERRORS + [(100, request_id), (105, None)]
    assert await peer.closed() == 1008


@pytest.mark.spec("4.5")
async def test_an_auth_failure_over_the_budget_closes_without_105(relay):
    """SPEC §4.5: 200 counts, and "if that error itself closes the connection (200), no 105
    follows"."""
    peer = await relay.connect()
    for _ in range(limits.MAX_PROTOCOL_ERRORS):
        await peer.send_raw(b"\xc1")
    for _ in range(limits.MAX_PROTOCOL_ERRORS):
        assert error_code(await peer.recv()) == 100
    forged = await peer.login(Account(new_handle(), "user"))
    assert isinstance(forged, Error) and forged.code == 200
    assert await peer.closed() == 1008
    assert peer.pending() == []


@pytest.mark.spec("4.5")
async def test_refusals_of_well_formed_requests_do_not_count_towards_the_budget(relay):
    """SPEC §4.5: "no other code counts" — 400 refusals past MAX_PROTOCOL_ERRORS leave the
    connection open."""
    alice = await relay.user()
    for _ in range(limits.MAX_PROTOCOL_ERRORS + 4):
        refused = await alice.request(
            lambda i: Send(id=i, to=new_handle("nobody"), msg_id=new_msg_id(), intent="chat", body=b"x")
        )
        assert error_code(refused) == 400
    assert await alice.round_trip() == []


@pytest.mark.spec("4.6.2")
async def test_a_bad_signature_is_answered_before_a_taken_handle(relay):
    """SPEC §4.6.2: "The relay MUST check a REGISTER in this order and answer the first
    failure only": the signature (200, closes) before the handle (201)."""
    owner = await relay.user()
    peer = await relay.connect()
    frame = _register_frame(peer, Account(owner.handle, "user"), key=IdentityKeyPair.generate(rng))
    await _refused_and_closed(peer, frame)


@pytest.mark.spec("4.6.3")
@pytest.mark.spec("4.6.4")
async def test_the_proof_of_work_rule_holds_for_the_policy_the_relay_announces(relay):
    """SPEC §4.6.3: with `pow` in HELLO, "a missing or wrong pow_nonce gets ERROR 203
    REGISTRATION_REFUSED; the challenge is spent and the connection stays open";
    without it, "a pow_nonce in a REGISTER answering a HELLO without pow is ignored" —
    and on a relay that does not require invites (§4.6.4), so is an `invite`."""
    peer = await relay.connect()
    account = Account(new_handle("pow"), "user")
    frame = _register_frame(peer, account)
    if peer.hello.pow is None:
        answer = await peer.request(
            lambda i: replace(frame, id=i, pow_nonce=bytes(16), invite=bytes(16))
        )
        assert isinstance(answer, Welcome), answer
        return
    refused = await peer.request(lambda i: replace(frame, id=i))
    assert isinstance(refused, Error) and refused.code == 203, refused
    await _refused_and_closed(peer, _register_frame(peer, account))
