"""``blindrelay audit`` (client/audit.py, SPEC §15.3 rule 4, §15.6) against a correct
relay, and against logs deliberately truncated, rewritten, and rewritten and signed
again (a fork: two signed heads of one size that cannot both be true). The relay's
SQLite file is edited between two runs of the relay, as an operator could."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from blindrelay.client import audit as audit_module
from blindrelay.client import transparency as transparency_module
from blindrelay.client.audit import run_audit
from blindrelay.client.transparency import LogReader
from blindrelay.client.transport import ConnectionLost
from blindrelay.protocol import frames, limits
from blindrelay.protocol.errors import RateLimited
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, StatementLogged
from blindrelay.protocol.transparency.treehead import sign_tree_head
from blindrelay.server.store.sqlite.writer_process import HOLD_BEFORE_BATCH_ENV

from ..relays import T0, relay_at
from .audit_log import audited
from .harness import online, run, within

EVIL = KeyBinding(v=1, handle="airline", kind="business", identity_key=b"\x66" * 32, at=T0)


async def businesses(url: str, *handles: str) -> None:
    for handle in handles:
        client = await online(url, handle, "business")
        await client.close()


def edit_log(
    db: Path, *, keep: int | None = None, replace_first: bytes | None = None, rebuild: bool = False
) -> None:
    """Truncate the log to ``keep`` entries, or replace entry 0; drop the signed heads
    (the relay signs a new one at start, as a relay that rewrote history would); with
    ``rebuild`` the stored subtrees are recomputed, so the new head signs the new tree."""
    with sqlite3.connect(db) as conn:
        if keep is not None:
            conn.execute("DELETE FROM log_entries WHERE seq >= ?", (keep,))
        if replace_first is not None:
            conn.execute("UPDATE log_entries SET data = ? WHERE seq = 0", (replace_first,))
        if rebuild or keep is not None:
            conn.execute("DELETE FROM log_nodes")
            frontier = merkle.Frontier()
            for (data,) in conn.execute("SELECT data FROM log_entries ORDER BY seq").fetchall():
                conn.executemany(
                    "INSERT INTO log_nodes (level, node_index, hash) VALUES (?, ?, ?)",
                    [(n.level, n.offset, h) for n, h in frontier.append(merkle.leaf_hash(data))],
                )
        conn.execute("DELETE FROM log_heads")
    conn.close()


def test_a_correct_relay_audits_clean_and_the_state_moves_forward(tmp_path: Path) -> None:
    async def scenario() -> None:
        state = tmp_path / "audit.json"
        async with relay_at(tmp_path) as relay:
            status, report = await audited(relay.url, state)
            assert status == 0 and "none verified" in report  # nothing signed yet
            await businesses(relay.url, "airline", "shop")
            await relay.housekeeping.publish_tree_head()
            status, report = await audited(relay.url, state)
            assert status == 0 and report.splitlines()[-1] == "clean", report
            assert "KeyBinding" in report and "size 2" in report
            assert json.loads(state.read_text())["size"] == 2
            await businesses(relay.url, "bakery")
            await relay.housekeeping.publish_tree_head()
            status, report = await audited(relay.url, state)
            assert status == 0 and json.loads(state.read_text())["size"] == 3, report

    run(scenario())


def run_twice(tmp_path: Path, **edit: object) -> tuple[int, str, dict[str, object]]:
    """Audit a correct log of three entries, edit the file, audit again."""
    state = tmp_path / "audit.json"

    async def first() -> None:
        async with relay_at(tmp_path) as relay:
            await businesses(relay.url, "airline", "shop", "bakery")
            await relay.housekeeping.publish_tree_head()
            assert (await audited(relay.url, state))[0] == 0

    async def second() -> tuple[int, str]:
        async with relay_at(tmp_path) as relay:
            await relay.housekeeping.publish_tree_head()
            return await audited(relay.url, state)

    run(first())
    before = json.loads(state.read_text())
    edit_log(tmp_path / "relay.db", **edit)  # type: ignore[arg-type]
    result: list[tuple[int, str]] = []

    async def keep() -> None:
        result.append(await second())

    run(keep())
    status, report = result[0]
    return status, report, before


def test_a_truncated_log_is_a_violation(tmp_path: Path) -> None:
    """The relay cut back to 2 entries signs a head of 2 after the one of 3 the auditor
    verified: smaller yet later, which no honest relay signs (§15.3 rule 2), so a fork
    kept beside the commitment it broke (T76)."""
    status, report, before = run_twice(tmp_path, keep=2)
    assert status == 1 and "VIOLATION log truncated" in report, report
    after = json.loads((tmp_path / "audit.json").read_text())
    fork = after.pop("fork")
    assert after == before  # kept: the commitment broken
    assert fork["earlier"] == before["signed"] and "VIOLATION log forked" in report
    assert fork["later"] in report


def test_a_rewritten_entry_under_the_old_head_is_a_violation(tmp_path: Path) -> None:
    status, report, _ = run_twice(tmp_path, replace_first=EVIL.to_bytes())
    assert status == 1 and "VIOLATION log rewritten" in report, report


def test_a_rewritten_log_signed_again_is_a_fork_with_both_heads_as_evidence(
    tmp_path: Path,
) -> None:
    status, report, before = run_twice(tmp_path, replace_first=EVIL.to_bytes(), rebuild=True)
    assert status == 1 and "VIOLATION log rewritten" in report, report
    assert "head is not the tree" not in report  # the new head is its new tree's
    after = json.loads((tmp_path / "audit.json").read_text())
    assert after["signed"] != before["signed"]  # the head signed over the rewritten log
    assert after["fork"] == {"earlier": before["signed"], "later": after["signed"]}
    # both signed heads, as evidence, each run since they are kept
    assert f"previous_head {before['signed']}" in report
    assert f"later_head {after['signed']}" in report
    assert f"earlier {before['signed']}" in report and f"later {after['signed']}" in report


def test_the_command_line_speaks_one_line_for_bad_input(tmp_path: Path) -> None:
    def blindrelay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blindrelay.server.cli", "audit", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    bad_state = tmp_path / "state.json"
    bad_state.write_text("{not json")
    for args, status in [
        (["--relay", "ws://127.0.0.1:1"], 3),
        (["--relay", "ws://127.0.0.1:1", "--relay-key", "zz"], 2),
        (["--relay", "ws://127.0.0.1:1", "--state", str(bad_state)], 2),
        (["--relay", "ws://127.0.0.1:1", "--acknowledge-fork", str(tmp_path / "e.json")], 2),
        (["--relay", "ws://127.0.0.1:1", "--state", str(tmp_path / "none.json"),
          "--acknowledge-fork", str(tmp_path / "e.json")], 2),
    ]:
        done = blindrelay(*args)
        assert done.returncode == status, (args, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


class EndlessLog:
    """A lying relay's log fetches: a signed head of ``size`` entries, then as many
    entries as anyone asks for, past the head, for ever (each a valid statement entry)."""

    def __init__(self, size: int) -> None:
        self.key = SigningKey(b"\x11" * 32)
        self.entries = [
            StatementLogged(v=1, commitment=i.to_bytes(32, "big"), at=T0).to_bytes()
            for i in range(size)
        ]
        root = merkle.root_of([merkle.leaf_hash(e) for e in self.entries])
        self.head = sign_tree_head(lambda m: self.key.sign(m).signature, size, root, T0)
        self.asked: list[tuple[int, int]] = []

    async def request(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        frame = make(1)
        if isinstance(frame, frames.LogHeadFetch):
            return frames.LogHead(re=1, sth=self.head)
        assert isinstance(frame, frames.LogEntriesFetch)
        self.asked.append((frame.start, frame.count))
        assert len(self.asked) < 100, "the auditor reads on past the signed head"
        page = [
            StatementLogged(v=1, commitment=i.to_bytes(32, "big"), at=T0).to_bytes()
            for i in range(frame.start, frame.start + limits.MAX_LOG_ENTRIES)
        ]
        return frames.LogEntries(re=1, start=frame.start, entries=tuple(page))

    @contextlib.asynccontextmanager
    async def open(self, _url: str, _key: bytes | None = None) -> AsyncIterator[LogReader]:
        yield LogReader(self.request, lambda: self.key.verify_key.encode())


def test_the_auditor_reads_no_entry_past_the_signed_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack (found in review): the auditor read pages until an empty one, up to ten
    million entries (~20 GB of 2 KiB entries) whatever the head signed, so a relay that
    never stops serving entries ran it out of memory at no cost (it signs nothing). Now
    it reads what the newest head (and the previous run's) covers."""
    log = EndlessLog(45)
    monkeypatch.setattr(audit_module, "open_log_reader", log.open)
    result: list[tuple[int, str]] = []

    async def once() -> None:
        result.append(await audited("ws://relay.test", tmp_path / "audit.json"))

    run(once())
    status, report = result[0]
    assert status == 0 and "size 45" in report and "entries   45" in report, report
    assert log.asked and max(start + count for start, count in log.asked) <= 45


