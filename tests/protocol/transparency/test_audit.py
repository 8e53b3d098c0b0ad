"""An auditor's check of a whole log (SPEC §15.2–15.3): a correct log, and forked,
rewritten and truncated ones, each caught with its evidence."""

from __future__ import annotations

from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.audit import MAX_MALFORMED_LISTED, AuditState, audit
from blindrelay.protocol.transparency.entries import BillLogged, KeyBinding, StatementLogged
from blindrelay.protocol.transparency.treehead import sign_tree_head

RELAY = IdentityKeyPair(b"\xc0" * 32)
OTHER = IdentityKeyPair(b"\xc1" * 32)
T0 = 1_790_000_000_000


def log(count: int, salt: int = 0) -> list[bytes]:
    first = KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=b"\x07" * 32, at=T0)
    rest = [StatementLogged(v=1, commitment=bytes([i, salt]) * 16, at=T0 + i).to_bytes()
            for i in range(1, count)]  # fmt: skip
    return [first.to_bytes(), *rest]


def head(entries: list[bytes], size: int, at: int, key: IdentityKeyPair = RELAY) -> bytes:
    root = merkle.root_of([merkle.leaf_hash(e) for e in entries[:size]])
    return sign_tree_head(key.sign, size, root, at)


def kinds(report) -> list[str]:
    return [v.kind for v in report.violations]


def test_a_correct_log_is_clean_and_gives_the_next_runs_state() -> None:
    entries = log(10)
    heads = [head(entries, 4, T0), head(entries, 10, T0 + 1)]
    report = audit(entries, heads, RELAY.public)
    assert report.clean and report.size == 10
    assert report.entries_by_type == {"KeyBinding": 1, "StatementLogged": 9}
    assert report.state == AuditState(10, report.newest.root, heads[1])
    grown = log(15)
    later = audit(grown, [head(grown, 15, T0 + 2)], RELAY.public, report.state)
    assert later.clean and later.state is not None and later.state.size == 15


def test_a_rewritten_history_is_caught_against_the_previous_run() -> None:
    entries = log(10)
    state = audit(entries, [head(entries, 10, T0)], RELAY.public).state
    rewritten = log(12, salt=1)  # the same size and more, other entries
    signed_again = head(rewritten, 12, T0 + 1)
    report = audit(rewritten, [signed_again], RELAY.public, state)
    assert kinds(report) == ["log rewritten", "log forked"]
    assert report.violations[0].evidence["previous_head"] == state.signed.hex()
    # the commitment broken is kept as evidence, beside the head that broke it (T73)
    assert report.state is not None and report.state.fork == (state.signed, signed_again)


def test_a_truncated_log_is_caught() -> None:
    entries = log(10)
    state = audit(entries, [head(entries, 10, T0)], RELAY.public).state
    report = audit(entries[:7], [], RELAY.public, state)
    assert kinds(report) == ["log truncated"]


def test_a_forked_head_a_foreign_signature_and_a_malformed_entry_are_caught() -> None:
    entries = log(8)
    fork = log(8, salt=2)
    heads = [
        head(entries, 5, T0),
        head(fork, 8, T0 + 1),  # signed by the relay, but not the tree it served
        head(entries, 8, T0 + 2, OTHER),  # not the relay's signature
        head(entries, 9, T0 + 3),  # more entries than served
        head(entries, 3, T0 + 4),  # shrinks
    ]
    report = audit([*entries[:7], b"not an entry"], heads, RELAY.public)
    assert sorted(kinds(report)) == sorted([
        "bad tree head", "malformed entry", "head is not the tree of the entries",
        "head beyond the entries", "heads go backwards",
    ])  # fmt: skip
    assert report.state is not None and report.state.size == 5


def test_a_log_of_garbage_lists_a_bounded_number_of_malformed_entries() -> None:
    """Each malformed entry listed carries its bytes; past MAX_MALFORMED_LISTED they are
    counted, so a head signed over a log of garbage costs the auditor no memory per entry."""
    garbage = [b"not an entry %d" % i for i in range(MAX_MALFORMED_LISTED + 50)]
    report = audit(iter(garbage), [head(garbage, len(garbage), T0)], RELAY.public)
    assert kinds(report) == ["malformed entry"] * (MAX_MALFORMED_LISTED + 1)
    assert report.violations[-1].detail.startswith("50 more malformed entries")
    assert report.size == len(garbage) and report.state is not None


