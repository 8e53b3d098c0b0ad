"""The end-to-end content format: what a client encrypts inside an envelope.

The relay carries an envelope (SPEC §13.6) whose plaintext, once decrypted by
the recipient, is one *content* object defined here: a strict msgpack map
with a version, the message id, a kind and the kind's fields::

    text     {"v": 1, "id": <bin 16>, "kind": "text",    "text": <str>}
    bytes    {"v": 1, "id": <bin 16>, "kind": "bytes",   "data": <bin>}
    receipt  {"v": 1, "id": <bin 16>, "kind": "receipt", "receipt": "delivered" | "read",
              "refs": [<bin 16>, ...]}

Any of them may end with ``"sth": <bin>``: the newest signed tree head of the
relay's log the sender verified (SPEC §15.6), so that two parties who were shown
two histories find out from one message.

``id`` repeats the ``msg_id`` of the SEND/DELIVER frame inside the ciphertext,
so the relay cannot relabel a message: a recipient refuses content whose ``id``
differs from the DELIVER's ``msg_id``, and receipts (whose ``refs`` name
msg_ids) therefore always point at authenticated messages. Receipts are
ordinary encrypted messages sent with intent ``chat`` (SPEC §6.2): the relay
cannot tell them from text.

Decoding follows the rules of SPEC §2.3 for frames: exactly one msgpack map
with str keys, no duplicate or unknown keys, exact wire types (no bool for
int, no str for bin, no nil, no floats, no extension types). Encoding is
canonical: keys in the order above.

Not here: encryption and padding (:mod:`.crypto`), and what a client does
with a receipt (``client``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack

from . import limits
from .codec import strict_unpack
from .crypto.padding import MAX_PLAINTEXT_BYTES
from .errors import CryptoError, ProtocolError

CONTENT_VERSION = 1
"""Bumped for any change an existing client would mis-read (SPEC §12.4)."""

MAX_CONTENT_BYTES = MAX_PLAINTEXT_BYTES
"""Largest encoded content (32,767 bytes): the largest padding bucket minus its
marker byte (SPEC §13.5), so every valid content fits one envelope."""

MAX_RECEIPT_REFS = 256
"""Message ids one receipt may name. Matches ``MAX_ACK_IDS``: a client that
acknowledges a batch of deliveries can confirm it in one receipt, and 256 ids
(~4.6 KiB) keep a receipt in a small padding bucket."""

_MAX_MAP_KEYS = 6
"""The largest content map (a receipt with a tree head) has six keys."""


class MalformedContent(CryptoError):
    """Decrypted content that breaks this format: an authenticated peer's bug or forgery."""


class Kind(StrEnum):
    TEXT = "text"
    BYTES = "bytes"
    RECEIPT = "receipt"


