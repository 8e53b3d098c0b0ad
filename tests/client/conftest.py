"""What the SDK's tests share: running ``async def`` tests (no plugin needed), and the
key store every keystore test runs against twice.

Each coroutine test runs in a fresh event loop under ``TEST_TIMEOUT_S``, so a
bug fails instead of hanging. Plain helpers — clients online against a relay, an
inbox reader, businesses and their customers — are in :mod:`.harness`; one
connection's relay end in memory in :mod:`.fake_relay`; the relay and its clock in
tests/relays.py; key store records and files in :mod:`.keystore.samples` and
:mod:`.keystore.files`. Test modules import from these, never from each other.

The layout mirrors ``client/``: ``test_<module>.py`` holds the tests of
``client/<module>.py`` (unit tests first, then the same rules against a real relay),
``keystore/test_<module>.py`` those of ``client/keystore/<module>.py``. Scenario
modules, named for what they play end to end across modules: ``test_bulk`` (one
business, many customers, every outcome of ``send_many``), ``test_held`` (the
forged key changes of issue 13 item 3 against the relay's delivery window),
``test_sender_binding`` (a captured first message resent by another account),
``test_registration`` (the relay's registration policy met through the SDK and the
chat), ``test_rotation_crash`` (SIGKILL at each step of a rotation), ``test_docs``
(the examples of docs/sdk.md).
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
