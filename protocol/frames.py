"""Frame classes of protocol v1: one frozen dataclass per frame type (SPEC §2).

A frame is validated when it is constructed, whether by application code or by
the codec from untrusted bytes, so an instance that exists is a well-formed
frame. Field names are the wire keys; the wire tag is :class:`FrameType`.

Value types are deliberately few — ``int``, ``bool``, ``str``, ``bytes``,
optional values, tuples, and a few nested records — so the codec can check
every decoded value against the annotations exactly (SPEC §2.3).

This module is where frames are imported from (``from blindrelay.protocol.frames
import Send`` or ``frames.Send``); it holds what needs every family at once — the
:data:`Frame` and :data:`Record` unions, the tag → class table, which tags a client
may send — and re-exports the classes, which are defined by family, as the SPEC and
the relay's handlers divide them, so that each can be read in a sitting:

- :mod:`.frames_base` — tags, account kinds, value bounds and validators, the
  request and response bases, OK and ERROR (§2)
- :mod:`.frames_auth` — HELLO, REGISTER, LOGIN, WELCOME, ROTATE_IDENTITY (§4)
- :mod:`.frames_directory` — prekeys and bundles (§5)
- :mod:`.frames_messaging` — intents, SEND, SENT, DELIVER, ACK and statements (§6–7)
- :mod:`.frames_business` — profiles, usage and bills (§8)
- :mod:`.frames_log` — the transparency log's frames (§15.6)

Not here: encoding (:mod:`.codec`), which side may send a frame in which
state (:mod:`.connection`), and what the relay does with it (``server``).
"""

from __future__ import annotations

import typing
from dataclasses import fields

from .frames_auth import Hello, Login, ProofOfWork, Register, RotateIdentity, Welcome
from .frames_base import (
    MAX_DELIVERY_ID,
    MAX_REASON_LEN,
    MAX_REQUEST_ID,
    MAX_TIME_MS,
    AccountKind,
    Error,
    FrameType,
    Ok,
    Request,
    check_handle,
)
from .frames_business import (
    Bill,
    BillFetch,
    Profile,
    ProfileFetch,
    ProfilePut,
    Usage,
    UsageCount,
    UsageFetch,
)
from .frames_directory import (
    Bundle,
    BundleFetch,
    OneTimePreKeyRecord,
    PrekeysLow,
    PrekeysUpload,
    SignedPreKeyRecord,
)
from .frames_log import (
    Discoverable,
    LogConsistency,
    LogConsistencyFetch,
    LogEntries,
    LogEntriesFetch,
    LogHead,
    LogHeadFetch,
    LogInclusion,
    LogInclusionFetch,
    LogProof,
)
from .frames_messaging import (
    MESSAGE_ID_RANDOM_BYTES,
    Ack,
    Deliver,
    Intent,
    Send,
    Sent,
    Statement,
    Statements,
    StatementsList,
    check_send_labels,
    message_id,
)

__all__ = [
    "CLIENT_FRAMES",
    "FRAME_CLASSES",
    "MAX_DELIVERY_ID",
    "MAX_REASON_LEN",
    "MAX_REQUEST_ID",
    "MAX_TIME_MS",
    "MESSAGE_ID_RANDOM_BYTES",
    "RECORD_TYPES",
    "REQUEST_FRAMES",
    "AccountKind",
    "Ack",
    "Bill",
    "BillFetch",
    "Bundle",
    "BundleFetch",
    "Deliver",
    "Discoverable",
    "Error",
    "Frame",
    "FrameType",
    "Hello",
    "Intent",
    "LogConsistency",
    "LogConsistencyFetch",
    "LogEntries",
    "LogEntriesFetch",
    "LogHead",
    "LogHeadFetch",
    "LogInclusion",
    "LogInclusionFetch",
    "LogProof",
    "Login",
    "Ok",
    "OneTimePreKeyRecord",
    "PrekeysLow",
    "PrekeysUpload",
    "Profile",
    "ProfileFetch",
    "ProfilePut",
    "ProofOfWork",
    "Record",
    "Register",
    "RotateIdentity",
    "Send",
    "Sent",
    "SignedPreKeyRecord",
    "Statement",
    "Statements",
    "StatementsList",
    "Usage",
    "UsageCount",
    "UsageFetch",
    "Welcome",
    "check_handle",
    "check_send_labels",
    "field_names",
    "message_id",
    "required_field_names",
]
"""Every name this module offered when it held the classes itself."""

Record = SignedPreKeyRecord | OneTimePreKeyRecord | UsageCount | ProofOfWork | LogProof
RECORD_TYPES: tuple[type[Record], ...] = (
    SignedPreKeyRecord, OneTimePreKeyRecord, UsageCount, ProofOfWork, LogProof,
)  # fmt: skip


Frame = (
    Hello | Register | Login | Welcome | RotateIdentity | Ok | Error
    | PrekeysUpload | BundleFetch | Bundle | PrekeysLow
    | Send | Sent | Deliver | Ack
    | Statement | StatementsList | Statements
    | ProfilePut | ProfileFetch | Profile | UsageFetch | Usage | BillFetch | Bill
    | LogHeadFetch | LogHead | LogConsistencyFetch | LogConsistency
    | LogInclusionFetch | LogInclusion | LogEntriesFetch | LogEntries | Discoverable
)  # fmt: skip

FRAME_CLASSES: dict[FrameType, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Register, Login, Welcome, RotateIdentity, Ok, Error,
        PrekeysUpload, BundleFetch, Bundle, PrekeysLow,
        Send, Sent, Deliver, Ack,
        Statement, StatementsList, Statements,
        ProfilePut, ProfileFetch, Profile, UsageFetch, Usage, BillFetch, Bill,
        LogHeadFetch, LogHead, LogConsistencyFetch, LogConsistency,
        LogInclusionFetch, LogInclusion, LogEntriesFetch, LogEntries, Discoverable,
    )
}  # fmt: skip
"""Tag → class; the codec's only table."""

CLIENT_FRAMES = frozenset(
    t for t, cls in FRAME_CLASSES.items() if issubclass(cls, Request) or cls is Ack
)
"""Tags a client may send; every other tag is relay-only (SPEC §2.1)."""

REQUEST_FRAMES = frozenset(t for t, cls in FRAME_CLASSES.items() if issubclass(cls, Request))


def field_names(cls: type[Frame] | type[Record]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def required_field_names(cls: type[Frame] | type[Record]) -> frozenset[str]:
    """Fields a message must carry: all but those typed ``X | None`` (SPEC §2.3 rule 5).

    A default such as ``after = 0`` or ``one_time = ()`` is for building frames
    in code; on the wire such a field is still required.
    """
    hints = typing.get_type_hints(cls)
    return frozenset(
        f.name for f in fields(cls) if type(None) not in typing.get_args(hints[f.name])
    )
