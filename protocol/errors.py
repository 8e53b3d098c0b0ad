"""Every failure blindrelay can name, and the numeric codes that cross the wire.

The tree::

    BlindrelayError
    ├── ProtocolError                 carries an ErrorCode; becomes an ERROR frame
    │   ├── MalformedFrame            100  bytes are not a well-formed frame
    │   ├── FrameTooLarge             101  frame or field over its limit
    │   ├── UnknownFrameType          102  type tag not defined in this version
    │   ├── UnexpectedFrame           103  valid frame, wrong state or direction
    │   ├── UnsupportedVersion        104  peer speaks another major version
    │   ├── TooManyErrors             105  error budget of the connection spent
    │   ├── AuthenticationFailed      200  bad, expired, replayed or unbound proof
    │   ├── HandleTaken               201  registration of an existing handle
    │   ├── Forbidden                 202  action not allowed for this account kind
    │   ├── RegistrationRefused       203  proof of work or invite missing or wrong
    │   ├── InvalidPrekeys            300  prekey upload fails its checks
    │   ├── RecipientUnavailable      400  deliberately generic refusal
    │   ├── QueueFull                 401  no room in the queue for this sender
    │   ├── RateLimited               402  a token bucket is empty
    │   ├── MessageIdReused           403  same client message id, other content
    │   ├── InvalidStatement          500  consent/block statement fails checks
    │   ├── StaleStatement            501  statement replayed or outside clock skew
    │   ├── InvalidProfile            600  business profile/badge fails checks
    │   ├── NotFound                  601  no such public record (a business's profile)
    │   ├── InternalError             900  relay fault; never carries detail
    │   ├── ShuttingDown              901  relay is stopping; reconnect later
    │   └── StoreUnavailable          902  store unreachable for now; retry after
    ├── CryptoError                   local to a client; never sent on the wire
    │   ├── InvalidSignature          a signature does not verify
    │   ├── InvalidKey                malformed or low-order public key
    │   ├── UntrustedIdentity         a contact's identity key changed
    │   ├── IdentityKeyReused         a key already pinned for another handle
    │   ├── DuplicatedMessage         message key already used (replay)
    │   ├── TooManySkippedMessages    header would skip past the cap
    │   ├── PlaintextTooLarge         over the largest padding bucket
    │   └── DecryptionFailed          AEAD authentication failed
    │       └── MalformedEnvelope     envelope bytes do not parse
    └── TransparencyError             a log's evidence does not hold (SPEC §15); local
        ├── InvalidProof              an inclusion or consistency proof fails
        ├── InvalidTreeHead           a tree head's signature or fields are wrong
        ├── MalformedLogEntry         log entry bytes do not parse
        ├── KeyNotLogged              a published key without a proof it was logged
        └── LogForked                 two signed heads no consistency proof joins

``ErrorCode`` mirrors the table in SPEC §9 and a test keeps the two equal.
``RecipientUnavailable`` is one code for "no such account", "no consent",
"blocked", "a business" (to a business) and "past the message-request limits" on
purpose: telling them apart would be an existence, kind and block oracle (SPEC §7.7).
Exceptions become ERROR frames in exactly one place (the relay's dispatcher);
``InternalError`` is sent with no detail because detail may be sensitive.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Wire error codes (SPEC §9). Ranges group the spec sections."""

    MALFORMED_FRAME = 100
    FRAME_TOO_LARGE = 101
    UNKNOWN_FRAME_TYPE = 102
    UNEXPECTED_FRAME = 103
    UNSUPPORTED_VERSION = 104
    TOO_MANY_ERRORS = 105
    AUTH_FAILED = 200
    HANDLE_TAKEN = 201
    FORBIDDEN = 202
    REGISTRATION_REFUSED = 203
    INVALID_PREKEYS = 300
    RECIPIENT_UNAVAILABLE = 400
    QUEUE_FULL = 401
    RATE_LIMITED = 402
    MESSAGE_ID_REUSED = 403
    INVALID_STATEMENT = 500
    STALE_STATEMENT = 501
    INVALID_PROFILE = 600
    NOT_FOUND = 601
    INTERNAL_ERROR = 900
    SHUTTING_DOWN = 901
    STORE_UNAVAILABLE = 902

    @property
    def closes_connection(self) -> bool:
        """Whether the relay closes the connection after sending this code."""
        return self in _CLOSING_CODES