def test_what_the_endpoint_says_is_printed_without_its_escapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Threat model T39: a WebSocket close reason is outside the Noise channel, so anyone
    on the path words the one line the auditor reads; its escape sequences (here: write
    the clipboard, move up a line, erase it and print "clean") reached the terminal."""
    reason = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[1A\x1b[2K\rclean"

    @contextlib.asynccontextmanager
    async def closed_with(_url: str, _key: bytes | None = None) -> AsyncIterator[LogReader]:
        raise ConnectionLost(f"no handshake from ws://relay.test: received 1000 (OK) {reason}")
        yield  # pragma: no cover

    monkeypatch.setattr(audit_module, "open_log_reader", closed_with)
    result: list[tuple[int, str]] = []

    async def once() -> None:
        result.append(await audited("ws://relay.test", None))

    run(once())
    status, report = result[0]
    assert status == 3 and report.count("\n") == 1
    assert "\\x1b]52;c;" in report and not any(c in report for c in "\x1b\x07\r")


def test_a_state_file_whose_head_is_not_the_relay_s_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state's ``size`` and ``root`` were taken as they stood, beside the signed head
    they come from, which nothing checked: lowered to an earlier prefix (its root is
    anyone's to compute), the next run checked less of the log than the last verified,
    and printed a "previous head" as evidence that was not the one compared. Now the
    state must hold a head that verifies with its relay key, of that size and root."""
    log = EndlessLog(45)
    monkeypatch.setattr(audit_module, "open_log_reader", log.open)
    state = tmp_path / "audit.json"
    result: list[tuple[int, str]] = []

    async def once() -> None:
        result.append(await audited("ws://relay.test", state))

    run(once())
    assert result[-1][0] == 0
    saved = json.loads(state.read_text())
    saved["size"] = 40
    saved["root"] = merkle.root_of([merkle.leaf_hash(e) for e in log.entries[:40]]).hex()
    state.write_text(json.dumps(saved))
    with pytest.raises(audit_module.AuditUsageError, match="state file"):
        run(once())


