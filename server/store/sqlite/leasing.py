"""The writer's side of delivery leases (SPEC §6.4.6, :mod:`..leases`): the table, each
SEND's ticket, and ``lease_broken``.

Why a module of its own: ``jobs.send`` is the writer's hottest function and the rules it
applies are the strict ones whatever the ticket says; what a ticket changes — the room
set aside, a grant, and the check that a SEND whose DELIVER already left is stored — is
here, in a few calls it makes.
"""

from __future__ import annotations

import logging
from typing import Any

from ...logs import log_event
from ..leases import (
    LEASE_MS,
    MAX_LEASED_RECIPIENTS,
    PUSHED,
    TOP_UP_AT,
    UNLEASED,
    LeaseTable,
    grant_size,
)
from ..operations import SendRules


class LeaseBroken(RuntimeError):
    """The strict rules refuse a SEND whose DELIVER the relay process pushed under a lease
    (or its delivery id does not follow the last): a bug, never a refusal. Not a
    ProtocolError, so the sender gets 900 and the relay process ends every lease."""


class Ticket:
    """One SEND's ``lease`` argument: [delivery id, mode, epoch, lease clock ms]."""

    __slots__ = ("clock", "delivery_id", "epoch", "mode", "spent")

    def __init__(self, values: list[Any]) -> None:
        self.delivery_id, self.mode, self.epoch, self.clock = values  # ints (msgpack)
        self.spent = False


class WriterLeases:
    """The writer's :class:`~..leases.LeaseTable`, kept in step with the relay process's by
    the tickets of the SENDs it runs (never undone with a failed job: the relay process
    spent the same lease, and a grant is the last thing a successful SEND does)."""

    def __init__(self) -> None:
        self.table = LeaseTable()

    def open(self, lease: list[Any] | None, sender: str, to: str) -> Ticket | None:
        """The SEND's ticket, its lease spent if it carries one; a new epoch ends all."""
        if lease is None:
            return None
        ticket = Ticket(lease)
        table = self.table
        if ticket.epoch != table.epoch:
            table.new_epoch(ticket.epoch)
        if ticket.mode != UNLEASED:
            ticket.spent = table.spend(sender, to, ticket.clock)
        return ticket

    def room(self, ticket: Ticket | None, sender: str, to: str) -> tuple[int, int]:
        """(room set aside for leases to ``to``, of it ``sender``'s): what the cap counts."""
        if ticket is None:
            return 0, 0
        table = self.table
        return table.reserved(to, ticket.clock), table.held(sender, to, ticket.clock)

    def grant(
        self, ticket: Ticket, sender: str, to: str, rules: SendRules, queued: int, reserved: int
    ) -> list[int] | None:
        """A fresh lease for the pair, covering what :func:`~..leases.grant_size` allows
        with ``queued`` envelopes (this one's included) and the room ``reserved`` by every
        lease to ``to`` — the pair's own left out, since the fresh one replaces it. Only
        for a pair holding at most :data:`~..leases.TOP_UP_AT` chats, so a busy pair never
        runs dry (its chats would wait for their decisions meanwhile), and never for
        fewer chats than it holds: the relay process may spend those before it hears of
        the fresh lease, and then spends this one's. [epoch, until, count], or None."""
        table = self.table
        held = table.held(sender, to, ticket.clock)
        if held > TOP_UP_AT:
            return None
        count = grant_size(rules, queued, reserved - held)
        if count < max(1, held):
            return None
        if to not in table.by_recipient and len(table.by_recipient) >= MAX_LEASED_RECIPIENTS:
            table.prune(ticket.clock)
            if len(table.by_recipient) >= MAX_LEASED_RECIPIENTS:
                return None
        until = ticket.clock + LEASE_MS
        table.grant(sender, to, until, count)
        return [ticket.epoch, until, count]


def check_spent(ticket: Ticket | None) -> None:
    """A SEND whose DELIVER left found no lease here: the tables disagree (a bug, logged;
    the strict rules still decide it)."""
    if ticket is not None and ticket.mode == PUSHED and not ticket.spent:
        log_event(logging.ERROR, "lease_broken", reason="no lease")


def refused(ticket: Ticket | None, reason: str) -> None:
    """The strict rules refuse a SEND that spent a lease: a bug, logged; raised as
    :class:`LeaseBroken` if its DELIVER left (the refusal alone would leave it pushed)."""
    if ticket is None or not (ticket.spent or ticket.mode == PUSHED):
        return
    log_event(logging.ERROR, "lease_broken", reason=reason)
    if ticket.mode == PUSHED:
        raise LeaseBroken(reason)
