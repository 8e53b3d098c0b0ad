"""Checking a whole log from scratch, as an auditor does (SPEC §15.2–15.3).

:func:`audit` takes everything a relay published — its entries and its signed
tree heads — and the state a previous run kept, recomputes the tree from the
entries alone, and reports every violation with its evidence: an entry that is
not one of §15.1's encodings, a head whose signature fails, a head whose root is
not the tree of the entries, heads that shrink or go back in time, a business's
bill for a month logged twice, a key binding that does not follow its handle's last,
and a log that no longer holds what the previous run saw (truncated or rewritten).
Two signed heads that cannot both be honest — the previous run's and one of this run's,
neither extending the other by their own fields or by the entries the later one signs —
are a fork, whose two heads the state keeps and every later run reports
(:attr:`AuditState.fork`); what no signature proves (entries that do not give a head's
root, an old head of the same history) is reported by each run that is shown it.
It is pure: fetching is the caller's (the audit CLI), and so is deciding what to do.
:class:`LogAudit` is the same an entry at a time, for a caller that reads the log
page by page and keeps none of it.

Not here: the verifiers for one proof (:mod:`.merkle`), a consent proof
(:mod:`.evidence`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from blindrelay.protocol.errors import InvalidTreeHead, MalformedLogEntry, ProtocolError
from blindrelay.protocol.signed import unverified_body

from . import merkle
from .entries import BillLogged, KeyBinding, decode_entry
from .treehead import TreeHead, open_tree_head


@dataclass(frozen=True, slots=True)
class AuditState:
    """What one run leaves for the next: the newest verified head, as signed, and the
    first fork a run found, if one did."""

    size: int
    root: bytes
    signed: bytes
    fork: tuple[bytes, bytes] | None = None
    """The first two signed heads a run found that neither extends the other (§15.3 rule
    3): a head a run verified, then one signed over a log that no longer holds it, or
    one whose own size, root and time no honest relay signs beside it (smaller yet
    later, larger yet earlier, the same size with another root). Kept for good and
    reported by every later run (§15.3 rule 4): a relay that shows an auditor a rewritten
    history once and then goes back to the first would otherwise leave the next run
    clean, and nothing signed to show for it (T73, T76). Only a person clears it."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing the relay got wrong; ``evidence`` is what a third party can recheck (hex)."""

    kind: str
    detail: str
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AuditReport:
    size: int = 0
    entries_by_type: dict[str, int] = field(default_factory=dict)
    newest: TreeHead | None = None
    state: AuditState | None = None
    """The state for the next run: the newest head that verified (or the previous one,
    when this run broke it), with the fork kept, if any run found one."""
    violations: list[Violation] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.violations


MAX_MALFORMED_LISTED = 100
"""Malformed entries reported one by one, each with its bytes; the rest are counted in
one more violation, so a log of garbage costs an auditor no memory per entry."""


