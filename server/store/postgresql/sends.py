"""A run of SENDs in one batch, set-based: one read, the decisions in order, one write.

Why a module of its own: this is the PostgreSQL back end's hottest path and its longest
piece of logic, and it must decide exactly as the SQLite writer's ``send`` job does
(:func:`..sqlite.jobs.send`, step for step, both on :mod:`..rules`; the store tests run
the same expectations against both back ends, e.g. ``tests/server/test_consent_matrix.py``).
``batch`` runs it as one of a run's groups, after the run's ACKs (its module docstring
says why that order is safe).

Not here: the transaction around it and the other groups (``batch``), the operations
run alone (``operations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from blindrelay.protocol.consent import INITIAL, REFUSE, Meter, PairState, Request, Verdict
from blindrelay.protocol.errors import MessageIdReused, QueueFull
from blindrelay.protocol.fastcodec import encode_deliver
from blindrelay.protocol.transparency.bills import month_span

from ... import routing
from ..operations import SendRules
from ..rules import (
    FIRST_CONTACTS,
    QueueShares,
    bucket_full_at,
    bucket_tokens,
    envelope_digest,
    judge_send,
    metered_business,
    needs_badge,
    pair_after_send,
    queue_full,
    refuse_unless_allowed,
    share_floor,
    shares_matter,
)
from .reads import verified_by
from .rows import job_error, pair_from_row, pair_key, pair_to_row
from .tx import Call, Outcome, Tx

SEND_STATE = (
    "SELECT 1 AS tag, p.low AS h1, p.high AS h2, p.consent AS t1, p.pending AS t2,"
    " p.blockers AS t3, p.wrote AS t4, p.window_until AS n1, p.requests::bigint AS n2,"
    " NULL::bytea AS b1, NULL::bytea AS b2, NULL::float8 AS f1"
    " FROM pairs p JOIN unnest($1::text[], $2::text[]) AS k(low, high)"
    "  ON p.low = k.low AND p.high = k.high"
    " UNION ALL SELECT 2, a.handle, a.kind, w.worker, NULL, NULL, NULL,"
    "  coalesce(q.queued, 0) - coalesce(k.acked, 0), coalesce(q.last_id, 0), NULL, NULL, NULL"
    "  FROM accounts a"
    "  LEFT JOIN queue_counts q ON q.handle = a.handle"
    "  LEFT JOIN queue_acks k ON k.handle = a.handle"
    "  LEFT JOIN account_sessions w ON w.handle = a.handle AND w.live"
    "  WHERE a.handle = ANY($3::text[])"
    " UNION ALL SELECT 3, s.sender, NULL, NULL, NULL, NULL, NULL, s.at, NULL, s.msg_id,"
    "  s.digest, NULL FROM sent s JOIN unnest($4::text[], $5::bytea[]) AS k(sender, msg_id)"
    "  ON s.sender = k.sender AND s.msg_id = k.msg_id"
    " UNION ALL SELECT 4, b.key, NULL, NULL, NULL, NULL, NULL, b.at, NULL, NULL, NULL,"
    "  b.tokens FROM budgets b WHERE b.name = $6 AND b.key = ANY($7::text[])"
    " UNION ALL SELECT 5, g.handle, NULL, NULL, NULL, NULL, NULL, g.expires_at, NULL,"
    "  g.key_fingerprint, a.identity_key, NULL FROM badges g"
    "  JOIN accounts a ON a.handle = g.handle"
    "  WHERE g.handle = ANY($8::text[]) AND g.revoked_at IS NULL"
)
"""Everything a run's SENDs decide on, in one statement: pair states (1), recipients
with their queue counts and the highest delivery id queued for them (2), remembered
(sender, msg_id) (3), the senders' first-contact budgets (4), and badges of business
senders that need one (5)."""

SEND_WRITE = (
    "WITH s AS (INSERT INTO sent (sender, msg_id, digest, at)"
    "  SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[])),"
    " q AS (INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, category,"
    "  categories, sent_at, body, stranger)"
    "  SELECT r, s, sk, m, i, c, CASE WHEN cs IS NULL THEN NULL"
    "   ELSE string_to_array(cs, ',') END, t, b, st"
    "  FROM unnest($5::text[], $1::text[], $6::text[], $2::bytea[], $7::text[], $8::text[],"
    "   $9::text[], $4::bigint[], $10::bytea[], $11::boolean[])"
    "   WITH ORDINALITY AS u(r, s, sk, m, i, c, cs, t, b, st, o)"
    "  ORDER BY o RETURNING delivery_id, sender, msg_id, recipient),"
    " c AS (UPDATE queue_counts qc SET queued = qc.queued + d.n,"
    "  last_id = (SELECT max(q.delivery_id) FROM q WHERE q.recipient = d.h)"
    "  FROM unnest($12::text[], $13::integer[]) AS d(h, n) WHERE qc.handle = d.h),"
    " p AS (INSERT INTO pairs (low, high, consent, pending, window_until, blockers, wrote,"
    "  requests) SELECT * FROM unnest($14::text[], $15::text[], $16::text[], $17::text[],"
    "   $18::bigint[], $19::text[], $20::text[], $21::integer[])"
    "  ON CONFLICT (low, high) DO UPDATE SET consent = excluded.consent,"
    "  pending = excluded.pending, window_until = excluded.window_until,"
    "  blockers = excluded.blockers, wrote = excluded.wrote, requests = excluded.requests),"
    " u AS (INSERT INTO usage (business, month, meter, category, count)"
    "  SELECT * FROM unnest($22::text[], $23::text[], $24::text[], $25::text[], $26::bigint[])"
    "  ON CONFLICT (business, month, meter, category)"
    "  DO UPDATE SET count = usage.count + excluded.count),"
    " b AS (INSERT INTO budgets (name, key, tokens, at, full_at)"
    "  SELECT $27::text, * FROM unnest($28::text[], $29::float8[], $30::bigint[],"
    "   $31::bigint[])"
    "  ON CONFLICT (name, key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at,"
    "  full_at = excluded.full_at),"
    " n AS (INSERT INTO bill_notifications (month, business, at, msg_id, category, recipient)"
    "  SELECT * FROM unnest($32::text[], $33::text[], $34::bigint[], $35::bytea[],"
    "   $36::text[], $37::text[]))"
    " SELECT delivery_id, sender, msg_id FROM q"
)
"""Everything a run's accepted SENDs write, in one statement (billed notifications'
bill rows too, SPEC §8.5), each recipient's ``last_id`` raised to its newest envelope's
(schema 10); with each new envelope's delivery id."""


