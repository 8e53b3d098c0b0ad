"""Signed statements of consent and blocking: make, keep, check (SPEC §7.4–7.6).

- **Consent is the user's signature** (SPEC §7.4). :meth:`Statements.make`
  signs a grant, deny, revoke, block or unblock with our identity key, bound to
  the relay key of HELLO and dated by the relay's clock as estimated from HELLO
  ``now``; our copy is kept once the relay said OK.
- **Forwarded statements are verified before they are kept** (SPEC §7.5),
  against the signer's pinned key (trust on first use: a business may hear of
  a user first through their opt-in); a changed key holds the statement like a
  message. Listeners (:meth:`Statements.add_listener`) hear of each one kept.
- **Kept statements are records**, one log per counterpart, oldest first, with
  a count that tells a reader whether there are new ones
  (:meth:`Statements.records`, :meth:`Statements.counts`), each checkable
  offline (:meth:`Statements.check`). What they leave granted is the relay's
  own effects applied to them in order (:func:`fold`, :mod:`blindrelay.protocol.consent`).

Not here: the rules (``protocol.consent``), signing and encodings
(``protocol.signed``), whose key is pinned (``trust``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

from blindrelay.protocol import frames, limits
from blindrelay.protocol.consent import INITIAL, PairState, accepted_effect
from blindrelay.protocol.errors import (
    InvalidStatement,
    ProtocolError,
    StaleStatement,
    UnexpectedFrame,
)
from blindrelay.protocol.signed import (
    Action,
    ConsentStatement,
    make_statement,
    unverified_body,
    verify_statement,
)

from .keystore import KeyStore
from .link import RelayLink
from .sessions import Rng, SessionManager
from .trust import RelayKeyPin

log = logging.getLogger("blindrelay.client")

StatementListener = Callable[[ConsentStatement], None]

MAX_IN_FORCE = (1 + limits.MAX_CATEGORIES) * limits.MAX_BLOCK_TARGETS
"""The statements in force :meth:`Statements.in_force` takes from the relay by default
(30,000: 500 pages, ~25 MB kept), past which the listing is the relay's fault (SPEC
§7.6, T56): an honest listing holds one statement per signer, target and family — a
user's, its blocks of at most ``MAX_BLOCK_TARGETS`` handles and a say on every category
of as many businesses; a business's, its blocks and up to three receipts per customer.
A caller that expects more (a business with more customers) passes a larger bound."""


class TargetBlocked(InvalidStatement):
    """A grant, deny or revoke of an account we block: the relay refuses it with 500
    (SPEC §7.4, T54), so it is refused before anything is sent. Unblock first."""


@dataclass(frozen=True, slots=True)
class HeldStatement:
    """A signed statement we keep (ours, or forwarded to us) and whether it verified."""

    statement: ConsentStatement | None
    """None when the bytes do not even decode as a statement."""
    signed: bytes
    verified: bool


def fold(state: PairState, statement: ConsentStatement, user: str) -> PairState:
    """``state`` of a user–business pair after one more of their statements (SPEC §7.4),
    by :func:`blindrelay.protocol.consent.accepted_effect`, dated by its ``issued_at``.

    Kept statements are the ones the relay accepted, in the order it did; their effect
    is applied as the relay applied it, not checked against the table again. What a
    business holds may lack statements the relay accepted: it withdraws a receipt that
    a newer one replaced before it was delivered (SPEC §7.5), so a revoke can come
    without its grant, and the table, from what the business saw, would refuse the
    revoke whole and leave the grant standing.
    """
    action = Action(statement.action)
    after, _ = accepted_effect(
        state,
        action=action,
        signer=statement.signer,
        categories=frozenset(statement.categories or ()),
        signer_is_user_blocking_business=action is Action.BLOCK and statement.signer == user,
        now=statement.issued_at,
        cooldown_ms=limits.CONSENT_COOLDOWN_MS,
    )
    return after


def granted(state: PairState) -> frozenset[str]:
    """The categories a business may notify in: granted, and no block by either side."""
    return frozenset() if state.blocked else state.granted()


class Statements:
    """The statements we make, and those we keep with each counterpart (module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        sessions: SessionManager,
        link: RelayLink,
        relay_key: RelayKeyPin,
        *,
        rng: Rng,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._link = link
        self._relay_key = relay_key
        self._rng = rng
        self._listeners: list[StatementListener] = []

    def add_listener(self, listener: StatementListener) -> None:
        """Call ``listener`` with each verified statement forwarded to us, once kept."""
        self._listeners.append(listener)

    def remove_listener(self, listener: StatementListener) -> None:
        self._listeners.remove(listener)

    # --- Ours (SPEC §7.4) ---------------------------------------------------------

    async def make(
        self, action: Action, target: str, categories: tuple[str, ...] | None
    ) -> ConsentStatement:
        """Sign, send as STATEMENT, keep our copy once the relay said OK.

        Asked again after a dropped connection, as every request is (and given up with
        :class:`.connection.NoAnswer` after a relay that never answers it), with the
        same signed bytes: the relay applies a ``(signer, nonce)`` once and answers it
        again with 501 (SPEC §7.4), so asking again never makes a second statement. A
        501 after a drop is ambiguous — the first copy may have been taken — and is
        settled by the listing (SPEC §7.6): our statement in force there was taken.
        Before, a drop at that moment raised ConnectionLost to the caller, who could
        not tell whether the relay had taken it.

        A grant, deny or revoke of a business we block is refused here with
        :class:`TargetBlocked` (an InvalidStatement), nothing sent: the relay refuses it
        (SPEC §7.4, T54), and the person must be told to unblock first.
        """
        if action in (Action.GRANT, Action.DENY, Action.REVOKE) and self.blocked(target):
            raise TargetBlocked(f"{target} is blocked: unblock it first, then {action.value}")
        if action in (Action.GRANT, Action.REVOKE):
            categories = self._changing(action, target, categories or ())
        conn = await self._link.wait_online()
        identity = self._sessions.identity
        statement = make_statement(
            action,
            signer=identity.handle,
            signer_key=identity.identity_public,
            target=target,
            relay_key=conn.relay_key,
            now_ms=self._link.relay_now(),
            rng=self._rng,
            categories=categories,
        )
        signed = statement.sign(self._sessions.sign)
        asked = 0

        def ask(request_id: int) -> frames.Frame:
            nonlocal asked
            asked += 1
            return frames.Statement(id=request_id, statement=signed)

        try:
            await self._link.request(ask)
        except StaleStatement:
            if asked < 2 or not await self._listed(signed):
                raise  # not asked before a drop, or the relay did not take it
        self.keep(target, signed)
        return statement

    def _changing(
        self, action: Action, business: str, categories: tuple[str, ...]
    ) -> tuple[str, ...]:
        """SPEC §7.4: "a client sends exactly the categories that change" — the relay
        refuses whole a statement that changes nothing for one of them. Raises
        InvalidStatement, before anything is sent, when none would change."""
        already = self.granted_to(business)
        changing = tuple(c for c in categories if (c in already) == (action is Action.REVOKE))
        if not changing:
            state = "granted" if action is Action.GRANT else "not granted"
            raise InvalidStatement(f"{', '.join(categories)}: already {state} to {business}")
        return changing

    def granted_to(self, business: str) -> frozenset[str]:
        """The categories we have granted ``business`` and not withdrawn (a deny, a
        revoke or our block), by the statements we made from this keystore."""
        state, ours = INITIAL, self._sessions.identity.handle
        for signed in self.records(business):
            statement = unverified_body(ConsentStatement, signed)
            if statement.signer == ours:
                state = fold(state, statement, ours)
        return state.granted()

    def blocked(self, handle: str) -> bool:
        """Whether our newest block or unblock of ``handle`` is a block (SPEC §7.4)."""
        ours = self._sessions.identity.handle
        blocking = False
        for signed in self.records(handle):
            statement = unverified_body(ConsentStatement, signed)
            if statement.signer == ours and statement.action in (Action.BLOCK, Action.UNBLOCK):
                blocking = statement.action == Action.BLOCK
        return blocking

    # --- Theirs (SPEC §7.5) ---------------------------------------------------------

    def receive(self, deliver: frames.Deliver, relay_key: bytes) -> None:
        """SPEC §7.5: verify a forwarded statement and keep it; the caller acks.

        The signer's key is the one we pinned; a different key is an identity
        change, raised (UntrustedIdentity) for the caller to hold the statement
        like a message. One that fails verification is dropped (acked): the
        relay checked it, so it is forged. One kept already is dropped too (T62).

        Its bytes alone tell one kept already, not the processed ids of messages: its
        msg_id is its nonce, which the signer chooses apart from the msg_ids of its
        SENDs, so a chat of the signer under the same 16 bytes made a genuine statement
        pass for processed (and the statement's id, noted, a later chat).
        """
        if self.kept_already(deliver):
            # A redelivery (its ACK lost, SPEC §6.4.3) or a replay (T62): a statement's
            # bytes are unique (its nonce), and one kept again after a newer one would
            # fold as the signer's newest word. What we keep we keep for good, unlike
            # the bounded memory of processed ids.
            log.info("dropped a statement from %s kept already", deliver.sender)
            return
        ours = self._sessions.identity.handle  # read from the keystore: its errors stay fatal
        try:
            claimed = unverified_body(ConsentStatement, deliver.body)
            if claimed.signer != deliver.sender or claimed.nonce != deliver.msg_id:
                raise InvalidStatement("statement does not match its delivery")
            if claimed.target != ours:
                raise InvalidStatement("statement made for another account")
            statement = verify_statement(
                deliver.body, expected_key=claimed.signer_key, relay_key=relay_key
            )
        except ProtocolError as exc:
            log.warning("dropped invalid statement from %s: %s", deliver.sender, exc)
            return
        except Exception as exc:  # a bug on the signer's bytes costs one statement (T83)
            log.warning("dropped a statement from %s its check failed on (%s)",
                        deliver.sender, type(exc).__name__)  # fmt: skip
            return
        # Outside the transaction: a changed key must stay recorded as pending.
        self._sessions.trust.pin(deliver.sender, statement.signer_key)  # or raise
        self.keep(deliver.sender, deliver.body)  # one keystore transaction
        for listener in list(self._listeners):
            try:
                listener(statement)
            except Exception:  # the application's: kept and acknowledged all the same (T68)
                log.exception("a statement listener raised; going on")

    def kept_already(self, deliver: frames.Deliver) -> bool:
        """Whether the statement ``deliver`` forwards is kept already with its signer: its
        bytes are unique (its nonce), and what we keep we keep for good (T62)."""
        return deliver.body in self._store.kept_statements(deliver.sender, 0)

    # --- Records -----------------------------------------------------------------------

    def keep(self, counterpart: str, signed: bytes) -> None:
        """Append one statement to ``counterpart``'s log: two small rows, however many
        are kept (the statement, and the counterpart's new count)."""
        self._store.keep_statement(counterpart, signed)

    def records(self, counterpart: str, start: int = 0) -> list[bytes]:
        """Signed statements kept with ``counterpart`` (ours or theirs to us), oldest first,
        from the ``start``-th on."""
        return self._store.kept_statements(counterpart, start)

    def counts(self) -> dict[str, int]:
        """Per counterpart, how many statements we keep with it.

        Statements are only ever added, so a count tells a caller that derives
        something from a counterpart's statements whether there are new ones,
        and ``records(counterpart, start=old count)`` reads just those.
        """
        return self._store.statement_counts()

    def check(self, signed: bytes) -> HeldStatement:
        """Verify a statement offline (SPEC §7.5): signature, signer's pinned key, relay key.

        Our own statements verify against our identity key, others' against
        the key pinned for their signer. No clock check: an archived receipt
        stays valid evidence after the skew has passed.
        """
        try:
            statement = unverified_body(ConsentStatement, signed)
        except ProtocolError:
            return HeldStatement(None, signed, verified=False)
        identity = self._sessions.identity
        if statement.signer == identity.handle:
            expected: bytes | None = identity.identity_public
        else:
            expected = self._sessions.trust.pinned_key(statement.signer)
        relay_key = self._relay_key.key
        try:
            if expected is None or relay_key is None:
                raise InvalidStatement("no pinned key to verify against")
            verify_statement(signed, expected_key=expected, relay_key=relay_key)
        except ProtocolError:
            return HeldStatement(statement, signed, verified=False)
        return HeldStatement(statement, signed, verified=True)

    async def in_force(self, max_statements: int = MAX_IN_FORCE) -> list[HeldStatement]:
        """The statements in force that we signed or that name us, from the relay (SPEC §7.6).

        Pages through STATEMENTS_LIST; each is verified as :meth:`check` does, so
        a relay that altered or invented one shows as ``verified=False``, and so does
        one that names us neither as signer nor as target (T59). A listing of
        more than ``max_statements`` is refused (:class:`UnexpectedFrame`, T56).
        """
        listed: list[HeldStatement] = []
        async for page in self._pages(max_statements):
            listed += [self._ours(self.check(signed)) for signed in page]
        return listed

    def _ours(self, held: HeldStatement) -> HeldStatement:
        """``held``, not verified if it names us neither as signer nor as target: the
        listing holds only those (SPEC §7.6), and another pair's real statement, listed
        here, would pass for a consent given to us (T59)."""
        statement, me = held.statement, self._sessions.identity.handle
        if statement is None or me in (statement.signer, statement.target):
            return held
        return replace(held, verified=False)

    async def _listed(self, signed: bytes) -> bool:
        """Whether the relay lists ``signed`` in force (to settle a 501, :meth:`make`)."""
        async with contextlib.aclosing(self._pages(MAX_IN_FORCE)) as pages:
            async for page in pages:
                if signed in page:
                    return True
        return False

    async def _pages(self, max_statements: int) -> AsyncGenerator[tuple[bytes, ...], None]:
        """The pages of STATEMENTS_LIST in order, refused as the relay's fault when the
        cursor does not advance (T55) or past ``max_statements`` statements (T56)."""
        after = listed = 0
        while True:

            def page_request(rid: int, cursor: int = after) -> frames.Frame:
                return frames.StatementsList(id=rid, after=cursor)

            page = await self._link.request(page_request)
            if not isinstance(page, frames.Statements):
                raise UnexpectedFrame("relay answered STATEMENTS_LIST with another frame")
            # A cursor that advances could still be paged for ever with invented
            # statements, each kept: memory grew with what the relay sent (T56).
            listed += len(page.statements)
            if listed > max_statements:
                raise UnexpectedFrame(
                    f"the relay listed more than {max_statements} statements in force:"
                    " invented, or more than this account was expected to hold"
                )
            yield page.statements
            if page.next is None:
                return
            # SPEC §7.6: ``next`` is the number of the last statement returned, above
            # ``after``. A cursor that does not advance, or a page that promises more
            # and holds none, would have us ask for ever, keeping every page (T55).
            if page.next <= after or not page.statements:
                raise UnexpectedFrame("relay's STATEMENTS cursor did not advance")
            after = page.next


__all__ = [
    "MAX_IN_FORCE", "HeldStatement", "StatementListener", "Statements", "TargetBlocked", "fold",
    "granted",
]  # fmt: skip
