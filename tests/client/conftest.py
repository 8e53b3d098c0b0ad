"""What the SDK's tests share: running ``async def`` tests (no plugin needed), and the
key store every keystore test runs against twice.

Each coroutine test runs in a fresh event loop under ``TEST_TIMEOUT_S``, so a
bug fails instead of hanging. Plain helpers — clients online against a relay, an
inbox reader, businesses and their customers — are in :mod:`.harness`; one
connection's relay end in memory in :mod:`.fake_relay`; the relay and its clock in
tests/relays.py; key store records and files in :mod:`.keystore.samples` and
:mod:`.keystore.files`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blindrelay.client.keystore import KeyStore, MemoryKeyStore

from ..asyncrun import async_test_runner
from .keystore.files import open_sqlite

TEST_TIMEOUT_S = 60.0
"""For a whole test: several clients, a relay, dozens of round trips on loopback."""

pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    """Each store in turn: the record kinds are written once over the storage primitives
    (client/keystore/base.py), so both must decide alike. Five processed ids, so pruning
    shows."""
    made: KeyStore = (
        MemoryKeyStore(max_processed_ids=5)
        if request.param == "memory"
        else open_sqlite(tmp_path / "keys.db", max_processed_ids=5)
    )
    yield made
    made.close()