@dataclass(slots=True)
class _Send:
    position: int
    handle: str
    kind: str
    to: str
    msg_id: bytes
    intent: str
    category: str | None
    categories: list[str] | None
    body: bytes
    now: int
    rules: SendRules

    @classmethod
    def parse(cls, position: int, args: Sequence[Any]) -> _Send:
        """``args`` in :data:`.batch.ARGUMENTS` order (a wrong count raises ValueError)."""
        handle, kind, to, msg_id, intent, category, categories, body, now, rules, *lease = args
        if len(lease) > 1 or (lease and lease[0] is not None):
            raise ValueError("send: a lease, or too many arguments")  # none here (§6.4.6)
        if type(handle) is not str or type(to) is not str or type(now) is not int:
            raise TypeError("send: handle, to, now")
        return cls(
            position, handle, kind, to, msg_id if type(msg_id) is bytes else bytes(msg_id),
            intent, category, list(categories) if categories is not None else None,
            body if type(body) is bytes else bytes(body), now,
            rules if type(rules) is SendRules else SendRules(*rules),
        )  # fmt: skip


@dataclass(slots=True)
class _Accepted:
    send: _Send
    digest: bytes
    stranger: bool


class _SendRun:
    """The state a run of SENDs decides on, read once, changed by each accepted SEND in
    turn (as the SQLite writer's caches are), written once."""

    def __init__(self, tx: Tx, sends: list[_Send]) -> None:
        self.tx = tx
        self.sends = sends
        self.pairs: dict[tuple[str, str], PairState] = {}
        self.recipients: dict[str, tuple[str, int]] = {}
        """Recipient → (kind, envelopes queued, this run's accepted ones included)."""
        self.remembered: dict[tuple[str, bytes], tuple[bytes, int]] = {}
        self.budgets: dict[str, tuple[float, int]] = {}
        self.badges: dict[str, list[tuple[bytes, bytes, int]]] = {}
        self.shares: dict[str, QueueShares] = {}
        self.accepted: list[_Accepted] = []
        self.changed_pairs: dict[tuple[str, str], PairState] = {}
        self.usage: dict[tuple[str, str, str, str], int] = {}
        self.billed: list[tuple[str, str, int, bytes, str, str]] = []
        """Bill rows (SPEC §8.5): (month, business, at, msg_id, category, recipient)."""
        self.spent: dict[str, tuple[float, int, int]] = {}
        """First-contact budgets to write: sender → (tokens, at, full_at)."""
        self.workers: dict[str, str] = {}
        """Recipient → the worker serving its live connection (``account_sessions``)."""
        self.last_ids: dict[str, int] = {}
        """Recipient → the highest delivery id queued for it before this run
        (``queue_counts.last_id``, read under its lock): the first new envelope's
        ``previous``. Never ``max(delivery_id)`` over ``queue``, whose cost grows with
        the dead rows the ACKs leave until the next vacuum (schema 10)."""
        self._month = (0, 0, "")

    async def read(self) -> None:
        keys = sorted({pair_key(s.handle, s.to) for s in self.sends})
        badge_senders = sorted(
            {s.handle for s in self.sends if needs_badge(s.kind, Request(s.intent))}
        )
        rows = await self.tx.conn.fetch(
            SEND_STATE,
            [k[0] for k in keys], [k[1] for k in keys], sorted({s.to for s in self.sends}),
            [s.handle for s in self.sends], [s.msg_id for s in self.sends],
            FIRST_CONTACTS, sorted({s.handle for s in self.sends}), badge_senders,
        )  # fmt: skip
        for tag, h1, h2, t1, t2, t3, t4, n1, n2, b1, b2, f1 in rows:
            if tag == 1:
                self.pairs[(h1, h2)] = pair_from_row(t1, t2, n1, t3, t4, n2)
            elif tag == 2:
                self.recipients[h1] = (h2, int(n1 or 0))
                self.last_ids[h1] = int(n2 or 0)
                if t1 is not None:
                    self.workers[h1] = t1
            elif tag == 3:
                self.remembered[(h1, bytes(b1))] = (bytes(b2), int(n1))
            elif tag == 4:
                self.budgets[h1] = (float(f1), int(n1))
            else:
                self.badges.setdefault(h1, []).append((bytes(b1), bytes(b2), int(n1)))

    async def _shares(self, recipient: str, rules: SendRules) -> QueueShares:
        """The recipient's shares (read when first needed: only long queues), this run's
        accepted envelopes included."""
        shares = self.shares.get(recipient)
        if shares is None:
            shares = QueueShares(share_floor(rules), 0, {})
            for sender, stranger, count in await self.tx.conn.fetch(
                "SELECT sender, stranger, count(*) FROM queue WHERE recipient = $1"
                " AND intent <> 'statement' GROUP BY sender, stranger",
                recipient,
            ):
                shares.change(sender, bool(stranger), int(count))
            for accepted in self.accepted:
                if accepted.send.to == recipient:
                    shares.change(accepted.send.handle, accepted.stranger, 1)
            self.shares[recipient] = shares
        return shares

    async def decide(self, send: _Send) -> Any:
        """``..sqlite.jobs.send``'s decision, step for step, on this run's state: the
        original time for a resend, None for an accepted envelope (its answer comes with
        the write), or a refusal raised — in which case nothing of it is kept."""
        rules = send.rules
        handle, to, now = send.handle, send.to, send.now
        digest = envelope_digest(to, send.intent, send.category, send.categories, send.body)
        request = Request(send.intent)
        key = pair_key(handle, to)
        state = self.pairs.get(key, INITIAL)
        verified = needs_badge(send.kind, request) and verified_by(self.badges.get(handle), now)
        recipient = self.recipients.get(to)
        decision, stranger, _probe = judge_send(
            rules, handle, send.kind, to, recipient[0] if recipient is not None else None,
            request, send.category, frozenset(send.categories or ()), state, now,
            verified=verified,
        )  # fmt: skip
        # The probe (SPEC §7.7: a chat to an unknown handle costs a budget read) was read
        # with every sender's budget above.
        full = False
        spend: tuple[float, int, int] | None = None
        if decision.verdict is Verdict.ALLOW:
            assert recipient is not None
            queued = recipient[1]
            shares = await self._shares(to, rules) if shares_matter(rules, queued) else None
            full = queue_full(rules, handle, stranger, queued, shares)
            if not full and decision.first_contact:
                per_h, burst = rules.first_contacts_per_h, rules.first_contacts_burst
                tokens = bucket_tokens(self.budgets.get(handle), per_h, burst, now)
                if tokens < 1.0:
                    decision = REFUSE
                else:
                    spend = (tokens - 1.0, now, bucket_full_at(tokens - 1.0, per_h, burst, now))
        known = self.remembered.get((handle, send.msg_id))
        if decision.verdict is not Verdict.ALLOW or full:
            # A resend is answered from ``sent`` before any refusal.
            if known is not None:
                if known[0] != digest:
                    raise MessageIdReused()
                return known[1]
            refuse_unless_allowed(decision)
            raise QueueFull()
        if known is not None:  # a resend the rules would allow again: nothing new stored
            if known[0] != digest:
                raise MessageIdReused()  # the SQLite job fails after its budget write: undone
            self._spend(handle, spend)
            return known[1]
        self._spend(handle, spend)
        assert recipient is not None
        self.remembered[(handle, send.msg_id)] = (digest, now)
        self.recipients[to] = (recipient[0], recipient[1] + 1)
        if to in self.shares:
            self.shares[to].change(handle, stranger, 1)
        self.accepted.append(_Accepted(send, digest, stranger))
        new_state = pair_after_send(rules, state, decision, now)
        if new_state is not None:
            self.pairs[key] = self.changed_pairs[key] = new_state
        if decision.meter is not None:
            start, end, month = self._month
            if not start <= now < end:
                self._month = start, end, month = month_span(now)
            business = metered_business(handle, send.kind, to)
            meter_key = (business, month, decision.meter.value, send.category or "")
            self.usage[meter_key] = self.usage.get(meter_key, 0) + 1
            if decision.meter is Meter.NOTIFICATION:  # an item of the month's bill
                assert send.category is not None
                self.billed.append((month, business, now, send.msg_id, send.category, to))
        return None

    def _spend(self, handle: str, spend: tuple[float, int, int] | None) -> None:
        if spend is not None:
            self.budgets[handle] = (spend[0], spend[1])
            self.spent[handle] = spend

    async def write(self) -> dict[int, list[int]]:
        """Everything accepted, in one statement; each accepted SEND's [delivery_id, at,
        previous] by position."""
        accepted = self.accepted
        if not accepted and not self.changed_pairs and not self.spent and not self.usage:
            return {}
        per_recipient: dict[str, int] = {}
        for a in accepted:
            per_recipient[a.send.to] = per_recipient.get(a.send.to, 0) + 1
        pairs = sorted(self.changed_pairs.items())
        pair_rows = [(*key, *pair_to_row(state)) for key, state in pairs]
        usage = sorted(self.usage.items())
        spent = sorted(self.spent.items())
        billed = self.billed
        sends = [a.send for a in accepted]
        rows = await self.tx.conn.fetch(
            SEND_WRITE,
            [s.handle for s in sends], [s.msg_id for s in sends], [a.digest for a in accepted],
            [s.now for s in sends], [s.to for s in sends], [s.kind for s in sends],
            [s.intent for s in sends], [s.category for s in sends],
            [",".join(s.categories) if s.categories is not None else None for s in sends],
            [s.body for s in sends], [a.stranger for a in accepted],
            list(per_recipient), list(per_recipient.values()),
            *(list(column) for column in zip(*pair_rows, strict=True)) if pair_rows
            else ([],) * 8,
            [k[0] for k, _n in usage], [k[1] for k, _n in usage], [k[2] for k, _n in usage],
            [k[3] for k, _n in usage], [n for _k, n in usage],
            FIRST_CONTACTS, [h for h, _s in spent], [s[0] for _h, s in spent],
            [s[1] for _h, s in spent], [s[2] for _h, s in spent],
            *(list(column) for column in zip(*billed, strict=True)) if billed else ([],) * 6,
        )  # fmt: skip
        ids = {(sender, bytes(msg_id)): int(delivery_id) for delivery_id, sender, msg_id in rows}
        last = {recipient: self.last_ids.get(recipient, 0) for recipient in per_recipient}
        results: dict[int, list[int]] = {}
        tx = self.tx
        links, workers, origin = tx.links, self.workers, tx.origin
        for send in sends:
            delivery_id = ids[(send.handle, send.msg_id)]
            results[send.position] = [delivery_id, send.now, last[send.to]]
            worker = workers.get(send.to)
            if worker is None or worker == origin:
                # No hint: where the recipient's live connection is was read under its
                # lock, which a login's open_session takes too. Here: pushed by this
                # worker, or paged by its outbox's first page (later in this stream).
                # Nowhere: a login after this commit pages it.
                pass
            elif links is not None and links.linked(worker):
                # To the recipient's worker by its link, after COMMIT (routing_links): as
                # the DELIVER it pushes, so nothing is decoded or encoded again there.
                tx.linked.setdefault(worker, []).append([
                    send.to, delivery_id, last[send.to], encode_deliver(
                        delivery_id, send.handle, send.kind, send.msg_id, send.intent,
                        send.now, send.body, send.category, send.categories,
                    ),
                ])  # fmt: skip
            else:
                # The envelope rides its hint: the recipient's worker pushes it without a
                # PAGE.
                tx.hints.append(routing.envelope_hint(tx.origin, last[send.to], [
                    delivery_id, send.to, send.handle, send.kind, send.msg_id, send.intent,
                    send.category, send.categories, send.now, send.body,
                ]))  # fmt: skip
            last[send.to] = delivery_id
        return results


async def send_group(
    tx: Tx, calls: list[Call], members: list[int], outcomes: list[Outcome]
) -> None:
    """Every SEND of the run: one read, the decisions in order, one write."""
    sends: list[_Send] = []
    for position in members:
        try:
            sends.append(_Send.parse(position, calls[position].args))
        except Exception as exc:
            outcomes[position] = (False, job_error(exc))
    if not sends:
        return
    run = _SendRun(tx, sends)
    await run.read()
    pending: list[int] = []
    for send in sends:
        try:
            resend_at = await run.decide(send)
        except Exception as exc:
            if isinstance(exc, asyncpg.PostgresError):
                raise
            outcomes[send.position] = (False, job_error(exc))
            continue
        if resend_at is not None:
            outcomes[send.position] = (True, resend_at)
        else:
            pending.append(send.position)
    written = await run.write()
    for position in pending:
        outcomes[position] = (True, written[position])
