"""``blindrelay audit``'s kept fork (client/audit.py, SPEC §15.3 rule 4; T73, T76): a
fork found once is reported by every later run, whatever the relay shows since, until
a person acknowledges it — ``--acknowledge-fork FILE`` moves its two signed heads into
a file of their own, the evidence, and the runs go on from the state's head."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blindrelay.client import audit as audit_module
from blindrelay.protocol.transparency.treehead import open_tree_head, sign_tree_head

from ..relays import T0
from .audit_log import URL, ShownLog, audit_now, statements
from .harness import run


def test_a_fork_the_auditor_saw_once_is_reported_by_every_later_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T73: the relay shows the auditor, once, a head signed over a rewritten log, then
    the first history again. The run that saw it said "log rewritten", kept the previous
    head alone, and the next run was clean (exit 0): nothing in the state file, nor any
    signed evidence in the report, of the head that broke it. Now the state file keeps
    both heads, and every later run reports the fork with them (exit 1)."""
    shown = ShownLog()
    monkeypatch.setattr(audit_module, "open_log_reader", shown.open)
    state = tmp_path / "audit.json"
    first = shown.show(statements(10), T0)
    assert audit_now(state)[0] == 0
    other = shown.show(statements(12, salt=1), T0 + 1)
    status, rewritten = audit_now(state)
    assert status == 1 and "VIOLATION log rewritten" in rewritten, rewritten
    for at in (T0 + 2, T0 + 3, T0 + 4):
        shown.show(statements(14), at)  # the first history, grown
        status, report = audit_now(state)
        assert status == 1 and "VIOLATION log forked" in report, report
        assert first.hex() in report and other.hex() in report
        # Said each time, so a person knows why it comes back, and the way on.
        assert f"the fork is kept in {state}" in report and "--acknowledge-fork" in report
    assert first.hex() in rewritten and other.hex() in rewritten  # both signed heads
    assert "the fork is kept in" in rewritten
    saved = json.loads(state.read_text())
    assert saved["fork"] == {"earlier": first.hex(), "later": other.hex()}
    stranger = SigningKey(b"\x12" * 32)
    saved["fork"]["later"] = sign_tree_head(  # a head the relay did not sign
        lambda m: stranger.sign(m).signature, 12, bytes(32), T0 + 1
    ).hex()
    state.write_text(json.dumps(saved))
    with pytest.raises(audit_module.AuditUsageError, match="state file"):
        audit_now(state)


