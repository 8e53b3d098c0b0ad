"""The relay process's side of delivery leases (SPEC §6.4.6, :mod:`..leases`): delivery ids,
tickets, and the epoch.

Why here, in the SQLite back end: only a store written by one process, in the order the
relay hands it jobs, lets the relay process number deliveries and know which leases
hold. :class:`~.store.SqliteStore` calls this on every operation it hands over, in order;
the writer's side is :mod:`.leasing`.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.errors import ProtocolError

from ..leases import LEASED, NEUTRAL, PUSHED, UNLEASED, LeaseTable

Done = Callable[[bool, Any], None]

PRUNE_EVERY = 4_096
"""Tickets between two sweeps of the relay process's expired leases."""

RECENT_MSG_IDS = 65_536
"""msg_ids of answered SENDs the relay process remembers (about 10 MB; half a minute at
2,000 msg/s): a resend after a reconnect comes within that, most often."""


def pushed_first(send_args: list[Any] | tuple[Any, ...]) -> bool:
    """Whether a ``send`` job's DELIVER left before it was handed over: its ticket, the
    last argument, is :data:`~..leases.PUSHED`."""
    ticket = send_args[10] if len(send_args) > 10 else None
    return ticket is not None and ticket[1] == PUSHED


def lease_clock() -> int:
    """Milliseconds that never go back (a lease's ``until``): the wall clock may, and
    both sides judge each SEND by the time on its ticket."""
    return int(time.monotonic() * 1000)


class RelayLeases:
    """Delivery ids, the relay process's lease table, and what a pushed DELIVER needs to
    know first: that no SEND to the same recipient before it still waits for its
    decision (it would be pushed after, and below the outbox's cursor).

    And whether its ``msg_id`` was seen lately: one in flight, or among the last
    :data:`RECENT_MSG_IDS` answered, waits for the store's answer — which is how a
    sender's resend after a reconnect (its SENT lost) is answered without a second
    DELIVER. An older one is not looked up: a resend or a reuse pushed first is
    withdrawn once the store answers (``Outbox.withdrawn_early``, SPEC §6.4.6). Looking
    each up in ``sent`` on the loop's connection took 11 % of the event loop's time at
    full load (py-spy, 2026-12-06: a WAL read transaction per SEND)."""

    def __init__(self, reader: sqlite3.Connection) -> None:
        self.table = LeaseTable()
        row = reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        self._next_id = (int(row[0]) if row is not None else 0) + 1
        self._undecided: dict[str, int] = {}
        """Recipient → SENDs to it handed over whose DELIVER waits for their decision."""
        self._sending: dict[tuple[str, bytes], int] = {}
        """(sender, msg_id) of SENDs handed over and not answered: how many."""
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        """(sender, msg_id) of the last :data:`RECENT_MSG_IDS` SENDs answered, oldest first.
        An OrderedDict: a dict's oldest key, once deleted keys pile up before it, costs a
        scan past them (47 µs per SEND at this size, against 1.3 µs)."""
        self._spent: dict[tuple[str, str], list[int]] = {}
        """(sender, recipient) with SENDs in flight → [chats of its leases spent since
        the first of them was handed over, SENDs in flight]: what a fresh lease's
        decision arrives after (``WriterLeases.grant``)."""

    def next_id(self) -> int:
        delivery_id = self._next_id
        self._next_id = delivery_id + 1
        return delivery_id

    def ticket(self, sender: str, to: str, msg_id: bytes) -> list[int]:
        """``Store.lease_send``: [delivery_id, mode, epoch, clock]."""
        delivery_id = self.next_id()
        now = lease_clock()
        table = self.table
        if not delivery_id % PRUNE_EVERY:
            table.prune(now)  # leases nobody spends again would stay for ever
        if not table.spend(sender, to, now):
            return [delivery_id, UNLEASED, table.epoch, now]
        spent = self._spent.get((sender, to))
        if spent is not None:
            spent[0] += 1
        # Pushed first unless an earlier SEND to ``to`` still waits for its decision, or
        # the msg_id is one seen lately (a resend, most likely).
        key = (sender, msg_id)
        seen = key in self._sending or key in self._recent
        mode = LEASED if seen or self._undecided.get(to) else PUSHED
        return [delivery_id, mode, table.epoch, now]

    def handing(self, operation: str) -> None:
        """Any operation but the :data:`~..leases.NEUTRAL` ones ends every lease, before
        it reaches the writer."""
        if operation not in NEUTRAL:
            self.end_all()

    def end_all(self) -> None:
        self.table.new_epoch(self.table.epoch + 1)

    def statement_args(self, args: list[Any] | tuple[Any, ...]) -> tuple[Any, ...]:
        """``apply_statement``'s arguments with the delivery id its receipt would take."""
        given = tuple(args)
        if not 4 <= len(given) <= 6:
            raise ValueError("apply_statement: 4 to 6 arguments")
        defaults = (limits.MAX_BLOCK_TARGETS, None)  # the contract's optional ones
        return (*given, *defaults[len(given) - 4 :], self.next_id())

    def sending(
        self, args: list[Any] | tuple[Any, ...], done: Done, decided: Callable[[Any], None] | None
    ) -> tuple[Done, Callable[[Any], None]]:
        """A ``send`` handed over: ``done`` and ``decided`` wrapped to keep the books — the
        SEND no longer undecided with the first of them, no longer in flight and its lease
        (if it earned one) taken up with ``done`` — and every lease ended if it failed
        other than by a refusal."""
        sender, to = args[0], args[2]
        key = (sender, args[3])
        sending = self._sending
        sending[key] = sending.get(key, 0) + 1
        undecided = self._undecided
        waits = not pushed_first(args)
        if waits:
            undecided[to] = undecided.get(to, 0) + 1
        pair = (sender, to)
        spent = self._spent.get(pair)
        if spent is None:
            spent = self._spent[pair] = [0, 0]
        spent[1] += 1
        mark = spent[0]

        def decide() -> None:
            nonlocal waits  # still counted undecided
            if waits:
                waits = False
                left = undecided[to] - 1
                if left:
                    undecided[to] = left
                else:
                    del undecided[to]

        def on_decided(value: Any) -> None:
            try:
                if decided is not None:
                    decided(value)
            finally:
                decide()

        def on_done(ok: bool, value: Any) -> None:
            decide()
            if ok and type(value) is list and len(value) > 3:
                # A lease is taken up only once the SEND that earned it is committed: one
                # decided on writes its batch then rolled back would rest on nothing.
                epoch, until, count = value[3]
                if epoch == self.table.epoch:
                    # It replaced the pair's lease in the writer when this SEND was
                    # decided; the leased SENDs handed over since spent it there.
                    self.table.replace(sender, to, until, count - (spent[0] - mark))
            left = sending[key] - 1
            if left:
                sending[key] = left
            else:
                del sending[key]
            recent = self._recent
            recent[key] = None
            if len(recent) > RECENT_MSG_IDS:
                recent.popitem(last=False)
            spent[1] -= 1
            if not spent[1]:
                del self._spent[pair]
            if not ok and not isinstance(value, ProtocolError):
                self.end_all()  # a broken lease, a lost writer: nothing is known now
            done(ok, value)

        return on_done, on_decided
