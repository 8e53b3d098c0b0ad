"""The demo's wire: every frame the clients moved, described as the relay reads it.

The relay parses frames and, inside an envelope, only its kind (SPEC §13.6);
a description shows exactly that — handles, frame types, intents, sizes and a
prefix of ciphertext — and never anything a client decrypted.

Not here: tapping a connection (``transport.tapped``), printing (``screen``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from blindrelay.protocol import codec, frames
from blindrelay.protocol.crypto.session import MessageType, peek_envelope
from blindrelay.protocol.errors import ErrorCode, MalformedEnvelope, ProtocolError
from blindrelay.protocol.signed import ConsentStatement, unverified_body

CIPHERTEXT_HEX_BYTES = 12
"""Ciphertext bytes shown in hex: enough to see noise, short enough for one line."""


def describe_envelope(body: bytes) -> str:
    """An envelope as the relay can parse it (SPEC §13.6): its kind and its ciphertext."""
    try:
        info = peek_envelope(body)
    except MalformedEnvelope:
        return f"{len(body)} B, not an envelope"
    if info.message_type is MessageType.PREKEY:
        assert info.sender_identity_key is not None  # peek_envelope: a prekey message has one
        kind = f"prekey message from key {info.sender_identity_key[:6].hex()}…"
    else:
        kind = "message"
    return f"{len(body)} B {kind}, ciphertext {info.ciphertext[:CIPHERTEXT_HEX_BYTES].hex()}…"


def categories_text(values: tuple[str, ...] | None) -> str:
    """Consent categories as one word: ``utility,marketing``, or ``-`` for none."""
    return ",".join(values) if values else "-"


def describe_frame(frame: frames.Frame) -> str | None:
    """A frame on the wire, either way, as the relay reads it; None for handshake noise."""
    match frame:
        # sent by a client
        case frames.Register():
            return (
                f"REGISTER handle={frame.handle} kind={frame.kind}"
                f" identity key {frame.identity_key[:6].hex()}… (public)"
            )
        case frames.PrekeysUpload():
            signed = "signed prekey + " if frame.signed_prekey is not None else ""
            return f"PREKEYS_UPLOAD {signed}{len(frame.one_time)} one-time prekeys (public halves)"
        case frames.ProfilePut():
            return f"PROFILE_PUT signed profile, {len(frame.profile)} B (public by design)"
        case frames.ProfileFetch() | frames.BundleFetch():
            return f"{frame.TYPE.name} handle={frame.handle}"
        case frames.Send():
            return f"SEND to={frame.to} {_envelope_fields(frame)}"
        case frames.Statement():
            return f"STATEMENT {_statement(frame.statement)}"
        case frames.Ack():
            return f"ACK deliveries {','.join(map(str, frame.delivery_ids))} (relay deletes them)"
        # sent by the relay
        case frames.Deliver():
            return (
                f"DELIVER #{frame.delivery_id} from={frame.sender} ({frame.sender_kind})"
                f" {_envelope_fields(frame)}"
            )
        case frames.Profile():
            badge = "with badge" if frame.badge is not None else "no badge"
            return f"PROFILE handle={frame.handle} ({badge})"
        case frames.Bundle():
            return f"BUNDLE handle={frame.handle} (public prekeys)"
        case frames.Error():
            try:
                name = ErrorCode(frame.code).name
            except ValueError:
                name = "unknown"
            return f"ERROR {frame.code} {name}"
        case frames.Welcome():
            return f"WELCOME handle={frame.handle} queued={frame.queued}"
    return None


def _envelope_fields(frame: frames.Send | frames.Deliver) -> str:
    """What SEND and DELIVER both carry: the intent, its categories and the body."""
    extra = ""
    if frame.category is not None:
        extra = f" category={frame.category}"
    if frame.categories is not None:
        extra = f" categories={categories_text(frame.categories)}"
    body = (
        f"{len(frame.body)} B signed statement (forwarded as received)"
        if frame.intent == frames.Intent.STATEMENT
        else describe_envelope(frame.body)
    )
    return f"intent={frame.intent}{extra} {body}"


def _statement(data: bytes) -> str:
    """A signed statement: not secret (the relay enforces it), so shown in full."""
    try:
        statement = unverified_body(ConsentStatement, data)
    except ProtocolError:
        return f"{len(data)} B (undecodable)"
    what = statement.action
    if statement.categories:
        what += " " + categories_text(statement.categories)
    return f"{what} -> {statement.target} (signed, not secret)"


@dataclass(slots=True)
class Wire:
    """Every message each client moved, in the order they moved (one event loop)."""

    messages: list[tuple[str, str, bytes]] = field(default_factory=list)
    _mark: int = 0

    def tap(self, who: str) -> Callable[[str, bytes], None]:
        return lambda direction, data: self.messages.append((who, direction, data))

    def relay_view(self) -> list[str]:
        """The frames since the last call, described from the relay's side."""
        lines: list[str] = []
        for who, direction, data in self.messages[self._mark :]:
            text = describe_frame(codec.decode(data))
            arrow = f"{who} → relay" if direction == "out" else f"relay → {who}"
            if text is not None:
                lines.append(f"{arrow:<15} {text}")
        self._mark = len(self.messages)
        return lines

    @property
    def total_bytes(self) -> int:
        return sum(len(data) for _, _, data in self.messages)
