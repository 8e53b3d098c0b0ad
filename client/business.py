"""The business side of the SDK: profile, consent requests, bulk notifications, away replies.

A :class:`Business` wraps a logged-in :class:`~blindrelay.client.sdk.Client`
of kind ``business``::

    business = Business(client, away_message="We are closed; we answer from 9:00.")
    await business.publish_profile(display_name="Example Air", timezone="Europe/Berlin",
                                   hours=[OpeningHours(day, 540, 1020) for day in range(5)])
    await business.request_consent("alice", ["utility"], "Gate changes for your flights?")
    business.start()                                   # dispatches messages and statements
    await business.wait_for_consent("alice", "utility", timeout=3600)
    result = await business.notify("utility", "BA123 now boards at B7")
    print(result.sent, result.not_consented, result.refused)

(The request reaches a stranger only if the operator verified the business; an
unverified one may ask only customers who wrote to it or granted it something, and is
otherwise refused with ERROR 400 like an unknown handle, SPEC §7.3.)

What it does, from the spec:

- **Consent is the user's signed word** (SPEC §7.4–7.5). Every grant, deny,
  revoke and block forwarded by the relay was verified by the client against
  the user's pinned key before it was kept; :meth:`Business.consenting` folds
  the kept receipts into who may be notified (``customer_consent``),
  :meth:`Business.receipts` and :meth:`Business.verify_receipts` re-verify them
  offline, and the callbacks ``on_consent_change`` / ``on_block`` hear of each
  as it arrives. A grant is known only once its statement has arrived:
  :meth:`Business.wait_for_consent` waits for it, and :meth:`Business.notify`
  names the recipients it did not send to because no grant is known.
- **Bulk notifications** (SPEC §8.3) are one SEND per recipient, each end-to-end
  encrypted for that recipient. :meth:`Business.notify` hands them to
  :meth:`Client.send_many`, which keeps a window of sends in flight and
  encrypts and enqueues a chunk of customers at a time (no task, lock or
  future per customer); a recipient the relay refuses (ERROR 400: no consent,
  blocked, gone — SPEC §7.7) is reported, never retried; a RATE_LIMITED
  refusal is retried after ``retry_after``.
- **Away replies** (SPEC §8.2): when a customer writes while the business is
  closed by its own profile and clock, the away message — kept only here —
  goes back end-to-end encrypted as a service reply, at most once per
  customer per closed period (``away_period``), remembered before it is sent.
- **Replies** travel as ``chat`` inside the customer-service window; the relay
  refuses them outside it (SPEC §7.3).

Not here: the relay's enforcement (``server``), the rules themselves
(``protocol.consent``, folded by ``statements.fold``), what we know of each
customer's consent (``customer_consent``), the socket and key custody (``sdk``,
``keystore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from blindrelay.protocol import frames, limits
from blindrelay.protocol.business import (
    BusinessProfile,
    OpeningHours,
    SpecialDay,
    away_period,
    open_profile,
)
from blindrelay.protocol.errors import (
    BlindrelayError,
    RecipientUnavailable,
    UnexpectedFrame,
)
from blindrelay.protocol.signed import ConsentStatement, unverified_body
from blindrelay.protocol.transparency.bills import BillReconciliation, VerifiedBill
from blindrelay.protocol.transparency.evidence import ConsentEvidence

from .billing import BillTooLarge, check_bill, fetch_bill
from .customer_consent import ConsentRefused, CustomerConsent
from .reading import Message
from .sdk import Client
from .statements import HeldStatement

log = logging.getLogger("blindrelay.client.business")

NOTIFY_WINDOW = 1024
"""Notification SENDs in flight at once. The relay answers SENT only after a
durable commit and commits what reaches it together, so the window sets how many
envelopes share each commit. bench/fanout.py (10,000 customers, 2 cores, same
machine and hour): 256 → 12.9k notifications/s, 512 → 13.9k, 1024 → 15.7–16.2k,
2048 → 14.5k, 4096 → 12.5k; past about one relay commit's worth of jobs (1,024)
envelopes only wait longer. The cost is memory: up to this many envelopes in the
outbox and in our socket buffer (~0.4 MB of 383-byte notifications)."""

RATE_LIMIT_RETRIES = 20
"""How often one notification is retried after RATE_LIMITED before it is
reported as failed: with the business bucket's refill this covers tens of
seconds of overload, and a bulk send still ends."""

MessageHandler = Callable[[Message], Awaitable[None] | None]
StatementHandler = Callable[[ConsentStatement], Awaitable[None] | None]


@dataclass(slots=True)
class NotifyResult:
    """What became of one bulk notification (SPEC §8.3)."""

    category: str
    sent: list[str] = field(default_factory=list)
    """Recipients whose envelope the relay committed (SENT): delivered or queued."""
    not_consented: list[str] = field(default_factory=list)
    """Of ``to``, not sent to: no grant of ``category`` from them is known here (SPEC §7.4)
    — never granted, withdrawn, blocked, or a grant whose statement has not arrived
    yet (:meth:`Business.wait_for_consent`)."""
    refused: list[str] = field(default_factory=list)
    """Refused by the relay with ERROR 400 — a consent withdrawn before we heard of it,
    blocked or no such account."""
    failed: dict[str, BlindrelayError] = field(default_factory=dict)
    """Other failures: queue full, rate limit beyond the retries, untrusted key…"""
    seconds: float = 0.0
    encrypt_seconds: float = 0.0
    """Of ``seconds``, the time spent encrypting and enqueueing; the rest is waiting."""

    @property
    def skipped(self) -> list[str]:
        """Every recipient the notification did not reach."""
        return [*self.not_consented, *self.refused, *self.failed]

    @property
    def no_recipients(self) -> bool:
        """Nothing was sent or even tried: no customer (of ``to``) is known to consent."""
        return not (self.sent or self.refused or self.failed)


class Business:
    """A business account's client (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        *,
        away_message: str | None = None,
        on_message: MessageHandler | None = None,
        on_consent_change: StatementHandler | None = None,
        on_block: StatementHandler | None = None,
        notify_window: int = NOTIFY_WINDOW,
    ) -> None:
        self.client = client
        self.away_message = away_message
        """Sent as a service reply to a customer writing while we are closed; never
        leaves this client except end-to-end encrypted."""
        self.on_message = on_message
        self.on_consent_change = on_consent_change
        """Called with each verified grant, deny or revoke forwarded to us (SPEC §7.5)."""
        self.on_block = on_block
        """Called with each verified block or unblock of us by a customer."""
        self.notify_window = notify_window
        self._dispatcher: asyncio.Task[None] | None = None
        self._pending_callbacks: set[asyncio.Task[None]] = set()
        self.customers = CustomerConsent(client)
        """What we know of each customer's consent, from the statements kept."""
        client.consent.add_listener(self._statement_received)

    @property
    def handle(self) -> str:
        return self.client.sessions.identity.handle

    # --- Running -------------------------------------------------------------

    def start(self) -> None:
        """Start dispatching incoming messages (away replies, ``on_message``)."""
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())

    async def consent_evidence(self, customer: str) -> ConsentEvidence:
        """The customer's newest statement to us (grant, deny, revoke, block…) with proof
        that the relay logged it (SPEC §15.5): what a business hands a third party to
        demonstrate consent, checked offline with ``blindrelay verify-consent``.
        LookupError if we keep none from ``customer``; NotFound while no signed tree
        head covers it yet; InvalidProof or LogForked if the relay cannot back it, and
        LogForked, asking nothing, once the split-view alarm stands."""
        theirs = [
            signed for signed in self.client.consent.records(customer)
            if unverified_body(ConsentStatement, signed).signer == customer
        ]  # fmt: skip
        if not theirs:
            raise LookupError(f"no statement from {customer!r} is kept")
        if self.client.relay_key is None:
            raise UnexpectedFrame("consent evidence before a login")
        # Evidence is for a third party who trusts the relay's log; after the split-view
        # alarm we know it keeps two, so we hand on none (T75).
        self.client.log_check.raise_if_forked()
        # The head it rests on is held against ours by the client's reader (SPEC §15.6
        # rule 5), so what we hand on is the history everyone is shown (LogForked
        # otherwise).
        return await self.client.log.consent_evidence(theirs[-1])

    async def close(self) -> None:
        """Stop dispatching, end waits for consent (ConnectionLost), close the client."""
        self.customers.close()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        await self.client.close()

    async def _dispatch(self) -> None:
        """Each message: its away reply if due, then ``on_message``; acknowledged only
        after that returned. Closed meanwhile (waiting for the away reply's SENT in a
        relay outage, or for a slow handler), the message is put back unacknowledged, so
        the next run hands it on: leaving the loop with it in hand acknowledged it unseen.
        A handler that raises is logged; the dispatcher goes on."""
        messages = self.client.messages()
        async for message in messages:
            try:
                try:
                    await self._away_reply(message)
                except BlindrelayError as exc:
                    log.warning("away reply to %s failed: %r", message.sender, exc)
                if self.on_message is not None:
                    await _call(self.on_message, message)
            except asyncio.CancelledError:
                messages.release()
                raise
            except Exception:
                # The application's handler failed on this message: logged, and the
                # message acknowledged at the next step, as a reading loop's exception
                # does; the dispatcher goes on, or one bad message would silently end
                # the dispatching of every later one.
                log.exception("on_message failed for a message from %s", message.sender)

    def _statement_received(self, statement: ConsentStatement) -> None:
        self.customers.statement_kept(statement)
        handler = self.on_consent_change if statement.is_consent else self.on_block
        if handler is None:
            return
        outcome = handler(statement)
        if inspect.isawaitable(outcome):
            task = asyncio.ensure_future(outcome)
            self._pending_callbacks.add(task)
            task.add_done_callback(self._pending_callbacks.discard)

    # --- Profile (SPEC §8.2) ----------------------------------------------------

    async def publish_profile(
        self,
        *,
        display_name: str,
        timezone: str,
        hours: Iterable[OpeningHours],
        exceptions: Iterable[SpecialDay] = (),
        description: str = "",
    ) -> BusinessProfile:
        """Sign our profile with the identity key and PROFILE_PUT it; kept for away replies."""
        profile = BusinessProfile(
            v=1,
            handle=self.handle,
            display_name=display_name,
            description=description,
            timezone=timezone,
            hours=tuple(hours),
            exceptions=tuple(exceptions),
            issued_at=self.client.relay_now(),
        )
        signed = profile.sign(self.client.sessions.sign)
        answer = await self.client.link.request(
            lambda rid: frames.ProfilePut(id=rid, profile=signed)
        )
        if not isinstance(answer, frames.Ok):
            raise UnexpectedFrame("relay answered PROFILE_PUT with another frame")
        self.client.store.set_business_profile(signed)
        return profile

    @property
    def profile(self) -> BusinessProfile | None:
        """The profile we last published (verified under our own key)."""
        signed = self.client.store.business_profile()
        if signed is None:
            return None
        return open_profile(signed, self.client.sessions.identity.identity_public, self.handle)

    # --- Consent (SPEC §7) -------------------------------------------------------

    async def request_consent(
        self, user: str, categories: Iterable[str], explanation: str
    ) -> bytes:
        """Ask ``user`` for consent; ``explanation`` reaches them end-to-end encrypted.

        Raises RecipientUnavailable where the relay refuses (SPEC §7.3): a pending
        request, a category granted or cooling down, or — for a business without a
        badge — a user who has neither written to it nor granted it anything."""
        return await self.client.send(
            user, explanation, intent=frames.Intent.CONSENT_REQUEST, categories=tuple(categories)
        )

    def receipts(self, user: str) -> list[HeldStatement]:
        """The statements ``user`` made to us that we hold, each verified again offline."""
        return self.customers.receipts(user)

    def verify_receipts(self) -> list[HeldStatement]:
        """Every held statement, re-verified offline against the pinned user keys and relay.

        What a business shows an auditor as proof of opt-in: anything forged,
        altered or made for another relay comes back with ``verified=False``.
        """
        return [
            held for user in sorted(self.client.consent.counts()) for held in self.receipts(user)
        ]

    def consents(self) -> dict[str, frozenset[str]]:
        """Per customer, the categories granted to us now, from the receipts we hold.

        A prediction for choosing recipients: the relay decides (SPEC §7.3). A
        block by either side counts as no consent; a statement counts once it
        has arrived and verified (``customer_consent``).
        """
        return self.customers.granted()

    def consenting(self, category: str) -> list[str]:
        """Customers who granted ``category`` and have not withdrawn it, sorted."""
        return sorted(user for user, cats in self.consents().items() if category in cats)

    async def wait_for_consent(self, user: str, category: str, *, timeout: float | None) -> None:
        """Return once a grant of ``category`` by ``user`` is kept here (at once if it is).

        What to await between a customer's grant and the first notification: a
        grant reaches the business only when the relay forwards its statement,
        and :meth:`notify` sends to no one whose grant has not arrived. Woken by
        each of the customer's statements as it is kept, never by polling.

        Raises ConsentRefused as soon as the customer's word is no — a deny or
        revoke of ``category`` still within its cooldown (SPEC §7.4), or a block
        by either side — including one kept before the call; TimeoutError after
        ``timeout`` seconds (None: no limit); ConnectionLost once :meth:`close` ran;
        ValueError for an unknown category.
        """
        await self.customers.wait(user, category, timeout=timeout)

    # --- Sending ---------------------------------------------------------------

    async def notify(
        self, category: str, text: str, to: Iterable[str] | None = None
    ) -> NotifyResult:
        """Send ``text`` as a ``category`` notification to each consenting customer, or to
        those of ``to`` who consent.

        Consent is as far as we know it (:meth:`consents`): those of ``to`` with no
        grant of ``category`` known here are not sent to and are listed at once in
        ``not_consented`` (:meth:`wait_for_consent` waits for a grant on its way).
        With no consenting recipient nothing is sent and the result says
        ``no_recipients``: not an error, as a broadcast to customers who have not
        opted in yet is an ordinary moment. Each recipient gets their own
        end-to-end encrypted envelope; up to ``notify_window`` SENDs are in
        flight. Refused recipients are reported in the result, not retried;
        rate-limit refusals are retried after ``retry_after`` up to
        ``RATE_LIMIT_RETRIES`` times. ValueError for an unknown category.
        """
        if category not in limits.CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        result = NotifyResult(category)
        if to is None:
            recipients = self.consenting(category)
        else:
            consents = self.consents()
            recipients = []
            for user in to:
                wanted = category in consents.get(user, ())
                (recipients if wanted else result.not_consented).append(user)
        if not recipients:
            log.info("%s notification: no consenting recipient, nothing sent", category)
            return result
        started, encrypt_before = time.perf_counter(), self.client.sender.encrypt_seconds
        outcomes = await self.client.send_many(
            recipients,
            text,
            intent=frames.Intent.NOTIFICATION,
            category=category,
            rate_limit_retries=RATE_LIMIT_RETRIES,
            window=self.notify_window,
        )
        for user, outcome in outcomes:
            if isinstance(outcome, RecipientUnavailable):
                result.refused.append(user)
            elif isinstance(outcome, BlindrelayError):
                result.failed[user] = outcome
            else:
                result.sent.append(user)
        result.seconds = time.perf_counter() - started
        result.encrypt_seconds = self.client.sender.encrypt_seconds - encrypt_before
        return result

    async def reply(self, user: str, text: str) -> bytes:
        """A service reply (SPEC §7.3): free, and refused (RecipientUnavailable) outside
        the customer-service window the customer's last message opened."""
        return await self.client.send(user, text)

    async def _away_reply(self, message: Message) -> None:
        """SPEC §8.2: one away reply per customer per closed period, remembered first.

        Decided by this client's own (injected) clock when it handles the message,
        never by the relay's ``sent_at``: the relay is not trusted with our
        behaviour, and a message written at night but read after opening should
        get a human answer, not "we are closed".
        """
        if (
            self.away_message is None
            or not message.from_user
            or message.intent != frames.Intent.CHAT
        ):
            return
        profile = self.profile
        if profile is None:
            return
        period = away_period(profile, self.client.clock())
        if period is None:
            return
        if self.client.store.away_reply_period(message.sender) == period:
            return
        self.client.store.set_away_reply_period(message.sender, period)
        # Remembered first, so a 402 must not lose it for the period: waited out, as a
        # notification's (right after a relay restart every bucket starts empty, §10).
        await self.client.send(
            message.sender, self.away_message, rate_limit_retries=RATE_LIMIT_RETRIES
        )

    # --- Billing (SPEC §8.4) -----------------------------------------------------

    async def usage(self, month: str) -> frames.Usage:
        """Our metered counts for ``month`` (``YYYY-MM``, UTC) as the relay keeps them;
        UnexpectedFrame if it answers with another month's (SPEC §8.4, T61)."""
        answer = await self.client.link.request(lambda rid: frames.UsageFetch(id=rid, month=month))
        if not isinstance(answer, frames.Usage):
            raise UnexpectedFrame("relay answered USAGE_FETCH with another frame")
        if answer.month != month:
            raise UnexpectedFrame(f"relay answered the usage of {month} with {answer.month}'s")
        return answer

    async def bill(self, month: str, *, max_items: int | None = None) -> VerifiedBill:
        """Our closed bill for ``month`` (SPEC §8.5), every page, verified: its items hash
        to the bill the relay logged, under a signed tree head that extends the newest
        one this profile verified. ``InvalidProof``/``InvalidTreeHead``/``LogForked`` if
        not; ``NotFound`` (601) until the bill is closed (``BILL_CLOSE_DELAY_MS`` after
        the month ends) and a signed tree head covers it; :class:`BillTooLarge` for a
        logged count past ``max_items`` — by default twice the SENTs this profile kept for
        the month, and a page more (``billing``, T56); the kept ``LogForked``, before
        anything is fetched, once the split-view alarm stands (T75)."""
        return await fetch_bill(self.client, month, max_items)

    async def check_bill(
        self, month: str, *, max_items: int | None = None
    ) -> BillReconciliation:
        """Our bill for ``month``, verified (:meth:`bill`), held against every SENT of a
        notification this profile kept for that month: ``.ok``, or the items billed
        without a SENT, the SENTs not billed and the items that differ."""
        return await check_bill(self.client, month, max_items)


async def _call(handler: Callable[..., Awaitable[None] | None], *args: object) -> None:
    outcome = handler(*args)
    if inspect.isawaitable(outcome):
        await outcome


__all__ = ["BillTooLarge", "Business", "ConsentRefused", "NotifyResult"]
