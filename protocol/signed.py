"""Signed objects: consent/block statements, badges, profiles (SPEC §14, §7.4, §8).

A signed object is ``{"body": bin, "sig": bin64}`` where ``body`` is the
canonical encoding of a record and ``sig`` an Ed25519 signature over
``context || 0x00 || body``. The context string separates the object kinds
from each other and from every other signature in the protocol, so a
signature made for one purpose can never be presented for another.

Verification order matters and is fixed here: check the signature over the
exact bytes received, and only then decode ``body`` strictly. Nothing about
an unverified body is ever interpreted.

Not here: what a statement *does* to consent state (:mod:`.consent`), who may
send one (the relay), and key custody (the client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, TypeVar

from . import limits
from .codec import decode_object, encode_object
from .crypto.keys import signature_valid
from .errors import (
    FrameTooLarge,
    InvalidStatement,
    MalformedFrame,
    ProtocolError,
    StaleStatement,
)
from .frames import MAX_TIME_MS, check_handle

Signer = Callable[[bytes], bytes]
Rng = Callable[[int], bytes]
T = TypeVar("T", bound="SignedBody")


@dataclass(frozen=True, slots=True)
class SignedObject:
    """The outer map: body bytes and the signature over them."""

    body: bytes
    sig: bytes

    def __post_init__(self) -> None:
        if len(self.sig) != 64:
            raise MalformedFrame("sig: must be exactly 64 bytes")


class SignedBody:
    """Mixin for records that travel signed. Subclasses set CONTEXT and MAX_BYTES."""

    CONTEXT: ClassVar[bytes]
    MAX_BYTES: ClassVar[int]

    def sign(self, signer: Signer) -> bytes:
        """Encode, sign with ``signer`` and wrap: the bytes that go on the wire."""
        body = encode_object(self)
        signed = encode_object(SignedObject(body=body, sig=signer(self.CONTEXT + b"\x00" + body)))
        if len(signed) > self.MAX_BYTES:
            raise FrameTooLarge(f"{type(self).__name__}: at most {self.MAX_BYTES} bytes")
        return signed


# Field checks every kind of signed body shares. All raise MalformedFrame, never
# FrameTooLarge: a body is no frame, and its reader re-raises the error under the
# code of its kind (statement, profile, badge; :func:`reraise_as`).


def check_version(v: int) -> None:
    """Version 1 is the only body format (SPEC §14)."""
    if v != 1:
        raise MalformedFrame("v: must be 1")


def check_exact_len(value: bytes, name: str, size: int) -> None:
    if len(value) != size:
        raise MalformedFrame(f"{name}: must be exactly {size} bytes")


def check_time(value: int, name: str) -> None:
    """Unix milliseconds in the range every frame's times use (SPEC conventions)."""
    if not 0 <= value <= MAX_TIME_MS:
        raise MalformedFrame(f"{name}: out of range")


def open_signed(cls: type[T], data: bytes, public_key: bytes) -> T:
    """Verify ``data`` as a signed ``cls`` under ``public_key`` and decode its body.

    Raises :class:`InvalidStatement`-style protocol errors: the caller maps the
    kind (statement, profile, badge) to its wire code with :func:`reraise_as`.
    """
    outer = peek_signed(cls, data)
    if not signature_valid(public_key, cls.CONTEXT + b"\x00" + outer.body, outer.sig):
        raise InvalidStatement(f"{cls.__name__}: signature does not verify")
    return decode_object(cls, outer.body, max_bytes=cls.MAX_BYTES)


def peek_signed(cls: type[T], data: bytes) -> SignedObject:
    """The outer map only, to find out *who* claims to have signed before verifying."""
    return decode_object(SignedObject, data, max_bytes=cls.MAX_BYTES)


def unverified_body(cls: type[T], data: bytes) -> T:
    """Decode the body WITHOUT checking the signature.

    Only to learn which key to verify against (e.g. a statement's ``signer``);
    the result MUST NOT be acted on before :func:`open_signed` succeeds.
    """
    return decode_object(cls, peek_signed(cls, data).body, max_bytes=cls.MAX_BYTES)


