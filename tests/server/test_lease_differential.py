"""Delivery leases against the strict path, by seeded random workloads (SPEC §6.4.6).

Why: a leased DELIVER leaves before the writer decides its SEND, so any case the lease
rules forget shows as a difference from the strict path — the same workload runs on a
relay with ``DELIVERY_LEASES`` off (every SEND waits for its decision) and then on one
with leases, and what §6.4.6 says a client may not tell apart is compared step by step:
the answer to every SEND and STATEMENT (Sent with its ``at``, or the error code; a
resend's ``at`` is its original's), and what each recipient saw — (sender, msg_id,
body), in order per sender — but for what §6.4.6 lets a lease show: a resend or a reuse
of a msg_id pushed first and then answered (its original time, or 403) and withdrawn;
the recipient drops the resend as a duplicate and, in the leases run only, the test
acknowledges a refused reuse's content without counting it as seen (the strict run must
never deliver one). Within each run: DELIVERs on one connection come in rising
delivery-id order, a recipient sees exactly what was answered Sent to it, no ERROR line
(``lease_broken`` above all: the writer's lines are forwarded to the ``blindrelay``
logger), no connection closed but by its client. A comparison in which the fast path
never ran proves nothing: the leases run must push a tenth of its chats or more (20-50 %
seen) under a lease (``metrics.delivers["before_decision"]``), the strict run none.

The workload: ann..eve, contacts of each other after an introduction round, and xia and
yul, no one's contacts (message requests, first contacts, their refusals); pipelined
bursts of 1-8 SENDs, mostly to the contact the sender wrote to last, resends and reuses
of earlier msg_ids; blocks (the blocked one writes at once; half of them pipelined
between the signer's own chats to the target, none answered yet) and unblocks; recipients
reading, acknowledging or not, going offline and coming back. Choices depend on the seed
and on answers (which must agree), never on timing. A blocker reads and acknowledges all
it is owed before its BLOCK, so what the block withdraws from its queue it saw on both.

The queue cap is a separate test, not a comparison: the room a lease sets aside counts as
taken (SPEC §6.3.5, §6.4.6), so near the cap the leases relay legitimately refuses (401)
SENDs the strict one takes, and the workloads then diverge. It checks on each relay what
must hold anyway: QUEUE_FULL occurs, no recipient ever has more than the cap queued
(after every step), and every chat a recipient saw — pushed under a lease or not — was
answered Sent (or is a refused reuse pushed first).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Ack, Deliver, Error, Frame, Send, Sent, Statement
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store.sqlite import relayleases
from blindrelay.server.store.sqlite import store as sqlite_store
from blindrelay.server.store.sqlite.database import count_queued

from ..relays import FakeClock
from .conftest import Clients, RawClient, RelayFixture, db_rows, settled, until
from .consent_helpers import state, statement_bytes

CONTACTS = ("ann", "bob", "cat", "dan", "eve")
STRANGERS = ("xia", "yul")
WINDOW = 64
LIMITS: dict[str, Any] = {
    "send_burst_user": 100_000, "send_rate_user": 100_000.0, "send_burst_pair": 100_000,
    "send_rate_pair": 100_000.0, "statement_burst": 10_000, "statement_rate_per_h": 1e6,
    "message_request_max": 3, "first_contacts_burst": 2, "delivery_window": WINDOW,
}  # fmt: skip
"""Rate limits that never refuse; message requests and first contacts that soon do."""
STEPS = 100
CAP = 12
READ_S = 3.0
"""How long a recipient waits for what it is owed before the test calls it lost."""

T = TypeVar("T")
Outcome = tuple[Any, ...]
Key = tuple[str, bytes]
"""(sender, msg_id)."""
Chat = tuple[str, bytes, bytes]
"""(to, msg_id, body)."""


@dataclass
class Peer:
    """One account as its client sees it, across its connections."""

    handle: str
    key: SigningKey
    client: RawClient | None
    owed: set[Key] = field(default_factory=set)
    """Answered Sent to this account: it must see each."""
    seen: dict[Key, bytes] = field(default_factory=dict)
    """First seen, in order (dicts keep it): the body."""
    unacked: dict[Key, int] = field(default_factory=dict)
    """Seen on the current connection and not acknowledged yet: the delivery id."""
    extra: list[int] = field(default_factory=list)
    """Delivery ids to acknowledge that stand for no message of their own: a resend or a
    reuse pushed under a lease and withdrawn (SPEC §6.4.6)."""
    due: set[Key] = field(default_factory=set)
    """Seen on an earlier connection, never acknowledged: pushed again on this one."""
    last_id: int = 0
    """The last delivery id on the current connection."""


class Run:
    """One relay run of a seeded workload; ``reference`` is the strict run's outcomes,
    compared as they come so a difference is reported at its step."""

    def __init__(
        self, relay: RunningRelay, clients: Clients, clock: FakeClock, seed: int,
        reference: list[Outcome] | None,
    ) -> None:  # fmt: skip
        self.relay, self.clients, self.clock = relay, clients, clock
        self.rng = random.Random(seed)
        self.reference = reference
        self.outcomes: list[Outcome] = []
        self.peers: dict[str, Peer] = {}
        self.sent: dict[str, list[tuple[str, bytes, bytes, int]]] = {}
        """Sender → its Sent chats (to, msg_id, body, at)."""
        self.blocks: set[tuple[str, str]] = set()
        self.partner: dict[str, str] = {}
        self.opened: list[RawClient] = []
        self.codes: dict[int, int] = {}
        self.chats = 0
        """New chats answered Sent."""
        self.ahead = 0
        """DELIVERs pushed under a lease, before the writer had the SEND (the metrics')."""
        self.first_body: dict[Key, bytes] = {}
        self.reuses: set[tuple[str, bytes, bytes]] = set()
        """(sender, msg_id, body) sent with a msg_id first sent with another body: refused
        with 403, and with leases possibly pushed first and withdrawn (SPEC §6.4.6)."""
        self.withdrawn = 0
        self.leases = False
        """This relay grants leases (the reuses above may then be seen)."""

    def record(self, outcome: Outcome) -> None:
        step = len(self.outcomes)
        self.outcomes.append(outcome)
        if self.reference is not None:
            expected = self.reference[step]
            assert outcome == expected, f"step {step}: leases {outcome}, strict {expected}"

    async def open(self, handle: str, key: SigningKey | None = None) -> Peer:
        """Registered (no ``key``) or logged in. Its socket reads whatever comes (no
        ``max_queue``), so a client that goes away with DELIVERs unread closes at once."""
        if key is None:
            client = await self.clients.registered(self.relay.url, handle, max_queue=None)
            peer = self.peers[handle] = Peer(handle, client.key, client)
        else:
            client = await self.clients.open(self.relay.url, max_queue=None)
            await client.login(handle, key)
            peer = self.peers[handle]
            peer.client, peer.last_id = client, 0
        self.opened.append(client)
        await settled(self.relay, handle)
        return peer

    async def online(self, handle: str) -> RawClient:
        peer = self.peers[handle]
        if peer.client is None:
            await self.open(handle, peer.key)
        assert peer.client is not None
        return peer.client

    async def offline(self, handle: str) -> None:
        peer = self.peers[handle]
        assert peer.client is not None
        await peer.client.close()
        peer.client = None
        peer.due |= peer.unacked.keys()
        peer.unacked, peer.extra = {}, []
        await until(lambda: self.relay.ctx.sessions.get(handle) is None)

    async def sends(self, sender: str, items: list[Chat]) -> None:
        await self.together({sender: items})

    async def together(self, bursts: dict[str, list[Chat]]) -> None:
        """Pipelined: every SEND goes out, the senders' in turn, before the first answer is
        read; answers are recorded sender by sender, so only each one's order matters."""
        clients = {sender: await self.online(sender) for sender in bursts}
        ids: dict[str, list[int]] = {sender: [] for sender in bursts}
        for turn in range(max(len(items) for items in bursts.values())):
            for sender, items in bursts.items():
                if turn < len(items):
                    to, msg_id, body = items[turn]
                    if self.first_body.setdefault((sender, msg_id), body) != body:
                        self.reuses.add((sender, msg_id, body))
                    client = clients[sender]
                    request_id = client.request_id()
                    await client.send(
                        Send(id=request_id, to=to, msg_id=msg_id, intent="chat", body=body)
                    )
                    ids[sender].append(request_id)
        for sender, items in bursts.items():
            for request_id, (to, msg_id, body) in zip(ids[sender], items, strict=True):
                answer = await clients[sender].response(request_id)
                self.answered(sender, to, msg_id, body, answer)

    def answered(self, sender: str, to: str, msg_id: bytes, body: bytes, answer: Frame) -> None:
        earlier = [s for s in self.sent.get(sender, ()) if s[1] == msg_id]
        if isinstance(answer, Sent):
            self.record(("send", sender, to, msg_id, body, "sent", answer.at))
            if earlier:
                first_to, _, first_body, first_at = earlier[0]
                assert (to, body, answer.at) == (first_to, first_body, first_at), "a resend"
                return
            self.sent.setdefault(sender, []).append((to, msg_id, body, answer.at))
            self.peers[to].owed.add((sender, msg_id))
            self.chats += 1
        else:
            assert isinstance(answer, Error), answer
            self.record(("send", sender, to, msg_id, body, "error", answer.code))
            self.codes[answer.code] = self.codes.get(answer.code, 0) + 1
            if earlier and earlier[0][2] != body:
                assert answer.code == ErrorCode.MESSAGE_ID_REUSED

    async def read(self, handle: str, ack: bool) -> None:
        """Read DELIVERs until all that ``handle`` is owed was seen, and what it left
        unacknowledged on earlier connections seen again; ACK all if ``ack``
        (always when half the window waits, so the relay never stops pushing)."""
        peer = self.peers[handle]
        client = await self.online(handle)

        async def reading() -> None:
            while peer.due or not peer.owed <= peer.seen.keys():
                deliver = await client.push(Deliver)
                assert deliver.delivery_id > peer.last_id, "pushed out of delivery-id order"
                peer.last_id = deliver.delivery_id
                key = (deliver.sender, deliver.msg_id)
                if self.leases and (*key, deliver.body) in self.reuses:
                    peer.extra.append(deliver.delivery_id)  # pushed first, then refused
                    self.withdrawn += 1
                    continue
                known = key in peer.seen
                assert peer.seen.setdefault(key, deliver.body) == deliver.body
                if key in peer.due:  # left unacknowledged on an earlier connection: again
                    peer.due.discard(key)
                    peer.unacked[key] = deliver.delivery_id
                elif known:  # a resend pushed first, or a redelivery: a duplicate (§6.4.3)
                    peer.extra.append(deliver.delivery_id)
                else:
                    peer.unacked[key] = deliver.delivery_id
                if len(peer.unacked) >= WINDOW // 2:
                    await self.ack(peer)

        try:
            await asyncio.wait_for(reading(), READ_S)
        except TimeoutError:
            missing = len(peer.owed - peer.seen.keys())
            lost = f"{handle}: {missing} Sent to it, {len(peer.due)} unacknowledged, never came"
            raise AssertionError(lost) from None
        if ack:
            await self.ack(peer)

    async def ack(self, peer: Peer) -> None:
        if (peer.unacked or peer.extra) and peer.client is not None:
            ids = sorted([*peer.unacked.values(), *peer.extra])
            await peer.client.send(Ack(delivery_ids=tuple(ids)))
            peer.unacked, peer.extra = {}, []

    def pair(self, offline: list[str]) -> tuple[str, str]:
        """Who states what on whom: an unblock of a block in force, or a block of a sender
        by the contact it writes to, both online — the sender most likely holds a lease."""
        rng = self.rng
        if self.blocks and rng.random() < 0.4:
            return rng.choice(sorted(self.blocks))
        pairs = [(self.partner[t], t) for t in CONTACTS if t in self.partner]
        live = [p for p in pairs if not set(p) & set(offline) and p not in self.blocks]
        if live:
            return rng.choice(live)
        signer, target = rng.sample(CONTACTS, 2)
        return signer, target

    async def statement(self, signer: str, target: str) -> None:
        """A block (or an unblock of one in force), once the signer has read and acknowledged
        all it is owed (what the block withdraws from its queue was seen on both relays)."""
        await self.read(signer, ack=True)
        client = await self.online(signer)
        action = "unblock" if (signer, target) in self.blocks else "block"
        if action == "block" and self.rng.random() < 0.5:
            answer = await self.blocking_while_writing(client, signer, target)
        else:
            answer = await state(client, action, target, self.clock())
        self.blocks ^= {(signer, target)} if not isinstance(answer, Error) else set()
        self.record((action, signer, target, type(answer).__name__, getattr(answer, "code", 0)))
        if action == "block":  # the target writes at once: refused, never pushed first
            burst = [self.new_message(target, signer) for _ in range(self.rng.randint(1, 3))]
            await self.sends(target, burst)
            self.partner.pop(target, None)  # and then writes to someone else

    async def blocking_while_writing(self, client: RawClient, signer: str, target: str) -> Frame:
        """The signer's chats to the target on both sides of its BLOCK, pipelined on one
        connection, which the relay handles in order: those before it are allowed (pushed
        first if the signer holds a lease), those after it refused (400) on both relays —
        its lease ends when the block is handed over, not at its OK."""
        rng = self.rng
        before = [self.new_message(signer, target) for _ in range(rng.randint(0, 3))]
        after = [self.new_message(signer, target) for _ in range(rng.randint(1, 3))]
        block = statement_bytes(client, "block", target, self.clock())

        async def chat(to: str, msg_id: bytes, body: bytes) -> int:
            self.first_body.setdefault((signer, msg_id), body)
            request_id = client.request_id()
            await client.send(Send(id=request_id, to=to, msg_id=msg_id, intent="chat", body=body))
            return request_id

        chats = [await chat(*item) for item in before]
        block_id = client.request_id()
        await client.send(Statement(id=block_id, statement=block))
        chats += [await chat(*item) for item in after]
        for item, request_id in zip([*before, *after], chats, strict=True):
            self.answered(signer, *item, await client.response(request_id))
        return await client.response(block_id)

    def new_message(self, sender: str, to: str) -> Chat:
        body = b"%s>%s %d" % (sender.encode(), to.encode(), self.rng.randrange(10**9))
        return to, self.rng.randbytes(16), body

    def burst(self, sender: str) -> list[Chat]:
        """1-8 chats (now and then 24-48), mostly to the contact the sender wrote to last (a
        lease is earned by one burst and used by the next); some resends and reuses."""
        rng = self.rng
        others = [h for h in CONTACTS if h != sender]
        one = self.partner.get(sender)
        if one is None or rng.random() < 0.25:  # a conversation goes on for a while
            one = self.partner[sender] = rng.choice(others)
        items = []
        # Now and then a long one: a lease is topped up while its chats are in flight.
        for _ in range(rng.randint(1, 8) if rng.random() < 0.9 else rng.randint(24, 48)):
            earlier = self.sent.get(sender)
            roll = rng.random()
            if earlier and roll < 0.08:
                to, msg_id, body, _ = rng.choice(earlier)
                items.append((to, msg_id, body))
            elif earlier and roll < 0.14:
                to, msg_id, _, _ = rng.choice(earlier)
                items.append((to, msg_id, b"other %d" % rng.randrange(10**9)))
            else:
                if sender in STRANGERS or rng.random() < 0.03:
                    to = rng.choice(others if sender in STRANGERS else STRANGERS)
                else:
                    to = one if rng.random() < 0.9 else rng.choice(others)
                items.append(self.new_message(sender, to))
        return items

    async def setup(self) -> None:
        for handle in CONTACTS + STRANGERS:
            await self.open(handle)
        for sender in CONTACTS:  # the introductions: each writes to each
            await self.sends(
                sender, [self.new_message(sender, to) for to in CONTACTS if to != sender]
            )
        for handle in self.peers:
            await self.read(handle, ack=True)

    async def step(self, cap: int | None) -> None:
        rng = self.rng
        self.clock.advance(rng.randint(0, 20))
        roll = rng.random()
        offline = [h for h, p in self.peers.items() if p.client is None]
        if roll < 0.5:
            sender = rng.choice(STRANGERS) if rng.random() < 0.08 else rng.choice(CONTACTS)
            await self.sends(sender, self.burst(sender))
        elif roll < 0.6:
            # Contacts to one recipient at once, some holding a lease and some not: a
            # leased chat must not be pushed past another's still waiting for its decision.
            # Their order across senders does not change a contact's decision.
            to, *senders = rng.sample(CONTACTS, rng.randint(3, 4))
            await self.together(
                {s: [self.new_message(s, to) for _ in range(rng.randint(1, 5))] for s in senders}
            )
        elif roll < 0.86:
            await self.read(rng.choice(CONTACTS + STRANGERS), ack=rng.random() < 0.7)
        elif roll < 0.92:
            if offline and (rng.random() < 0.6 or len(offline) > 3):
                await self.online(rng.choice(offline))
            else:
                await self.offline(rng.choice([h for h in self.peers if h not in offline]))
        elif roll < 0.97:
            await self.statement(*self.pair(offline))
        if cap is not None:
            most = db_rows(
                self.relay.ctx.config, "SELECT max(n) FROM (SELECT count(*) AS n FROM queue"
                " GROUP BY recipient)",
            )[0][0]  # fmt: skip
            assert (most or 0) <= cap, f"{most} queued, the cap is {cap}"

    async def finish(self) -> dict[str, Any]:
        """Everyone online, everything read and acknowledged, the queue empty: what each
        recipient saw."""
        for handle in self.peers:
            await self.read(handle, ack=True)
        path = self.relay.ctx.config.db_path
        assert path is not None
        await until(lambda: count_queued(path) == 0)
        seen = {}
        for handle, peer in self.peers.items():
            assert peer.seen.keys() == peer.owed, f"{handle} saw what was not Sent to it"
            assert not peer.due and not peer.unacked
            by_sender: dict[str, list[bytes]] = {}
            for (sender, msg_id), body in peer.seen.items():
                by_sender.setdefault(sender, []).append(msg_id + body)
            seen[handle] = by_sender
        for client in self.opened:
            assert client.ws.close_code in (None, 1000), f"closed with {client.ws.close_code}"
        return seen


async def run(
    config: RelayConfig, clock: FakeClock, seed: int, steps: int, leases: bool,
    reference: list[Outcome] | None = None, cap: int | None = None,
) -> tuple[Run, dict[str, Any]]:  # fmt: skip
    """One run on a fresh relay (and file); ``DELIVERY_LEASES`` is read when it starts."""
    name = "leased.db" if leases else "strict.db"
    assert config.db_path is not None
    changed = replace(config, db_path=config.db_path.with_name(name))
    previous, sqlite_store.DELIVERY_LEASES = sqlite_store.DELIVERY_LEASES, leases
    try:
        fixture = RelayFixture(changed, clock)
        relay = await fixture.__aenter__()
    finally:
        sqlite_store.DELIVERY_LEASES = previous
    clients = Clients()
    try:
        this = Run(relay, clients, clock, seed, reference)
        this.leases = leases
        await this.setup()
        for _ in range(steps):
            await this.step(cap)
        seen = await this.finish()
        this.ahead = relay.ctx.metrics.delivers["before_decision"]
        return this, seen
    finally:
        await clients.__aexit__()
        await fixture.__aexit__()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def logged(caplog: pytest.LogCaptureFixture, running: Awaitable[T]) -> T:
    """``running``'s value; if it fails (a difference, a connection closed with 1011),
    with the ERROR lines logged so far, ``lease_broken`` above all, in the message."""
    try:
        return await running
    except Exception as exc:
        raise AssertionError(f"{exc!r}\nERROR lines: {errors_logged(caplog)}") from exc


@pytest.mark.parametrize(("seed", "recent"), [(1, True), (2, True), (3, True), (4, False)])
async def test_leases_change_nothing_a_client_observes(
    config: RelayConfig, seed: int, recent: bool, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SPEC §6.4.6: what the module docstring lists, compared step by step; the first
    difference fails with the step and any ERROR lines (``lease_broken``) logged.
    ``recent`` False: the relay process remembers no msg_id it handed over, so every
    resend and reuse under a lease is pushed first and withdrawn."""
    if not recent:
        monkeypatch.setattr(relayleases, "RECENT_MSG_IDS", 0)
    caplog.set_level(logging.INFO, logger="blindrelay")
    config = replace(config, **LIMITS)
    strict, strict_seen = await run(config, FakeClock(), seed, STEPS, leases=False)
    assert strict.ahead == 0
    leased, leased_seen = await logged(
        caplog, run(config, FakeClock(), seed, STEPS, leases=True, reference=strict.outcomes)
    )
    assert errors_logged(caplog) == []
    assert leased.outcomes == strict.outcomes
    assert leased_seen == strict_seen
    # The workload made its cases: refusals of each kind, and many chats.
    codes = strict.codes
    for code in (ErrorCode.RECIPIENT_UNAVAILABLE, ErrorCode.MESSAGE_ID_REUSED):
        assert codes.get(code), f"no {code!r} in the workload: {codes}"
    assert leased.ahead >= leased.chats // 10, (leased.ahead, leased.chats)
    if not recent:
        assert leased.withdrawn, "no reuse was pushed first and withdrawn"


@pytest.mark.parametrize("seed", [5, 6])
async def test_near_the_cap_both_relays_keep_it_and_take_every_chat_they_push(
    config: RelayConfig, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §6.3.5, §6.4.6: not compared (module docstring); QUEUE_FULL on both, the cap
    never passed (checked after every step), and every chat seen was answered Sent."""
    caplog.set_level(logging.INFO, logger="blindrelay")
    config = replace(config, queue_cap=CAP, queue_share_per_sender=CAP, **LIMITS)
    strict, _ = await run(config, FakeClock(), seed, STEPS, leases=False, cap=CAP)
    assert strict.ahead == 0
    leased, _ = await logged(caplog, run(config, FakeClock(), seed, STEPS, leases=True, cap=CAP))
    assert errors_logged(caplog) == []
    for each in (strict, leased):
        assert each.codes.get(ErrorCode.QUEUE_FULL), each.codes
    assert leased.ahead > 0
