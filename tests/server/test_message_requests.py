"""Who has written to whom: message requests and first contacts between users (SPEC §7.3).

A user who has never been written to by another may send them at most
``MESSAGE_REQUEST_MAX`` chats until they write back, and opens such conversations
with at most ``FIRST_CONTACTS_BURST`` (refilling at ``FIRST_CONTACTS_PER_H``) new
strangers. Every refusal is the one ERROR 400 of SPEC §7.7.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.consent import PairState
from blindrelay.protocol.errors import ErrorCode, RecipientUnavailable
from blindrelay.protocol.frames import Send, Sent
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite import jobs
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, error_code, relay_with
from .consent_helpers import stated

BACKENDS = ALL_BACKENDS

HOUR_MS = 3600 * 1000


async def _chat(client: RawClient, to: str, request_id: int = 91) -> bytes:
    """The raw answer to a chat, for byte comparisons."""
    await client.ws.send(
        encode(Send(id=request_id, to=to, msg_id=os.urandom(16), body=b"hello", intent="chat"))
    )
    while True:  # pushes (a DELIVER) wait in the inbox
        data = await client._recv_bytes()
        frame = decode(data)
        if getattr(frame, "re", None) == request_id:
            return data
        client.inbox.append(frame)


async def _refusal(client: RawClient, request_id: int = 91) -> bytes:
    """The reference refusal: a chat to a handle nobody holds."""
    return await _chat(client, "nobody-at-all", request_id)


async def test_a_stranger_sends_at_most_the_message_request_limit_until_answered(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """Issue 13 item 10: a spammer registered as a user chatted anyone without limit."""
    async with relay_with(config, clock, message_request_max=3) as relay:
        spammer = await clients.registered(relay.url, "spammer")
        bob = await clients.registered(relay.url, "bob")
        for _ in range(3):
            assert isinstance(decode(await _chat(spammer, "bob")), Sent)
        assert await _chat(spammer, "bob") == await _refusal(spammer)
        # Once bob writes back the conversation is his too: no limit either way.
        assert isinstance(await bob.send_message("spammer", b"who is this?"), Sent)
        for _ in range(5):
            assert isinstance(decode(await _chat(spammer, "bob")), Sent)
        for _ in range(5):
            assert isinstance(await bob.send_message("spammer", b"ok"), Sent)


async def test_a_user_opens_conversations_with_few_new_strangers_per_hour(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, first_contacts_burst=3, first_contacts_per_h=1.0) as relay:
        spammer = await clients.registered(relay.url, "spammer")
        strangers = [await clients.registered(relay.url, f"victim{n}") for n in range(5)]
        friend = await clients.registered(relay.url, "friend")
        assert isinstance(await friend.send_message("spammer", b"hi!"), Sent)
        for victim in strangers[:3]:
            assert isinstance(decode(await _chat(spammer, victim.handle)), Sent)
        refused = await _chat(spammer, strangers[3].handle)
        assert refused == await _refusal(spammer)
        assert error_code(decode(refused)) == ErrorCode.RECIPIENT_UNAVAILABLE
        # Neither a conversation already opened nor one the other side opened is a new one.
        assert isinstance(decode(await _chat(spammer, strangers[0].handle)), Sent)
        assert isinstance(decode(await _chat(spammer, "friend")), Sent)
        clock.advance(HOUR_MS)
        assert isinstance(decode(await _chat(spammer, strangers[3].handle)), Sent)
        assert await _chat(spammer, strangers[4].handle) == await _refusal(spammer)


async def test_message_requests_survive_a_restart_and_a_block_stays_a_block(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """The pair state records who wrote; it is stored, not kept in memory."""
    async with relay_with(config, clock, message_request_max=2) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        assert isinstance(await alice.send_message("bob", b"1"), Sent)
        await stated(bob, "block", "alice", clock.now)
    clock.advance(1000)  # a restart refills no bucket: only the time that passed does
    async with relay_with(config, clock, message_request_max=2) as relay:
        alice, _ = await clients.logged_in(relay.url, "alice", alice.key)
        bob, _ = await clients.logged_in(relay.url, "bob", bob.key)
        assert error_code(await alice.send_message("bob", b"2")) == ErrorCode.RECIPIENT_UNAVAILABLE
        await stated(bob, "unblock", "alice", clock.now)
        assert isinstance(await alice.send_message("bob", b"2"), Sent)
        assert error_code(await alice.send_message("bob", b"3")) == ErrorCode.RECIPIENT_UNAVAILABLE


def test_a_chat_to_an_unknown_handle_reads_the_first_contact_budget_like_a_new_strangers(
    tmp_path: Path,
) -> None:
    """SPEC §7.7: "for a user's chat to an unknown handle, also the read of the sender's
    first-contact budget a new stranger would cost": with the budget spent, a new
    stranger's refusal and an unknown handle's both read it before the one 400."""
    store = Tables(connect(tmp_path / "relay.db"))
    rules = list(send_rules(RelayConfig(first_contacts_burst=1)))
    with store.db.atomic():
        for handle in ("spammer", "first", "second"):
            store.accounts.create(Account(handle, "user", handle.encode().ljust(32, b".")), 0)

    def chat(to: str) -> list[str]:
        """The SQL of one refused chat job (rolled back, as the writer does)."""
        run: list[str] = []
        store.db.conn.set_trace_callback(run.append)
        try:
            with pytest.raises(RecipientUnavailable), store.db.atomic():
                jobs.send(store, "spammer", "user", to, os.urandom(16), "chat", None, None,
                          b"hi", 1000, rules)  # fmt: skip
        finally:
            store.db.conn.set_trace_callback(None)
        return [sql for sql in run if "FROM budgets" in sql]

    with store.db.atomic():
        jobs.send(store, "spammer", "user", "first", os.urandom(16), "chat", None, None, b"hi",
                  1000, rules)  # fmt: skip
    assert len(chat("second")) == 1  # the budget is spent: a new stranger is refused
    assert chat("nobody") == chat("second")


def test_a_chat_refused_by_a_block_reads_the_first_contact_budget_like_one_to_nobody(
    tmp_path: Path,
) -> None:
    """SPEC §7.7, §11.1 (threat model T71): "blocked the sender" and "does not exist" get
    the same 400 after the same work. A chat to an unknown handle reads the sender's
    first-contact budget (what a new stranger costs); one to a user or a business that
    blocks the sender, which it never wrote to, read nothing — a read less that told it the
    handle exists and blocks it. A sender that wrote to the account knows it exists: its
    refused chat reads the budget in neither case."""
    store = Tables(connect(tmp_path / "relay.db"))
    rules = list(send_rules(RelayConfig()))
    with store.db.atomic():
        for handle, kind in (("alice", "user"), ("bob", "user"), ("carol", "user"),
                             ("shop", "business")):  # fmt: skip
            store.accounts.create(Account(handle, kind, handle.encode().ljust(32, b".")), 0)
        for blocker in ("bob", "shop"):
            store.ledger.store_pair(blocker, "alice", PairState(blockers=frozenset({blocker})))
        store.ledger.store_pair(
            "alice", "carol", PairState(blockers=frozenset({"carol"}), wrote=frozenset({"alice"}))
        )

    def budget_reads(to: str) -> int:
        """The budget reads of alice's refused chat job (rolled back, as the writer does)."""
        run: list[str] = []
        store.db.conn.set_trace_callback(run.append)
        try:
            with pytest.raises(RecipientUnavailable), store.db.atomic():
                jobs.send(store, "alice", "user", to, os.urandom(16), "chat", None, None,
                          b"hi", 1000, rules)  # fmt: skip
        finally:
            store.db.conn.set_trace_callback(None)
        return sum("FROM budgets" in sql for sql in run)

    assert [budget_reads(to) for to in ("nobody", "bob", "shop")] == [1, 1, 1]
    assert budget_reads("carol") == 0  # alice wrote to carol: she knows carol exists
