"""Frames of connection and authentication (SPEC §4): HELLO with the proof of work it
may set, REGISTER, LOGIN, WELCOME and ROTATE_IDENTITY.

Why together: these are the frames that make a connection act as an account (and the
one that changes which key the account has), the ones :mod:`.connection` checks the
proofs of and ``server/auth`` handles. Shared parts are in :mod:`.frames_base`;
import frames from :mod:`.frames`, which gathers every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import limits
from .errors import MalformedFrame
from .frames_base import (
    KINDS,
    MAX_DELIVERY_ID,
    MAX_TIME_MS,
    BaseFrame,
    FrameType,
    Request,
    Response,
    check_enum,
    check_handle,
    check_len,
    check_uint,
)
from .pow import expected_solve_ms


@dataclass(frozen=True, slots=True)
class ProofOfWork:
    """The cost of the registration puzzle a relay sets in HELLO (SPEC §4.6.3).

    Bounded so that no relay can ask a client for more than
    ``POW_MAX_EXPECTED_SOLVE_MS`` of work on the reference device: a client
    refuses such a HELLO like any malformed frame.
    """

    bits: int
    opslimit: int
    memlimit: int

    def __post_init__(self) -> None:
        check_uint(self.bits, "bits", limits.POW_MAX_BITS, minimum=1)
        check_uint(self.opslimit, "opslimit", limits.POW_MAX_OPSLIMIT, minimum=1)
        check_uint(
            self.memlimit, "memlimit", limits.POW_MAX_MEMLIMIT_BYTES,
            minimum=limits.POW_MIN_MEMLIMIT_BYTES,
        )  # fmt: skip
        if self.memlimit % 1024:
            raise MalformedFrame("memlimit: must be a multiple of 1024")
        if (
            expected_solve_ms(self.bits, self.opslimit, self.memlimit)
            > limits.POW_MAX_EXPECTED_SOLVE_MS
        ):
            raise MalformedFrame("pow: costs more than POW_MAX_EXPECTED_SOLVE_MS to solve")


# §4 Connection and authentication


@dataclass(frozen=True, slots=True)
class Hello(BaseFrame):
    """Relay's first frame: who it is and the challenge to sign (SPEC §4.1)."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    version: int
    relay_key: bytes
    challenge: bytes
    expires_at: int
    now: int
    pow: ProofOfWork | None = None
    """Present when REGISTER must carry a proof of work (SPEC §4.6.3)."""

    def __post_init__(self) -> None:
        check_uint(self.version, "version", 255, minimum=1)
        check_len(self.relay_key, "relay_key", 32)
        check_len(self.challenge, "challenge", limits.CHALLENGE_BYTES)
        check_uint(self.expires_at, "expires_at", MAX_TIME_MS)
        check_uint(self.now, "now", MAX_TIME_MS)


@dataclass(frozen=True, slots=True)
class Register(Request):
    """Create an account bound to an identity key, proving possession (SPEC §4.2)."""

    TYPE: ClassVar[FrameType] = FrameType.REGISTER
    handle: str
    kind: str
    identity_key: bytes
    signature: bytes
    pow_nonce: bytes | None = None
    """Solves HELLO's proof of work (SPEC §4.6.3)."""
    invite: bytes | None = None
    """An operator-issued invite token (SPEC §4.6.4)."""

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_handle(self.handle)
        check_enum(self.kind, "kind", KINDS)
        check_len(self.identity_key, "identity_key", 32)
        check_len(self.signature, "signature", 64)
        if self.pow_nonce is not None:
            check_len(self.pow_nonce, "pow_nonce", limits.POW_NONCE_BYTES)
        if self.invite is not None:
            check_len(self.invite, "invite", limits.INVITE_BYTES)


@dataclass(frozen=True, slots=True)
class Login(Request):
    """Authenticate as an existing account (SPEC §4.3)."""

    TYPE: ClassVar[FrameType] = FrameType.LOGIN
    handle: str
    signature: bytes

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_handle(self.handle)
        check_len(self.signature, "signature", 64)


@dataclass(frozen=True, slots=True)
class Welcome(Response):
    """Authentication succeeded; the connection now acts as ``handle`` (SPEC §4.4)."""

    TYPE: ClassVar[FrameType] = FrameType.WELCOME
    handle: str
    kind: str
    queued: int
    one_time_prekeys: int
    has_signed_prekey: bool

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_handle(self.handle)
        check_enum(self.kind, "kind", KINDS)
        check_uint(self.queued, "queued", MAX_DELIVERY_ID)
        check_uint(self.one_time_prekeys, "one_time_prekeys", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class RotateIdentity(Request):
    """Replace the account's identity key, signed by the old and the new key (SPEC §3.4)."""

    TYPE: ClassVar[FrameType] = FrameType.ROTATE_IDENTITY
    new_identity_key: bytes
    issued_at: int
    old_signature: bytes
    new_signature: bytes

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_len(self.new_identity_key, "new_identity_key", 32)
        check_uint(self.issued_at, "issued_at", MAX_TIME_MS)
        check_len(self.old_signature, "old_signature", 64)
        check_len(self.new_signature, "new_signature", 64)