def test_a_log_longer_than_the_relay_s_burst_is_read_at_its_rate(tmp_path: Path) -> None:
    """SPEC §10, §15.6: a source's log fetches before a login come from one bucket
    (LOG_FETCH_BURST, then LOG_FETCH_RATE_PER_MIN). The auditor stopped at the first
    ERROR 402 ("cannot read the log … RATE_LIMITED"), so at the default limits no log
    past ~6,000 entries (200 pages) could be audited (found in review, reproduced with
    --log-fetch-burst 20). It waits ``retry_after`` and asks again. Here: a burst of 5
    fetches, a token every 10 ms, and 50 pages, so ~45 fetches past the burst — more
    than the 16 402s a connection not logged in may cause (SPEC §4.5)."""
    size = 50 * limits.MAX_LOG_ENTRIES + 7
    state = tmp_path / "audit.json"

    async def scenario() -> None:
        async with relay_at(tmp_path, log_fetch_burst=5, log_fetch_rate_per_min=6000.0) as relay:
            data = [
                StatementLogged(v=1, commitment=i.to_bytes(32, "big"), at=T0).to_bytes()
                for i in range(size)
            ]
            await relay.ctx.store.submit("log_append", data)
            await relay.housekeeping.publish_tree_head()
            status, report = await within(audited(relay.url, state))
            assert status == 0 and report.splitlines()[-1] == "clean", report
            assert f"entries   {size}" in report, report
            assert json.loads(state.read_text())["size"] == size

    run(scenario())


class Pacing:
    """A relay's log fetches behind a token bucket of its own (``burst``, a token every
    ``every_ms``) on the wall clock, counting the 402s it answers."""

    def __init__(self, log: EndlessLog, burst: int, every_ms: float) -> None:
        self.log, self.tokens, self.burst, self.every_ms = log, float(burst), burst, every_ms
        self.at = time.monotonic()
        self.refused = 0

    async def request(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * 1000 / self.every_ms)
        self.at = now
        if self.tokens < 1:
            self.refused += 1
            wait = math.ceil((1 - self.tokens) * self.every_ms)
            raise RateLimited("token bucket empty", retry_after_ms=wait)
        self.tokens -= 1
        return await self.log.request(make)

    @contextlib.asynccontextmanager
    async def open(self, _url: str, _key: bytes | None = None) -> AsyncIterator[LogReader]:
        yield LogReader(self.request, lambda: self.log.key.verify_key.encode())


