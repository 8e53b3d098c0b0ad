"""The fuzz targets of the sans-I/O protocol layer, without atheris.

Why apart from the harnesses: ``fuzz_<target>.py`` hands each function here to
atheris, and ``test_corpus.py`` replays every file of ``corpus/<target>/`` through
the same function under plain pytest, so the suite never needs atheris and a
reproducer keeps failing for the reason it was found.

The rule each target holds (SPEC §2.3, §9, the project's rule for untrusted input):
a decoder or a state machine given any bytes either answers or refuses with its
documented exception; anything else escaping is a defect. Where a target can tell,
it also checks that nothing invalid is accepted (a re-encoding, a differential
against the strict codec, a Merkle proof checked against the tree it came from).
A defect raises :class:`Finding` (or lets the undocumented exception through).

Input layouts are fuzzer-friendly: a first byte picks a mode, and sequences of
messages are separated by :data:`SEP` (two 0xc1 bytes, a byte msgpack never uses).
Everything is deterministic: fixed keys, a counting RNG, a fixed clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
from nacl.signing import SigningKey

from blindrelay.protocol import channel, codec, fastcodec, noise
from blindrelay.protocol import frames as f
from blindrelay.protocol.business import (
    Badge,
    BadgeCheck,
    BusinessProfile,
    away_period,
    check_badge,
    is_open,
    open_profile,
)
from blindrelay.protocol.connection import (
    RECEIVABLE,
    ClientConnection,
    RelayConnection,
    Role,
    State,
)
from blindrelay.protocol.content import CHAT, MalformedContent, decode_content, encode_content
from blindrelay.protocol.crypto import session
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
    signature_valid,
)
from blindrelay.protocol.errors import (
    DecryptionFailed,
    DuplicatedMessage,
    FrameTooLarge,
    InvalidKey,
    InvalidProfile,
    InvalidProof,
    InvalidStatement,
    InvalidTreeHead,
    MalformedEnvelope,
    MalformedFrame,
    MalformedLogEntry,
    NotFound,
    ProtocolError,
    StaleStatement,
    TooManySkippedMessages,
    TransparencyError,
    UnknownFrameType,
)
from blindrelay.protocol.signed import (
    ConsentStatement,
    SignedBody,
    SignedObject,
    peek_signed,
    unverified_body,
    verify_statement,
)
from blindrelay.protocol.transcripts import register_transcript
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.audit import audit
from blindrelay.protocol.transparency.entries import decode_bill_item, decode_entry
from blindrelay.protocol.transparency.evidence import (
    evidence_from_json,
    verify_consent_evidence,
)
from blindrelay.protocol.transparency.treehead import TreeHead, check_extends, open_tree_head

Target = Callable[[bytes], None]

SEP = b"\xc1\xc1"
"""Separates the messages of one input: 0xc1 is the one byte msgpack never uses."""

T0 = 1_790_000_000_000
HANDSHAKE_HASH = bytes(range(64))
RELAY_KEY = SigningKey(b"\x01" * 32)
ALICE = SigningKey(b"\x02" * 32)
OPERATOR = SigningKey(b"\x05" * 32)
RELAY_PUBLIC = RELAY_KEY.verify_key.encode()
ALICE_PUBLIC = ALICE.verify_key.encode()


class Finding(AssertionError):
    """A defect a target saw: a refusal that should have been an answer or the reverse."""


def messages(data: bytes) -> list[bytes]:
    """The messages of one input (at most 64, so one input stays cheap)."""
    return data.split(SEP)[:64]


def counter_rng() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: bytes([next(counter) % 256]) * n


def sign(key: SigningKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message).signature


# --- codec ----------------------------------------------------------------------

DECODE_ERRORS = (MalformedFrame, FrameTooLarge, UnknownFrameType)
"""What codec.decode may raise (its docstring, SPEC §2.3)."""


def codec_decode(data: bytes) -> None:
    """Any bytes decode to a frame or to one of the three documented errors; a frame
    re-encodes canonically to bytes that decode to the same frame, and the ``re`` an
    ERROR would carry is in range."""
    re = codec.request_id_of(data)
    if re is not None and not 1 <= re <= f.MAX_REQUEST_ID:
        raise Finding(f"request_id_of gave {re}")
    try:
        frame = codec.decode(data)
    except DECODE_ERRORS as exc:
        if exc.request_id != re:
            raise Finding(f"error re {exc.request_id} differs from request_id_of {re}") from exc
        return
    again = codec.encode(frame)
    if codec.decode(again) != frame:
        raise Finding("a decoded frame does not survive its re-encoding")
    if codec.encode(codec.decode(again)) != again:
        raise Finding("re-encoding is not canonical")


# --- fastcodec against the codec -------------------------------------------------

_READERS: tuple[tuple[Callable[[bytes], f.Frame | None], type[f.Frame]], ...] = (
    (fastcodec.read_send, f.Send),
    (fastcodec.read_sent, f.Sent),
    (fastcodec.read_deliver, f.Deliver),
    (fastcodec.read_ack, f.Ack),
)


def fastcodec_differential(data: bytes) -> None:
    """fastcodec's promise: ``read_x(data) or codec.decode(data)`` is ``codec.decode(data)``
    — a reader returns exactly the codec's frame or None; and its encoders lay out the
    codec's canonical bytes for any frame the codec accepts."""
    try:
        strict: f.Frame | None = codec.decode(data)
    except DECODE_ERRORS:
        strict = None
    for read, cls in _READERS:
        try:
            fast = read(data)
        except Exception as exc:
            raise Finding(f"{read.__name__} raised {type(exc).__name__}: {exc}") from exc
        if fast is None:
            continue
        if strict is None:
            raise Finding(f"{read.__name__} read a {cls.__name__} the codec refuses")
        if type(fast) is not type(strict) or fast != strict:
            raise Finding(f"{read.__name__} read {fast!r}, the codec {strict!r}")
    if strict is not None:
        _check_fast_encoding(strict)


