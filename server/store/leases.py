"""Delivery leases (SPEC §6.4.6): the store's promise that a contact's next chats to the
same user will be allowed, so the relay process may push their DELIVER before the store
has decided them.

Why: with the SQLite store every SEND's decision is a round trip to the writer process
(issue 19: half of the unloaded delivery time). A pair of users who have both written to
each other is allowed to chat until one of them signs a statement; nothing else the
relay keeps (time, budgets, metering) enters that decision. So after the writer has
allowed such a chat it may *grant* a lease — "the next ``count`` chats from A to B until
``until`` are allowed, and their queue room is set aside" — and the relay process, while
the lease holds, pushes the DELIVER at once and sends the job along. The writer still
decides every leased SEND by the strict rules (the same code as any other); a leased SEND
they would refuse is a bug, logged as ``lease_broken`` (tests/server/test_leases.py
looks for one over random workloads and finds none).

What keeps both sides' tables equal, by construction rather than by messages:

- one :class:`LeaseTable` class on both sides, changed by the same events in the same
  order — a grant (in the writer when it decides the SEND that earns it; in the relay
  process when that SEND's decision arrives, and only if no event voided it meanwhile),
  one ``spend`` per SEND that carries the lease, and expiry by each job's own ``now``;
- an *epoch*: anything that could narrow any pair's rights (every operation not in
  :data:`NEUTRAL`: a statement) starts a new one in the relay process before it is
  handed over, and the writer empties its table when the first job of the new epoch
  reaches it. A grant of an older epoch is ignored. Coarse on purpose: statements are
  rare next to chats, and "every lease ends" needs no reasoning about which pairs a
  statement touches;
- a fresh lease replaces the pair's in the writer when it decides the SEND that earns it,
  and in the relay process once that SEND is committed (never on a decision whose batch
  could still roll back), less the chats the relay process spent of the pair's leases
  meanwhile (those SENDs spend the fresh one in the writer): both sides then hold the same;
- a lease's room counts against the recipient's queue cap and the sender's share for
  every SEND (``rules.queue_full``), so a leased SEND never finds the queue full.
"""

from __future__ import annotations

from blindrelay.protocol.consent import ALLOW, Decision, Request
from blindrelay.protocol.frames import AccountKind

from .operations import SendRules

LEASE_MS = 5_000
"""How long a lease holds. Nothing in a contact's chat depends on time; the bound is for
the queue room it sets aside."""

LEASE_MAX = 64
"""Chats one lease covers at most."""

TOP_UP_AT = LEASE_MAX // 2
"""A pair holding this many chats or fewer is granted a fresh lease with its next
decision, so that under load its lease does not run out between one decision and the
next (``leasing.WriterLeases.grant``)."""

MAX_LEASED_RECIPIENTS = 50_000
"""The writer grants no lease to a new recipient past this many with live ones: its table
stays bounded whatever the traffic (expired entries are dropped when it fills)."""

NEUTRAL = frozenset({
    "send", "acknowledge", "page", "purge", "checkpoint", "noop",
    "create_account", "login_counts", "open_session", "close_session", "login_seqs",
    "rotate_identity", "publish_key", "upload_prekeys", "take_bundle", "take_budget",
    "put_profile", "fetch_profile", "statements_in_force", "usage_month", "bill_page",
    "close_bills", "relay_seed", "create_relay_seed", "log_append", "log_state",
    "log_add_head", "log_head", "log_entries", "log_find", "log_inclusion",
    "log_consistency", "log_signed_consistency", "log_binding_proof",
})  # fmt: skip
"""Operations that cannot narrow a contact's right to chat. The leased decision reads
the pair's state, which only ``send`` and ``apply_statement`` write (and a SEND only
widens it: a first contact, an open window; a leased pair's SEND changes nothing); the
recipient's existence and kind, which nothing removes or changes (accounts are never
deleted); and queue room, which leases set aside and ACKs and expiry only free. So of
today's operations only a statement ends leases — but any operation added later does
too until someone shows it belongs here (``test_leases`` keeps the list to the
contract's names)."""

