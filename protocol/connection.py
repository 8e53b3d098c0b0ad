"""The per-connection state machine both ends drive (SPEC §4), sans I/O.

Theory of operation. One WebSocket message carries one frame. The I/O layer
feeds each received message to :meth:`receive_data`, takes the frames to act
on from :meth:`events_received`, hands frames to :meth:`send`, and writes out
whatever :meth:`data_to_send` returns; when :attr:`state` is ``CLOSED`` it
closes the socket. Time is passed in (``now_ms``); randomness is a callable.
A client sending a SEND per message may encode it itself
(:func:`.fastcodec.encode_send`) and hand the bytes to :meth:`send_encoded`,
and take a SENT it read itself (:func:`.fastcodec.read_sent`) with
:meth:`receive_sent`: the machine still keeps the pending requests.

The rules, as data (h11 style), are in :mod:`.connection_rules` and re-exported
here: ``RECEIVABLE[role][state]`` is the set of frame types a side accepts in a
state; anything else is an :class:`UnexpectedFrame`. ``TRANSITIONS[role][state][type]``
moves the state when a frame of that type is sent or received. A missing entry *is*
the rule::

    relay:  AWAITING_AUTH --send WELCOME--> AUTHENTICATED
    client: AWAITING_HELLO --recv HELLO--> AWAITING_AUTH --recv WELCOME--> AUTHENTICATED
    either: any --send/recv ERROR with a closing code--> CLOSED

This module is the machine that applies them; they were split apart so that each
reads in a sitting, the tables against SPEC §4.5 and the machine as code.

The relay side also holds the authentication challenge: it verifies the
registration or login proof itself (SPEC §4.2–4.3) and refuses to send a
WELCOME for any handle other than the one just proven, so a connection can
only ever act as the account whose key signed its challenge; the client side
refuses to take one for another handle (or kind) than its own (T56). Both sides sign
and check over the channel's handshake hash (SPEC §1.3, :mod:`.channel`): the
machine takes bytes that the channel below it has already opened, and a proof
made on one channel is refused on any other.

Not here: what a frame *does* (server and client), encoding (codec, fastcodec), the
bytes the proofs sign (transcripts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from . import PROTOCOL_VERSION, limits
from . import pow as puzzle
from .codec import decode, encode
from .connection_rules import (
    ANSWERS,
    LOG_FETCHES,
    RECEIVABLE,
    TRANSITIONS,
    Role,
    State,
    error_closes,
)
from .crypto.keys import signature_valid
from .errors import (
    AuthenticationFailed,
    ProtocolError,
    RateLimited,
    RegistrationRefused,
    TooManyErrors,
    UnexpectedFrame,
    UnsupportedVersion,
)
from .fastcodec import read_deliver
from .frames import (
    MAX_REASON_LEN,
    MAX_REQUEST_ID,
    REQUEST_FRAMES,
    AccountKind,
    Error,
    Frame,
    FrameType,
    Hello,
    Login,
    ProofOfWork,
    Register,
    Sent,
    Welcome,
)
from .transcripts import UNKNOWN_ACCOUNT_KEY, login_transcript, register_transcript

__all__ = [
    "ANSWERS", "LOG_FETCHES", "RECEIVABLE", "TRANSITIONS", "ClientConnection",
    "RelayConnection", "Rng", "Role", "Signer", "State",
]  # fmt: skip

Rng = Callable[[int], bytes]
Signer = Callable[[bytes], bytes]


# --- the machine --------------------------------------------------------------


class _Connection:
    role: Role

    def __init__(self, state: State) -> None:
        self.state = state
        self._events: list[Frame] = []
        self._outgoing: list[bytes] = []
        self.errors_received = 0
        self.handle: str | None = None
        self.kind: AccountKind | None = None

    def events_received(self) -> list[Frame]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        out, self._outgoing = self._outgoing, []
        return out

    def send(self, frame: Frame) -> None:
        """Queue ``frame``; raises if this side may not send it now (a local bug)."""
        if self.state is State.CLOSED:
            raise RuntimeError("connection is closed")
        self._before_send(frame)
        self._outgoing.append(encode(frame))
        self._move(frame)

    def _before_send(self, frame: Frame) -> None:
        pass

    def _move(self, frame: Frame) -> None:
        if isinstance(frame, Error):
            if error_closes(frame.code):
                self.state = State.CLOSED
            return
        new_state = TRANSITIONS[self.role].get(self.state, {}).get(frame.TYPE)
        if new_state is not None:
            self.state = new_state

    def _check_receivable(self, frame: Frame) -> None:
        allowed = RECEIVABLE[self.role].get(self.state, frozenset())
        if frame.TYPE not in allowed:
            raise UnexpectedFrame(f"{frame.TYPE.name} not allowed in state {self.state.value}")


class RelayConnection(_Connection):
    """The relay's end: issues the challenge, checks proofs, turns errors into frames."""

    role = Role.RELAY

    def __init__(
        self,
        relay_key: bytes,
        now_ms: int,
        rng: Rng,
        proof_of_work: ProofOfWork | None = None,
        *,
        handshake_hash: bytes | None = None,
    ) -> None:
        super().__init__(State.AWAITING_AUTH)
        self.relay_key = relay_key
        self.handshake_hash = handshake_hash
        """The channel's handshake hash (:meth:`bind_channel`); no proof is accepted
        before it is known."""
        self.challenge = rng(limits.CHALLENGE_BYTES)
        self.proof_of_work = proof_of_work
        # "When HELLO carries pow, the challenge expires POW_CHALLENGE_TTL_MS after HELLO."
        ttl = limits.CHALLENGE_TTL_MS if proof_of_work is None else limits.POW_CHALLENGE_TTL_MS
        self.challenge_expires_at = now_ms + ttl
        self._challenge_used = False
        self._proven: tuple[str, AccountKind | None] | None = None
        self.protocol_errors = 0
        self.send(
            Hello(
                version=PROTOCOL_VERSION,
                relay_key=relay_key,
                challenge=self.challenge,
                expires_at=self.challenge_expires_at,
                now=now_ms,
                pow=proof_of_work,
            )
        )

    def bind_channel(self, handshake_hash: bytes) -> None:
        """The channel below is established (SPEC §1.3): proofs are checked over its hash.

        The relay queues HELLO at once and sends it only through the channel."""
        if self.handshake_hash is not None:
            raise RuntimeError("the connection has its channel")
        self.handshake_hash = handshake_hash

    def _bound(self) -> bytes:
        if self.handshake_hash is None:
            raise AuthenticationFailed("no channel to bind the proof to")
        return self.handshake_hash

    def close(self) -> None:
        """The channel below failed (SPEC §1.3.6): nothing more is sent or handled."""
        self.state = State.CLOSED
        self._outgoing.clear()
        self._events.clear()

    def receive_data(self, data: bytes) -> None:
        """Decode one message; a bad one queues its ERROR instead of an event."""
        if self.state is State.CLOSED:
            return
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self.send_error(exc, re=exc.request_id)
            return
        try:
            self._check_receivable(frame)
        except ProtocolError as exc:
            self.send_error(exc, re=getattr(frame, "id", None))
            return
        self._events.append(frame)

    def send_error(self, exc: ProtocolError, re: int | None = None) -> None:
        """The one place an exception becomes an ERROR frame (SPEC §9).

        Frame-level (1xx) errors carry their reason; every other code goes bare,
        so a refusal tells the peer nothing about relay state beyond the code.
        """
        if self.state is State.CLOSED:
            return
        reason = (exc.detail[:MAX_REASON_LEN] or None) if 100 <= exc.code < 200 else None
        retry_after = getattr(exc, "retry_after_ms", None)
        self.send(Error(code=int(exc.code), re=re, retry_after=retry_after, reason=reason))
        # SPEC §4.5: "Every ERROR with a code from 100 to 199 and every 200 counts
        # [...] The ERROR that takes the count over MAX_PROTOCOL_ERRORS is sent as
        # usual and followed by ERROR 105 TOO_MANY_ERRORS, a push; if that error
        # itself closes the connection (200), no 105 follows." Before WELCOME a 402
        # counts too: nothing but a connection vouches for the sender, and one that
        # asks on past its bucket would otherwise cost the relay for free.
        if (
            exc.code < 200
            or isinstance(exc, AuthenticationFailed)
            or (isinstance(exc, RateLimited) and self.state is State.AWAITING_AUTH)
        ):
            self.protocol_errors += 1
            if self.protocol_errors > limits.MAX_PROTOCOL_ERRORS and not exc.code.closes_connection:
                self.send(Error(code=int(TooManyErrors.code)))

    def verify_registration(self, frame: Register, now_ms: int) -> None:
        """SPEC §4.2: the new key signed this connection's fresh challenge."""
        self.spend_challenge(now_ms)
        self.verify_registration_signature(frame)

    def spend_challenge(self, now_ms: int) -> None:
        """SPEC §4.4.1: take this connection's one attempt at the challenge.

        The relay's registration policy (SPEC §4.6) runs between this and
        :meth:`verify_registration_signature`, so that its cheap refusals come
        before the signature check and still spend the challenge.
        """
        self._consume_challenge(now_ms)

    def verify_registration_signature(self, frame: Register) -> None:
        """SPEC §4.2: the signature part of :meth:`verify_registration`."""
        if not self._challenge_used:
            raise RuntimeError("spend the challenge before checking a proof")
        transcript = register_transcript(
            self.relay_key, self.challenge, frame.handle, frame.kind, frame.identity_key,
            handshake_hash=self._bound(),
        )  # fmt: skip
        if not signature_valid(frame.identity_key, transcript, frame.signature):
            raise AuthenticationFailed("registration signature")
        self._proven = (frame.handle, AccountKind(frame.kind))

    def registration_proof_check(self, frame: Register) -> Callable[[], bool] | None:
        """SPEC §4.6.3: the check of a REGISTER's proof of work, or None if HELLO set none.

        A missing nonce is refused here (RegistrationRefused). The returned
        function runs the one Argon2id evaluation: CPU-bound and memory-hungry,
        so the I/O layer runs it off its event loop, after its cheaper checks.
        """
        cost = self.proof_of_work
        if cost is None:
            return None
        nonce = frame.pow_nonce
        if nonce is None:
            raise RegistrationRefused("proof of work required")
        transcript = register_transcript(
            self.relay_key, self.challenge, frame.handle, frame.kind, frame.identity_key,
            handshake_hash=self._bound(),
        )  # fmt: skip
        challenge = self.challenge
        return lambda: puzzle.verify(
            transcript, challenge, nonce, cost.bits, cost.opslimit, cost.memlimit
        )

    def verify_login(self, frame: Login, identity_key: bytes | None, now_ms: int) -> None:
        """SPEC §4.3: the account's current key signed this connection's challenge.

        "An unknown handle MUST fail exactly like a wrong signature": for an
        unknown handle (``identity_key is None``) the signature is verified all
        the same, against :data:`UNKNOWN_ACCOUNT_KEY`, and the result thrown
        away — skipping it answered tens of µs sooner, which told who exists.
        """
        self._consume_challenge(now_ms)
        transcript = login_transcript(
            self.relay_key, self.challenge, frame.handle, handshake_hash=self._bound()
        )
        key = UNKNOWN_ACCOUNT_KEY if identity_key is None else identity_key
        verified = signature_valid(key, transcript, frame.signature)
        if not verified or identity_key is None:
            raise AuthenticationFailed("login signature")
        self._proven = (frame.handle, None)

    def _consume_challenge(self, now_ms: int) -> None:
        # "A challenge MUST be accepted at most once and only before it expires."
        if self._challenge_used:
            raise AuthenticationFailed("challenge already used")
        self._challenge_used = True
        if now_ms > self.challenge_expires_at:
            raise AuthenticationFailed("challenge expired")

    def _before_send(self, frame: Frame) -> None:
        if isinstance(frame, Welcome):
            if self._proven is None or self._proven[0] != frame.handle:
                raise RuntimeError("WELCOME for a handle that did not prove its key")
            self.handle = frame.handle
            self.kind = AccountKind(frame.kind)


