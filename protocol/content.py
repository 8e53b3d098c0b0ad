"""The end-to-end content format: what a client encrypts inside an envelope.

The relay carries an envelope (SPEC §13.6) whose plaintext, once decrypted by
the recipient, is one *content* object defined here: a strict msgpack map
with a version, the message id, the SEND's labels, a kind and the kind's fields::

    text     {"v": 2, "id": <bin 16>, <labels>, "kind": "text",    "text": <str>}
    bytes    {"v": 2, "id": <bin 16>, <labels>, "kind": "bytes",   "data": <bin>}
    receipt  {"v": 2, "id": <bin 16>, <labels>, "kind": "receipt",
              "receipt": "delivered" | "read", "refs": [<bin 16>, ...]}

    labels   "intent": <str>, then "category": <str> (a notification) or
             "categories": [<str>, ...] (a consent request), as the SEND has them

Any of them may end with ``"sth": <bin>``: the newest signed tree head of the
relay's log the sender verified (SPEC §15.6), so that two parties who were shown
two histories find out from one message.

``id`` and the labels repeat the ``msg_id``, ``intent``, ``category`` and
``categories`` of the SEND/DELIVER frame inside the ciphertext, so the relay
cannot relabel a message: a recipient refuses content whose ``id`` differs from
the DELIVER's ``msg_id`` — receipts (whose ``refs`` name msg_ids) therefore always
point at authenticated messages — or whose labels differ from the DELIVER's: a
service reply cannot be shown as a consent request, a utility notification as a
marketing one (:class:`Labels`, the one value a client builds both from).
Receipts are ordinary encrypted messages sent with intent ``chat`` (SPEC §6.2):
the relay cannot tell them from text.

Decoding follows the rules of SPEC §2.3 for frames: exactly one msgpack map
with str keys, no duplicate or unknown keys, exact wire types (no bool for
int, no str for bin, no nil, no floats, no extension types). Encoding is
canonical: keys in the order above. Version 1 (no labels) is refused like any
other unknown version; :func:`decode_content` reads it only for a client's own
inbox rows written before the upgrade (``accepted_as``).

Not here: encryption and padding (:mod:`.crypto`), and what a client does
with a receipt (``client``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack

from . import frames, limits
from .codec import strict_unpack
from .crypto.padding import MAX_PLAINTEXT_BYTES
from .errors import CryptoError, ProtocolError

CONTENT_VERSION = 2
"""Bumped for any change an existing client would mis-read (SPEC §12.4). 2 added the
SEND's labels (intent, category, categories), so the relay cannot relabel a message."""

MAX_CONTENT_BYTES = MAX_PLAINTEXT_BYTES
"""Largest encoded content (32,767 bytes): the largest padding bucket minus its
marker byte (SPEC §13.5), so every valid content fits one envelope."""

MAX_RECEIPT_REFS = 256
"""Message ids one receipt may name. Matches ``MAX_ACK_IDS``: a client that
acknowledges a batch of deliveries can confirm it in one receipt, and 256 ids
(~4.6 KiB) keep a receipt in a small padding bucket."""

_MAX_MAP_KEYS = 7
"""The largest content maps have seven keys: a receipt with a tree head, a notification
(its category) with one."""


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
class Labels:
    """What a SEND tells the relay about its body besides its recipient (SPEC §6.1, §6.2):
    ``chat``, or a business's ``notification`` in a ``category`` or ``consent_request``
    for ``categories``. The content repeats them (SPEC §13.11 rule 4), so a client builds
    the SEND's fields and the content's from one Labels, and a recipient compares the
    content's with the DELIVER's (:meth:`of`). Not checked when made: :class:`Content`
    holds them to the SEND's rules (``frames.check_send_labels``), and a sender checks
    them as a SEND's first, so that a bad one is a frame error before anything is
    encrypted."""

    intent: str = frames.Intent.CHAT
    category: str | None = None
    categories: tuple[str, ...] | None = None

    @classmethod
    def of(cls, frame: frames.Send | frames.Deliver) -> Labels:
        """The labels a SEND or DELIVER carries."""
        return cls(frame.intent, frame.category, frame.categories)

    def __str__(self) -> str:
        """For logs: ``chat``, ``notification utility``, ``consent_request [marketing]``."""
        if self.category is not None:
            return f"{self.intent} {self.category}"
        if self.categories is not None:
            return f"{self.intent} [{', '.join(self.categories)}]"
        return str(self.intent)


CHAT = Labels()


@dataclass(frozen=True, slots=True)
class Content:
    """One decrypted message: its id (equal to the frame's msg_id), the labels its SEND
    carried (equal to the frame's), its body and, if the sender had one, the newest signed
    tree head it verified (SPEC §15.6, gossip)."""

    msg_id: bytes
    body: Body
    sth: bytes | None = None
    labels: Labels = CHAT

    def __post_init__(self) -> None:
        _check_msg_id(self.msg_id, "id")
        if not isinstance(self.body, Text | Data | Receipt):
            raise MalformedContent(f"unknown body {type(self.body).__name__}")
        if self.sth is not None and (
            type(self.sth) is not bytes or not 1 <= len(self.sth) <= limits.MAX_TREE_HEAD_BYTES
        ):
            raise MalformedContent(f"sth: 1 to {limits.MAX_TREE_HEAD_BYTES} bytes")
        _check_labels(self.labels)
        if isinstance(self.body, Receipt) and self.labels != CHAT:
            raise MalformedContent("a receipt travels as chat (SPEC §13.11 rule 6)")

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