def test_the_auditor_paces_itself_to_the_relay_s_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting out each 402 alone costs one 402 per page past the burst, and before a
    login every 402 counts towards the connection's error budget (SPEC §4.5): the relay
    closed the auditor's connection every 17 pages. Once told how long a token takes,
    the auditor spaces its fetches by it."""
    pacing = Pacing(EndlessLog(40 * limits.MAX_LOG_ENTRIES), burst=3, every_ms=5)
    monkeypatch.setattr(audit_module, "open_log_reader", pacing.open)
    result: list[tuple[int, str]] = []

    async def once() -> None:
        result.append(await within(audited("ws://relay.test", None)))

    run(once())
    status, report = result[0]
    assert status == 0 and report.splitlines()[-1] == "clean", report
    assert 1 <= pacing.refused <= 8, pacing.refused  # of ~38 fetches past the burst


@pytest.mark.parametrize("retry_after_ms", [1, 10**12])
def test_a_relay_that_answers_402_for_ever_ends_the_audit_in_one_line(
    retry_after_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting out 402 is bounded: a relay that refuses every fetch (with a retry_after
    of 1 ms, or of 31 years) ends the audit, exit 3, with one line that says so."""
    log = EndlessLog(45)
    asked = 0

    async def refusing(make: Callable[[int], frames.Frame]) -> frames.Frame:
        nonlocal asked
        asked += 1
        raise RateLimited("token bucket empty", retry_after_ms=retry_after_ms)

    @contextlib.asynccontextmanager
    async def opened(_url: str, _key: bytes | None = None) -> AsyncIterator[LogReader]:
        yield LogReader(refusing, lambda: log.key.verify_key.encode())

    monkeypatch.setattr(audit_module, "open_log_reader", opened)
    result: list[tuple[int, str]] = []

    async def once() -> None:
        result.append(await within(audited("ws://relay.test", None), timeout=5))

    run(once())
    status, report = result[0]
    assert status == 3 and report.count("\n") == 1, report
    assert "RATE_LIMITED" in report and "try again later" in report, report
    assert 1 <= asked <= 100


def test_a_relay_that_never_answers_a_fetch_ends_the_audit_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay that greets, answers pings and then never answers a log fetch (here: its
    writer held before its next batch) held ``blindrelay audit`` for ever: nothing bounded
    the wait for an answer, or for HELLO (found in review). Now each waits
    ``LOG_ANSWER_TIMEOUT_S``; the reader opens a new connection once, then the audit
    ends, exit 3, with one line that says so."""
    hold = tmp_path / "hold"
    monkeypatch.setenv(HOLD_BEFORE_BATCH_ENV, str(hold))
    monkeypatch.setattr(transparency_module, "LOG_ANSWER_TIMEOUT_S", 0.3)
    result: list[tuple[int, str]] = []

    async def once() -> None:
        async with relay_at(tmp_path) as relay:
            hold.touch()
            try:
                result.append(await within(audited(relay.url, None), timeout=10))
            finally:
                hold.unlink()

    run(once())
    status, report = result[0]
    assert status == 3 and report.count("\n") == 1, report
    assert "no answer" in report and "0.3 s" in report, report


def test_a_relay_key_other_than_the_state_file_s_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file belongs to one relay: given with another --relay-key, the run would
    check the log against the file's key and not the one the auditor named; given with
    none, the file's key is the one the relay must present (not the first it shows)."""
    log = EndlessLog(45)
    pinned_for: list[bytes | None] = []

    def opened(url: str, key: bytes | None = None) -> contextlib.AbstractAsyncContextManager:
        pinned_for.append(key)
        return log.open(url, key)

    monkeypatch.setattr(audit_module, "open_log_reader", opened)
    state = tmp_path / "audit.json"
    out, err = io.StringIO(), io.StringIO()
    assert run_until(run_audit("ws://relay.test", out, state_path=state, err=err)) == 0
    pinned = bytes.fromhex(json.loads(state.read_text())["relay_key"])
    with pytest.raises(audit_module.AuditUsageError, match="--relay-key differs"):
        run_until(
            run_audit("ws://relay.test", out, state_path=state, relay_key=b"\x01" * 32, err=err)
        )
    assert run_until(run_audit("ws://relay.test", out, state_path=state, relay_key=pinned)) == 0
    assert run_until(run_audit("ws://relay.test", out, state_path=state)) == 0
    assert pinned_for == [None, pinned, pinned]


def run_until(coro: Coroutine[Any, Any, int]) -> int:
    result: list[int] = []

    async def scenario() -> None:
        result.append(await coro)

    run(scenario())
    return result[0]


def test_a_state_file_whose_head_another_key_signed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state's head is the evidence a violation is reported with: one of the same
    size and root but signed by another key than the file's is no commitment of that
    relay, and the file is refused before anything is read."""
    log = EndlessLog(45)
    monkeypatch.setattr(audit_module, "open_log_reader", log.open)
    state = tmp_path / "audit.json"
    assert run_until(run_audit("ws://relay.test", io.StringIO(), state_path=state)) == 0
    saved = json.loads(state.read_text())
    other = SigningKey(b"\x12" * 32)
    root = bytes.fromhex(saved["root"])
    saved["signed"] = sign_tree_head(
        lambda m: other.sign(m).signature, saved["size"], root, T0
    ).hex()
    state.write_text(json.dumps(saved))
    with pytest.raises(audit_module.AuditUsageError, match="state file"):
        run_until(run_audit("ws://relay.test", io.StringIO(), state_path=state))
