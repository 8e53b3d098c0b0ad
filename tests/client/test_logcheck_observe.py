"""Which head ``LogCheck.observe`` keeps, and what it holds against what (SPEC §15.3 rule
3): the newest head is kept whatever order heads arrive in, and a head of the same size
signed earlier than the kept one is an older view of the same tree, not a fork. Unit
tests over a scripted log (no relay)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.logcheck import LogCheck
from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.errors import LogForked
from blindrelay.protocol.transparency.treehead import open_tree_head

from ..relays import T0
from .fake_relay import RELAY_KEY, FakeLog
from .harness import run
from .log_relay import filler

PUBLIC = RELAY_KEY.verify_key.encode()


def checker(log: FakeLog) -> tuple[LogCheck, MemoryKeyStore]:
    """A LogCheck whose relay answers consistency fetches from ``log``."""

    class End:
        def __init__(self) -> None:
            self.sent: list[frames.Frame] = []

        def send(self, frame: frames.Frame) -> None:
            self.sent.append(frame)

    async def request(make: Callable[[int], frames.Frame]) -> frames.Frame:
        end = End()
        assert log.answer(end, make(1))  # type: ignore[arg-type]
        return end.sent[0]

    store = MemoryKeyStore()
    return LogCheck(store, LogReader(request, lambda: PUBLIC), lambda: PUBLIC), store


async def observe(check: LogCheck, signed: bytes) -> None:
    await check.observe(open_tree_head(signed, PUBLIC), signed)


def test_a_smaller_head_seen_after_a_larger_one_does_not_replace_it() -> None:
    async def scenario() -> None:
        log = FakeLog()
        log.append(*filler(3))
        small = log.sign_head(T0)
        log.append(*filler(4)[3:])
        large = log.sign_head(T0 + 1)
        check, store = checker(log)
        await observe(check, large)
        await observe(check, small)  # a contact's stale head: proven, not kept
        assert store.tree_head() == large and check.proven(small)

    run(scenario())


def test_of_two_heads_of_one_size_the_later_is_kept_and_the_earlier_is_no_fork() -> None:
    """The relay signs the same tree again (a new STH_INTERVAL, nothing appended): the
    later head is kept; the earlier one, heard again (from a contact), is an older view
    of the same tree, held as (earlier, later), never as time going backwards."""

    async def scenario() -> None:
        log = FakeLog()
        log.append(*filler(3))
        earlier, later = log.sign_head(T0), log.sign_head(T0 + 5)
        check, store = checker(log)
        await observe(check, earlier)
        await observe(check, later)
        assert store.tree_head() == later
        await observe(check, earlier)
        assert store.tree_head() == later and check.forked is None

    run(scenario())


def test_one_size_with_two_roots_is_a_fork() -> None:
    async def scenario() -> None:
        log = FakeLog()
        log.append(*filler(3))
        first = log.sign_head(T0)
        log.entries[2] = b"another history"
        check, store = checker(log)
        await observe(check, first)
        second = log.sign_head(T0 + 1)
        with pytest.raises(LogForked):
            await observe(check, second)
        log.entries[2] = b"a third history"
        with pytest.raises(LogForked):
            await observe(check, log.sign_head(T0 + 2))
        # the first fork's evidence stays, in the run and in the profile
        assert check.forked is not None and (check.forked.first, check.forked.second) == (
            first,
            second,
        )
        assert [(f.first, f.second) for f in store.log_forks()] == [(first, second)]

    run(scenario())
