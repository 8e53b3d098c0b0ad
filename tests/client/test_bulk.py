"""Bulk sending (``Client.send_many``, SPEC §8.3).

Its shortcuts — SEND laid out directly, SENT read on a fast path, content
encoded once per body — are checked against the codec where they live
(tests/protocol/test_fastcodec.py, test_content.py); here the bulk path is
checked against a real relay for what it must keep from ``send``: each
recipient's outcome, refusals not retried, rate limits retried, no send to an
unapproved key, resends from the outbox after a reconnect, and the session
advance persisted only together with its outbox entry.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from blindrelay.client.business import Business
from blindrelay.client.keystore import KeyStore, MemoryKeyStore, OutboxEntry, SqliteKeyStore
from blindrelay.client.outbox import Outbox
from blindrelay.client.sdk import Client, ConnectionLost
from blindrelay.client.transport import OpenTransport, tapped
from blindrelay.protocol import frames
from blindrelay.protocol.codec import decode
from blindrelay.protocol.content import MAX_CONTENT_BYTES, MalformedContent
from blindrelay.protocol.crypto.keys import IdentityKeyPair, SignedPreKey
from blindrelay.protocol.errors import (
    MalformedFrame,
    ProtocolError,
    RateLimited,
    RecipientUnavailable,
    UntrustedIdentity,
)

from ..relays import relay_at
from .harness import (
    LOW_COST,
    Crash,
    Inbox,
    business_online,
    consented,
    customer,
    make_client,
    online,
    run,
    within,
)

# --- the bulk path against a relay ---------------------------------------------------


def start_local_session(client: Client, handle: str) -> None:
    """A session to ``handle`` from a bundle made here (no relay needed to encrypt)."""
    identity = IdentityKeyPair.generate(os.urandom)
    prekey = SignedPreKey.generate(identity, 1, os.urandom)
    client.sessions.start_session(
        frames.Bundle(
            re=1, handle=handle, kind="user", identity_key=identity.public,
            signed_prekey=frames.SignedPreKeyRecord(1, prekey.public, prekey.signature),
        )
    )  # fmt: skip


def sends_tapped() -> tuple[list[frames.Send], OpenTransport]:
    """Collect every SEND written by a client that opens its connections with the opener."""
    sends: list[frames.Send] = []

    def tap(direction: str, data: bytes) -> None:
        if direction == "out":
            frame = decode(data)
            if isinstance(frame, frames.Send):
                sends.append(frame)

    return sends, tapped(tap)


def test_send_many_reports_each_recipient_and_each_customer_decrypts_theirs(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            sends, tap = sends_tapped()
            shop = await online(relay.url, "shop", "business", open_transport=tap)
            changed = asyncio.Event()
            shop.on_identity_change = lambda handle: changed.set()
            people = {h: await online(relay.url, h) for h in ("ann", "bob", "gus", "eve", "fay")}
            for client in people.values():
                await within(client.grant("shop", ["utility"]))
            # No sessions yet: each recipient takes the path of send (bundle fetch).
            welcome = await within(
                shop.send_many(["ann", "bob", "eve"], "welcome", intent="notification",
                               category="utility")
            )  # fmt: skip
            assert [(h, isinstance(o, bytes)) for h, o in welcome] == [
                ("ann", True), ("bob", True), ("eve", True),
            ]  # fmt: skip
            await within(people["eve"].revoke("shop", ["utility"]))  # a session, no consent
            # fay: the shop pinned her key from her grant; then she presents a new one.
            await within(people["fay"].send("shop", "hello"))
            await within(people["fay"].rotate_identity())
            await within(people["fay"].send("shop", "my new phone"))
            await within(changed.wait())
            assert shop.identity_change_pending("fay")
            # ann twice, gus with no session yet (bundle fetch), window of 2
            handles = ["ann", "bob", "eve", "fay", "gus", "ann"]
            sends.clear()

            outcomes = await within(
                shop.send_many(handles, "BA123 boards at B7", intent="notification",
                               category="utility", window=2)
            )  # fmt: skip

            assert [h for h, _ in outcomes] == handles
            got = dict(zip(range(len(handles)), (o for _, o in outcomes), strict=True))
            assert isinstance(got[2], RecipientUnavailable)
            assert isinstance(got[3], UntrustedIdentity)
            sent = {i: o for i, o in got.items() if isinstance(o, bytes)}
            assert sorted(sent) == [0, 1, 4, 5] and len(set(sent.values())) == 4
            assert not any(s.to == "fay" for s in sends)  # nothing left for an unapproved key
            assert sorted(s.to for s in sends) == ["ann", "ann", "bob", "eve", "gus"]
            assert all((s.intent, s.category) == ("notification", "utility") for s in sends)

            for handle, positions in (("ann", [0, 5]), ("bob", [1]), ("gus", [4])):
                inbox = Inbox(people[handle])
                if handle != "gus":
                    assert (await inbox.next()).body == "welcome"
                for position in positions:
                    message = await inbox.next()
                    assert (message.sender, message.body, message.msg_id) == (
                        "shop", "BA123 boards at B7", sent[position],
                    )  # fmt: skip
                    assert (message.intent, message.category) == ("notification", "utility")
                await inbox.close()

            twice = await within(
                shop.send_many(["bob", "bob"], "twice", intent="notification", category="utility")
            )  # one chunk, one transaction: the second envelope uses the advanced session
            inbox = Inbox(people["bob"])
            assert [(m.body, m.msg_id) for m in [await inbox.next(), await inbox.next()]] == [
                ("twice", outcome) for _, outcome in twice
            ]
            await inbox.close()

            await asyncio.sleep(0)  # answered outbox entries go at the end of the loop turn
            assert shop.store.outbox() == []
            assert len(shop.sender.locks) == 0 and shop.outbox.awaited == 0 and len(shop.outbox) == 0
            for client in (*people.values(), shop):
                await client.close()

    run(scenario())


def test_send_many_refuses_fields_no_send_may_carry_before_encrypting(tmp_path: Path) -> None:
    async def scenario() -> None:
        shop = make_client()
        shop.sessions.create_identity("shop", "business")
        start_local_session(shop, "ann")
        before = shop.store.load_session("ann")
        with pytest.raises(MalformedFrame):
            await within(shop.send_many(["ann"], "hi", intent="notification"))  # no category
        with pytest.raises(MalformedContent):
            await within(shop.send_many(["ann"], "x" * MAX_CONTENT_BYTES))
        with pytest.raises(ValueError, match="window"):
            await within(shop.send_many(["ann"], "hi", window=0))
        assert shop.store.load_session("ann") == before
        assert shop.store.outbox() == []
        assert await within(shop.send_many([], "nobody")) == []

    run(scenario())


def test_send_many_retries_rate_limited_recipients_and_reports_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, send_rate_business=100.0, send_burst_business=3) as relay:
            shop = await business_online(relay.url, "shop")
            handles = [f"user{i:02d}" for i in range(12)]
            raws = [await customer(relay.url, h, shop, "granted utility") for h in handles]

            once = await within(
                shop.client.send_many(handles, "a", intent="notification", category="utility")
            )
            limited = [h for h, o in once if isinstance(o, RateLimited)]
            assert limited and len(limited) < len(handles)
            assert all(isinstance(o, bytes) for h, o in once if h not in limited)

            await consented(shop, handles)
            result = await within(shop.notify("utility", "b", to=handles))  # retries
            assert sorted(result.sent) == handles and result.skipped == []
            await asyncio.sleep(0)
            assert shop.client.store.outbox() == []
            for raw in raws:
                await raw.close()
            await shop.close()

    run(scenario())


def test_a_reconnect_during_send_many_resends_from_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered, drop = 0, None
    real_answered = Outbox.send_answered

    def drop_after_ten(
        outbox: Outbox, msg_id: bytes, at: int | None, error: ProtocolError | None
    ) -> None:
        nonlocal answered
        real_answered(outbox, msg_id, at, error)
        if drop is not None:
            answered += 1
            if answered == 10:
                drop()

    monkeypatch.setattr(Outbox, "send_answered", drop_after_ten)

    async def scenario() -> None:
        nonlocal drop
        async with relay_at(tmp_path) as relay:
            shop = await business_online(relay.url, "shop", notify_window=4)
            handles = [f"user{i:02d}" for i in range(40)]
            raws = [await customer(relay.url, h, shop, "granted utility") for h in handles]
            client = shop.client

            def drop_shop() -> None:
                session = relay.ctx.sessions.get("shop")
                assert session is not None
                session.transport.close(1011, "test drop")

            await consented(shop, handles)
            drop = drop_shop
            result = await within(shop.notify("utility", "gate change", to=handles), 30)

            assert sorted(result.sent) == handles and result.skipped == []
            assert client.connection_count == 2  # the drop happened mid-way
            rows = sqlite3.connect(relay.config.db_path).execute(
                "SELECT count(*), count(DISTINCT recipient) FROM queue WHERE sender = 'shop'"
            )
            assert rows.fetchone() == (40, 40)  # each stored once, resends included
            for raw in raws:
                (deliver,) = await raw.deliveries(1)
                assert deliver.sender == "shop" and deliver.intent == "notification"
                await raw.close()
            await shop.close()

    run(scenario())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_chunk_is_persisted_whole_or_not_at_all_and_before_it_is_transmitted(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One keystore transaction per chunk: sessions advance only with their outbox entries."""

    def open_store() -> KeyStore:
        if kind == "memory":
            return memory
        return SqliteKeyStore.open(tmp_path / "shop.keys", "pw", create=True, **LOW_COST)

    memory = MemoryKeyStore()

    async def scenario() -> None:
        store = open_store()
        shop = make_client(store)
        shop.sessions.create_identity("shop", "business")
        handles = [f"user{i}" for i in range(5)]
        for handle in handles:
            start_local_session(shop, handle)
        before = {h: store.load_session(h) for h in handles}
        real_queue_outgoing = store.queue_outgoing
        entries = 0

        def dies_on_the_third_entry(entry: OutboxEntry) -> None:
            nonlocal entries
            entries += 1
            if entries == 3:
                raise Crash("in the middle of a chunk")
            real_queue_outgoing(entry)

        monkeypatch.setattr(store, "queue_outgoing", dies_on_the_third_entry)
        with pytest.raises(Crash):
            await within(shop.send_many(handles, "x", intent="notification", category="utility"))
        monkeypatch.undo()
        assert {h: store.load_session(h) for h in handles} == before
        assert store.outbox() == [] and len(shop.outbox) == 0

        # Offline: the chunk is persisted, then waits for a connection to transmit it.
        sending = asyncio.create_task(shop.send_many(handles, "y", window=5))
        await asyncio.sleep(0)
        assert all(store.load_session(h) != before[h] for h in handles)
        queued = store.outbox()
        assert len(queued) == 5
        await shop.close()
        with pytest.raises(ConnectionLost):
            await within(sending)
        if kind == "sqlite":
            store.close()
        restarted = make_client(open_store())
        assert [o.to for o in restarted.outbox.entries()] == handles  # resent in this order
        assert [o.position for o in restarted.outbox.entries()] == [e.position for e in queued]
        restarted.store.close()

    run(scenario())


def test_notify_from_a_sqlite_keystore_leaves_an_empty_outbox(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            store = SqliteKeyStore.open(tmp_path / "shop.keys", "pw", create=True, **LOW_COST)
            client = make_client(store)
            await within(client.connect(relay.url))
            await within(client.register("shop", "business"))
            shop = Business(client)
            handles = [f"user{i:02d}" for i in range(30)]
            raws = [await customer(relay.url, h, shop, "granted utility") for h in handles]
            await consented(shop, handles)
            result = await within(shop.notify("utility", "hello", to=handles))
            assert sorted(result.sent) == handles
            await asyncio.sleep(0)
            assert store.outbox() == []
            for raw in raws:
                await raw.close()
            await shop.close()
            store.close()

    run(scenario())
