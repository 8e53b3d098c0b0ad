"""Fixtures of the black-box conformance suite: a relay URL and self-registered accounts.

With no option the suite starts one local relay per session
(``blindrelay serve --port 0 --db <tmp>``, waits for its ``listening ws://…``
line, SIGTERMs it at the end). ``--relay-url ws://…`` (declared in
``tests/conftest.py``) points it at any other implementation instead. Nothing
here reads a relay's database or imports its code: accounts are registered
over the wire with fresh random handles, so the suite can run again and again
against a live relay.

Async tests run under ``asyncio.run`` via the hook below (no plugin needed);
every connection a test opens through the ``relay`` fixture is closed after it.
"""

from __future__ import annotations

import asyncio
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blindrelay.protocol.frames import PrekeysUpload, Welcome

from ..asyncrun import AsyncFixture, async_test_runner
from .wire import Account, Peer, new_handle, one_time_prekeys, open_peer, signed_prekey

TEST_TIMEOUT_S = 30.0
"""Upper bound for one test; every wait inside is bounded much tighter."""

STARTUP_TIMEOUT_S = 15.0
LOCAL_RELAY_FLAGS = ["--register-burst", "100000", "--register-rate-per-h", "100000"]
"""The local relay's defaults but one: every test registers from 127.0.0.1, and a run
registers a few hundred accounts, so the per-address limit (SPEC §4.6.1) is raised;
docs/conformance.md says what an external relay needs."""
_LISTENING = re.compile(r"listening (wss?://\S+)")


# --- the relay under test -------------------------------------------------------


def _serve_command() -> list[str]:
    script = shutil.which("blindrelay", path=str(Path(sys.executable).parent))
    if script is None:
        script = shutil.which("blindrelay")
    if script is None:
        raise RuntimeError("no `blindrelay` command: install the package or pass --relay-url")
    return [script, "serve"]


@pytest.fixture(scope="session")
def relay_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL under test: ``--relay-url`` or a local relay started for this session."""
    url: str | None = request.config.getoption("--relay-url")
    if url:
        yield url
        return
    workdir = tmp_path_factory.mktemp("relay")
    with (workdir / "relay.log").open("wb") as log:
        proc = subprocess.Popen(  # our own command, no shell
            [*_serve_command(), "--port", "0", "--db", str(workdir / "relay.db"), *LOCAL_RELAY_FLAGS],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            yield _wait_for_url(proc, workdir / "relay.log")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def _wait_for_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            break
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            break
        if match := _LISTENING.search(line):
            return match.group(1)
    proc.kill()
    raise RuntimeError(f"relay did not start; its log:\n{log.read_text(errors='replace')}")


# --- running async tests --------------------------------------------------------


pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)


# --- accounts and connections ---------------------------------------------------


class Relay(AsyncFixture):
    """The relay under test as a test sees it: connect, register, log in again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._peers: list[Peer] = []

    async def __aexit__(self, *exc: object) -> None:
        for peer in self._peers:
            try:
                await asyncio.wait_for(peer.close(), 2)
            except Exception:
                peer.ws.transport.abort()  # never leak a socket, even from a stuck relay

    async def connect(self) -> Peer:
        """A new connection, HELLO read, not authenticated."""
        peer = await open_peer(self.url)
        self._peers.append(peer)
        return peer

    async def account(
        self,
        kind: str = "user",
        *,
        prefix: str | None = None,
        one_time: int = 0,
        signed: bool = False,
    ) -> Peer:
        """A freshly registered account, connected; optionally with prekeys published."""
        account = Account(new_handle(prefix or kind[:3]), kind)
        peer = await self.connect()
        welcome = await peer.register(account)
        assert isinstance(welcome, Welcome), f"registration refused: {welcome}"
        if signed or one_time:
            await self.publish(peer, one_time=one_time)
        return peer

    async def user(self, **kwargs: Any) -> Peer:
        return await self.account("user", **kwargs)

    async def business(self, **kwargs: Any) -> Peer:
        return await self.account("business", **kwargs)

    async def publish(self, peer: Peer, *, one_time: int = 0, first_id: int = 1) -> None:
        """Upload a signed prekey and ``one_time`` one-time prekeys (SPEC §5.2)."""
        assert peer.account is not None
        spk = signed_prekey(peer.account.key)
        keys = one_time_prekeys(first_id, one_time)
        for start in range(0, max(len(keys), 1), 100):
            answer = await peer.request(
                lambda i, s=start: PrekeysUpload(
                    id=i, signed_prekey=spk if s == 0 else None, one_time=keys[s : s + 100]
                )
            )
            assert type(answer).__name__ == "Ok", f"prekey upload refused: {answer}"

    async def login(self, account: Account | Peer) -> Peer:
        """A new authenticated connection for an existing account."""
        if isinstance(account, Peer):
            assert account.account is not None
            account = account.account
        peer = await self.connect()
        welcome = await peer.login(account)
        assert isinstance(welcome, Welcome), f"login refused: {welcome}"
        return peer


@pytest.fixture
def relay(relay_url: str) -> Relay:
    return Relay(relay_url)