def _check_fast_encoding(frame: f.Frame) -> None:
    canonical = codec.encode(frame)
    if isinstance(frame, f.Send):
        fast = fastcodec.encode_send(
            frame.id, frame.to, frame.msg_id, frame.intent, frame.body, frame.category,
            frame.categories,
        )  # fmt: skip
    elif isinstance(frame, f.Sent):
        fast = fastcodec.encode_sent(frame.re, frame.msg_id, frame.at)
    elif isinstance(frame, f.Deliver):
        fast = fastcodec.encode_deliver(
            frame.delivery_id, frame.sender, frame.sender_kind, frame.msg_id, frame.intent,
            frame.sent_at, frame.body, frame.category, frame.categories,
        )  # fmt: skip
    elif isinstance(frame, f.Ack):
        fast = fastcodec.encode_ack(frame.delivery_ids)
    else:
        return
    if fast != canonical:
        raise Finding(f"fast encoding of {type(frame).__name__} differs from the codec's")


# --- the connection state machines ------------------------------------------------


def _relay() -> RelayConnection:
    relay = RelayConnection(RELAY_PUBLIC, T0, counter_rng(), handshake_hash=HANDSHAKE_HASH)
    relay.data_to_send()  # HELLO
    return relay


_REGISTER: f.Register | None = None


def _register_frame() -> f.Register:
    """ALICE's REGISTER answering :func:`_relay`'s challenge (the same every time)."""
    global _REGISTER
    if _REGISTER is None:
        relay = _relay()
        transcript = register_transcript(
            RELAY_PUBLIC, relay.challenge, "alice", "user", ALICE_PUBLIC,
            handshake_hash=HANDSHAKE_HASH,
        )  # fmt: skip
        _REGISTER = f.Register(
            id=1, handle="alice", kind="user", identity_key=ALICE_PUBLIC,
            signature=ALICE.sign(transcript).signature,
        )  # fmt: skip
    return _REGISTER


def _authenticate(relay: RelayConnection) -> None:
    register = _register_frame()
    relay.verify_registration(register, T0 + 1)
    relay.send(
        f.Welcome(
            re=register.id, handle="alice", kind="user", queued=0, one_time_prekeys=0,
            has_signed_prekey=False,
        )
    )  # fmt: skip
    relay.data_to_send()


