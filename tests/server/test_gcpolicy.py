"""server/gcpolicy.py: collect, freeze, thresholds, the knob that sets them, and collecting
after connections close."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from blindrelay.server import gcpolicy
from blindrelay.server.config import RelayConfig

from .conftest import TEST_TIMEOUT_S, Clients, FakeClock, relay_with


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The policy changes process-wide state; give the test process its own back."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_apply_freezes_what_is_alive_and_sets_the_young_threshold(restored_gc: None) -> None:
    frozen = gcpolicy.apply(12_345)
    assert frozen == gc.get_freeze_count() > 0
    assert gc.get_threshold() == (12_345, *gcpolicy.OLDER_THRESHOLDS)


def test_apply_leaves_startup_garbage_out_of_the_permanent_generation(restored_gc: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.disable()  # keep the cycle around until apply's own collection
    try:
        Node()
        gcpolicy.apply(gcpolicy.DEFAULT_THRESHOLD)
        gc.unfreeze()  # frozen objects are invisible to get_objects(); bring them back
        assert not any(type(obj) is Node for obj in gc.get_objects())
    finally:
        gc.enable()


def test_the_default_is_the_policys_and_a_threshold_must_be_positive() -> None:
    assert RelayConfig().gc_threshold == gcpolicy.DEFAULT_THRESHOLD
    with pytest.raises(ValueError, match="gc_threshold"):
        RelayConfig(gc_threshold=0)
    with pytest.raises(ValueError):
        gcpolicy.apply(0)


def test_a_full_collection_is_due_when_a_quarter_of_the_open_connections_closed() -> None:
    closed = gcpolicy.ClosedConnections(minimum=10)
    assert [closed.closed(still_open=100) for _ in range(25)] == [False] * 24 + [True]
    # With few connections open the minimum holds: ten hang-ups, one collection.
    assert [closed.closed(still_open=4) for _ in range(10)] == [False] * 9 + [True]
    assert closed.since_collection == 0


async def test_the_relay_collects_after_connections_close(
    config: RelayConfig, clock: FakeClock, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed connections are cyclic garbage (websockets' objects): the relay asks
    for the full collection that frees them instead of waiting for CPython's."""
    collections = asyncio.Queue[None]()
    monkeypatch.setattr(gcpolicy, "MIN_CLOSED_BEFORE_COLLECTING", 2)
    monkeypatch.setattr(gcpolicy, "COLLECT_DELAY_S", 0.0)
    monkeypatch.setattr(gcpolicy, "collect_closed", lambda: collections.put_nowait(None))
    async with relay_with(config, clock) as relay:
        ann = await clients.registered(relay.url, "ann")
        ben = await clients.registered(relay.url, "ben")
        await ann.close()
        await ben.close()
        await asyncio.wait_for(collections.get(), TEST_TIMEOUT_S)