# Modes of a SEND's ticket (``SqliteStore.lease_send``), the writer's ``send`` ``lease``.
UNLEASED = 0
LEASED = 1
"""The SEND spends a lease; its DELIVER waits for the decision as usual."""
PUSHED = 2
"""The SEND spends a lease and its DELIVER has left: the writer must store it."""


def leasable(
    sender_kind: str, recipient_kind: str | None, request: Request, decision: Decision,
    stranger: bool,
) -> bool:  # fmt: skip
    """Whether an allowed SEND earns a lease: a user's chat to a user who has written to it,
    by a user it has written to — the decision :data:`ALLOW` itself, which changes no pair
    state, meters nothing and spends no budget (``consent.may_deliver``)."""
    return (
        decision is ALLOW
        and not stranger
        and request is Request.CHAT
        and sender_kind == AccountKind.USER
        and recipient_kind == AccountKind.USER
    )


def grant_size(rules: SendRules, queued: int, reserved: int) -> int:
    """How many chats a new lease may cover, 0 for none: room left under the cap and the
    per-sender share once everything queued (this SEND's envelope included) and every
    lease's room are counted — the sender's own share is at most the whole queue."""
    limit = min(rules.queue_cap, rules.queue_share_per_sender)
    return max(0, min(LEASE_MAX, limit - queued - reserved))


class LeaseTable:
    """Live leases by recipient, then sender: ``(until, remaining)``. The same class, and
    the same calls in the same order, in the relay process and in the writer."""

    __slots__ = ("by_recipient", "epoch")

    def __init__(self) -> None:
        self.epoch = 0
        self.by_recipient: dict[str, dict[str, tuple[int, int]]] = {}

    def new_epoch(self, epoch: int) -> None:
        """Every lease ends."""
        self.epoch = epoch
        self.by_recipient = {}

    def held(self, sender: str, to: str, now: int) -> int:
        """Chats left on ``sender``'s lease to ``to`` at ``now`` (0: none, or expired)."""
        senders = self.by_recipient.get(to)
        if senders is None:
            return 0
        lease = senders.get(sender)
        if lease is None or lease[0] <= now:
            return 0
        return lease[1]

    def spend(self, sender: str, to: str, now: int) -> bool:
        """Take one chat of ``sender``'s live lease to ``to``; False (and the lease gone, if
        it had expired) when there is none."""
        senders = self.by_recipient.get(to)
        if senders is None:
            return False
        lease = senders.get(sender)
        if lease is None:
            return False
        if lease[0] <= now or lease[1] <= 1:
            del senders[sender]
            if not senders:
                del self.by_recipient[to]
            return lease[0] > now
        senders[sender] = (lease[0], lease[1] - 1)
        return True

    def reserved(self, to: str, now: int) -> int:
        """Queue room set aside for live leases to ``to``; expired ones are dropped on the
        way (dead on both sides alike: only a live lease is ever spent or held), so the
        sum stays as short as the leases that count."""
        senders = self.by_recipient.get(to)
        if senders is None:
            return 0
        total = 0
        expired = False
        for until, left in senders.values():
            if until > now:
                total += left
            else:
                expired = True
        if expired:
            self._drop_expired(to, senders, now)
        return total

    def grant(self, sender: str, to: str, until: int, count: int) -> None:
        senders = self.by_recipient.get(to)
        if senders is None:
            senders = self.by_recipient[to] = {}
        senders[sender] = (until, count)

    def replace(self, sender: str, to: str, until: int, count: int) -> None:
        """The pair's lease is now this one (none, if ``count`` is not positive)."""
        if count > 0:
            self.grant(sender, to, until, count)
            return
        senders = self.by_recipient.get(to)
        if senders is not None and senders.pop(sender, None) is not None and not senders:
            del self.by_recipient[to]

    def prune(self, now: int) -> None:
        """Drop expired leases (the writer's table when it is full; the relay process's
        now and then)."""
        for to, senders in list(self.by_recipient.items()):
            self._drop_expired(to, senders, now)

    def _drop_expired(self, to: str, senders: dict[str, tuple[int, int]], now: int) -> None:
        live = {s: lease for s, lease in senders.items() if lease[0] > now}
        if live:
            self.by_recipient[to] = live
        else:
            del self.by_recipient[to]