class ClientConnection(_Connection):
    """The client's end: answers the challenge, numbers requests, matches responses."""

    role = Role.CLIENT

    def __init__(self, handshake_hash: bytes | None = None, relay_key: bytes | None = None,
                 *, first_request_id: int = 1) -> None:  # fmt: skip
        """``handshake_hash`` and ``relay_key`` come from the established channel
        (:class:`.channel.ClientChannel`): proofs are signed over the one, and HELLO
        must present the other (SPEC §1.3.2). Without them nothing can be signed.
        Request ids (1 … 2^32−1) are the client's choice (SPEC §2.2): a test starts near
        the top, with ``first_request_id``, to see them wrap."""
        super().__init__(State.AWAITING_HELLO)
        self.handshake_hash = handshake_hash
        self.channel_relay_key = relay_key
        self.hello: Hello | None = None
        self._next_id = first_request_id
        self._pending: dict[int, FrameType] = {}
        self._proving: tuple[str, str | None] | None = None
        """The handle (and kind, when known) of our REGISTER or LOGIN: its WELCOME's."""

    @property
    def pending(self) -> Mapping[int, FrameType]:
        """Requests awaiting their response, by id (read-only: :meth:`send` and
        :meth:`send_encoded` add to it, responses received take from it)."""
        return MappingProxyType(self._pending)

    def next_request_id(self) -> int:
        """1 … 2^32−1, then 1 again, never an id still pending (SPEC §2.2 rule 2)."""
        request_id = self._next_id
        while request_id in self._pending:
            request_id = request_id % MAX_REQUEST_ID + 1
        self._next_id = request_id % MAX_REQUEST_ID + 1
        return request_id

    def receive_data(self, data: bytes) -> None:
        """Decode one relay message; a misbehaving relay raises the protocol error."""
        if self.state is State.CLOSED:
            raise UnexpectedFrame("connection is closed")
        # A DELIVER per message received: the fast reader first, the codec for
        # anything it leaves (the same frame or the same error either way).
        frame = read_deliver(data) or decode(data)
        self._check_receivable(frame)
        if isinstance(frame, Hello):
            if frame.version != PROTOCOL_VERSION:
                raise UnsupportedVersion(f"relay speaks v{frame.version}")
            # SPEC §1.3.2: "HELLO's relay_key MUST be the key the handshake bound."
            if self.channel_relay_key is not None and frame.relay_key != self.channel_relay_key:
                raise UnexpectedFrame("HELLO names another relay key than the channel's")
        if isinstance(frame, Welcome) and self._proving not in (
            (frame.handle, frame.kind), (frame.handle, None),
        ):  # fmt: skip
            # SPEC §4.4: WELCOME names "the account this connection now acts as" — the
            # one whose key signed our challenge. Taking another (T56) had us online as
            # an account we never proved, acknowledging its deliveries.
            raise UnexpectedFrame(f"WELCOME for {frame.handle} ({frame.kind}), not us")
        re = getattr(frame, "re", None)
        if re is not None:
            asked = self._pending.get(re)
            if asked is None:
                raise UnexpectedFrame(f"response to unknown request {re}")
            if frame.TYPE is not FrameType.ERROR and frame.TYPE is not ANSWERS[asked]:
                raise UnexpectedFrame(f"{asked.name} answered with {frame.TYPE.name}")
            del self._pending[re]
        if isinstance(frame, Hello):
            self.hello = frame
        if isinstance(frame, Welcome):
            self.handle = frame.handle
            self.kind = AccountKind(frame.kind)
        self._move(frame)
        self._events.append(frame)

    def receive_sent(self, frame: Sent) -> bool:
        """Take a SENT the caller decoded itself (:func:`.fastcodec.read_sent`).

        True when :meth:`receive_data` would take it without error: the
        connection is authenticated and ``frame.re`` is a pending request,
        which stops pending. The frame is not queued as an event: the caller
        acts on it. False changes nothing; the caller then feeds the bytes to
        :meth:`receive_data`, which raises what is wrong.
        """
        asked = self._pending.get(frame.re)
        if self.state is not State.AUTHENTICATED or asked is not FrameType.SEND:
            return False
        del self._pending[frame.re]
        return True

    def send_encoded(self, request_id: int, frame_type: FrameType, data: bytes) -> None:
        """Queue a request the caller encoded itself (:func:`.fastcodec.encode_send`),
        noted pending as :meth:`send` notes a request.

        Only once authenticated, where sending a request changes nothing but
        the pending set. ``data`` must be the canonical encoding of a valid
        ``frame_type`` frame numbered ``request_id``: the caller's promise, not
        checked here (checking is what encoding it outside saves).
        """
        if self.state is not State.AUTHENTICATED or frame_type not in REQUEST_FRAMES:
            raise RuntimeError(f"cannot send an encoded {frame_type.name} in {self.state.value}")
        self._pending[request_id] = frame_type
        self._outgoing.append(data)

    def _before_send(self, frame: Frame) -> None:
        if frame.TYPE in REQUEST_FRAMES:
            self._pending[frame.id] = frame.TYPE  # type: ignore[union-attr]
        if isinstance(frame, Register | Login):
            self._proving = (frame.handle, frame.kind if isinstance(frame, Register) else None)

    def register(
        self,
        handle: str,
        kind: str,
        identity_key: bytes,
        sign: Signer,
        *,
        pow_nonce: bytes | None = None,
        invite: bytes | None = None,
    ) -> int:
        """Queue a REGISTER answering the relay's challenge; returns its request id.

        When HELLO asks for a proof of work and no ``pow_nonce`` is given, it is
        solved here, blocking (SPEC §4.6.3); an application with an event loop
        calls :meth:`registration_proof` off the loop first. ``invite`` is the
        operator's token, for a relay that requires one (SPEC §4.6.4).
        """
        hello = self._require_hello()
        transcript = register_transcript(
            hello.relay_key, hello.challenge, handle, kind, identity_key,
            handshake_hash=self._require_channel(),
        )  # fmt: skip
        if pow_nonce is None:
            pow_nonce = self.registration_proof(handle, kind, identity_key)
        request_id = self.next_request_id()
        self.send(
            Register(
                id=request_id,
                handle=handle,
                kind=kind,
                identity_key=identity_key,
                signature=sign(transcript),
                pow_nonce=pow_nonce,
                invite=invite,
            )
        )
        return request_id

    def registration_proof(self, handle: str, kind: str, identity_key: bytes) -> bytes | None:
        """A nonce solving HELLO's proof of work for this registration, or None when
        HELLO asks for none (SPEC §4.6.3). CPU-bound: seconds on a slow device."""
        hello = self._require_hello()
        cost = hello.pow
        if cost is None:
            return None
        transcript = register_transcript(
            hello.relay_key, hello.challenge, handle, kind, identity_key,
            handshake_hash=self._require_channel(),
        )  # fmt: skip
        return puzzle.solve(transcript, hello.challenge, cost.bits, cost.opslimit, cost.memlimit)

    def login(self, handle: str, sign: Signer, *, kind: str | None = None) -> int:
        """Queue a LOGIN answering the relay's challenge; returns its request id. ``kind``,
        the account's if the caller knows it: a WELCOME naming another is refused."""
        hello = self._require_hello()
        transcript = login_transcript(
            hello.relay_key, hello.challenge, handle, handshake_hash=self._require_channel()
        )
        request_id = self.next_request_id()
        self.send(Login(id=request_id, handle=handle, signature=sign(transcript)))
        self._proving = (handle, kind)
        return request_id

    def _require_channel(self) -> bytes:
        if self.handshake_hash is None:
            raise RuntimeError("no channel: a proof needs its handshake hash")
        return self.handshake_hash

    def _require_hello(self) -> Hello:
        if self.hello is None or self.state is not State.AWAITING_AUTH:
            raise RuntimeError("no challenge to answer in state " + self.state.value)
        return self.hello
