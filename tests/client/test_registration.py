"""The SDK registers under the relay's registration policy (SPEC §4.6)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from nacl.pwhash import argon2id

from .test_sdk import make_client, relay_at, run, within

TINY_POW = {"pow_bits": 3, "pow_opslimit": 1, "pow_memlimit": 1024 * 1024}


def test_the_sdk_solves_the_relays_proof_of_work_off_its_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §4.6.3: the SDK finds the nonce HELLO asks for — seconds of work on a slow
    device, so never on the thread that runs the application's event loop."""
    solver_threads: set[int] = set()
    real = argon2id.kdf

    def counted(*args: Any, **kwargs: Any) -> bytes:
        solver_threads.add(threading.get_ident())
        return real(*args, **kwargs)

    async def scenario() -> None:
        async with relay_at(tmp_path, **TINY_POW) as relay:
            client = make_client()
            await within(client.connect(relay.url))
            monkeypatch.setattr(argon2id, "kdf", counted)
            await within(client.register("alice"))
            await within(client.send("alice", "note to self"))
            await client.close()

    run(scenario())
    assert solver_threads and threading.get_ident() not in solver_threads