def relay_receive(data: bytes) -> None:
    """RelayConnection.receive_data never raises: every message is an event the state
    allows or an ERROR frame queued; afterwards the machine still does what a relay
    asks of it (answer, authenticate).

    First byte: bit 0 authenticated first, bit 1 every message sealed and opened by a
    real channel pair (a message starting with 0xc1 goes to the channel as it is: the
    relay then closes, as the server does on a failed transport message)."""
    mode = data[0] if data else 0
    relay = _relay()
    if mode & 1:
        _authenticate(relay)
    pair = _channel_pair() if mode & 2 else None
    spent = False
    for message in messages(data[1:]):
        before = relay.state
        if pair is not None:
            client_side, relay_side = pair
            raw = message[1:] if message[:1] == b"\xc1" else client_side.encrypt(message[:65519])
            try:
                message = relay_side.decrypt(raw)
            except channel.ChannelError:
                relay.close()
                continue
        relay.receive_data(message)
        events = relay.events_received()
        for event in events:
            if event.TYPE not in RECEIVABLE[Role.RELAY].get(before, frozenset()):
                raise Finding(f"{event.TYPE.name} became an event in {before.value}")
        for out in relay.data_to_send():
            frame = codec.decode(out)
            if not isinstance(frame, f.Error):
                raise Finding(f"receive_data queued a {type(frame).__name__}")
        for event in events:
            spent |= _answer(relay, event)
    if relay.state is State.CLOSED:
        return
    if relay.state is State.AWAITING_AUTH and not spent:
        _authenticate(relay)  # nothing received spends the challenge; only a proof checked
    relay.send(f.Ok(re=7))
    relay.send_error(MalformedFrame("after the fuzz"))
    for out in relay.data_to_send():
        codec.decode(out)


def _answer(relay: RelayConnection, event: f.Frame) -> bool:
    """What the relay's dispatch does with an event, as far as the machine goes: check a
    proof (WELCOME if it holds) or refuse the request; whether the challenge was spent."""
    request_id = getattr(event, "id", None)
    try:
        if isinstance(event, f.Register):
            relay.verify_registration(event, T0 + 1)
        elif isinstance(event, f.Login):
            known = ALICE_PUBLIC if event.handle == "alice" else None
            relay.verify_login(event, known, T0 + 1)
        elif request_id is not None:
            raise NotFound("answered by the fuzz target")
        else:
            return False
    except ProtocolError as exc:
        relay.send_error(exc, re=request_id)
        return isinstance(event, f.Register | f.Login)
    relay.send(
        f.Welcome(
            re=event.id, handle=event.handle, kind="user", queued=0, one_time_prekeys=0,
            has_signed_prekey=False,
        )
    )  # fmt: skip
    for out in relay.data_to_send():
        codec.decode(out)
    return True


_REQUESTS: list[f.Frame] = []


def _requests() -> list[f.Frame]:
    """One valid frame of each request type, from the vectors (ids replaced)."""
    if not _REQUESTS:
        for path in sorted((VECTORS / "valid").glob("*.json")):
            frame = codec.decode(bytes.fromhex(json.loads(path.read_text())["hex"]))
            if frame.TYPE in f.REQUEST_FRAMES and frame.TYPE not in (
                f.FrameType.REGISTER, f.FrameType.LOGIN,
            ):  # fmt: skip
                _REQUESTS.append(frame)
    return _REQUESTS


def _client(mode: int) -> ClientConnection:
    """mode 0: awaiting HELLO; 1: HELLO taken, LOGIN as alice pending (id 1);
    2 and 3: authenticated, one request of each type pending (ids 2, 3, …)."""
    client = ClientConnection(HANDSHAKE_HASH, RELAY_PUBLIC)
    if mode == 0:
        return client
    hello = RelayConnection(RELAY_PUBLIC, T0, counter_rng(), handshake_hash=HANDSHAKE_HASH)
    client.receive_data(hello.data_to_send()[0])
    client.login("alice", sign(ALICE), kind="user")
    client.data_to_send()
    client.events_received()
    if mode == 1:
        return client
    client.receive_data(
        codec.encode(
            f.Welcome(
                re=1, handle="alice", kind="user", queued=0, one_time_prekeys=0,
                has_signed_prekey=False,
            )
        )
    )  # fmt: skip
    client.events_received()
    for frame in _requests():
        client.send(dataclasses.replace(frame, id=client.next_request_id()))  # type: ignore[call-arg]
    client.data_to_send()
    return client


