"""A forwarded statement and a chat of its signer are told apart, whatever their ids (SPEC
§6.4.3, §7.5).

Noticed in review (task H94): a forwarded statement's msg_id is its nonce, which the
signer's SDK chooses, while msg_ids are unique per sender only among that sender's SENDs.
``Statements.receive`` dropped a statement whose nonce a chat of its signer had used as
msg_id as "processed" — a customer's genuine grant, revoke or block never kept, the
business's view of her consent left stale — and a chat whose msg_id a kept statement had
used as nonce was dropped as a duplicate the same way. A statement kept already is told by
its bytes (T62), for good; that check alone now decides for statements, and their nonces
are not noted among the processed ids of messages. A statement forwarded again is still
dropped, right away or after its id left the memory of processed ids
(test_statement_replay).
"""

from __future__ import annotations

import itertools

from blindrelay.client.business import Business
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sessions import SessionManager
from blindrelay.protocol import frames
from blindrelay.protocol.content import Content, Text, encode_content
from blindrelay.protocol.signed import ConsentStatement, make_statement

from ..relays import T0
from .fake_relay import RELAY_KEY, URL, FakeRelay
from .harness import Inbox, online, run
from .key_changes import Pusher, account, bundle_of, deliver

_delivery_ids = itertools.count(1000)


def chat(carol: SessionManager, msg_id: bytes, text: str) -> frames.Deliver:
    """The DELIVER of a chat of carol's to the shop under ``msg_id``."""
    body = carol.encrypt("shop", encode_content(Content(msg_id, Text(text))))
    return deliver("carol", msg_id, body)


def statement(carol: SessionManager, action: str, nonce: bytes, at: int) -> frames.Deliver:
    """The DELIVER of carol's ``action`` to the shop under ``nonce``, as forwarded (§7.5)."""
    signed = make_statement(
        action, signer="carol", signer_key=carol.identity.identity_public, target="shop",
        relay_key=RELAY_KEY.verify_key.encode(), now_ms=at, rng=lambda _size: nonce,
        categories=("utility",),
    ).sign(carol.sign)  # fmt: skip
    return frames.Deliver(
        delivery_id=next(_delivery_ids), sender="carol", sender_kind="user", msg_id=nonce,
        intent="statement", sent_at=at, body=signed,
    )  # fmt: skip


async def shop_online(relay: FakeRelay, heard: list[ConsentStatement]) -> Business:
    client = await online(
        URL, "shop", "business", store=MemoryKeyStore(), open_transport=relay.open,
        on_statement=heard.append,
    )  # fmt: skip
    return Business(client)


FIRST, SECOND = b"\x01" * 16, b"\x02" * 16


def test_a_statement_whose_nonce_a_chat_used_is_kept_and_once_only() -> None:
    heard: list[ConsentStatement] = []

    async def scenario() -> None:
        relay = FakeRelay()
        shop = await shop_online(relay, heard)
        inbox, wire = Inbox(shop.client), Pusher(relay.ends[-1])
        carol = account("carol", bundle_of(shop.client))
        await wire.push(chat(carol, FIRST, "hello shop"))
        assert (await inbox.next()).body == "hello shop"

        grant = statement(carol, "grant", FIRST, T0)  # its nonce the chat's msg_id
        await wire.push(grant)
        assert shop.client.consent.records("carol") == [grant.body]  # before: [], dropped
        assert shop.consents() == {"carol": frozenset({"utility"})}  # before: {}
        revoke = statement(carol, "revoke", SECOND, T0 + 60_000)
        await wire.push(revoke)
        await wire.push(grant)  # forwarded again (T62)
        await wire.push(revoke)  # redelivered
        assert shop.client.consent.records("carol") == [grant.body, revoke.body]
        assert "carol" not in shop.consents()
        assert [kept.action for kept in heard] == ["grant", "revoke"]
        await inbox.close()
        await shop.close()

    run(scenario())


def test_a_chat_whose_msg_id_a_kept_statement_used_is_shown() -> None:
    async def scenario() -> None:
        relay = FakeRelay()
        shop = await shop_online(relay, [])
        inbox, wire = Inbox(shop.client), Pusher(relay.ends[-1])
        carol = account("carol", bundle_of(shop.client))
        await wire.push(chat(carol, FIRST, "hello shop"))
        assert (await inbox.next()).body == "hello shop"
        grant = statement(carol, "grant", SECOND, T0)
        await wire.push(grant)
        assert shop.client.consent.records("carol") == [grant.body]

        await wire.push(chat(carol, SECOND, "the grant's nonce as msg_id"))
        await wire.push(chat(carol, b"\x03" * 16, "and a third"))
        shown = (await inbox.next()).body
        assert shown == "the grant's nonce as msg_id"  # before: "and a third", it dropped
        assert (await inbox.next()).body == "and a third"
        await inbox.close()
        await shop.close()

    run(scenario())
