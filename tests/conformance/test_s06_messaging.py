"""SPEC §6 Messaging: SEND → SENT → DELIVER → ACK, durability, idempotence, order."""

from __future__ import annotations

import time

import msgpack
import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.frames import Ack, Deliver, Error, Send, Sent

from .wire import FRAME_TIMEOUT_S, new_handle, new_msg_id


def chat(to: str, body: bytes, msg_id: bytes | None = None):
    return lambda i: Send(id=i, to=to, msg_id=msg_id or new_msg_id(), intent="chat", body=body)


def _code(frame) -> int | None:
    return frame.code if isinstance(frame, Error) else None


@pytest.mark.spec("6.3.1")
async def test_send_is_answered_sent_and_delivered_byte_for_byte(relay):
    """SPEC: "The relay MUST answer SENT (re, msg_id, at = relay time of acceptance)";
    DELIVER carries sender, sender_kind, msg_id, intent, sent_at = the SENT's at, and
    "the envelope, byte for byte as sent"."""
    alice = await relay.user()
    bob = await relay.user()
    msg_id, body = new_msg_id(), bytes(range(256)) * 3
    sent = await alice.request(chat(bob.handle, body, msg_id))
    assert isinstance(sent, Sent) and sent.msg_id == msg_id
    assert abs(sent.at - alice.relay_now()) < 60_000
    delivery = await bob.push(Deliver)
    assert (delivery.sender, delivery.sender_kind, delivery.msg_id, delivery.intent) == (
        alice.handle,
        "user",
        msg_id,
        "chat",
    )
    assert (delivery.sent_at, delivery.body) == (sent.at, body)
    assert delivery.category is None and delivery.categories is None


@pytest.mark.spec("6.5")
async def test_acknowledged_deliveries_are_deleted(relay):
    """SPEC: ACK "tells the relay that the recipient has durably processed those
    deliveries; the relay MUST then delete them"."""
    alice = await relay.user()
    bob = await relay.user()
    await alice.request(chat(bob.handle, b"once"))
    delivery = await bob.push(Deliver)
    await bob.send(Ack(delivery_ids=(delivery.delivery_id,)))
    assert await bob.round_trip() == []  # the ACK was processed: no answer, nothing else
    again = await relay.login(bob)
    assert again.welcome.queued == 0
    assert not [f for f in await again.round_trip() if isinstance(f, Deliver)]


@pytest.mark.spec("6.5")
async def test_acks_of_unknown_or_foreign_ids_are_ignored(relay):
    """SPEC: "Ids that are unknown or belong to another account are ignored
    (acknowledging twice is harmless). The relay sends no response"."""
    alice = await relay.user()
    bob = await relay.user()
    await alice.request(chat(bob.handle, b"mine"))
    delivery = await bob.push(Deliver)
    await alice.send(Ack(delivery_ids=(delivery.delivery_id, 2**63 - 1)))
    await bob.send(Ack(delivery_ids=(delivery.delivery_id,)))
    await bob.send(Ack(delivery_ids=(delivery.delivery_id,)))
    assert await alice.round_trip() == []
    assert await bob.round_trip() == []


@pytest.mark.spec("6.4.4")
async def test_offline_queue_is_delivered_in_order_after_welcome(relay):
    """SPEC: "Envelopes for an account that is not connected wait in its queue and are
    delivered in order after its next WELCOME"."""
    alice = await relay.user()
    bob = await relay.user()
    await bob.close()
    sent = [await alice.request(chat(bob.handle, b"%d" % n)) for n in range(5)]
    assert all(isinstance(s, Sent) for s in sent)
    again = await relay.login(bob)
    assert again.welcome.queued == 5
    deliveries = await again.deliveries(5)
    assert [d.body for d in deliveries] == [b"0", b"1", b"2", b"3", b"4"]
    assert [d.sent_at for d in deliveries] == [s.at for s in sent]


@pytest.mark.spec("6.4.3")
async def test_unacknowledged_delivery_comes_again_on_the_next_connection(relay):
    """SPEC: "A delivery not acknowledged before the connection ends MUST be delivered
    again on the next connection of that account"."""
    alice = await relay.user()
    bob = await relay.user()
    await alice.request(chat(bob.handle, b"again"))
    first = await bob.push(Deliver)
    await bob.close()
    second_connection = await relay.login(bob)
    again = await second_connection.push(Deliver)
    assert (again.msg_id, again.sender, again.body) == (first.msg_id, alice.handle, b"again")
    await second_connection.send(Ack(delivery_ids=(again.delivery_id,)))
    await second_connection.round_trip()
    await second_connection.close()
    # The ACK of the redelivery deletes it (§6.5). On a relay of several processes the
    # ACK commits on the one that took it, and a LOGIN on another may be answered first
    # (the round trip above proves nothing when it was refused from memory, e.g. 402
    # with the buckets a move between processes empties, §10): gone within the bound.
    deadline = time.monotonic() + FRAME_TIMEOUT_S
    third = await relay.login(bob)
    while third.welcome.queued and time.monotonic() < deadline:
        await third.close()
        third = await relay.login(bob)
    assert third.welcome.queued == 0


