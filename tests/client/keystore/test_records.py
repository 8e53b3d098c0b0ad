"""The records a key store keeps (client/keystore/records.py): each is checked where it
is made, before either store writes anything, and never shows a secret in its repr.
"""

from __future__ import annotations

import pytest

from blindrelay.client.keystore import (
    OurIdentity,
    OutboxEntry,
)

from .samples import (
    our_identity,
    outgoing,
)


def test_identity_repr_never_shows_the_seed() -> None:
    assert (b"\x01" * 32).hex() not in repr(our_identity())
    assert repr(b"\x01" * 32) not in repr(our_identity())


def test_identity_refuses_wrong_seed_length_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match="identity_seed"):
        OurIdentity("alice", "user", "wss://r", b"\x01" * 31, b"\x02" * 32)
    with pytest.raises(ValueError, match="account_kind"):
        OurIdentity("alice", "admin", "wss://r", b"\x01" * 32, b"\x02" * 32)


def test_an_outbox_entry_is_refused_before_anything_is_written() -> None:
    with pytest.raises(TypeError, match="envelope"):
        OutboxEntry(1, b"m" * 16, "bob", b"", "chat")
    with pytest.raises(TypeError, match="categories"):
        OutboxEntry(1, b"m" * 16, "bob", b"e", "chat", categories=["utility"])
    with pytest.raises(ValueError, match="position"):
        OutboxEntry(-1, b"m" * 16, "bob", b"e", "chat")
    assert "envelope-1" not in repr(outgoing(1))