class LogAudit:
    """:func:`audit` one entry at a time (:meth:`add`, then :meth:`finish`): a run holds
    the tree's right edge, the roots it checks, each bill's entry and each handle's
    key, never the whole log, so an auditor reads a log of millions page by page, and
    only as far as the checks need (:attr:`needed`)."""

    def __init__(
        self, heads: Sequence[bytes], relay_key: bytes, previous: AuditState | None = None
    ) -> None:
        self._report = AuditReport(state=previous)
        self._previous = previous
        self._opened: list[tuple[int, bytes, TreeHead]] = []
        for position, data in enumerate(heads):
            try:
                self._opened.append((position, data, open_tree_head(data, relay_key)))
            except InvalidTreeHead as exc:
                self._report.violations.append(
                    Violation("bad tree head", f"head {position}: {exc}", {"head": data.hex()})
                )
        self._wanted = {head.size for _, _, head in self._opened}
        if previous is not None:
            self._wanted.add(previous.size)
        self._roots = {0: merkle.EMPTY_ROOT}
        self._frontier = merkle.Frontier()
        self._kinds: Counter[str] = Counter()
        self._malformed = 0
        self._bills: dict[tuple[str, str], tuple[int, bytes]] = {}
        """(business, month) → the index and bytes of its bill: one per month (§8.5)."""
        self._keys: dict[str, tuple[str, bytes]] = {}
        """Handle → the kind and key of its last binding: the chain each must follow."""

    @property
    def needed(self) -> int:
        """How many entries the checks use: the largest size a verified head or the
        previous run names. Entries past it prove nothing yet (§15.6 rule 2)."""
        return max(self._wanted, default=0)

    def add(self, data: bytes) -> None:
        """The next entry of the log, in order."""
        index = self._frontier.size
        try:
            entry = decode_entry(data)
            self._kinds[type(entry).__name__] += 1
            if isinstance(entry, BillLogged):
                self._bill(index, data, entry)
            elif isinstance(entry, KeyBinding):
                self._binding(index, data, entry)
        except MalformedLogEntry as exc:
            self._malformed += 1
            if self._malformed <= MAX_MALFORMED_LISTED:
                self._report.violations.append(
                    Violation("malformed entry", f"entry {index}: {exc}", {"entry": data.hex()})
                )
        self._frontier.append(merkle.leaf_hash(data))
        if self._frontier.size in self._wanted:
            self._roots[self._frontier.size] = self._frontier.root()

    def _bill(self, index: int, data: bytes, bill: BillLogged) -> None:
        """A month's bill is closed once (§8.5): a second one for the same business and
        month lets the relay show the business one and invoice by the other."""
        first = self._bills.setdefault((bill.handle, bill.month), (index, data))
        if first[0] != index:
            self._report.violations.append(Violation(
                "bill logged twice",
                f"entry {index}: a second bill of {bill.handle} for {bill.month}, after "
                f"entry {first[0]}",
                {"first": first[1].hex(), "second": data.hex()},
            ))  # fmt: skip

    def _binding(self, index: int, data: bytes, binding: KeyBinding) -> None:
        """A handle's bindings are a chain (§15.1): the first names no previous key (a
        registration, or a user's DISCOVERABLE), each later one the key it replaces, all
        of one kind. Any other is a key the relay bound that the account never rotated
        to: on record, and now also said."""
        last = self._keys.get(binding.handle)
        self._keys[binding.handle] = (binding.kind, binding.identity_key)
        if last is None:
            wrong = "a rotation of a handle never bound" if binding.previous_key else ""
        elif binding.previous_key is None:
            wrong = "a second first binding of a bound handle"
        elif binding.previous_key != last[1]:
            wrong = "a rotation from a key that is not the handle's"
        elif binding.kind != last[0]:
            wrong = f"a {binding.kind}'s binding of a {last[0]}"
        else:
            wrong = ""
        if wrong:
            self._report.violations.append(Violation(
                "key binding out of chain",
                f"entry {index}: {wrong} ({binding.handle})",
                {"entry": data.hex()},
            ))  # fmt: skip

    def finish(self) -> AuditReport:
        """The report on the heads, the previous state and the entries added."""
        report = self._report
        report.size = self._frontier.size
        if self._malformed > MAX_MALFORMED_LISTED:
            report.violations.append(Violation(
                "malformed entry",
                f"{self._malformed - MAX_MALFORMED_LISTED} more malformed entries not listed",
            ))  # fmt: skip
        report.entries_by_type = dict(sorted(self._kinds.items()))
        _check_heads(report, self._opened, self._roots)
        _check_previous(report, self._previous, self._roots, self._opened)
        return report


def audit(
    entries: Iterable[bytes],
    heads: Sequence[bytes],
    relay_key: bytes,
    previous: AuditState | None = None,
) -> AuditReport:
    """Recompute the tree of ``entries`` and check ``heads`` (oldest first) and
    ``previous`` against it."""
    run = LogAudit(heads, relay_key, previous)
    for data in entries:
        run.add(data)
    return run.finish()


def _check_heads(
    report: AuditReport, opened: list[tuple[int, bytes, TreeHead]], roots: dict[int, bytes]
) -> None:
    last: tuple[bytes, TreeHead] | None = None
    for position, data, head in opened:
        evidence = {"head": data.hex()}
        if head.size not in roots:
            report.violations.append(Violation(
                "head beyond the entries",
                f"head {position} signs {head.size} entries; the relay served {report.size}",
                evidence,
            ))  # fmt: skip
            continue
        if roots[head.size] != head.root:
            report.violations.append(Violation(
                "head is not the tree of the entries",
                f"head {position} (size {head.size}) signs a root the entries do not give",
                evidence | {"computed_root": roots[head.size].hex()},
            ))  # fmt: skip
            continue
        if last is not None and (head.size < last[1].size or head.timestamp < last[1].timestamp):
            report.violations.append(Violation(
                "heads go backwards",
                f"head {position} (size {head.size}) after one of size {last[1].size}",
                {"earlier": last[0].hex(), "later": data.hex()},
            ))  # fmt: skip
            continue
        last = (data, head)
    if last is not None:
        report.newest = last[1]
        report.state = AuditState(last[1].size, last[1].root, last[0])


