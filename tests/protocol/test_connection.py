"""SPEC §4: the connection state machines, driven together in memory (no sockets)."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import codec, connection, limits, transcripts
from blindrelay.protocol import frames as f
from blindrelay.protocol.connection import (
    RECEIVABLE,
    ClientConnection,
    RelayConnection,
    Role,
    State,
)
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    ErrorCode,
    UnexpectedFrame,
    UnsupportedVersion,
)
from blindrelay.protocol.fastcodec import encode_send
from blindrelay.protocol.transcripts import login_transcript, register_transcript

from .pair import ALICE, HANDSHAKE_HASH, T0, Pair, counter_rng, register, signer, welcome


def test_relay_opens_with_hello_and_client_moves_to_awaiting_auth() -> None:
    pair = Pair()
    assert pair.client.state is State.AWAITING_AUTH
    assert pair.client.hello is not None
    assert pair.client.hello.expires_at == T0 + limits.CHALLENGE_TTL_MS
    assert pair.client.hello.challenge == pair.relay.challenge


def test_registration_proof_verifies_and_welcome_authenticates_both_sides() -> None:
    pair = Pair()
    frame = register(pair)
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    assert pair.relay.state is State.AUTHENTICATED and pair.client.state is State.AUTHENTICATED
    assert pair.relay.handle == pair.client.handle == "alice"


def test_login_proof_verifies_against_the_stored_key() -> None:
    pair = Pair()
    pair.client.login("alice", signer(ALICE))
    (frame,), _ = pair.flush()
    pair.relay.verify_login(frame, ALICE.verify_key.encode(), T0 + 1)
    welcome(pair, frame)
    assert pair.relay.handle == "alice"


@pytest.mark.parametrize("stored_key", [None, SigningKey(b"\x03" * 32).verify_key.encode()])
def test_login_with_unknown_handle_fails_like_a_wrong_key(stored_key: bytes | None) -> None:
    pair = Pair()
    pair.client.login("alice", signer(ALICE))
    (frame,), _ = pair.flush()
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_login(frame, stored_key, T0 + 1)


def test_an_unknown_handle_is_refused_even_with_a_signature_by_the_decoy_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC §4.3, §11.1: an unknown handle's login is verified against a decoy key,
    for the same work; the decoy's private half is public, so a valid signature by
    it must still fail — and the verification must actually run."""
    decoy = SigningKey(b"blindrelay/v1/unknown-account".ljust(32, b"\x00"))
    assert decoy.verify_key.encode() == transcripts.UNKNOWN_ACCOUNT_KEY
    verified: list[bytes] = []
    real_verify = connection.signature_valid

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        verified.append(public_key)
        return real_verify(public_key, message, signature)

    monkeypatch.setattr(connection, "signature_valid", counting)
    pair = Pair()
    pair.client.login("nobody", signer(decoy))
    (frame,), _ = pair.flush()
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_login(frame, None, T0 + 1)
    assert verified == [transcripts.UNKNOWN_ACCOUNT_KEY]


def test_expired_challenge_is_refused() -> None:
    pair = Pair()
    frame = register(pair)
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_registration(frame, T0 + limits.CHALLENGE_TTL_MS + 1)


def test_challenge_is_single_use_even_after_a_failure() -> None:
    pair = Pair()
    frame = register(pair)
    bad = f.Register(
        id=frame.id,
        handle=frame.handle,
        kind=frame.kind,
        identity_key=frame.identity_key,
        signature=bytes(64),
    )
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_registration(bad, T0 + 1)
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_registration(frame, T0 + 1)


def test_signature_for_another_relay_is_refused() -> None:
    pair = Pair()
    hello = pair.client.hello
    other_relay = SigningKey(b"\x09" * 32).verify_key.encode()
    transcript = register_transcript(
        other_relay,
        hello.challenge,
        "alice",
        "user",
        ALICE.verify_key.encode(),
        handshake_hash=HANDSHAKE_HASH,
    )
    frame = f.Register(
        id=1,
        handle="alice",
        kind="user",
        identity_key=ALICE.verify_key.encode(),
        signature=ALICE.sign(transcript).signature,
    )
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_registration(frame, T0 + 1)