def client_receive(data: bytes) -> None:
    """ClientConnection.receive_data raises nothing but a ProtocolError, and one it raises
    leaves the machine as it was; a frame it takes was receivable; afterwards the client
    can still number and send a request when authenticated.

    First byte (mod 4): the state to start in (:func:`_client`); in 3 a SENT is offered
    to ``receive_sent`` first, as the SDK does."""
    mode = (data[0] if data else 0) % 4
    client = _client(mode)
    for message in messages(data[1:]):
        before = (client.state, dict(client.pending), client.hello, client.handle, client.kind)
        sent = fastcodec.read_sent(message) if mode == 3 else None
        if sent is not None and client.receive_sent(sent):  # the SDK's fast path for SENT
            if before[1].get(sent.re) is not f.FrameType.SEND or sent.re in client.pending:
                raise Finding(f"receive_sent took an answer to {before[1].get(sent.re)}")
            continue
        try:
            client.receive_data(message)
        except ProtocolError:
            after = (client.state, dict(client.pending), client.hello, client.handle, client.kind)
            if after != before:
                raise Finding(
                    f"a refused message changed the client: {before} -> {after}"
                ) from None
            continue
        (frame,) = client.events_received()
        if frame.TYPE not in RECEIVABLE[Role.CLIENT].get(before[0], frozenset()):
            raise Finding(f"{frame.TYPE.name} taken in {before[0].value}")
    if client.state is State.AUTHENTICATED:
        request_id = client.next_request_id()
        if request_id in client.pending:
            raise Finding("next_request_id gave a pending id")
        client.send(f.LogHeadFetch(id=request_id))
        client.send(f.Ack(delivery_ids=(1,)))
        client.data_to_send()


# --- the Noise channel -------------------------------------------------------------


def _channel_pair(rekey_interval: int = 3) -> tuple[channel.ClientChannel, channel.RelayChannel]:
    """An established channel, both ends, rekeying every few messages."""
    seed = b"\x01" * 32
    static = channel.relay_static_key(seed)
    relay = channel.RelayChannel(
        static, channel.static_binding(SigningKey(seed), static.public), counter_rng(),
        rekey_interval=rekey_interval,
    )  # fmt: skip
    client = channel.ClientChannel(counter_rng(), rekey_interval=rekey_interval)
    client.receive_handshake(relay.receive_handshake(client.start()))
    return client, relay


_PATTERNS = tuple(sorted(noise.PATTERNS))


def noise_channel(data: bytes) -> None:
    """Every handshake and transport message parser given any bytes: a ChannelError (the
    channel), a NoiseError (the framework), never anything else; nothing tampered,
    replayed or reordered opens, and a relay key is bound only by its own signature.

    First byte (mod 6): 0 the relay reads message 1; 1 the client reads message 2; 2 a
    relay that chooses its own static key pair (private, public: 64 bytes, so they may
    not match or be of low order) and payload; 3 transport messages both ways, each
    message's first byte saying honest, tampered, replayed or raw; 4 any Noise pattern,
    the responder reading message 1 and the initiator message 2; 5 the relay's channel
    opening sealed frames into a RelayConnection."""
    mode = (data[0] if data else 0) % 6
    rest = data[1:]
    if mode == 0:
        relay = channel.RelayChannel(
            channel.relay_static_key(b"\x01" * 32), bytes(96), counter_rng()
        )
        try:
            reply = relay.receive_handshake(rest)
        except channel.ChannelError:
            return
        if len(reply) != channel.HANDSHAKE_RESPONSE_BYTES or not relay.established:
            raise Finding("message 1 accepted without an established channel")
    elif mode == 1:
        client = channel.ClientChannel(counter_rng())
        client.start()
        try:
            client.receive_handshake(rest)
        except channel.ChannelError:
            return
        raise Finding("the client accepted a message 2 nobody could have made")
    elif mode == 2:
        _malicious_relay(rest)
    elif mode == 3:
        _transport(rest)
    elif mode == 4:
        _any_pattern(rest)
    else:
        relay_receive(b"\x03" + rest)


