"""Each sender's share of a recipient's queue, and the strangers' pool (SPEC §6.3).

Fifty throwaway accounts filled a user's 10,000-envelope queue in a second, after
which every honest sender got QUEUE_FULL (issue 13 item 2). Now one sender holds at
most QUEUE_SHARE_PER_SENDER of anyone's queue, and strangers — senders the user has
not written to and that hold none of its consent — together at most
QUEUE_SHARE_STRANGERS of a user's queue; contacts and consented businesses keep room.
Small values here keep the tests fast; the rules are the same at the defaults.
"""

from __future__ import annotations

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Ack, Sent
from blindrelay.server.config import RelayConfig

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, db_rows, error_code, relay_with
from .consent_helpers import stated

BACKENDS = ALL_BACKENDS

SHARES = {"queue_cap": 100, "queue_share_per_sender": 40, "queue_share_strangers": 30}


async def _flood(client: RawClient, to: str, attempts: int) -> dict[str, int]:
    outcomes = {"sent": 0, "full": 0, "refused": 0}
    for n in range(attempts):
        answer = await client.send_message(to, b"spam %d" % n)
        if isinstance(answer, Sent):
            outcomes["sent"] += 1
        elif error_code(answer) == ErrorCode.QUEUE_FULL:
            outcomes["full"] += 1
        else:
            outcomes["refused"] += 1
    return outcomes


async def test_fifty_strangers_cannot_fill_a_users_queue(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, **SHARES) as relay:
        victim = await clients.registered(relay.url, "victim")
        friend = await clients.registered(relay.url, "friend")
        airline = await clients.registered(relay.url, "airline", "business")
        assert isinstance(await victim.send_message("friend", b"hi friend"), Sent)
        await stated(victim, "grant", "airline", clock.now, ("utility",))
        await victim.close()
        totals = {"sent": 0, "full": 0, "refused": 0}
        for n in range(55):
            stranger = await clients.registered(relay.url, f"stranger{n}")
            for key, count in (await _flood(stranger, "victim", 3)).items():
                totals[key] += count
            await stranger.close()
        assert totals == {"sent": 30, "full": 135, "refused": 0}
        # The contact and the consented business still get through.
        assert isinstance(await friend.send_message("victim", b"are you there?"), Sent)
        note = await airline.send_message("victim", b"gate B7", intent="notification",
                                          category="utility")  # fmt: skip
        assert isinstance(note, Sent)
        queued = "SELECT COUNT(*) FROM queue WHERE recipient = 'victim'"
        assert db_rows(relay.config, queued) == [(32,)]


async def test_one_sender_holds_at_most_its_share_of_any_queue(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """Also for a business recipient, whose customers are all strangers: no stranger pool
    there (it would shut out every customer alike), but no one customer fills it."""
    async with relay_with(config, clock, **SHARES) as relay:
        victim = await clients.registered(relay.url, "victim")
        airline = await clients.registered(relay.url, "airline", "business")
        pals = [await clients.registered(relay.url, f"pal{n}") for n in range(3)]
        for pal in pals:
            assert isinstance(await victim.send_message(pal.handle, b"hi"), Sent)
            assert isinstance(await pal.send_message("airline", b"hello"), Sent)
        await victim.close()
        await airline.close()
        assert await _flood(pals[0], "victim", 45) == {"sent": 40, "full": 5, "refused": 0}
        assert await _flood(pals[1], "victim", 45) == {"sent": 40, "full": 5, "refused": 0}
        assert await _flood(pals[2], "victim", 25) == {"sent": 20, "full": 5, "refused": 0}
        assert await _flood(pals[0], "airline", 45) == {"sent": 39, "full": 6, "refused": 0}
        assert await _flood(pals[1], "airline", 45) == {"sent": 39, "full": 6, "refused": 0}
        assert isinstance(await pals[2].send_message("airline", b"me too"), Sent)


async def test_only_strangers_fill_the_pool_and_an_acknowledgement_gives_room_back(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §6.3.5: the pool holds strangers' undelivered envelopes only — a contact's,
    however many, leave it whole — and an envelope the user acknowledged leaves both its
    sender's share and the pool (mutation analysis of store/rules.py: counting every
    envelope a stranger's, or not giving room back at an ACK, passed every other test)."""
    shares = {"queue_cap": 100, "queue_share_per_sender": 10, "queue_share_strangers": 15}
    async with relay_with(config, clock, **shares) as relay:
        victim = await clients.registered(relay.url, "victim")
        friend = await clients.registered(relay.url, "friend")
        await clients.registered(relay.url, "other")
        assert isinstance(await victim.send_message("friend", b"hi friend"), Sent)
        await victim.close()
        first, second = [await clients.registered(relay.url, h) for h in ("first", "second")]
        assert await _flood(friend, "victim", 10) == {"sent": 10, "full": 0, "refused": 0}
        assert await _flood(first, "victim", 11) == {"sent": 10, "full": 1, "refused": 0}
        assert await _flood(second, "victim", 6) == {"sent": 5, "full": 1, "refused": 0}
        victim, _ = await clients.logged_in(relay.url, "victim", victim.key)
        firsts = [d.delivery_id for d in await victim.deliveries(25) if d.sender == "first"]
        await victim.send(Ack(delivery_ids=tuple(firsts[:3])))
        # The ACK has no response; a later request on the same connection is ordered after it.
        assert isinstance(await victim.send_message("other", b"sync"), Sent)
        assert await _flood(first, "victim", 4) == {"sent": 3, "full": 1, "refused": 0}