def test_login_signature_cannot_be_used_to_register() -> None:
    pair = Pair()
    hello = pair.client.hello
    transcript = login_transcript(
        hello.relay_key, hello.challenge, "alice", handshake_hash=HANDSHAKE_HASH
    )
    frame = f.Register(
        id=1,
        handle="alice",
        kind="user",
        identity_key=ALICE.verify_key.encode(),
        signature=ALICE.sign(transcript).signature,
    )
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_registration(frame, T0 + 1)


def test_relay_will_not_welcome_a_handle_that_did_not_prove_its_key() -> None:
    pair = Pair()
    frame = register(pair)
    pair.relay.verify_registration(frame, T0 + 1)
    with pytest.raises(RuntimeError):
        pair.relay.send(
            f.Welcome(
                re=frame.id,
                handle="mallory",
                kind="user",
                queued=0,
                one_time_prekeys=0,
                has_signed_prekey=False,
            )
        )
    assert pair.relay.state is State.AWAITING_AUTH


def test_requests_before_authentication_get_unexpected_frame_and_connection_stays_open() -> None:
    pair = Pair()
    pair.relay.receive_data(codec.encode(f.BundleFetch(id=4, handle="bob")))
    assert pair.relay.events_received() == []
    (error,) = pair.relay_errors()
    assert error == f.Error(
        code=ErrorCode.UNEXPECTED_FRAME,
        re=4,
        reason="BUNDLE_FETCH not allowed in state awaiting_auth",
    )
    assert pair.relay.state is State.AWAITING_AUTH


def test_relay_refuses_frames_only_the_relay_sends() -> None:
    pair = Pair()
    frame = register(pair)
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    pair.relay.receive_data(codec.encode(f.Ok(re=1)))
    (error,) = pair.relay_errors()
    assert error.code == ErrorCode.UNEXPECTED_FRAME and error.re is None


def test_closing_error_closes_the_relay_side() -> None:
    pair = Pair()
    pair.relay.send_error(AuthenticationFailed("x"), re=1)
    assert pair.relay.state is State.CLOSED
    (error,) = pair.relay_errors()
    assert error == f.Error(code=ErrorCode.AUTH_FAILED, re=1)


def test_non_frame_errors_never_carry_a_reason() -> None:
    from blindrelay.protocol.errors import RecipientUnavailable

    pair = Pair()
    pair.relay.send_error(RecipientUnavailable("blocked by bob"), re=3)
    (error,) = pair.relay_errors()
    assert error == f.Error(code=ErrorCode.RECIPIENT_UNAVAILABLE, re=3)


def test_too_many_protocol_errors_close_the_connection() -> None:
    """SPEC §4.5: the error that exceeds the budget is sent as usual, then 105 (no re)."""
    pair = Pair()
    for _ in range(limits.MAX_PROTOCOL_ERRORS):
        pair.relay.receive_data(b"\xc1")
    assert pair.relay.state is State.AWAITING_AUTH
    assert [e.code for e in pair.relay_errors()] == [
        ErrorCode.MALFORMED_FRAME
    ] * limits.MAX_PROTOCOL_ERRORS
    pair.relay.receive_data(codec.encode(f.BundleFetch(id=9, handle="bob")))  # 103, re 9
    assert pair.relay_errors() == [
        f.Error(
            code=ErrorCode.UNEXPECTED_FRAME,
            re=9,
            reason="BUNDLE_FETCH not allowed in state awaiting_auth",
        ),
        f.Error(code=ErrorCode.TOO_MANY_ERRORS),
    ]
    assert pair.relay.state is State.CLOSED
    pair.relay.receive_data(b"\xc1")
    assert pair.relay.data_to_send() == []


def test_refusals_of_well_formed_requests_do_not_count_towards_the_budget() -> None:
    """SPEC §4.5: only 1xx errors and 200 count, and 402 before WELCOME."""
    from blindrelay.protocol.errors import RateLimited, RecipientUnavailable

    pair = Pair()
    for n in range(1, 3 * limits.MAX_PROTOCOL_ERRORS):
        pair.relay.send_error(RecipientUnavailable(), re=n)
    assert ErrorCode.TOO_MANY_ERRORS not in {e.code for e in pair.relay_errors()}
    frame = register(pair)
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    for n in range(1, 3 * limits.MAX_PROTOCOL_ERRORS):
        pair.relay.send_error(RateLimited(retry_after_ms=5), re=n)
    assert pair.relay.state is State.AUTHENTICATED
    assert ErrorCode.TOO_MANY_ERRORS not in {e.code for e in pair.relay_errors()}