def _malicious_relay(rest: bytes) -> None:
    private, public, payload = rest[:32].ljust(32, b"\x00"), rest[32:64].ljust(32, b"\x00"), rest[64:]
    if payload[:1] == b"\x00":  # the relay key's true binding of whatever static it sends
        payload = channel.static_binding(RELAY_KEY, public)
    elif payload[:1] == b"\x01":  # the binding of another static: must be refused
        payload = channel.static_binding(RELAY_KEY, bytes(32) if public != bytes(32) else b"\x09" * 32)
    client = channel.ClientChannel(counter_rng())
    responder = noise.HandshakeState(
        channel.PATTERN, initiator=False, rng=counter_rng(), prologue=channel.PROLOGUE,
        s=noise.KeyPair(private, public),
    )  # fmt: skip
    try:
        responder.read_message(client.start())
        message = responder.write_message(payload[:60000])
    except noise.NoiseError:
        return  # the relay's own side cannot make it
    try:
        relay_key = client.receive_handshake(message)
    except channel.ChannelError:
        return
    if payload != channel.static_binding(RELAY_KEY, public) or relay_key != RELAY_PUBLIC:
        raise Finding("the client bound a relay key that did not sign the static it saw")
    if public != noise.KeyPair.from_private(private).public:
        raise Finding("the client finished a handshake with a static key nobody holds")


def _transport(rest: bytes) -> None:
    client, relay = _channel_pair()
    sent: list[bytes] = []
    relay_failed = False
    for message in messages(rest):
        op, body = (message[0] if message else 0) % 5, message[1:]
        if op == 4:  # the client opens raw bytes from the relay
            try:
                client.decrypt(body)
            except channel.ChannelError:
                return  # the client's channel is gone; the connection closes
            raise Finding("the client opened a transport message nobody sealed")
        if op == 0:
            sealed = client.encrypt(body[: channel.limits.MAX_FRAME_BYTES])
            sent.append(sealed)
        elif op == 1 and sent:  # replay the last one
            sealed = sent[-1]
        elif op == 2:  # tampered: one bit of a fresh seal flipped
            sealed = bytearray(client.encrypt(body[: channel.limits.MAX_FRAME_BYTES]))
            sealed[len(body) % len(sealed)] ^= 1 << (len(body) % 8)
            sealed = bytes(sealed)
            sent.append(b"")  # the nonce it used is gone
        else:
            sealed = body
        honest = op == 0 and not relay_failed
        try:
            opened = relay.decrypt(sealed)
        except channel.ChannelError:
            relay_failed = True
            continue
        if not honest:
            what = ("one after a refused one", "a replayed", "a tampered", "a raw")[op]
            raise Finding(f"the relay opened {what} message")
        if opened != body[: channel.limits.MAX_FRAME_BYTES]:
            raise Finding("an honest message opened to other bytes")


def _any_pattern(rest: bytes) -> None:
    pattern = _PATTERNS[(rest[0] if rest else 0) % len(_PATTERNS)]
    parts = messages(rest[1:])
    first, second = parts[0], parts[1] if len(parts) > 1 else b""
    static_i = noise.KeyPair.from_private(b"\x03" * 32)
    static_r = noise.KeyPair.from_private(b"\x04" * 32)
    responder = noise.HandshakeState(
        pattern, initiator=False, rng=counter_rng(), s=static_r, rs=static_i.public
    )
    with contextlib.suppress(noise.NoiseError):
        responder.read_message(first)
    initiator = noise.HandshakeState(
        pattern, initiator=True, rng=counter_rng(), s=static_i, rs=static_r.public
    )
    initiator.write_message()
    try:
        initiator.read_message(second)
    except noise.NoiseError:
        return
    raise Finding(f"{pattern}: the initiator accepted a message 2 nobody made")


# --- content -------------------------------------------------------------------------


def content_decode(data: bytes) -> None:
    """decode_content refuses with MalformedContent only; content it accepts re-encodes to
    content equal to it, and holds every key and value of the map it came from (nothing
    was ignored or taken as absent). First byte odd: read as version 1 (a client's own
    inbox row, ``accepted_as``)."""
    v1 = bool(data[:1]) and data[0] & 1 == 1
    rest = data[1:]
    try:
        content = decode_content(rest, accepted_as=CHAT if v1 else None)
    except MalformedContent:
        return
    encoded = encode_content(content)
    if not v1:
        if decode_content(encoded) != content:
            raise Finding("accepted content does not survive its re-encoding")
        raw = msgpack.unpackb(rest, use_list=False)
        canonical = msgpack.unpackb(encoded, use_list=False)
        if raw != canonical:
            raise Finding(f"accepted content holds what its encoding does not: {raw!r}")


