"""What the audit tests build with (tests/client/test_audit.py, test_audit_fork.py):
a run of ``blindrelay audit`` with its output caught, and a relay's log fetches
serving whatever history the test shows the auditor this run."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from nacl.signing import SigningKey

from blindrelay.client.audit import run_audit
from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import StatementLogged
from blindrelay.protocol.transparency.treehead import sign_tree_head

from ..relays import T0
from .harness import run


async def audited(
    url: str, state: Path | None, acknowledge: Path | None = None
) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await run_audit(url, out, state_path=state, err=err, acknowledge=acknowledge)
    return status, out.getvalue() + err.getvalue()


URL = "ws://relay.test"
"""Where the tests' auditor looks; a :class:`ShownLog` answers in the relay's place."""


def audit_now(state: Path, acknowledge: Path | None = None) -> tuple[int, str]:
    """One run against ``ws://relay.test`` (a test's :class:`ShownLog` stands in for it)."""
    result: list[tuple[int, str]] = []

    async def once() -> None:
        result.append(await audited(URL, state, acknowledge))

    run(once())
    return result[0]


class ShownLog:
    """A relay's log fetches serving what it shows the auditor this run: ``entries`` and
    a head signed over all of them."""

    def __init__(self) -> None:
        self.key = SigningKey(b"\x11" * 32)
        self.entries: list[bytes] = []
        self.head = b""

    def show(self, entries: list[bytes], at: int) -> bytes:
        self.entries = entries
        root = merkle.root_of([merkle.leaf_hash(e) for e in entries])
        self.head = sign_tree_head(lambda m: self.key.sign(m).signature, len(entries), root, at)
        return self.head

    async def request(self, make: Callable[[int], frames.Frame]) -> frames.Frame:
        frame = make(1)
        if isinstance(frame, frames.LogHeadFetch):
            return frames.LogHead(re=1, sth=self.head)
        assert isinstance(frame, frames.LogEntriesFetch)
        page = self.entries[frame.start : frame.start + frame.count]
        return frames.LogEntries(re=1, start=frame.start, entries=tuple(page))

    @contextlib.asynccontextmanager
    async def open(self, _url: str, _key: bytes | None = None) -> AsyncIterator[LogReader]:
        yield LogReader(self.request, lambda: self.key.verify_key.encode())


def statements(count: int, salt: int = 0) -> list[bytes]:
    return [
        StatementLogged(v=1, commitment=bytes([i, salt]) * 16, at=T0 + i).to_bytes()
        for i in range(count)
    ]