def test_rate_limited_requests_count_towards_the_budget_before_welcome() -> None:
    """SPEC §4.5: a connection not logged in that goes on asking past 402 is closed.

    A request refused with 402 cost the relay as much as one answered (opening, decoding,
    the bucket, the ERROR, sealing) and counted for nothing, so one source's connections
    not logged in could send LOG_*_FETCH past their bucket without end until their
    authentication timeout: ~30,000 refusals a second took the relay's event loop, no
    account needed (found in review, /tmp/audit-channel/flood_log.py)."""
    from blindrelay.protocol.errors import RateLimited

    pair = Pair()
    for n in range(1, limits.MAX_PROTOCOL_ERRORS + 1):
        pair.relay.send_error(RateLimited(retry_after_ms=5), re=n)
    assert pair.relay.state is State.AWAITING_AUTH
    pair.relay.send_error(RateLimited(retry_after_ms=5), re=99)
    assert pair.relay_errors()[-2:] == [
        f.Error(code=ErrorCode.RATE_LIMITED, re=99, retry_after=5),
        f.Error(code=ErrorCode.TOO_MANY_ERRORS),
    ]
    assert pair.relay.state is State.CLOSED


def test_a_closing_error_that_exceeds_the_budget_is_not_followed_by_105() -> None:
    """SPEC §4.5: "If that error itself closes the connection (200), no 105 follows"."""
    pair = Pair()
    for _ in range(limits.MAX_PROTOCOL_ERRORS):
        pair.relay.receive_data(b"\xc1")
    pair.relay_errors()
    pair.relay.send_error(AuthenticationFailed("login signature"), re=4)
    assert pair.relay_errors() == [f.Error(code=ErrorCode.AUTH_FAILED, re=4)]
    assert pair.relay.state is State.CLOSED


def test_client_matches_responses_to_pending_requests() -> None:
    pair = Pair()
    frame = register(pair)
    assert pair.client.pending == {frame.id: f.FrameType.REGISTER}
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    assert pair.client.pending == {}


def authenticated_pair() -> Pair:
    pair = Pair()
    frame = register(pair)
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    assert pair.client.state is State.AUTHENTICATED
    return pair


MSG_ID = bytes(range(16))


def test_a_send_encoded_outside_the_machine_is_queued_and_pending_like_a_sent_frame() -> None:
    pair = authenticated_pair()
    request_id = pair.client.next_request_id()
    data = encode_send(request_id, "bob", MSG_ID, "chat", b"ciphertext")
    pair.client.send_encoded(request_id, f.FrameType.SEND, data)
    assert pair.client.pending == {request_id: f.FrameType.SEND}
    assert pair.client.data_to_send() == [data]
    with pytest.raises(TypeError):
        pair.client.pending[request_id + 1] = f.FrameType.SEND  # type: ignore[index]
    pair.client.receive_data(codec.encode(f.Sent(re=request_id, msg_id=MSG_ID, at=T0)))
    assert pair.client.pending == {}
    assert pair.client.events_received() == [f.Sent(re=request_id, msg_id=MSG_ID, at=T0)]


@pytest.mark.parametrize("frame_type", [f.FrameType.SEND, f.FrameType.ACK])
def test_an_encoded_frame_is_refused_before_authentication_or_unless_a_request(
    frame_type: f.FrameType,
) -> None:
    pair = Pair()
    with pytest.raises(RuntimeError):
        pair.client.send_encoded(1, frame_type, b"\x80")
    pair = authenticated_pair()
    if frame_type is f.FrameType.ACK:
        with pytest.raises(RuntimeError):
            pair.client.send_encoded(1, frame_type, b"\x80")
    assert pair.client.pending == {} and pair.client.data_to_send() == []


def test_a_sent_read_outside_the_machine_answers_its_pending_send_once() -> None:
    pair = authenticated_pair()
    request_id = pair.client.next_request_id()
    pair.client.send_encoded(
        request_id, f.FrameType.SEND, encode_send(request_id, "bob", MSG_ID, "chat", b"x")
    )
    sent = f.Sent(re=request_id, msg_id=MSG_ID, at=T0)
    assert pair.client.receive_sent(sent)
    assert pair.client.pending == {} and pair.client.events_received() == []
    # Answered once: the same SENT again is left to receive_data, which refuses it.
    assert not pair.client.receive_sent(sent)
    with pytest.raises(UnexpectedFrame):
        pair.client.receive_data(codec.encode(sent))


