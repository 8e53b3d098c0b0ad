"""Two session managers and the relay's prekey directory, in memory, no relay: the pair
the tests of client/sessions.py hand DELIVER frames between (as the relay would push them).
"""

from __future__ import annotations

import random

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sessions import SessionManager
from blindrelay.protocol import frames
from blindrelay.protocol.content import CHAT, Content, Data, Labels, Receipt, Text, encode_content


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


class Directory:
    """The relay's prekey directory, reduced to what sessions need (SPEC §5.2–5.3)."""

    def __init__(self) -> None:
        self.accounts: dict[str, tuple[str, bytes, frames.SignedPreKeyRecord | None, list]] = {}

    def publish(self, manager: SessionManager, *, relay_one_time: int = 0) -> frames.PrekeysUpload:
        ours = manager.identity
        default = (ours.account_kind, ours.identity_public, None, [])
        kind, _key, signed, one_time = self.accounts.get(ours.handle, default)
        upload = manager.prekeys_upload(
            1, relay_one_time=relay_one_time, relay_has_signed=signed is not None
        )
        assert upload is not None
        self.accounts[ours.handle] = (
            kind,
            ours.identity_public,
            upload.signed_prekey or signed,
            one_time + list(upload.one_time),
        )
        return upload

    def bundle(self, handle: str) -> frames.Bundle:
        kind, key, signed, one_time = self.accounts[handle]
        assert signed is not None
        return frames.Bundle(
            re=1,
            handle=handle,
            kind=kind,
            identity_key=key,
            signed_prekey=signed,
            one_time=one_time.pop(0) if one_time else None,
        )


def make_manager(handle: str, seed: int, clock: Clock | None = None) -> SessionManager:
    rng = random.Random(seed)
    manager = SessionManager(MemoryKeyStore(), rng=rng.randbytes, clock=clock or Clock())
    manager.create_identity(handle, "user")
    return manager


class Pair:
    def __init__(self) -> None:
        self.directory = Directory()
        self.alice = make_manager("alice", 1)
        self.bob = make_manager("bob", 2)
        self.directory.publish(self.alice)
        self.directory.publish(self.bob)
        self.msg_ids = random.Random(3)
        self.delivery_id = 0

    def envelope(
        self,
        sender: SessionManager,
        to: str,
        body: Text | Data | Receipt,
        labels: Labels = CHAT,
    ) -> frames.Deliver:
        """Encrypt ``body`` as the SDK does and wrap it as the DELIVER the relay would push."""
        msg_id = self.msg_ids.randbytes(16)
        envelope = sender.encrypt(to, encode_content(Content(msg_id, body, None, labels)))
        self.delivery_id += 1
        return frames.Deliver(
            delivery_id=self.delivery_id,
            sender=sender.identity.handle,
            sender_kind="user",
            msg_id=msg_id,
            intent=labels.intent,
            sent_at=1_700_000_000_000 + self.delivery_id,
            body=envelope,
            category=labels.category,
            categories=labels.categories,
        )