# --- end-to-end envelopes ----------------------------------------------------------

ENVELOPE_ERRORS = (
    MalformedEnvelope, DecryptionFailed, DuplicatedMessage, TooManySkippedMessages, InvalidKey,
)
"""What decrypting an envelope may raise (``session.decrypt``'s docstring)."""

_SESSIONS: list[bytes] = []


def _sessions() -> tuple[session.Session, session.Session]:
    """Alice's and bob's ends of one session, each reply heard (made once, kept as bytes:
    a fresh copy per input)."""
    if not _SESSIONS:
        rng = counter_rng()
        bob = IdentityKeyPair.from_seed(b"\x0b" * 32)
        spk, otpk = SignedPreKey.generate(bob, 1, rng), OneTimePreKey.generate(2, rng)
        bundle = PreKeyBundle(bob.public, 1, spk.public, spk.signature, 2, otpk.public)
        alice = session.initiate_session(
            IdentityKeyPair.from_seed(b"\x0a" * 32), bundle, rng, our_handle="alice",
            their_handle="bob",
        )  # fmt: skip
        alice, first = session.encrypt(alice, b"hello", rng)
        bobs, _, _ = session.accept_session(
            bob, first, {1: spk}.get, {2: otpk}.get, rng, our_handle="bob", their_handle="alice"
        )
        bobs, reply = session.encrypt(bobs, b"hi", rng)
        alice, _ = session.decrypt(alice, reply, rng)
        _SESSIONS.extend((alice.to_bytes(), bobs.to_bytes()))
    return session.Session.from_bytes(_SESSIONS[0]), session.Session.from_bytes(_SESSIONS[1])


def envelopes(data: bytes) -> None:
    """Bob's end of a live session reads messages from alice: each message's first byte
    (mod 4) says 0 alice's next message, its plaintext the rest; 1 the rest as an envelope
    of its own; 2 alice's next message with its ratchet header's bytes changed by the rest;
    3 an envelope bob read before. Only the documented refusals come out, a refused
    envelope leaves bob's session as it was, alice's open to what she sealed, and none
    changed or read before opens. (Raw bytes may open: alice's future messages are the
    same every run, and the seed ``raw`` is one.)"""
    rng = counter_rng()
    alice, bob = _sessions()
    sent: list[bytes] = []
    for message in messages(data):
        op, rest = (message[0] if message else 0) % 4, message[1:]
        if op == 0 or op == 2:
            alice, envelope = session.encrypt(alice, rest[:1000], rng)
            if op == 2:
                changed = bytearray(envelope)
                for n, byte in enumerate(rest[:8] or b"\x01"):  # at least one change
                    changed[2 + (byte + n * 7) % 40] ^= byte or 1
                envelope = bytes(changed)
        elif op == 3 and sent:
            envelope = sent[rest[0] % len(sent) if rest else -1]
        else:
            envelope = rest
        before = bob.to_bytes()
        try:
            bob, plaintext = session.decrypt(bob, envelope, rng)
        except ENVELOPE_ERRORS:
            if bob.to_bytes() != before:
                raise Finding("a refused envelope changed the session") from None
            continue
        if op in (2, 3) or (op == 0 and plaintext != rest[:1000]):
            raise Finding(f"bob opened an envelope of kind {op} to {plaintext[:20]!r}")
        sent.append(envelope)
    with contextlib.suppress(MalformedEnvelope):
        session.peek_envelope(data)


# --- signed objects ------------------------------------------------------------------


def _signed(body: bytes, context: bytes, key: SigningKey) -> bytes:
    """``body`` as a signed object: what a signer may send, however odd its body."""
    sig = key.sign(context + b"\x00" + body).signature
    return msgpack.packb({"body": body, "sig": sig}, use_bin_type=True)  # type: ignore[no-any-return]


