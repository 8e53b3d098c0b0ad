"""A forwarded statement the business already keeps is not kept again (SPEC §7.5, T62).

The attack (found in review, 2026-12-06): a client drops a DELIVER it has processed by
``(sender, msg_id)`` — a statement's msg_id is its nonce — but remembers only the
newest ``MAX_PROCESSED_IDS`` (20,000) ids of all senders, which a business with many
customers passes within hours. The relay then forwarded carol's grant once more, after
her revoke: it verified (it is hers, signed for this relay and this business), was kept
a second time, after the revoke, and the business's folded view said carol granted
again — ``consents()``, ``notify`` to her, ``wait_for_consent`` returning, and
``consent_evidence`` handing out that old grant as her newest word. A statement's bytes
are unique (its nonce), and every one the business keeps is kept for good, so a
forwarded statement already kept with its signer is a replay: acknowledged, not kept.
"""

from __future__ import annotations

import os

from blindrelay.client.business import Business
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.signed import ConsentStatement, make_statement, unverified_body

from ..relays import T0
from .fake_relay import RELAY_KEY, URL, FakeRelay
from .harness import online, run, within

CAROL = IdentityKeyPair.from_seed(b"\xca" * 32)
DAVE = IdentityKeyPair.from_seed(b"\xda" * 32)


def statement(action: str, signer: str, key: IdentityKeyPair, at: int) -> bytes:
    return make_statement(
        action, signer=signer, signer_key=key.public, target="shop",
        relay_key=RELAY_KEY.verify_key.encode(), now_ms=at, rng=os.urandom,
        categories=("utility",),
    ).sign(key.sign)  # fmt: skip


def forwarded(signed: bytes, delivery_id: int) -> frames.Deliver:
    """The DELIVER of a statement the relay forwards: its msg_id is the nonce (SPEC §7.5)."""
    body = unverified_body(ConsentStatement, signed)
    return frames.Deliver(
        delivery_id=delivery_id, sender=body.signer, sender_kind="user", msg_id=body.nonce,
        intent="statement", sent_at=T0, body=signed,
    )  # fmt: skip


def test_a_grant_forwarded_again_after_its_revoke_is_not_kept_again() -> None:
    grant = statement("grant", "carol", CAROL, T0)
    revoke = statement("revoke", "carol", CAROL, T0 + 60_000)
    others = [statement("grant", "dave", DAVE, T0 + n) for n in range(3)]

    async def scenario() -> None:
        relay = FakeRelay()
        # A small memory of processed ids stands for 20,000 messages from others.
        store = MemoryKeyStore(max_processed_ids=2)
        shop = Business(
            await online(URL, "shop", "business", store=store, open_transport=relay.open)
        )
        end = relay.ends[-1]
        for n, signed in enumerate([grant, revoke, *others], start=1):
            end.send(forwarded(signed, n))
            await within(end.wait_for(frames.Ack, count=n))
        assert not store.is_processed("carol", unverified_body(ConsentStatement, grant).nonce)
        end.send(forwarded(grant, 6))  # the relay forwards the grant again
        await within(end.wait_for(frames.Ack, count=6))
        assert shop.client.consent.records("carol") == [grant, revoke]  # before: + grant
        assert "carol" not in shop.consents()  # before: {"utility"}
        assert shop.consenting("utility") == ["dave"]
        await shop.close()

    run(scenario())