TOP = f.MAX_REQUEST_ID
"""2^32−1, the highest request id (SPEC §2.2)."""


def test_request_ids_wrap_from_the_highest_to_one() -> None:
    """SPEC §2.2: ids are 1 … 2^32−1, and after the highest the numbering goes on at 1;
    one off either way hands out 0 or 2^32, which no frame carries, or skips an id."""
    client = ClientConnection(first_request_id=TOP - 2)
    assert [client.next_request_id() for _ in range(5)] == [TOP - 2, TOP - 1, TOP, 1, 2]


def test_an_id_still_pending_across_the_wrap_is_not_handed_out_again() -> None:
    """SPEC §2.2 rule 2: a request left unanswered from before the wrap keeps its id —
    the relay's answer to it would otherwise be taken as the new request's. Here the
    caller numbered 2^32−1, 1 and 2 itself, as it may: numbering skips all three, across
    the wrap, and goes on after them."""
    pair = Pair(first_request_id=TOP - 1)
    frame = register(pair)
    assert frame.id == TOP - 1
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    for request_id in (TOP, 1, 2):
        pair.client.send(f.ProfileFetch(id=request_id, handle="shop"))
    assert set(pair.client.pending) == {1, 2, TOP}
    assert [pair.client.next_request_id() for _ in range(2)] == [3, 4]
    answer = f.Profile(re=1, handle="shop", identity_key=b"k" * 32)
    pair.client.receive_data(codec.encode(answer))
    assert set(pair.client.pending) == {2, TOP}
    assert pair.client.events_received() == [answer]


def test_a_sent_before_authentication_is_left_to_receive_data() -> None:
    pair = Pair()
    frame = register(pair)
    sent = f.Sent(re=frame.id, msg_id=MSG_ID, at=T0)
    assert not pair.client.receive_sent(sent)
    assert pair.client.pending == {frame.id: f.FrameType.REGISTER}
    with pytest.raises(UnexpectedFrame):
        pair.client.receive_data(codec.encode(sent))


def test_client_refuses_a_response_to_no_request() -> None:
    pair = Pair()
    with pytest.raises(UnexpectedFrame):
        pair.client.receive_data(
            codec.encode(
                f.Welcome(
                    re=99,
                    handle="alice",
                    kind="user",
                    queued=0,
                    one_time_prekeys=0,
                    has_signed_prekey=False,
                )
            )
        )


def test_client_refuses_another_protocol_version() -> None:
    client = ClientConnection()
    hello = f.Hello(version=1, relay_key=bytes(32), challenge=bytes(32), expires_at=T0, now=T0)
    with pytest.raises(UnsupportedVersion):
        client.receive_data(codec.encode(hello))


def test_client_auth_failure_closes_the_client_side() -> None:
    pair = Pair()
    frame = register(pair)
    pair.relay.send_error(AuthenticationFailed(), re=frame.id)
    pair.flush()
    assert pair.client.state is State.CLOSED


def test_every_frame_type_is_receivable_by_exactly_one_side_once_authenticated() -> None:
    relay = (
        RECEIVABLE[Role.RELAY][State.AUTHENTICATED] | RECEIVABLE[Role.RELAY][State.AWAITING_AUTH]
    )
    client = RECEIVABLE[Role.CLIENT][State.AUTHENTICATED] | {f.FrameType.HELLO, f.FrameType.WELCOME}
    assert relay.isdisjoint(client)
    assert relay | client == set(f.FrameType)


# --- the channel binding (SPEC §1.3, §4.2–4.3) ------------------------------------------


def test_a_signature_over_another_channel_is_refused() -> None:
    """The proof signed on one channel (a forwarder's) is worthless on the relay's own."""
    pair = Pair()
    hello = pair.client.hello
    assert hello is not None
    other_channel = bytes(64)
    transcript = register_transcript(
        hello.relay_key, hello.challenge, "alice", "user", ALICE.verify_key.encode(),
        handshake_hash=other_channel,
    )  # fmt: skip
    frame = f.Register(
        id=1,
        handle="alice",
        kind="user",
        identity_key=ALICE.verify_key.encode(),
        signature=ALICE.sign(transcript).signature,
    )
    with pytest.raises(AuthenticationFailed):
        pair.relay.verify_registration(frame, T0 + 1)