_CLOSING_CODES = frozenset(
    {
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.TOO_MANY_ERRORS,
        ErrorCode.AUTH_FAILED,
        ErrorCode.SHUTTING_DOWN,
    }
)


class BlindrelayError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(BlindrelayError):
    """A failure the relay reports to its peer as an ERROR frame."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code.name)
        self.detail = detail
        self.request_id: int | None = None
        """The ``re`` of the ERROR this becomes (SPEC §2.2.5); the codec sets it from the bytes."""


class MalformedFrame(ProtocolError):
    code = ErrorCode.MALFORMED_FRAME


class FrameTooLarge(ProtocolError):
    code = ErrorCode.FRAME_TOO_LARGE


class UnknownFrameType(ProtocolError):
    code = ErrorCode.UNKNOWN_FRAME_TYPE


class UnexpectedFrame(ProtocolError):
    code = ErrorCode.UNEXPECTED_FRAME


class UnsupportedVersion(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION


class TooManyErrors(ProtocolError):
    code = ErrorCode.TOO_MANY_ERRORS


class AuthenticationFailed(ProtocolError):
    code = ErrorCode.AUTH_FAILED


class HandleTaken(ProtocolError):
    code = ErrorCode.HANDLE_TAKEN


class Forbidden(ProtocolError):
    code = ErrorCode.FORBIDDEN


class RegistrationRefused(ProtocolError):
    """The relay's registration policy wants a proof of work or an invite that the
    REGISTER lacks or got wrong (SPEC §4.6); not about the key, which 200 is."""

    code = ErrorCode.REGISTRATION_REFUSED


class InvalidPrekeys(ProtocolError):
    code = ErrorCode.INVALID_PREKEYS


class RecipientUnavailable(ProtocolError):
    code = ErrorCode.RECIPIENT_UNAVAILABLE


class QueueFull(ProtocolError):
    code = ErrorCode.QUEUE_FULL


class RateLimited(ProtocolError):
    """Sent with ``retry_after``, which SPEC §9 requires with 402 (1 ms at least)."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, detail: str = "", retry_after_ms: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_ms = max(1, retry_after_ms)


class StoreUnavailable(ProtocolError):
    """The relay cannot reach its store for now (SPEC §6.3, §9): the request was not
    answered and may or may not have been stored; the same request may be sent again
    after ``retry_after`` (a SEND with the same ``msg_id`` is answered once)."""

    code = ErrorCode.STORE_UNAVAILABLE

    def __init__(self, detail: str = "", retry_after_ms: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_ms = max(1, retry_after_ms)


class MessageIdReused(ProtocolError):
    code = ErrorCode.MESSAGE_ID_REUSED


class InvalidStatement(ProtocolError):
    code = ErrorCode.INVALID_STATEMENT


class StaleStatement(ProtocolError):
    code = ErrorCode.STALE_STATEMENT


class InvalidProfile(ProtocolError):
    code = ErrorCode.INVALID_PROFILE


class NotFound(ProtocolError):
    code = ErrorCode.NOT_FOUND


class InternalError(ProtocolError):
    code = ErrorCode.INTERNAL_ERROR


class ShuttingDown(ProtocolError):
    code = ErrorCode.SHUTTING_DOWN


ERRORS_BY_CODE: dict[ErrorCode, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        MalformedFrame, FrameTooLarge, UnknownFrameType, UnexpectedFrame,
        UnsupportedVersion, TooManyErrors, AuthenticationFailed, HandleTaken,
        Forbidden, RegistrationRefused, InvalidPrekeys, RecipientUnavailable, QueueFull,
        RateLimited, MessageIdReused, InvalidStatement, StaleStatement, InvalidProfile,
        NotFound, InternalError, ShuttingDown, StoreUnavailable,
    )
}  # fmt: skip
"""Code → exception class, so a client can raise the named error it received."""


