"""A decrypted delivery as the inbox keeps it: the keystore row, and the record read back.

``sessions`` writes the row (:func:`inbox_record`) in the transaction that stores
the session the message advanced; ``inbox`` and ``reading`` read it back
(:meth:`Incoming.from_record`), after a restart too. The row keeps the frame's
metadata and the content bytes, versioned so that rows an older version wrote
still read.

Not here: decryption (``sessions``), what the application is handed
(``reading``), the row's encryption at rest (``keystore``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from blindrelay.protocol import frames
from blindrelay.protocol.content import Content, Labels, MalformedContent, decode_content

from .keystore import IncomingMessage
from .trust import IdentityState

_INBOX_VERSION = 3
"""2 added the frame's category and categories (notifications, consent requests); 3 holds
content of version 2 (SPEC §13.11). Rows of versions 1 and 2 hold content of version 1,
accepted before the upgrade with the frame's labels: read with them, not dropped, as
they were acknowledged long ago."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decrypted, persisted message as the inbox holds it."""

    msg_id: bytes
    sender: str
    sender_kind: str
    intent: str
    sent_at: int
    identity: IdentityState
    content: Content
    category: str | None = None
    categories: tuple[str, ...] | None = None

    @classmethod
    def from_record(cls, record: IncomingMessage) -> Incoming:
        """Read an inbox row back; MalformedContent if it is not one we wrote."""
        try:
            fields = msgpack.unpackb(record.body, raw=False)
            version = fields[0]
            if version == 1:  # written before categories were kept
                fields = [*fields, None, None]
            elif version not in (2, _INBOX_VERSION):
                raise ValueError(f"inbox record version {version!r}")
            _, sender_kind, intent, sent_at, identity, plaintext, category, categories = fields
            if categories is not None:
                categories = tuple(categories)
            accepted_as = None  # the content's labels, checked against the frame's
            if version != _INBOX_VERSION:
                accepted_as = Labels(intent, category, categories)
            return cls(
                record.msg_id,
                record.sender,
                sender_kind,
                intent,
                sent_at,
                IdentityState(identity),
                decode_content(plaintext, accepted_as=accepted_as),
                category,
                categories,
            )
        except (TypeError, ValueError, msgpack.UnpackException) as exc:
            raise MalformedContent(f"unreadable inbox record: {exc}") from None


def inbox_record(
    deliver: frames.Deliver, identity: IdentityState, received_at_ms: int, plaintext: bytes
) -> IncomingMessage:
    """The keystore row for a decrypted delivery: its metadata and the content bytes."""
    body = msgpack.packb(
        [
            _INBOX_VERSION,
            deliver.sender_kind,
            deliver.intent,
            deliver.sent_at,
            str(identity),
            plaintext,
            deliver.category,
            list(deliver.categories) if deliver.categories is not None else None,
        ],
        use_bin_type=True,
    )
    return IncomingMessage(deliver.msg_id, deliver.sender, received_at_ms, body)


__all__ = ["Incoming", "inbox_record"]


def content_of(plaintext: bytes, deliver: frames.Deliver) -> Content:
    """The content ``deliver`` decrypted to, if it may be shown; MalformedContent if not:
    malformed, or its id or labels are not the frame's (SPEC §13.11 rule 4).

    Whatever else the decoder raises on these peer-chosen bytes is a refusal too, named
    by its type alone (the bytes are the peer's message): before, one such bug (T77's
    ``TypeError``) ended the client's connection with the DELIVER unacknowledged and
    stopped the client, so a contact could stop it for good with one message.
    """
    try:
        content = decode_content(plaintext)
    except MalformedContent:
        raise
    except Exception as exc:
        raise MalformedContent(f"content the decoder failed on ({type(exc).__name__})") from None
    if content.msg_id != deliver.msg_id:
        raise MalformedContent("content id differs from the frame's msg_id")
    if content.labels != Labels.of(deliver):  # relabelled by the relay
        raise MalformedContent(
            f"content labels differ from the frame's: {content.labels} inside, "
            f"{Labels.of(deliver)} on the frame"
        )
    return content