def test_a_relay_without_its_channel_accepts_no_proof() -> None:
    relay = RelayConnection(SigningKey(b"\x01" * 32).verify_key.encode(), T0, counter_rng())
    frame = f.Login(id=1, handle="alice", signature=bytes(64))
    with pytest.raises(AuthenticationFailed):
        relay.verify_login(frame, ALICE.verify_key.encode(), T0 + 1)


def test_a_client_without_its_channel_signs_nothing() -> None:
    client = ClientConnection()
    hello = f.Hello(version=2, relay_key=bytes(32), challenge=bytes(32), expires_at=T0 + 1, now=T0)
    client.receive_data(codec.encode(hello))
    with pytest.raises(RuntimeError, match="no channel"):
        client.login("alice", signer(ALICE))


def test_a_client_refuses_a_hello_naming_another_key_than_its_channel() -> None:
    """SPEC §1.3.2: HELLO's relay_key MUST be the key the handshake bound."""
    client = ClientConnection(HANDSHAKE_HASH, relay_key=b"\x07" * 32)
    hello = f.Hello(version=2, relay_key=bytes(32), challenge=bytes(32), expires_at=T0, now=T0)
    with pytest.raises(UnexpectedFrame, match="relay key"):
        client.receive_data(codec.encode(hello))


def test_a_relay_binds_one_channel_only() -> None:
    """The proofs are checked over the hash of the channel the connection runs on (SPEC
    §4.2): once bound it is not replaced, so no later hash can take its place."""
    relay = RelayConnection(SigningKey(b"\x01" * 32).verify_key.encode(), T0, counter_rng())
    relay.bind_channel(HANDSHAKE_HASH)
    with pytest.raises(RuntimeError, match="has its channel"):
        relay.bind_channel(bytes(64))
    assert relay.handshake_hash == HANDSHAKE_HASH


def test_a_registration_signature_is_checked_only_after_the_challenge_is_spent() -> None:
    """SPEC §4.4.1: the one attempt at the challenge is taken first, so a proof can never
    be checked, and accepted, without spending it."""
    pair = Pair()
    frame = register(pair)
    with pytest.raises(RuntimeError, match="spend the challenge"):
        pair.relay.verify_registration_signature(frame)
    pair.relay.spend_challenge(T0 + 1)
    pair.relay.verify_registration_signature(frame)


def _welcome_bytes(re: int, handle: str, kind: str) -> bytes:
    """A WELCOME as a lying (or mixed-up) relay sends it: its own machine would not."""
    return codec.encode(
        f.Welcome(
            re=re, handle=handle, kind=kind, queued=0, one_time_prekeys=0, has_signed_prekey=False
        )
    )


@pytest.mark.parametrize(
    ("asked", "handle", "kind"),
    [
        ("register", "mallory", "user"),
        ("register", "alice", "business"),
        ("login", "mallory", "user"),
        ("login with its kind", "alice", "business"),
    ],
)
def test_client_refuses_a_welcome_for_another_account_than_it_proved(
    asked: str, handle: str, kind: str
) -> None:
    """T56, SPEC §4.4: WELCOME names "the account this connection now acts as". The
    client took any: a relay answering alice's LOGIN with a WELCOME for ``mallory`` had
    her machine authenticated as mallory (and the SDK online, resending its outbox and
    acknowledging mallory's deliveries there). Refused, like an answer to no request:
    the handle must be the one proven, the kind the one registered (or, at a login, the
    one the client says it has)."""
    pair = Pair()
    if asked == "register":
        request_id = register(pair).id
    else:
        known_kind = "user" if asked == "login with its kind" else None
        request_id = pair.client.login("alice", signer(ALICE), kind=known_kind)
        pair.flush()
    with pytest.raises(UnexpectedFrame, match="WELCOME"):
        pair.client.receive_data(_welcome_bytes(request_id, handle, kind))
    assert pair.client.state is State.AWAITING_AUTH and pair.client.handle is None


def test_client_takes_the_welcome_of_a_login_of_unknown_kind_as_either_kind() -> None:
    """A login that does not say its kind (the machine cannot know it) takes the relay's."""
    pair = Pair()
    request_id = pair.client.login("alice", signer(ALICE))
    pair.flush()
    pair.client.receive_data(_welcome_bytes(request_id, "alice", "business"))
    assert pair.client.state is State.AUTHENTICATED and pair.client.kind == "business"