def signed_objects(data: bytes) -> None:
    """Statements, badges and profiles, raw or signed by the key they are checked against
    (a signer may sign any body): only their documented refusals, never anything else;
    what is accepted was signed by that key; an accepted profile can be asked whether
    the business is open. First byte (mod 6): 0 a raw statement, 1 a signed statement
    body, 2 a raw badge, 3 a signed badge body, 4 a signed profile body, 5 the outer map
    alone (peek_signed, unverified_body)."""
    mode = (data[0] if data else 0) % 6
    rest = data[1:]
    if mode in (0, 1):
        raw = rest if mode == 0 else _signed(rest, ConsentStatement.CONTEXT, ALICE)
        try:
            statement = verify_statement(
                raw, expected_key=ALICE_PUBLIC, relay_key=RELAY_PUBLIC, now_ms=T0
            )
        except (InvalidStatement, StaleStatement):
            return
        _check_signed(raw, ConsentStatement, ALICE_PUBLIC)
        if statement.signer_key != ALICE_PUBLIC or statement.relay_key != RELAY_PUBLIC:
            raise Finding("a statement for another key or relay was accepted")
    elif mode in (2, 3):
        raw = rest if mode == 2 else _signed(rest, Badge.CONTEXT, OPERATOR)
        check = check_badge(
            raw, operator_key=OPERATOR.verify_key.encode(), handle="shop",
            identity_key=ALICE_PUBLIC, now_ms=T0,
        )  # fmt: skip
        if not isinstance(check, BadgeCheck):
            raise Finding("check_badge returned no BadgeCheck")
        if check.verified:
            _check_signed(raw, Badge, OPERATOR.verify_key.encode())
    elif mode == 4:
        raw = _signed(rest, BusinessProfile.CONTEXT, ALICE)
        try:
            profile = open_profile(raw, ALICE_PUBLIC, "shop")
        except InvalidProfile:
            return
        for now in (T0, T0 + 200 * 86_400_000):  # a clock is ours, never the signer's
            is_open(profile, now)
            away_period(profile, now)
    else:
        for cls in (ConsentStatement, Badge, BusinessProfile, TreeHead):
            try:
                outer = peek_signed(cls, rest)
                if not isinstance(outer, SignedObject):
                    raise Finding("peek_signed returned no SignedObject")
                unverified_body(cls, rest)
            except (MalformedFrame, FrameTooLarge):
                pass


def _check_signed(raw: bytes, cls: type[SignedBody], key: bytes) -> None:
    outer = msgpack.unpackb(raw)
    if not signature_valid(key, cls.CONTEXT + b"\x00" + outer["body"], outer["sig"]):
        raise Finding(f"a {cls.__name__} was accepted without its signature")


# --- the transparency log ------------------------------------------------------------

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def transparency(data: bytes) -> None:
    """Entries, tree heads, proofs and evidence files: MalformedLogEntry, InvalidTreeHead,
    InvalidProof (or a file's ValueError), never anything else; no proof is accepted for
    a leaf, index or tree it does not belong to. First byte (mod 7): 0 a log entry, 1 a
    bill item, 2 a raw tree head, 3 a tree-head body the relay signed and a second one
    checked as extending it, 4 an inclusion proof, 5 a consistency proof (or a fork),
    6 an evidence file, 7 an audit of entries under a head the relay signed (the first
    message its body, the rest the entries)."""
    mode = (data[0] if data else 0) % 8
    rest = data[1:]
    if mode in (0, 1):
        try:
            entry = (decode_entry if mode == 0 else decode_bill_item)(rest)
        except MalformedLogEntry:
            return
        if entry.to_bytes() != rest:
            raise Finding("a non-canonical entry was accepted")
    elif mode == 2:
        try:
            open_tree_head(rest, RELAY_PUBLIC)
        except InvalidTreeHead:
            return
        raise Finding("a tree head nobody signed was accepted")
    elif mode == 3:
        heads = []
        for body in messages(rest)[:2]:
            try:
                heads.append(open_tree_head(_signed(body, TreeHead.CONTEXT, RELAY_KEY), RELAY_PUBLIC))
            except InvalidTreeHead:
                return
        if len(heads) == 2:
            try:
                check_extends(heads[0], heads[1], ())
            except InvalidProof:
                return
            older, newer = heads
            if newer.size < older.size or (older.size == newer.size and older.root != newer.root):
                raise Finding("check_extends accepted a head that does not extend")
    elif mode == 4:
        _inclusion(rest)
    elif mode == 5:
        _consistency(rest)
    elif mode == 6:
        _evidence(rest)
    else:
        _audit(rest)