def reraise_as(exc: ProtocolError, cls: type[ProtocolError]) -> ProtocolError:
    """The same failure under the wire code of the object's kind (SPEC §9)."""
    return cls(exc.detail)


# --- statements (SPEC §7.4) --------------------------------------------------


class Action(StrEnum):
    GRANT = "grant"
    DENY = "deny"
    REVOKE = "revoke"
    BLOCK = "block"
    UNBLOCK = "unblock"


CONSENT_ACTIONS = frozenset({Action.GRANT, Action.DENY, Action.REVOKE})
BLOCK_ACTIONS = frozenset({Action.BLOCK, Action.UNBLOCK})


@dataclass(frozen=True, slots=True)
class ConsentStatement(SignedBody):
    """A user's grant/deny/revoke, or any account's block/unblock (SPEC §7.4)."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/statement"
    MAX_BYTES: ClassVar[int] = limits.MAX_STATEMENT_BYTES

    v: int
    action: str
    signer: str
    signer_key: bytes
    target: str
    issued_at: int
    nonce: bytes
    relay_key: bytes
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_version(self.v)
        if self.action not in tuple(Action):
            raise MalformedFrame("action: unknown")
        check_handle(self.signer, "signer")
        check_handle(self.target, "target")
        if self.signer == self.target:
            raise MalformedFrame("target: must differ from signer")
        check_exact_len(self.signer_key, "signer_key", 32)
        check_exact_len(self.relay_key, "relay_key", 32)
        check_exact_len(self.nonce, "nonce", limits.STATEMENT_NONCE_BYTES)
        check_time(self.issued_at, "issued_at")
        if self.action in CONSENT_ACTIONS:
            cats = self.categories or ()
            if not cats or len(set(cats)) != len(cats) or not set(cats) <= set(limits.CATEGORIES):
                raise MalformedFrame("categories: 1–2 distinct known categories required")
        elif self.categories is not None:
            raise MalformedFrame("categories: only for grant, deny and revoke")

    @property
    def is_consent(self) -> bool:
        return self.action in CONSENT_ACTIONS


def make_statement(
    action: Action | str,
    *,
    signer: str,
    signer_key: bytes,
    target: str,
    relay_key: bytes,
    now_ms: int,
    rng: Rng,
    categories: tuple[str, ...] | None = None,
) -> ConsentStatement:
    """A fresh statement: ``now_ms`` and ``rng`` injected so tests can fix them."""
    return ConsentStatement(
        v=1,
        action=str(action),
        signer=signer,
        signer_key=signer_key,
        target=target,
        issued_at=now_ms,
        nonce=rng(limits.STATEMENT_NONCE_BYTES),
        relay_key=relay_key,
        categories=tuple(categories) if categories is not None else None,
    )


def verify_statement(
    data: bytes,
    *,
    expected_key: bytes,
    relay_key: bytes,
    now_ms: int | None = None,
) -> ConsentStatement:
    """Check a statement as the relay or a business does (SPEC §7.4–7.5).

    ``expected_key`` is the signer's identity key as the verifier knows it (the
    relay's account record, or the business's pinned key for that user). With
    ``now_ms`` the issue time must also be within ``STATEMENT_SKEW_MS``; an
    archived receipt is verified without it.
    """
    try:
        statement = open_signed(ConsentStatement, data, expected_key)
    except InvalidStatement:
        raise
    except ProtocolError as exc:
        raise reraise_as(exc, InvalidStatement) from None
    if statement.signer_key != expected_key:
        raise InvalidStatement("signer_key: not the signer's identity key")
    if statement.relay_key != relay_key:
        raise InvalidStatement("relay_key: statement made for another relay")
    if now_ms is not None and abs(now_ms - statement.issued_at) > limits.STATEMENT_SKEW_MS:
        raise StaleStatement("issued_at: outside the allowed clock skew")
    return statement
