"""The parts of a :class:`~.sdk.Client`, made and wired together.

Each part is given only the others it needs, and none reaches into another;
this is the one place that knows them all. What the link reports goes
(:class:`.link.LinkHandlers`):

==================  =============================================================
a DELIVER           ``inbox``: decrypt and persist (or hold), then ACK
a SEND's answer     ``outbox``: settle the send, retire or retry the envelope
PREKEYS_LOW         ``prekeys``: upload more
a new connection    ``account``: log in again (once authenticated)
WELCOME             ``account``: catch up (rotation, prekeys, outbox)
online              ``inbox`` releases what an approval before a crash left held,
                    ``log_check`` tells a split-view alarm kept from an earlier
                    run and tries the contacts' heads not proven yet, then
                    ``account`` counts it and tells the application
stopped             ``outbox`` and ``inbox``: what waits raises
==================  =============================================================

Not here: what each part does (its own module), the public API (``sdk``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blindrelay.protocol import frames
from blindrelay.protocol.errors import LogForked, LogUnchecked

from .account import Account, Hooks
from .connection import ANSWER_TIMEOUT_S
from .gossip import DEFAULT_RECHECK, RecheckPolicy
from .inbox import Inbox
from .keystore import KeyStore
from .link import Backoff, LinkHandlers, RelayLink
from .logcheck import DEFAULT_WAIT_S, LogCheck
from .message_requests import MessageRequests
from .outbox import Outbox
from .prekeys import PrekeyPublisher
from .sending import Sender
from .sessions import Clock, Rng, SessionManager
from .statements import StatementListener, Statements
from .transparency import LogReader
from .transport import OpenTransport
from .trust import IdentityTrust, RelayKeyPin

log = logging.getLogger("blindrelay.client")


def _tell(callback: Callable[..., object] | None, *args: Any) -> None:
    """Call an application's callback; what it raises is logged, and the client goes on.

    The callbacks run while a DELIVER is handled, before its ACK (a contact's new key, a
    head the relay will not prove): raised through, an exception stopped the client for
    good, and the same DELIVER, never acknowledged, came first again at every run and
    raised again — one account naming a new key stopped delivery from everyone (T68).
    """
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("the application's callback %r raised; going on", callback)


@dataclass(frozen=True, slots=True)
class Parts:
    """One account's parts (what each owns: the ``sdk`` module docstring)."""

    sessions: SessionManager
    relay_key_pin: RelayKeyPin
    link: RelayLink
    requests: MessageRequests
    outbox: Outbox
    sender: Sender
    consent: Statements
    inbox: Inbox
    prekeys: PrekeyPublisher
    account: Account
    log: LogReader
    log_check: LogCheck

    @property
    def trust(self) -> IdentityTrust:
        return self.sessions.trust

    @classmethod
    def assemble(
        cls,
        store: KeyStore,
        hooks: Hooks,
        *,
        rng: Rng,
        clock: Clock,
        backoff: Backoff,
        jitter: Callable[[], float],
        open_transport: OpenTransport,
        auto_delivered_receipts: bool,
        on_statement: StatementListener | None,
        log_wait_s: float = DEFAULT_WAIT_S,
        log_recheck: RecheckPolicy = DEFAULT_RECHECK,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> Parts:
        """Make the parts and name where the link's reports go (module docstring)."""

        def identity_changed(handle: str) -> None:
            _tell(hooks.on_identity_change, handle)

        sessions = SessionManager(store, rng=rng, clock=clock)
        pin = RelayKeyPin(store)
        link = RelayLink(
            pin, clock=clock, backoff=backoff, jitter=jitter, open_transport=open_transport,
            answer_timeout_s=answer_timeout_s,
        )  # fmt: skip
        requests = MessageRequests(store)
        outbox = Outbox(store, link)
        # The evidence it exports rests on a head held against ours (``log_check``, made
        # with this reader, so looked up when the evidence is asked for).
        log = LogReader(
            link.request, lambda: pin.key, hold=lambda head, signed: log_check.observe(head, signed)
        )

        def log_forked(exc: LogForked) -> None:
            _tell(hooks.on_log_forked, exc)

        def log_unchecked(exc: LogUnchecked) -> None:
            _tell(hooks.on_log_unchecked, exc)

        log_check = LogCheck(
            store, log, lambda: pin.key,
            wait_s=log_wait_s, alarm=log_forked, unchecked=log_unchecked, recheck=log_recheck,
            # A contact's head is asked about on one connection at a time: a relay that
            # drops the connection on that fetch has refused it (SPEC §15.6 rule 5).
            recheck_reader=LogReader(link.request_once, lambda: pin.key),
            online=link.wait_online, clock=clock,
        )  # fmt: skip
        sender = Sender(
            store, sessions, outbox, link, requests, log_check,
            rng=rng, identity_changed=identity_changed,
        )  # fmt: skip
        consent = Statements(store, sessions, link, pin, rng=rng)
        if on_statement is not None:
            consent.add_listener(on_statement)
        inbox = Inbox(
            store, sessions, pin,
            sender=sender, statements=consent, requests=requests,
            identity_changed=identity_changed, raise_if_stopped=link.raise_if_fatal,
            auto_delivered_receipts=auto_delivered_receipts, heard_tree_head=log_check.heard,
        )  # fmt: skip
        prekeys = PrekeyPublisher(sessions)
        account = Account(
            store, sessions, link, prekeys=prekeys, outbox=outbox, requests=requests,
            rng=rng, clock=clock, hooks=hooks,
        )  # fmt: skip
        parts = cls(
            sessions, pin, link, requests, outbox, sender, consent, inbox, prekeys, account, log,
            log_check,
        )
        link.listen(parts.link_handlers())
        return parts

    def link_handlers(self) -> LinkHandlers:
        return LinkHandlers(
            deliver_received=self.inbox.deliver_received,
            send_answered=self.outbox.send_answered,
            prekeys_low=self.prekeys.running_low,
            log_in=self.account.log_in,
            authenticated=self.account.authenticated,
            online=self._online,
            stopped=self._stopped,
        )

    def _online(self, welcome: frames.Welcome) -> None:
        self.inbox.release_approved()
        self.log_check.resume()
        self.account.online(welcome)

    def _stopped(self, exc: BaseException) -> None:
        self.outbox.fail_waiting(exc)
        self.inbox.wake()


__all__ = ["Parts"]