def test_a_second_bill_for_one_business_and_month_is_a_violation() -> None:
    """The attack (found in review): the relay logs two bills of one business for one
    month, serves the business the one that matches its SENTs (``check_bill``: ok) and
    invoices by the other; each is logged, so "everyone sees the same bill" rested on
    someone noticing the second. The auditor now reports it, with both entries."""

    def bill(count: int) -> bytes:
        return BillLogged(
            v=1, handle="skyways.air", month="2026-11", count=count, root=bytes([count % 256]) * 32,
            at=T0,
        ).to_bytes()  # fmt: skip

    other = BillLogged(
        v=1, handle="skyways.air", month="2026-12", count=1, root=bytes(32), at=T0
    ).to_bytes()
    entries = [*log(3), bill(10), other, bill(1000)]
    report = audit(entries, [head(entries, len(entries), T0)], RELAY.public)
    assert kinds(report) == ["bill logged twice"]
    assert report.violations[0].evidence == {"first": bill(10).hex(), "second": bill(1000).hex()}
    assert "entry 5" in report.violations[0].detail and "entry 3" in report.violations[0].detail


def test_a_key_binding_that_does_not_follow_the_handle_s_last_is_a_violation() -> None:
    """A handle's bindings form a chain (SPEC §15.1): one without ``previous_key``, its
    first (registration, or DISCOVERABLE), then each rotation naming the key it replaces,
    in one kind. A relay that binds a key of its own to a business as a second
    registration, as a rotation from a key the business never had, or as a user's, put
    it "on record" for anyone to see; the audit passed such a log clean. Now each is a
    violation with the entry; a well-formed chain (a rotation) is not."""

    def bound(key: int, previous: int | None = None, kind: str = "business") -> bytes:
        return KeyBinding(
            v=1, handle="airline", kind=kind, identity_key=bytes([key]) * 32, at=T0,
            previous_key=None if previous is None else bytes([previous]) * 32,
        ).to_bytes()  # fmt: skip

    chained = [*log(2), bound(1), bound(2, previous=1)]
    assert audit(chained, [head(chained, 4, T0)], RELAY.public).clean
    for lie in (bound(9), bound(9, previous=1), bound(9, previous=2, kind="user")):
        entries = [*chained, lie]
        report = audit(entries, [head(entries, 5, T0)], RELAY.public)
        assert kinds(report) == ["key binding out of chain"], lie
        assert report.violations[0].evidence["entry"] == lie.hex()
    rotated_first = KeyBinding(
        v=1, handle="new.shop", kind="business", identity_key=b"\x05" * 32, at=T0,
        previous_key=b"\x04" * 32,
    ).to_bytes()  # fmt: skip
    report = audit([rotated_first], [head([rotated_first], 1, T0)], RELAY.public)
    assert kinds(report) == ["key binding out of chain"]


def test_a_newest_head_older_than_the_previous_run_s_is_a_violation() -> None:
    """SPEC §15.3 rule 4: heads never shrink or go back in time, across runs too. The
    newest head a relay serves never does (rule 2), so one older than what the previous
    run verified is a relay showing the auditor a stale view (hiding what it appended
    since) or a rollback; each run saw one head, and the audit passed it clean. One that
    is smaller yet signed later is also a fork (kept: the tests below)."""
    entries = log(12)
    state = audit(entries[:10], [head(entries, 10, T0 + 5)], RELAY.public).state
    assert state is not None
    for stale in (head(entries, 8, T0 + 6), head(entries, 10, T0 + 2)):
        report = audit(entries, [stale], RELAY.public, state)
        assert kinds(report)[0] == "heads go backwards"
        assert report.violations[0].evidence == {
            "earlier": state.signed.hex(),
            "later": stale.hex(),
        }
        assert report.state is not None and report.state.signed == state.signed
    assert audit(entries, [head(entries, 12, T0 + 7)], RELAY.public, state).clean


