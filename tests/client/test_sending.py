"""Sending (client/sending.py): encrypt and enqueue in one keystore transaction, one
bundle fetch per new contact, and ``send_many`` a chunk of recipients per
transaction (SPEC §6.1–6.3, §8.3).

Bulk sending against a real relay, recipient by recipient, is the scenario of
test_bulk.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    KeyStore,
    MemoryKeyStore,
    OutboxEntry,
    SqliteKeyStore,
)

from ..relays import relay_at
from .harness import (
    LOW_COST,
    Crash,
    Inbox,
    online,
    run,
    within,
)

# --- Against a real relay ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_crash_between_encrypting_and_enqueueing_keeps_neither(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advanced sending chain and the outbox entry are one keystore write."""

    async def scenario() -> None:
        store: KeyStore = (
            MemoryKeyStore()
            if kind == "memory"
            else SqliteKeyStore.open(tmp_path / "alice.keys", "pw", create=True, **LOW_COST)
        )
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice", store=store)
            bob = await online(relay.url, "bob")
            inbox = Inbox(bob)
            await within(alice.send("bob", "one"))
            before = store.load_session("bob")

            def dies_on_the_outbox(entry: OutboxEntry) -> None:
                raise Crash("after encrypt, before the outbox entry")

            monkeypatch.setattr(store, "queue_outgoing", dies_on_the_outbox)
            with pytest.raises(Crash):
                await within(alice.send("bob", "two"))
            monkeypatch.undo()
            assert store.load_session("bob") == before
            assert store.outbox() == []
            await within(alice.send("bob", "three"))
            assert [(await inbox.next()).body for _ in range(2)] == ["one", "three"]
            await inbox.close()
            await alice.close()
            await bob.close()
        store.close()

    run(scenario())