class ReceiptType(StrEnum):
    """``delivered``: stored on the recipient's device; ``read``: shown to the person."""

    DELIVERED = "delivered"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Data:
    """Opaque application bytes (kind ``bytes``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Receipt:
    """Confirms messages of the peer by their msg_ids; never itself receipted."""

    type: ReceiptType
    refs: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.type, ReceiptType):
            raise MalformedContent(f"receipt type must be a ReceiptType, not {self.type!r}")
        if not 1 <= len(self.refs) <= MAX_RECEIPT_REFS:
            raise MalformedContent(f"refs: 1 to {MAX_RECEIPT_REFS} message ids")
        for ref in self.refs:
            _check_msg_id(ref, "refs")
        if len(set(self.refs)) != len(self.refs):
            raise MalformedContent("refs: duplicate message id")


Body = Text | Data | Receipt


@dataclass(frozen=True, slots=True)
class Content:
    """One decrypted message: its id (equal to the frame's msg_id), its body and, if the
    sender had one, the newest signed tree head it verified (SPEC §15.6, gossip)."""

    msg_id: bytes
    body: Body
    sth: bytes | None = None

    def __post_init__(self) -> None:
        _check_msg_id(self.msg_id, "id")
        if not isinstance(self.body, Text | Data | Receipt):
            raise MalformedContent(f"unknown body {type(self.body).__name__}")
        if self.sth is not None and (
            type(self.sth) is not bytes or not 1 <= len(self.sth) <= limits.MAX_TREE_HEAD_BYTES
        ):
            raise MalformedContent(f"sth: 1 to {limits.MAX_TREE_HEAD_BYTES} bytes")

    @property
    def kind(self) -> Kind:
        if isinstance(self.body, Text):
            return Kind.TEXT
        if isinstance(self.body, Data):
            return Kind.BYTES
        return Kind.RECEIPT


def _check_msg_id(value: object, name: str) -> None:
    if type(value) is not bytes or len(value) != limits.MESSAGE_ID_BYTES:
        raise MalformedContent(f"{name}: message ids are exactly {limits.MESSAGE_ID_BYTES} bytes")


def encode_content(content: Content) -> bytes:
    """Canonical bytes of ``content``; MalformedContent if over ``MAX_CONTENT_BYTES``."""
    fields: dict[str, Any] = {"v": CONTENT_VERSION, "id": content.msg_id, "kind": str(content.kind)}
    body = content.body
    if isinstance(body, Text):
        fields["text"] = body.text
    elif isinstance(body, Data):
        fields["data"] = body.data
    else:
        fields["receipt"] = str(body.type)
        fields["refs"] = list(body.refs)
    if content.sth is not None:
        fields["sth"] = content.sth
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    if len(data) > MAX_CONTENT_BYTES:
        raise MalformedContent(f"content of {len(data)} bytes exceeds {MAX_CONTENT_BYTES}")
    return data


def content_encoder(body: Body, sth: bytes | None = None) -> Callable[[bytes], bytes]:
    """``encode_content(Content(msg_id, body))`` for many msg_ids, the body encoded once.

    A bulk send encrypts one body under a fresh msg_id per recipient. The id is
    a fixed-size bin in the canonical encoding, so the encodings under two ids
    differ in exactly those bytes: encoding under all-zero and all-one ids
    finds them, and each message splices its id in. If the encodings do not
    differ that way (a future content format), every id is encoded in full.
    Raises MalformedContent as ``encode_content`` does (too large, an id of
    another size).
    """
    size = limits.MESSAGE_ID_BYTES
    zeros = encode_content(Content(bytes(size), body, sth))
    ones = encode_content(Content(b"\xff" * size, body, sth))
    start = next((i for i, (a, b) in enumerate(zip(zeros, ones, strict=False)) if a != b), -1)
    end = start + size
    if (
        start < 0
        or len(zeros) != len(ones)
        or zeros[start:end] != bytes(size)
        or ones[start:end] != b"\xff" * size
        or zeros[end:] != ones[end:]
    ):
        return lambda msg_id: encode_content(Content(msg_id, body, sth))  # pragma: no cover
    prefix, suffix = zeros[:start], zeros[end:]

    def encode(msg_id: bytes) -> bytes:
        _check_msg_id(msg_id, "id")
        return prefix + msg_id + suffix

    return encode


_KIND_KEYS: dict[str, frozenset[str]] = {
    Kind.TEXT: frozenset({"text"}),
    Kind.BYTES: frozenset({"data"}),
    Kind.RECEIPT: frozenset({"receipt", "refs"}),
}
_COMMON_KEYS = frozenset({"v", "id", "kind"})


def decode_content(data: bytes) -> Content:
    """Strictly parse decrypted content, or raise MalformedContent (rules: module docstring)."""
    if len(data) > MAX_CONTENT_BYTES:
        raise MalformedContent(f"content over {MAX_CONTENT_BYTES} bytes")
    obj = _unpack(data)
    if type(obj) is not dict:
        raise MalformedContent("content must be a map")
    kind = obj.get("kind")
    if type(kind) is not str or kind not in _KIND_KEYS:
        raise MalformedContent(f"kind must be one of {', '.join(_KIND_KEYS)}")
    expected = _COMMON_KEYS | _KIND_KEYS[kind]
    if "sth" in obj:
        expected = expected | {"sth"}
    if set(obj) != expected:
        unknown = sorted(set(obj) - expected)
        missing = sorted(expected - set(obj))
        raise MalformedContent(f"keys: unknown {unknown}, missing {missing}")
    version = obj["v"]
    if type(version) is not int or version != CONTENT_VERSION:
        raise MalformedContent(f"v must be {CONTENT_VERSION}")
    body: Body
    if kind == Kind.TEXT:
        if type(obj["text"]) is not str:
            raise MalformedContent("text must be a str")
        body = Text(obj["text"])
    elif kind == Kind.BYTES:
        if type(obj["data"]) is not bytes:
            raise MalformedContent("data must be bin")
        body = Data(obj["data"])
    else:
        receipt, refs = obj["receipt"], obj["refs"]
        if type(receipt) is not str or receipt not in tuple(ReceiptType):
            raise MalformedContent("receipt must be 'delivered' or 'read'")
        if type(refs) is not tuple:
            raise MalformedContent("refs must be an array")
        body = Receipt(ReceiptType(receipt), refs)
    sth = obj.get("sth")
    if sth is not None and type(sth) is not bytes:
        raise MalformedContent("sth must be bin")
    return Content(obj["id"], body, sth)


def _unpack(data: bytes) -> object:
    try:
        return strict_unpack(
            data,
            max_len=MAX_CONTENT_BYTES,
            max_array_len=MAX_RECEIPT_REFS,
            max_map_len=_MAX_MAP_KEYS,
        )
    except ProtocolError as exc:  # the codec's frame error, renamed for the E2E layer
        raise MalformedContent(exc.detail) from None
