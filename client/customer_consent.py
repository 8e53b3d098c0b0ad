"""What a business knows of its customers' consent: the statements it keeps, folded.

- **The customers' signed word, as kept** (SPEC §7.4–7.5). Every statement
  forwarded to us was verified against its signer's pinned key before it was
  kept (``statements``); :meth:`CustomerConsent.state` folds a customer's
  by the effects the relay gave them (:func:`.statements.fold`), so what it says
  is what the relay will decide — once the relay's forward has reached us, even
  if a receipt it replaced was withdrawn before it reached us. Until
  then it lags: a grant just made is not known yet, a revoke just made is
  still counted as a grant (and the relay refuses the notification).
- **Waiting instead of guessing.** :meth:`CustomerConsent.wait` returns once a
  grant is kept, raises :class:`ConsentRefused` as soon as the customer's word is
  no (a deny or revoke within its cooldown, or a block), and is woken by each of
  the customer's statements as it is kept — no polling.

Not here: keeping and verifying statements (``statements``), the rules
(``protocol.consent``), sending (``business``).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from blindrelay.protocol import limits
from blindrelay.protocol.consent import INITIAL, CategoryState, PairState
from blindrelay.protocol.errors import BlindrelayError
from blindrelay.protocol.signed import Action, ConsentStatement

from .sdk import Client
from .statements import HeldStatement, fold, granted
from .transport import ConnectionLost


class ConsentRefused(BlindrelayError):
    """The customer's word on a category is no: a deny or revoke still within its
    cooldown, or a block by either side (SPEC §7.4). A business may not ask again
    meanwhile (SPEC §7.3). A client-side error: no wire code."""

    def __init__(self, user: str, category: str, action: Action) -> None:
        super().__init__(f"{user}: {action.value} ({category})")
        self.user = user
        self.category = category
        self.action = action
        """``deny``, ``revoke`` or ``block`` — what stands in the way."""


class _Folded(NamedTuple):
    """One customer's statements folded so far: how many, and the pair state they leave."""

    statements: int = 0
    state: PairState = INITIAL


class CustomerConsent:
    """Per customer, the pair state their kept statements leave (module docstring)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._verified: dict[bytes, ConsentStatement | None] = {}
        self._folded: dict[str, _Folded] = {}
        """Per customer, the fold of the statements kept so far (all of them verified)."""
        self._folded_for = ""
        self._waiting: dict[str, set[asyncio.Event]] = {}
        """Per customer, an event per :meth:`wait` to wake when a statement is kept."""
        self._closed = False

    # --- Reading the statements ------------------------------------------------------

    def receipts(self, user: str) -> list[HeldStatement]:
        """The statements ``user`` made to us that we hold, each verified again offline."""
        consent = self._client.consent
        return [consent.check(s) for s in consent.records(user)]

    def granted(self) -> dict[str, frozenset[str]]:
        """Per customer, the categories granted to us now (:meth:`.Business.consents`).

        Folds each customer's statements in the order the relay forwarded them.
        Only statements that verify (signature, pinned key, relay) and name us
        count; each is verified once per process. A customer's fold is kept while
        every statement in it verified, and only statements kept since are folded
        into it (one that failed may verify once its signer's key is pinned, so a
        customer with one is folded again from the start each time).
        """
        consents: dict[str, frozenset[str]] = {}
        for user, count in self._client.consent.counts().items():
            folded = self._folds().get(user)
            if folded is None or folded.statements != count:
                folded = self._refold(user)
            now = granted(folded.state)
            if now:
                consents[user] = now
        return consents

    def state(self, user: str) -> PairState:
        """The state ``user``'s kept statements leave our pair in (SPEC §7.4)."""
        return self._refold(user).state

    def _folds(self) -> dict[str, _Folded]:
        ours = self._client.sessions.identity.handle
        if self._folded_for != ours:
            self._folded, self._folded_for = {}, ours
        return self._folded

    def _refold(self, user: str) -> _Folded:
        """Fold ``user``'s statements kept since the last fold into it."""
        folds = self._folds()
        folded = folds.get(user, _Folded())
        new = self._client.consent.records(user, start=folded.statements)
        if not new:
            return folded
        settled, state, ours = True, folded.state, self._folded_for
        for signed in new:
            statement = self._verified_statement(signed)
            if statement is None:
                settled = False
            elif ours in (statement.signer, statement.target):
                state = fold(state, statement, user)
        folded = _Folded(folded.statements + len(new), state)
        if settled:
            folds[user] = folded
        else:
            folds.pop(user, None)
        return folded

    def _verified_statement(self, signed: bytes) -> ConsentStatement | None:
        statement = self._verified.get(signed)
        if statement is None:
            held = self._client.consent.check(signed)
            if not held.verified:
                return None
            statement = self._verified[signed] = held.statement
        return statement

    # --- Waiting for a customer's word -----------------------------------------------

    async def wait(self, user: str, category: str, *, timeout: float | None) -> None:
        """:meth:`.Business.wait_for_consent`."""
        if category not in limits.CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        kept = asyncio.Event()
        self._waiting.setdefault(user, set()).add(kept)
        try:
            async with asyncio.timeout(timeout):
                while not self._answered(user, category):
                    await kept.wait()
                    kept.clear()
        finally:
            waiting = self._waiting[user]
            waiting.discard(kept)
            if not waiting:
                del self._waiting[user]

    def _answered(self, user: str, category: str) -> bool:
        """True once ``category`` is granted; False while nothing is said; raises
        ConsentRefused while the answer is no (ConnectionLost once we closed)."""
        if self._closed:
            raise ConnectionLost("business closed")
        state = self.state(user)
        if state.blocked:
            raise ConsentRefused(user, category, Action.BLOCK)
        consent = state.category(category)
        if consent.state is CategoryState.GRANTED:
            return True
        if consent.in_cooldown(self._client.relay_now()):
            refusal = Action.DENY if consent.state is CategoryState.DENIED else Action.REVOKE
            raise ConsentRefused(user, category, refusal)
        return False

    def statement_kept(self, statement: ConsentStatement) -> None:
        """A statement forwarded by ``statement.signer`` is kept: wake its waits."""
        for kept in self._waiting.get(statement.signer, ()):
            kept.set()

    def close(self) -> None:
        """Wake every wait, to raise ConnectionLost."""
        self._closed = True
        for waiting in self._waiting.values():
            for kept in waiting:
                kept.set()


__all__ = ["ConsentRefused", "CustomerConsent"]