@pytest.mark.spec("6.4.1")
async def test_envelopes_of_one_pair_arrive_in_acceptance_order(relay):
    """SPEC: "Envelopes from one sender to one recipient MUST be delivered in the order the
    relay accepted them (increasing delivery_id)": each SEND here waits for the previous
    SENT, so acceptance order is sending order; pipelined ones keep delivery_id order."""
    alice = await relay.user()
    bob = await relay.user()
    # Bob wrote first: alice answers, so her chats are no message requests (§7.3).
    assert isinstance(await bob.request(chat(alice.handle, b"hello")), Sent)
    for n in range(10):
        assert isinstance(await alice.request(chat(bob.handle, b"s%d" % n)), Sent)
    pipelined = [chat(bob.handle, b"p%d" % n)(alice.next_id()) for n in range(40)]
    for frame in pipelined:
        await alice.send(frame)
    sent = [await alice.response(f.id) for f in pipelined]
    assert all(isinstance(s, Sent) for s in sent)
    deliveries = await bob.deliveries(50)
    assert [d.body for d in deliveries[:10]] == [b"s%d" % n for n in range(10)]
    ids = [d.delivery_id for d in deliveries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    at_by_msg = {s.msg_id: s.at for s in sent}
    assert [at_by_msg[d.msg_id] for d in deliveries[10:]] == sorted(at_by_msg.values())


@pytest.mark.spec("6.3.2")
async def test_idempotent_resend_gets_the_original_at_and_stores_nothing_new(relay):
    """SPEC: "A SEND repeating a remembered msg_id with the same to, intent, category,
    categories and body MUST be answered with SENT carrying the original at, and stored
    nothing new"."""
    alice = await relay.user()
    bob = await relay.user()
    await bob.close()
    msg_id = new_msg_id()
    first = await alice.request(chat(bob.handle, b"same", msg_id))
    again = await alice.request(chat(bob.handle, b"same", msg_id))
    assert isinstance(first, Sent) and isinstance(again, Sent)
    assert (again.msg_id, again.at) == (first.msg_id, first.at)
    await alice.request(chat(bob.handle, b"next"))
    bob_again = await relay.login(bob)
    assert bob_again.welcome.queued == 2
    assert [d.body for d in await bob_again.deliveries(2)] == [b"same", b"next"]


@pytest.mark.spec("6.3.2")
@pytest.mark.parametrize("change", ["body", "to"])
async def test_reusing_a_msg_id_for_other_content_gets_403(relay, change):
    """SPEC: a remembered msg_id "with any other content gets ERROR 403
    MESSAGE_ID_REUSED"."""
    alice = await relay.user()
    bob = await relay.user()
    carol = await relay.user()
    msg_id = new_msg_id()
    assert isinstance(await alice.request(chat(bob.handle, b"original", msg_id)), Sent)
    to, body = (bob.handle, b"changed") if change == "body" else (carol.handle, b"original")
    assert _code(await alice.request(chat(to, body, msg_id))) == 403


@pytest.mark.spec("6.3.4")
async def test_send_to_an_unknown_account_gets_400(relay):
    """SPEC: refusals: "ERROR 400 RECIPIENT_UNAVAILABLE (unknown account, …)"."""
    alice = await relay.user()
    assert _code(await alice.request(chat(new_handle("nobody"), b"?"))) == 400


@pytest.mark.spec("6.2")
@pytest.mark.parametrize("recipient_kind", ["user", "business"])
@pytest.mark.parametrize("intent", ["notification", "consent_request"])
async def test_a_user_sending_business_intents_gets_202(relay, intent, recipient_kind):
    """SPEC: "A user account that sends notification or consent_request gets ERROR 202
    FORBIDDEN"."""
    alice = await relay.user()
    recipient = await relay.account(recipient_kind)
    extra = {"category": "utility"} if intent == "notification" else {"categories": ("utility",)}
    error = await alice.request(
        lambda i: Send(
            id=i, to=recipient.handle, msg_id=new_msg_id(), intent=intent, body=b"x", **extra
        )
    )
    assert _code(error) == 202


@pytest.mark.spec("6.1")
async def test_body_at_max_ciphertext_bytes_is_carried_and_one_more_byte_is_101(relay):
    """SPEC §6.1/§2.3: body is "1 … MAX_CIPHERTEXT_BYTES"; "a body over
    MAX_CIPHERTEXT_BYTES … is refused with ERROR 101"."""
    alice = await relay.user()
    bob = await relay.user()
    body = bytes(limits.MAX_CIPHERTEXT_BYTES)
    assert isinstance(await alice.request(chat(bob.handle, body)), Sent)
    assert (await bob.push(Deliver)).body == body
    request_id = alice.next_id()
    data = msgpack.packb(
        {
            "t": 20,
            "id": request_id,
            "to": bob.handle,
            "msg_id": new_msg_id(),
            "intent": "chat",
            "body": body + b"!",
        }
    )
    await alice.send_raw(data, expect_re=request_id)
    assert _code(await alice.response(request_id)) == 101