def test_each_break_of_a_binding_chain_is_named_for_what_it_is() -> None:
    """The three lies of the test above, each with its own detail: a second
    registration is not reported as a rotation from a wrong key."""

    def bound(key: int, previous: int | None = None, kind: str = "business") -> bytes:
        return KeyBinding(
            v=1, handle="airline", kind=kind, identity_key=bytes([key]) * 32, at=T0,
            previous_key=None if previous is None else bytes([previous]) * 32,
        ).to_bytes()  # fmt: skip

    chained = [*log(2), bound(1), bound(2, previous=1)]
    for lie, detail in (
        (bound(9), "a second first binding of a bound handle"),
        (bound(9, previous=1), "a rotation from a key that is not the handle's"),
        (bound(9, previous=2, kind="user"), "a user's binding of a business"),
    ):
        entries = [*chained, lie]
        report = audit(entries, [head(entries, 5, T0)], RELAY.public)
        assert [v.detail for v in report.violations] == [f"entry 4: {detail} (airline)"]


def test_a_later_head_signed_at_an_earlier_time_goes_backwards() -> None:
    """SPEC §15.3 rule 2 within one run: a larger head is not enough, its time must not
    go back either (the newest is then the last good one)."""
    entries = log(10)
    heads = [head(entries, 4, T0 + 5), head(entries, 10, T0 + 4)]
    report = audit(entries, heads, RELAY.public)
    assert kinds(report) == ["heads go backwards"]
    assert report.violations[0].evidence == {"earlier": heads[0].hex(), "later": heads[1].hex()}
    assert report.newest is not None and report.newest.size == 4


def test_a_clean_run_never_hands_on_a_smaller_state_than_it_was_given() -> None:
    """A state the caller made by hand (its signed head unreadable: nothing to compare
    times with) and a newest head smaller than it: the larger commitment stays."""
    entries = log(10)
    root = merkle.root_of([merkle.leaf_hash(e) for e in entries])
    by_hand = AuditState(10, root, b"not a signed head")
    report = audit(entries, [head(entries, 8, T0)], RELAY.public, by_hand)
    assert report.clean and report.state == by_hand


def test_an_unrelated_violation_does_not_hold_the_state_back() -> None:
    """A malformed entry, a bill logged twice or a binding out of chain is no break of
    the previous run's commitment: the newest head still verifies, and the state moves on
    to it, committing the relay to the very entries that show the violation (a later log
    without them is "log rewritten"). Every run reads the log from its first entry, so
    each later run reports the violation again for as long as the log holds it."""
    entries = log(6)
    state = audit(entries, [head(entries, 6, T0)], RELAY.public).state
    grown = [*log(8), b"not an entry", *log(10)[9:]]
    newest = head(grown, 10, T0 + 1)
    report = audit(grown, [newest], RELAY.public, state)
    assert kinds(report) == ["malformed entry"]
    assert report.state is not None and report.state.signed == newest
    longer = [*grown, *log(11)[10:]]
    again = audit(longer, [head(longer, 11, T0 + 2)], RELAY.public, report.state)
    assert kinds(again) == ["malformed entry"] and again.state is not None
    assert again.state.size == 11 and again.state.fork is None
    cleaned = log(11)  # the relay drops the bad entry: history rewritten
    dropped = audit(cleaned, [head(cleaned, 11, T0 + 3)], RELAY.public, report.state)
    assert kinds(dropped) == ["log rewritten", "log forked"]  # a signed fork: kept


def test_a_fork_found_once_is_reported_by_every_later_run() -> None:
    """The attack (T73): a relay shows an auditor, once, a head signed over a rewritten
    log (the view it shows someone else), then goes back to the history the auditor's
    state holds. The run that saw the rewrite reported it, and kept the previous head as
    its state, nothing of the head that broke it: the next run found the log consistent
    with that state and was clean, and the printed evidence (the previous head and a root
    the auditor computed) was no signed proof of anything. Now the run keeps both signed
    heads in its state, and every later run reports the fork with them, whatever the
    relay shows since."""
    entries = log(10)
    state = audit(entries, [head(entries, 10, T0)], RELAY.public).state
    assert state is not None
    rewritten = log(12, salt=1)
    other = head(rewritten, 12, T0 + 1)
    found = audit(rewritten, [other], RELAY.public, state)
    assert kinds(found) == ["log rewritten", "log forked"]
    back = log(14)  # the first history, grown
    run = found
    for at in (T0 + 2, T0 + 3, T0 + 4):
        run = audit(back, [head(back, 14, at)], RELAY.public, run.state)
        assert "log forked" in kinds(run), kinds(run)
        # the first is the one kept; going back is a fork of its own, from the
        # rewritten head, reported in the run that finds it
        kept = forks(run)[0]
        assert kept == {"earlier": state.signed.hex(), "later": other.hex()}
    evidence = found.violations[0].evidence
    assert (evidence["previous_head"], evidence["later_head"]) == (state.signed.hex(), other.hex())