def _check_labels(labels: object) -> None:
    """The SEND's rules (SPEC §6.1), with the exact types of the wire."""
    if not isinstance(labels, Labels):
        raise MalformedContent(f"labels must be Labels, not {type(labels).__name__}")
    intent, category, categories = labels.intent, labels.category, labels.categories
    if not isinstance(intent, str) or (category is not None and not isinstance(category, str)):
        raise MalformedContent("intent and category must be str")
    if categories is not None and (
        type(categories) is not tuple or not all(isinstance(c, str) for c in categories)
    ):
        raise MalformedContent("categories must be an array of str")
    try:
        frames.check_send_labels(intent, category, categories)
    except ProtocolError as exc:
        raise MalformedContent(exc.detail) from None


def encode_content(content: Content) -> bytes:
    """Canonical bytes of ``content``; MalformedContent if over ``MAX_CONTENT_BYTES``."""
    labels = content.labels
    fields: dict[str, Any] = {"v": CONTENT_VERSION, "id": content.msg_id}
    fields["intent"] = str(labels.intent)
    if labels.category is not None:
        fields["category"] = str(labels.category)
    if labels.categories is not None:
        fields["categories"] = [str(c) for c in labels.categories]
    fields["kind"] = str(content.kind)
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


def content_encoder(
    body: Body, sth: bytes | None = None, labels: Labels = CHAT
) -> Callable[[bytes], bytes]:
    """``encode_content(Content(msg_id, body, sth, labels))`` for many msg_ids, the body
    encoded once.

    A bulk send encrypts one body under a fresh msg_id per recipient. The id is
    a fixed-size bin in the canonical encoding, so the encodings under two ids
    differ in exactly those bytes: encoding under all-zero and all-one ids
    finds them, and each message splices its id in. If the encodings do not
    differ that way (a future content format), every id is encoded in full.
    Raises MalformedContent as ``encode_content`` does (too large, an id of
    another size).
    """
    size = limits.MESSAGE_ID_BYTES
    zeros = encode_content(Content(bytes(size), body, sth, labels))
    ones = encode_content(Content(b"\xff" * size, body, sth, labels))
    start = next((i for i, (a, b) in enumerate(zip(zeros, ones, strict=False)) if a != b), -1)
    end = start + size
    if (
        start < 0
        or len(zeros) != len(ones)
        or zeros[start:end] != bytes(size)
        or ones[start:end] != b"\xff" * size
        or zeros[end:] != ones[end:]
    ):
        return lambda msg_id: encode_content(Content(msg_id, body, sth, labels))  # pragma: no cover
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
_COMMON_KEYS = frozenset({"v", "id", "intent", "kind"})
_OPTIONAL_KEYS = ("category", "categories", "sth")
_V1_COMMON_KEYS = frozenset({"v", "id", "kind"})


def decode_content(data: bytes, *, accepted_as: Labels | None = None) -> Content:
    """Strictly parse decrypted content, or raise MalformedContent (rules: module docstring).

    ``accepted_as``: only for content of version 1 that a client accepted before version
    2 and kept in its own inbox, with the labels of the DELIVER it came in (which version
    1 could not check); such content is read with them. Never for content from the wire,
    where version 1 is refused (SPEC §13.11 rule 7)."""
    if len(data) > MAX_CONTENT_BYTES:
        raise MalformedContent(f"content over {MAX_CONTENT_BYTES} bytes")
    obj = _unpack(data)
    if type(obj) is not dict:
        raise MalformedContent("content must be a map")
    version, wanted = obj.get("v"), CONTENT_VERSION if accepted_as is None else 1
    if type(version) is not int or version != wanted:
        got = f", not {version}" if type(version) is int else ""
        raise MalformedContent(f"v must be {wanted}{got}")
    kind = obj.get("kind")
    if type(kind) is not str or kind not in _KIND_KEYS:
        raise MalformedContent(f"kind must be one of {', '.join(_KIND_KEYS)}")
    expected = (_COMMON_KEYS if accepted_as is None else _V1_COMMON_KEYS) | _KIND_KEYS[kind]
    optional = _OPTIONAL_KEYS if accepted_as is None else ("sth",)
    expected = expected.union(key for key in optional if key in obj)
    if set(obj) != expected:
        unknown = sorted(set(obj) - expected)
        missing = sorted(expected - set(obj))
        raise MalformedContent(f"keys: unknown {unknown}, missing {missing}")
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
    if "sth" in obj and type(sth) is not bytes:  # nil too: no sth is no key (SPEC §2.3)
        raise MalformedContent("sth must be bin")
    if accepted_as is None:
        if "category" in obj and type(obj["category"]) is not str:
            raise MalformedContent("category must be a str")
        if "categories" in obj and type(obj["categories"]) is not tuple:
            raise MalformedContent("categories must be an array")
        labels = Labels(obj["intent"], obj.get("category"), obj.get("categories"))
    else:
        labels = accepted_as
    return Content(obj["id"], body, sth, labels)  # checks the labels' types and rules


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