def _check_previous(
    report: AuditReport,
    previous: AuditState | None,
    roots: dict[int, bytes],
    opened: list[tuple[int, bytes, TreeHead]],
) -> None:
    """The log must still hold what the previous run verified: its head's entries,
    unchanged; and no head of this run may be one the previous head cannot stand beside
    (a fork, kept in the state for good)."""
    if previous is None:
        return
    if previous.fork is not None:
        earlier, later = previous.fork
        report.violations.append(Violation(
            "log forked",
            "an earlier run found two heads of the relay neither of which extends the "
            "other (§15.3 rule 3): it showed two histories, or signed its heads out of "
            "order; kept until a person removes it from the state",
            {"earlier": earlier.hex(), "later": later.hex()},
        ))  # fmt: skip
    try:
        before: TreeHead | None = unverified_body(TreeHead, previous.signed)
    except ProtocolError:
        before = None  # a state the caller made by hand: no fields to compare
    newest = report.state if report.newest is not None else None
    evidence = {"previous_head": previous.signed.hex()}
    found = len(report.violations)
    fork: tuple[bytes, bytes] | None = None
    by_entries = False
    if previous.size not in roots:
        report.violations.append(Violation(
            "log truncated",
            f"the previous run verified {previous.size} entries; the relay served {report.size}",
            evidence,
        ))  # fmt: skip
    elif roots[previous.size] != previous.root:
        if newest is not None and newest.size >= previous.size:
            # The newest head verified against these entries, so it signs a tree whose
            # first ``previous.size`` leaves are not the previous head's: two signed heads
            # neither of which extends the other; the entries it signs show it to anyone.
            evidence = evidence | {"later_head": newest.signed.hex()}
            fork = (previous.signed, newest.signed)
            by_entries = True
        report.violations.append(Violation(
            "log rewritten",
            f"the first {previous.size} entries no longer give the root the relay signed",
            evidence | {"computed_root": roots[previous.size].hex()},
        ))  # fmt: skip
    shown = report.newest
    if (
        shown is not None
        and newest is not None
        and before is not None
        and (shown.size < before.size or shown.timestamp < before.timestamp)
    ):
        # The relay's newest head never shrinks nor goes back (§15.3 rule 2): an older
        # one than the last run verified is a stale view (hiding what came since), a
        # rollback, or — when its own fields break rule 2 — a fork (below).
        report.violations.append(Violation(
            "heads go backwards",
            f"the newest head (size {shown.size}, at {shown.timestamp}) is "
            f"older than the previous run's (size {before.size}, at {before.timestamp})",
            {"earlier": previous.signed.hex(), "later": newest.signed.hex()},
        ))  # fmt: skip
    if fork is None and before is not None:
        # Whatever the entries (which no one signed), a head whose own signed fields no
        # honest relay could sign beside the previous head's is evidence on its own: it
        # needs the relay key alone to recheck, so it holds for a head that fails the
        # entries too.
        fork = next(
            ((previous.signed, data) for _, data, head in opened if _apart(before, head)), None
        )
    if fork is not None and fork != previous.fork:
        report.violations.append(Violation(
            "log forked",
            "two heads of the relay neither of which extends the other (§15.3 rule 3): "
            + ("the entries the later one signs are not the earlier one's" if by_entries
               else "their sizes, roots and times cannot both be honest"),
            {"earlier": fork[0].hex(), "later": fork[1].hex()},
        ))  # fmt: skip
    broken = len(report.violations) > found
    if fork is not None:
        # The state keeps the first fork for good (one pair: it proves the relay key
        # signed what no honest relay signs; a later one proves nothing more, and is
        # reported by the run that finds it) and the larger commitment: the newest head
        # when it verified and is at least as large, so a later rewrite of the history
        # signed now is a violation of its own, else the previous head.
        base = newest if newest is not None and newest.size >= previous.size else previous
        report.state = replace(base, fork=previous.fork or fork)
    elif broken or report.state is None or report.state.size < previous.size:
        report.state = previous  # keep the commitment the relay broke, or the larger one
    elif previous.fork is not None:
        report.state = replace(report.state, fork=previous.fork)


def _apart(before: TreeHead, head: TreeHead) -> bool:
    """Whether no consistency proof could make either head extend the other (§15.3 rule
    3), from their signed fields alone: the same size with another root, or one larger
    and signed earlier (the relay stamps each head no earlier than its newest)."""
    if head.size == before.size:
        return head.root != before.root
    if head.size > before.size:
        return head.timestamp < before.timestamp
    return head.timestamp > before.timestamp