def error_for_code(code: int, detail: str = "", retry_after_ms: int | None = None) -> ProtocolError:
    """Build the named exception for a received wire code (unknown → internal), with
    the ERROR's ``retry_after`` where its class carries one (402, 902)."""
    try:
        cls = ERRORS_BY_CODE[ErrorCode(code)]
    except ValueError:
        return InternalError(f"unknown error code {code}")
    if retry_after_ms is not None and issubclass(cls, RateLimited | StoreUnavailable):
        return cls(detail, retry_after_ms)
    return cls(detail)


class CryptoError(BlindrelayError):
    """A failure inside a client's end-to-end layer; never crosses the wire."""


class InvalidSignature(CryptoError):
    pass


class InvalidKey(CryptoError):
    pass


class UntrustedIdentity(CryptoError):
    """A contact presented an identity key other than the one trusted before."""

    def __init__(self, handle: str, detail: str = "") -> None:
        super().__init__(detail or f"identity key of {handle!r} changed")
        self.handle = handle


class IdentityKeyReused(CryptoError):
    """An identity key already pinned for another handle (SPEC §13.8).

    Trust on first use pins one key to one handle: a key that stands for two
    handles would let one account's messages be shown as another's. Not an
    :class:`UntrustedIdentity`: there is nothing for the person to approve.
    """

    def __init__(self, handle: str, owner: str) -> None:
        super().__init__(f"identity key presented for {handle!r} is pinned for {owner!r}")
        self.handle = handle
        self.owner = owner


class DuplicatedMessage(CryptoError):
    pass


class TooManySkippedMessages(CryptoError):
    pass


class DecryptionFailed(CryptoError):
    pass


class PlaintextTooLarge(CryptoError):
    """A plaintext does not fit the largest padding bucket (SPEC §13.5)."""


class MalformedEnvelope(DecryptionFailed):
    """Envelope bytes do not parse (SPEC §13.6); a kind of failed decryption."""


class TransparencyError(BlindrelayError):
    """The transparency log's evidence does not hold (SPEC §15); a verifier's verdict,
    never sent on the wire: what a client does about it is its own (an alarm, a refusal)."""


class InvalidProof(TransparencyError):
    """An inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2)."""


class InvalidTreeHead(TransparencyError):
    """A signed tree head whose signature does not verify or whose fields are malformed."""


class MalformedLogEntry(TransparencyError):
    """Log entry bytes that are not one of the encodings of SPEC §15."""


class KeyNotLogged(TransparencyError):
    """A published account's key (every business's) came without a valid proof that the
    relay logged it (SPEC §15.6 rule 3): the relay may be handing out a key of its own.
    Surfaced like a key change, before anything is encrypted to that key; never a
    silent fallback to trusting it."""

    def __init__(self, handle: str, detail: str) -> None:
        super().__init__(f"the key of {handle!r} is not proven logged: {detail}")
        self.handle = handle


class LogForked(TransparencyError):
    """Two signed tree heads of one relay that no consistency proof joins (SPEC §15.3):
    the relay showed two histories. ``first`` and ``second`` are the signed heads, the
    evidence a third party can recheck with the relay key alone; ``detail`` says why
    they cannot both be true."""

    def __init__(self, first: bytes, second: bytes, detail: str) -> None:
        super().__init__(f"the relay's log forked: {detail}")
        self.first = first
        self.second = second
        self.detail = detail


class LogUnchecked(TransparencyError):
    """A contact's signed tree head the relay has not proven consistent with ours within
    the client's bound (SPEC §15.6 rule 5): every consistency fetch for it was refused,
    dropped or left unanswered. No proof of a fork — the relay may be down — but the one
    check that would show a split view is being withheld. ``contact`` sent ``heard``;
    ``kept`` is our newest verified head (None before any), ``refusals`` how many tries
    failed."""

    def __init__(
        self, contact: str, heard: bytes, kept: bytes | None, refusals: int, detail: str
    ) -> None:
        super().__init__(
            f"the relay has not proven {contact!r}'s tree head consistent with ours "
            f"({refusals} tries): {detail}"
        )
        self.contact = contact
        self.heard = heard
        self.kept = kept
        self.refusals = refusals