def test_a_second_rewrite_after_a_fork_is_caught_against_the_head_last_verified() -> None:
    """After a fork the state follows the history the relay now signs (the fork itself
    kept as evidence), so a later rewrite of that history is its own violation, with the
    head it broke; before, the state stayed at the first commitment for good: each run
    said the same "log rewritten" against it, and a rewrite of what the relay signed
    since was never a violation of its own."""
    entries = log(10)
    state = audit(entries, [head(entries, 10, T0)], RELAY.public).state
    rewritten = log(12, salt=1)
    second = head(rewritten, 12, T0 + 1)
    found = audit(rewritten, [second], RELAY.public, state)
    again = [*rewritten[:11], *log(14, salt=2)[11:]]  # entry 11 rewritten too
    report = audit(again, [head(again, 14, T0 + 2)], RELAY.public, found.state)
    fresh = [v for v in report.violations if v.kind == "log rewritten"]
    assert [v.evidence["previous_head"] for v in fresh] == [second.hex()]
    assert "log forked" in kinds(report)


def forks(report) -> list[dict[str, str]]:
    return [v.evidence for v in report.violations if v.kind == "log forked"]


def test_a_smaller_head_signed_later_over_a_rewritten_log_is_a_fork_kept_for_good() -> None:
    """A relay that verified 10 entries at T0+5 then signs 8 entries of another history
    at T0+6 (rolled back and rewritten): the two heads break §15.3 rule 2 by their own
    fields (fewer entries, signed later), so neither extends the other whatever the
    entries (rule 3) — signed evidence anyone can recheck with the relay key alone.
    Before, the run reported "log rewritten" against the previous head, kept it alone,
    and the next run, the relay back on the first history, was clean."""
    entries = log(10)
    state = audit(entries, [head(entries, 10, T0 + 5)], RELAY.public).state
    assert state is not None
    rewritten = log(10, salt=3)  # entry 1 on differs: the first 8 are not the prefix
    smaller = head(rewritten, 8, T0 + 6)
    found = audit(rewritten, [smaller], RELAY.public, state)
    assert kinds(found) == ["log rewritten", "heads go backwards", "log forked"]
    assert forks(found) == [{"earlier": state.signed.hex(), "later": smaller.hex()}]
    assert found.state is not None and found.state.signed == state.signed  # the larger
    assert found.state.fork == (state.signed, smaller)
    still = audit(rewritten, [smaller], RELAY.public, found.state)  # shown it again
    assert forks(still) == forks(found) and still.state == found.state  # once: the kept
    back = log(14)  # the first history, grown
    run = found
    for at in (T0 + 7, T0 + 8):
        run = audit(back, [head(back, 14, at)], RELAY.public, run.state)
        assert forks(run) == [{"earlier": state.signed.hex(), "later": smaller.hex()}]


def test_heads_out_of_order_by_their_own_fields_are_a_fork_kept_for_good() -> None:
    """Over a log that is a prefix of what the previous run verified, or extends it, a
    head that is smaller but signed later, or larger but signed earlier, breaks rule 2 in
    its signed fields: the relay stamps each head no earlier than its newest (server:
    ``max(clock, newest)``), so no honest relay signs both. Before, each run reported
    "heads go backwards" once and kept the previous head alone; the next run, given a
    fresh head, was clean."""
    entries = log(14)
    state = audit(entries[:10], [head(entries, 10, T0 + 5)], RELAY.public).state
    assert state is not None
    for odd in (head(entries, 8, T0 + 6), head(entries, 12, T0 + 4)):
        found = audit(entries, [odd], RELAY.public, state)
        assert "heads go backwards" in kinds(found)
        evidence = {"earlier": state.signed.hex(), "later": odd.hex()}
        assert evidence in forks(found)
        fresh = audit(entries, [head(entries, 14, T0 + 9)], RELAY.public, found.state)
        assert forks(fresh) == [evidence], odd
        assert fresh.state is not None and fresh.state.fork == (state.signed, odd)