def test_a_smaller_head_signed_later_is_kept_and_a_stale_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T76, through the state file: the relay shows the auditor once a head of 8 entries
    of another history signed after the head of 10 it verified, then the first history
    again. That run said "log rewritten" and kept the previous head alone; the next was
    clean (exit 0). Now both heads are in the state file and every later run reports
    "log forked". An old head of the same history (signed before, a prefix) is only
    stale: reported while it is served, kept nowhere."""
    shown = ShownLog()
    monkeypatch.setattr(audit_module, "open_log_reader", shown.open)
    forked, stale = tmp_path / "forked.json", tmp_path / "stale.json"
    shown.show(statements(8), T0 + 1)
    old = shown.head
    first = shown.show(statements(10), T0 + 5)
    assert audit_now(forked)[0] == 0 and audit_now(stale)[0] == 0
    smaller = shown.show(statements(10, salt=1)[:8], T0 + 6)
    shown.entries = statements(10, salt=1)  # served past the head, as a relay may
    status, report = audit_now(forked)
    assert status == 1 and "VIOLATION log forked" in report, report
    shown.entries, shown.head = statements(10), old  # the first history, an old head
    status, report = audit_now(stale)
    assert status == 1 and "VIOLATION heads go backwards" in report, report
    assert "log forked" not in report
    shown.show(statements(12), T0 + 7)  # the first history, grown, a fresh head
    for _ in range(2):
        status, report = audit_now(forked)
        assert status == 1 and "VIOLATION log forked" in report, report
        assert first.hex() in report and smaller.hex() in report
    assert json.loads(forked.read_text())["fork"] == {
        "earlier": first.hex(),
        "later": smaller.hex(),
    }
    status, report = audit_now(stale)
    assert status == 0 and "fork" not in json.loads(stale.read_text()), report
    saved = json.loads(forked.read_text())  # a person dealt with it: removes the fork
    del saved["fork"]
    forked.write_text(json.dumps(saved))
    status, report = audit_now(forked)
    assert status == 0 and report.splitlines()[-1] == "clean", report


def forked_state(tmp_path: Path, shown: ShownLog) -> tuple[Path, bytes, bytes]:
    """A state file that keeps a fork: a head verified, then one over a rewritten log."""
    state = tmp_path / "audit.json"
    first = shown.show(statements(10), T0)
    assert audit_now(state)[0] == 0
    other = shown.show(statements(12, salt=1), T0 + 1)
    assert audit_now(state)[0] == 1
    return state, first, other


def test_acknowledging_a_fork_moves_its_heads_to_a_file_and_the_runs_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way on from a kept fork, without editing JSON by hand: the two signed heads
    go into a new file (both verify with the relay key: anyone can recheck them), the
    state forgets the fork, and the run that acknowledged it — the relay back on the
    first history, grown — is clean, as are the runs after it."""
    shown = ShownLog()
    monkeypatch.setattr(audit_module, "open_log_reader", shown.open)
    state, first, other = forked_state(tmp_path, shown)
    shown.show(statements(14), T0 + 2)  # the first history, grown
    assert audit_now(state)[0] == 1  # still reported: nobody acknowledged it
    evidence = tmp_path / "fork-evidence.json"
    status, report = audit_now(state, evidence)
    assert status == 0 and report.splitlines()[-1] == "clean", report
    assert f"fork acknowledged: its two signed heads are in {evidence}" in report
    kept = json.loads(evidence.read_text())
    assert (kept["earlier"], kept["later"]) == (first.hex(), other.hex())
    relay_key = bytes.fromhex(kept["relay_key"])
    assert relay_key == shown.key.verify_key.encode()
    for head in (first, other):
        open_tree_head(head, relay_key)  # raises if the relay key did not sign it
    assert "fork" not in json.loads(state.read_text())
    shown.show(statements(16), T0 + 3)
    status, report = audit_now(state)
    assert status == 0 and "fork" not in report, report


def test_a_fork_shown_again_after_it_was_acknowledged_is_kept_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledging forgets the fork, not the commitment: the state keeps the head it
    verified last, so a relay that goes on showing the rewritten history is caught in
    the very run that acknowledged the first fork, and that fork is kept again."""
    shown = ShownLog()
    monkeypatch.setattr(audit_module, "open_log_reader", shown.open)
    state, _first, _other = forked_state(tmp_path, shown)
    shown.show(statements(14), T0 + 2)  # the first history, grown
    assert audit_now(state)[0] == 1
    again = shown.show(statements(16, salt=2), T0 + 3)  # rewritten once more
    status, report = audit_now(state, tmp_path / "first-fork.json")
    assert status == 1 and "VIOLATION log" in report, report
    assert json.loads(state.read_text())["fork"]["later"] == again.hex()
    assert (tmp_path / "first-fork.json").exists()


def test_acknowledging_refuses_what_would_lose_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line, and nothing changed, when there is no fork to acknowledge, no state
    file named, or a file already at the evidence's path (never written over)."""
    shown = ShownLog()
    monkeypatch.setattr(audit_module, "open_log_reader", shown.open)
    clean = tmp_path / "clean.json"
    shown.show(statements(4), T0)
    assert audit_now(clean)[0] == 0
    with pytest.raises(audit_module.AuditUsageError, match="keeps no fork"):
        audit_now(clean, tmp_path / "evidence.json")
    assert not (tmp_path / "evidence.json").exists()
    state, _first, _other = forked_state(tmp_path, shown)
    before = state.read_text()
    taken = tmp_path / "taken.json"
    taken.write_text("someone's file\n")
    with pytest.raises(audit_module.AuditUsageError, match="exists"):
        audit_now(state, taken)
    assert taken.read_text() == "someone's file\n" and state.read_text() == before
    with pytest.raises(audit_module.AuditUsageError, match="cannot write"):
        audit_now(state, tmp_path / "no-such-dir" / "evidence.json")
    assert state.read_text() == before

    async def without_state() -> None:
        out = io.StringIO()
        await audit_module.run_audit(URL, out, acknowledge=tmp_path / "evidence.json")

    with pytest.raises(audit_module.AuditUsageError, match="needs the --state"):
        run(without_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json", "clean.json", "taken.json"]
