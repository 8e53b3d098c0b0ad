"""Accounts writing to a client over the in-memory relay, each able to present another
identity key under its handle (a key change, SPEC §3.3): the helpers of the tests of held
messages, key changes and callbacks (test_held_strangers, test_key_change_proof,
test_callback_errors); statements forwarded to it too.

Each account is a :class:`SessionManager` of its own with a session started from the
victim's bundle; a second one under the same handle is the same account on a new key.
Its messages are handed to the victim as the relay's DELIVER frames.
"""

from __future__ import annotations

import itertools
import os

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.client.sessions import SessionManager
from blindrelay.protocol import frames
from blindrelay.protocol.content import Content, Text, encode_content
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.signed import ConsentStatement, make_statement, unverified_body

from ..relays import T0
from .fake_relay import RELAY_KEY, RelayEnd
from .harness import within

_ids = itertools.count(1)


def bundle_of(client: Client) -> frames.Bundle:
    """The bundle the relay would serve for ``client``: its identity key and current
    signed prekey, no one-time prekey (any number of sessions start on it)."""
    sessions = client.sessions
    record = sessions.store.current_signed_prekey()
    if record is None:
        sessions.prekeys_upload(1, relay_one_time=100, relay_has_signed=False)
        record = sessions.store.current_signed_prekey()
    assert record is not None
    identity = sessions.identity
    return frames.Bundle(
        re=1, handle=identity.handle, kind=identity.account_kind,
        identity_key=identity.identity_public,
        signed_prekey=frames.SignedPreKeyRecord(record.key_id, record.public_key, record.signature),
    )  # fmt: skip


def account(handle: str, bundle: frames.Bundle) -> SessionManager:
    """``handle`` on an identity key of its own, with a session to ``bundle``'s owner."""
    sessions = SessionManager(MemoryKeyStore())
    sessions.create_identity(handle, "user")
    sessions.start_session(bundle)
    return sessions


def envelope(sender: SessionManager, to: str, text: str) -> tuple[bytes, bytes]:
    """(msg_id, envelope) of ``text`` from ``sender`` to ``to``."""
    msg_id = next(_ids).to_bytes(16, "big")
    return msg_id, sender.encrypt(to, encode_content(Content(msg_id, Text(text))))


def deliver(sender: str, msg_id: bytes, body: bytes) -> frames.Deliver:
    """The relay's DELIVER of ``body`` from ``sender`` (a user)."""
    return frames.Deliver(
        delivery_id=next(_ids), sender=sender, sender_kind="user", msg_id=msg_id,
        intent="chat", sent_at=T0, body=body,
    )  # fmt: skip


def forwarded_statement(
    action: str, signer: str, key: IdentityKeyPair, target: str, at: int
) -> frames.Deliver:
    """The DELIVER of a statement ``signer`` made to ``target`` and the relay forwards (SPEC
    §7.5): its msg_id is the statement's nonce."""
    signed = make_statement(
        action, signer=signer, signer_key=key.public, target=target,
        relay_key=RELAY_KEY.verify_key.encode(), now_ms=at, rng=os.urandom,
        categories=("utility",),
    ).sign(key.sign)  # fmt: skip
    nonce = unverified_body(ConsentStatement, signed).nonce
    return frames.Deliver(
        delivery_id=next(_ids), sender=signer, sender_kind="user", msg_id=nonce,
        intent="statement", sent_at=at, body=signed,
    )  # fmt: skip


class Pusher:
    """Pushes DELIVERs on the victim's connection and waits for each one's ACK."""

    def __init__(self, end: RelayEnd) -> None:
        self.end = end
        self.pushed = 0

    async def push(self, frame: frames.Deliver) -> None:
        self.pushed += 1
        self.end.send(frame)
        acks = await within(self.end.wait_for(frames.Ack, count=self.pushed))
        assert frame.delivery_id in {i for ack in acks for i in ack.delivery_ids}

    async def message(self, sender: SessionManager, to: str, text: str) -> None:
        msg_id, body = envelope(sender, to, text)
        await self.push(deliver(sender.identity.handle, msg_id, body))