def test_an_older_head_of_the_same_history_is_stale_and_not_kept() -> None:
    """A rollback the previous head extends (fewer entries or the same, signed no later,
    the entries a prefix of what was verified) is a relay serving an old head: a
    freshness problem, not two histories — the relay honestly signed that head once, and
    the pair proves nothing to anyone else. Reported by every run that is shown it, the
    state staying at the larger head, which every later head must extend; not kept, so a
    relay that catches up audits clean again."""
    entries = log(14)
    state = audit(entries[:10], [head(entries, 10, T0 + 5)], RELAY.public).state
    for stale in (head(entries, 8, T0 + 3), head(entries, 10, T0 + 2)):
        for _ in range(2):
            report = audit(entries, [stale], RELAY.public, state)
            assert kinds(report) == ["heads go backwards"] and report.state == state
        fresh = audit(entries, [head(entries, 14, T0 + 9)], RELAY.public, report.state)
        assert fresh.clean and fresh.state is not None and fresh.state.fork is None
    # signed in the same millisecond is in order (the relay stamps max(clock, newest))
    same_ms = audit(entries, [head(entries, 8, T0 + 5)], RELAY.public, state)
    assert kinds(same_ms) == ["heads go backwards"] and same_ms.state == state
    assert audit(entries, [head(entries, 12, T0 + 5)], RELAY.public, state).clean


def test_a_head_that_is_not_the_tree_of_the_entries_is_reported_each_run_it_is_served() -> None:
    """The entries are not signed: a head whose root is not theirs proves nothing a third
    party could check (the auditor could have made the entries up), so it is not kept —
    but every run recomputes the tree, so each run it is served reports it, the state
    staying at the last head that verified. A head that breaks the kept one by its own
    signed fields is a different matter: the same size and another root is a fork
    whatever the entries are, and is kept."""
    entries = log(12)
    state = audit(entries[:10], [head(entries, 10, T0)], RELAY.public).state
    other = log(12, salt=4)
    wrong = head(other, 12, T0 + 1)  # consistent in size and time, not these entries
    for _ in range(2):
        report = audit(entries, [wrong], RELAY.public, state)
        assert kinds(report) == ["head is not the tree of the entries"]
        assert report.state == state
    assert audit(entries, [head(entries, 12, T0 + 2)], RELAY.public, report.state).clean
    same_size = head(other, 10, T0 + 1)  # ten entries, another root
    found = audit(entries, [same_size], RELAY.public, state)
    assert kinds(found) == ["head is not the tree of the entries", "log forked"]
    assert found.state is not None and found.state.fork == (state.signed, same_size)
    later = audit(entries, [head(entries, 12, T0 + 2)], RELAY.public, found.state)
    assert forks(later) == [{"earlier": state.signed.hex(), "later": same_size.hex()}]


def test_only_the_first_fork_is_kept_and_a_later_one_is_reported_in_its_run() -> None:
    """The first fork proves the relay key signed two histories, and is reported by every
    later run until a person removes it; a later fork proves nothing more about that key,
    so the state keeps one pair (bounded) and the later fork is reported, with both its
    heads, by the run that finds it."""
    entries = log(10)
    state = audit(entries, [head(entries, 10, T0)], RELAY.public).state
    assert state is not None
    rewritten = log(12, salt=1)
    second = head(rewritten, 12, T0 + 1)
    found = audit(rewritten, [second], RELAY.public, state)
    again = log(14, salt=2)
    third = head(again, 14, T0 + 2)
    report = audit(again, [third], RELAY.public, found.state)
    assert forks(report) == [
        {"earlier": state.signed.hex(), "later": second.hex()},
        {"earlier": second.hex(), "later": third.hex()},
    ]
    assert report.state is not None and report.state.fork == (state.signed, second)
    assert report.state.signed == third
