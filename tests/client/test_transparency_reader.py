"""What :class:`~blindrelay.client.transparency.LogReader` refuses of a relay's answers
(SPEC §15.6), against a scripted relay: each answer here is one an honest relay never
gives, and the reader must not hand it on as if it were what was asked for."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blindrelay.client.transparency import LogReader
from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import InvalidTreeHead, UnexpectedFrame
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.treehead import sign_tree_head

from .harness import run

RELAY = IdentityKeyPair(b"\xc0" * 32)
OTHER = IdentityKeyPair(b"\xc1" * 32)
T0 = 1_790_000_000_000


def reader(answer: Callable[[frames.Frame], frames.Frame]) -> LogReader:
    """A reader whose relay answers each request with ``answer(request)``."""

    async def request(make: Callable[[int], frames.Frame]) -> frames.Frame:
        return answer(make(1))

    return LogReader(request, lambda: RELAY.public)


def test_entries_from_another_start_than_asked_are_refused() -> None:
    """A page is only evidence at the index it was asked for: a relay answering another
    start would have an auditor hash the log's entries at the wrong leaves."""

    def shifted(request: frames.Frame) -> frames.Frame:
        assert isinstance(request, frames.LogEntriesFetch)
        return frames.LogEntries(re=request.id, start=request.start + 1, entries=(b"x",))

    def honest(request: frames.Frame) -> frames.Frame:
        assert isinstance(request, frames.LogEntriesFetch)
        return frames.LogEntries(re=request.id, start=request.start, entries=(b"x",))

    async def scenario() -> None:
        assert await reader(honest).entries(5) == [b"x"]
        with pytest.raises(UnexpectedFrame, match="from 5"):
            await reader(shifted).entries(5)

    run(scenario())


def test_a_head_is_handed_on_only_once_its_signature_verifies() -> None:
    """``signed_head`` opens the head with the relay key: one signed by another key, or a
    signature over another body, is InvalidTreeHead, never a TreeHead."""
    root = merkle.leaf_hash(b"e")

    def head_by(key: IdentityKeyPair) -> Callable[[frames.Frame], frames.Frame]:
        return lambda request: frames.LogHead(
            re=request.id, sth=sign_tree_head(key.sign, 1, root, T0)
        )

    async def scenario() -> None:
        found = await reader(head_by(RELAY)).signed_head()
        assert found is not None and found[0].size == 1
        with pytest.raises(InvalidTreeHead):
            await reader(head_by(OTHER)).signed_head()
        with pytest.raises(InvalidTreeHead):
            await reader(head_by(OTHER)).head()

    run(scenario())


def test_an_answer_of_another_kind_is_refused() -> None:
    """A LOG_HEAD asked for and a LOG_ENTRIES answered is the relay's error, not a head."""

    async def scenario() -> None:
        wrong = reader(lambda request: frames.LogEntries(re=request.id, start=0, entries=()))
        with pytest.raises(UnexpectedFrame, match="LOG_ENTRIES"):
            await wrong.head()

    run(scenario())