def _audit(rest: bytes) -> None:
    """The auditor reports and never raises; a clean run's newest head is the tree of the
    entries it names."""
    body, *entries = messages(rest)
    report = audit(entries, [_signed(body, TreeHead.CONTEXT, RELAY_KEY)], RELAY_PUBLIC)
    if report.clean and report.newest is not None:
        leaves = [merkle.leaf_hash(entry) for entry in entries[: report.newest.size]]
        if len(leaves) != report.newest.size or merkle.root_of(leaves) != report.newest.root:
            raise Finding("a clean audit under a head that is not the tree of the entries")


def _tree(seed: bytes, size: int) -> list[bytes]:
    return [merkle.leaf_hash(seed + i.to_bytes(4, "big")) for i in range(size)]


def _mutated(proof: list[bytes], ops: bytes) -> list[bytes]:
    """``proof`` changed by ``ops``, two bytes an edit: flip a bit, drop, repeat, swap."""
    proof = list(proof)
    ops = ops[:16]
    for op, arg in zip(ops[::2], ops[1::2], strict=False):
        kind = op % 4
        if not proof and kind != 3:
            continue
        at = arg % max(len(proof), 1)
        if kind == 0:
            changed = bytearray(proof[at])
            changed[arg % 32] ^= 1 << (op % 8)
            proof[at] = bytes(changed)
        elif kind == 1:
            del proof[at]
        elif kind == 2:
            proof.insert(at, proof[at])
        else:
            proof.insert(at, bytes([arg]) * 32)
    return proof


def _inclusion(rest: bytes) -> None:
    if len(rest) < 3:
        return
    size = rest[0] % 70 + 1
    index = rest[1] % size
    claimed = rest[2] % (size + 2)  # the index the proof is checked for
    leaves = _tree(rest[3:5], size)
    root = merkle.root_of(leaves)
    proof = merkle.inclusion_proof(index, size, lambda nodes: _lookup(leaves, nodes))
    proof = _mutated(proof, rest[5:])
    try:
        merkle.verify_inclusion(leaves[index], claimed, size, proof, root)
    except InvalidProof:
        return
    if claimed != index:
        raise Finding(f"leaf {index} of {size} proven at index {claimed}")


def _lookup(leaves: list[bytes], nodes: object) -> dict[merkle.Node, bytes]:
    out = {}
    for node in nodes:  # type: ignore[attr-defined]
        start = node.offset << node.level
        out[node] = merkle.root_of(leaves[start : start + (1 << node.level)])
    return out


def _consistency(rest: bytes) -> None:
    if len(rest) < 3:
        return
    second = rest[0] % 70 + 1
    first = rest[1] % second + 1
    fork = rest[2] & 1
    leaves = _tree(rest[3:5], second)
    other = _tree(rest[3:5] + b"fork", first) if fork else leaves[:first]
    proof = merkle.consistency_proof(first, second, lambda nodes: _lookup(leaves, nodes))
    proof = _mutated(proof, rest[5:])
    try:
        merkle.verify_consistency(
            first, second, merkle.root_of(other), merkle.root_of(leaves), proof
        )
    except InvalidProof:
        return
    if fork:
        raise Finding(f"a fork of size {first} proven consistent with a tree of {second}")


def _evidence(rest: bytes) -> None:
    try:
        evidence = evidence_from_json(rest.decode("utf-8", "replace"))
    except ValueError:
        return
    try:
        verify_consent_evidence(evidence, RELAY_PUBLIC)
    except (ProtocolError, TransparencyError):
        return
    raise Finding("evidence nobody made was verified")


# --- every target ----------------------------------------------------------------------

TARGETS: dict[str, Target] = {
    "codec": codec_decode,
    "fastcodec": fastcodec_differential,
    "relay": relay_receive,
    "client": client_receive,
    "noise": noise_channel,
    "content": content_decode,
    "envelope": envelopes,
    "signed": signed_objects,
    "transparency": transparency,
}
"""By name: ``corpus/<name>/`` holds the target's seeds and reproducers."""

CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus_files() -> Iterator[tuple[str, Path]]:
    for name in TARGETS:
        for path in sorted((CORPUS / name).glob("*")):
            if path.is_file():
                yield name, path


__all__ = ["TARGETS", "Finding", "corpus_files"]
