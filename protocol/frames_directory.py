"""Frames of the prekey directory (SPEC §5): the prekey records, PREKEYS_UPLOAD,
BUNDLE_FETCH, BUNDLE and the PREKEYS_LOW push.

Why together: an account publishes its prekeys and another fetches them to start a
session; ``server/directory`` handles both. A BUNDLE may carry the proof that its key
binding is logged (SPEC §15.6), the one record this family takes from another
(:mod:`.frames_log`). Shared parts are in :mod:`.frames_base`; import frames from
:mod:`.frames`, which gathers every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import limits
from .errors import MalformedFrame
from .frames_base import (
    KINDS,
    MAX_DELIVERY_ID,
    MAX_REQUEST_ID,
    BaseFrame,
    FrameType,
    Request,
    Response,
    check_enum,
    check_handle,
    check_len,
    check_max,
    check_uint,
)
from .frames_log import LogProof


@dataclass(frozen=True, slots=True)
class SignedPreKeyRecord:
    """A signed prekey as published (SPEC §5.1)."""

    key_id: int
    public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_uint(self.key_id, "key_id", MAX_REQUEST_ID)
        check_len(self.public, "public", 32)
        check_len(self.signature, "signature", 64)


@dataclass(frozen=True, slots=True)
class OneTimePreKeyRecord:
    """A one-time prekey as published (SPEC §5.1)."""

    key_id: int
    public: bytes

    def __post_init__(self) -> None:
        check_uint(self.key_id, "key_id", MAX_REQUEST_ID)
        check_len(self.public, "public", 32)


# §5 Prekeys


@dataclass(frozen=True, slots=True)
class PrekeysUpload(Request):
    """Publish a signed prekey and/or a batch of one-time prekeys (SPEC §5.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PREKEYS_UPLOAD
    signed_prekey: SignedPreKeyRecord | None = None
    one_time: tuple[OneTimePreKeyRecord, ...] = ()

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_max(self.one_time, "one_time", limits.MAX_PREKEYS_PER_UPLOAD)
        if self.signed_prekey is None and not self.one_time:
            raise MalformedFrame("prekeys_upload: carries no key")
        ids = [k.key_id for k in self.one_time]
        if len(set(ids)) != len(ids):
            raise MalformedFrame("one_time: duplicate key_id")


@dataclass(frozen=True, slots=True)
class BundleFetch(Request):
    """Ask for an account's prekey bundle to start a session (SPEC §5.3)."""

    TYPE: ClassVar[FrameType] = FrameType.BUNDLE_FETCH
    handle: str

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_handle(self.handle)


@dataclass(frozen=True, slots=True)
class Bundle(Response):
    """A prekey bundle; ``one_time`` was removed from the directory when served (SPEC §5.3)."""

    TYPE: ClassVar[FrameType] = FrameType.BUNDLE
    handle: str
    kind: str
    identity_key: bytes
    signed_prekey: SignedPreKeyRecord
    one_time: OneTimePreKeyRecord | None = None
    log: LogProof | None = None
    """For a published account whose binding the newest tree head covers (SPEC §15.6)."""

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_handle(self.handle)
        check_enum(self.kind, "kind", KINDS)
        check_len(self.identity_key, "identity_key", 32)


@dataclass(frozen=True, slots=True)
class PrekeysLow(BaseFrame):
    """Push: the owner's one-time prekeys fell below the low-water mark (SPEC §5.4)."""

    TYPE: ClassVar[FrameType] = FrameType.PREKEYS_LOW
    remaining: int

    def __post_init__(self) -> None:
        check_uint(self.remaining, "remaining", MAX_DELIVERY_ID)
