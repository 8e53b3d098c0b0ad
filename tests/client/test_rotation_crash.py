"""Crash test: an identity rotation killed with SIGKILL at each of its steps recovers.

SPEC §3.4: a rotation changes the key the relay holds and the key the profile holds,
which no single transaction can cover. The account's owner runs in a process of its
own (tests/client/rotation_owner.py, a profile in a SQLite keystore) against a relay
this test starts, and is stopped at a named step of the rotation (a keystore write)
and killed with SIGKILL there; reopening the profile must then end with exactly one
identity: the key the rotation was for, held by the profile and by the relay (login
works), with which a new contact establishes a session and exchanges messages, and
which a further reopening keeps. Some cases kill the reopened process too, during its
recovery. Every wait is for a line or a process exit, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Backoff, Client
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import serve

pytestmark = pytest.mark.slow

OWNER = Path(__file__).with_name("rotation_owner.py")
TIMEOUT_S = 30.0
HANDLE = "owner"
PEER = "peer"
FAST = Backoff(initial=0.01, factor=2.0, cap=0.05)
REGISTRATIONS = {"register_burst": 1_000, "register_rate_per_h": 1_000.0}
"""Every client of this test comes from 127.0.0.1 (SPEC §4.6.1)."""


class Owner:
    """One run of rotation_owner.py, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[str] = []

    @classmethod
    async def start(
        cls, url: str, profile: Path, action: str, *, pause_at: str | None = None
    ) -> Owner:
        env = {"ROTATION_PAUSE_AT": pause_at} if pause_at else {}
        log = profile.with_name(f"owner-{action}-{pause_at}.log")
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(OWNER), url, str(profile), HANDLE, action, PEER,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                env={**_environ(), **env},
            )  # fmt: skip
        return cls(proc, log)

    async def expect(self, prefix: str) -> str:
        """The rest of the next line starting with ``prefix``."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    await self.proc.wait()
                    raise AssertionError(
                        f"owner exited ({self.proc.returncode}) before {prefix!r}; "
                        f"it printed {self.lines}; stderr:\n{self.log.read_text()}"
                    )
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line.removeprefix(prefix).strip()

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def finish(self) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await self.expect_end()

    async def expect_end(self) -> None:
        assert self.proc.stdout is not None
        rest = await self.proc.stdout.read()
        self.lines += rest.decode().splitlines()
        status = await self.proc.wait()
        assert status == 0, f"owner exited {status}; stderr:\n{self.log.read_text()}"


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ROTATION_PAUSE_AT"}


KILL_SEQUENCES = [
    ("seed-kept",),
    ("identity-replacing",),
    ("identity-replaced",),
    ("seed-forgotten",),
    ("prekeys-made",),
    ("seed-kept", "identity-replacing"),
    ("seed-kept", "prekeys-made"),
    ("identity-replacing", "identity-replacing"),
    ("identity-replacing", "identity-replaced"),
]
"""Where the rotating process is killed, then where each reopening is, until one is not."""


@pytest.mark.parametrize("kills", KILL_SEQUENCES, ids="+".join)
def test_a_rotation_killed_at_any_step_recovers_to_one_identity_the_relay_accepts(
    tmp_path: Path, kills: tuple[str, ...]
) -> None:
    async def scenario() -> None:
        relay = await serve(
            RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db", **REGISTRATIONS)
        )
        profile = tmp_path / "owner.profile"
        started: list[Owner] = []
        peer = Client(MemoryKeyStore(), backoff=FAST)

        async def run_owner(action: str, pause_at: str | None = None) -> Owner:
            owner = await Owner.start(relay.url, profile, action, pause_at=pause_at)
            started.append(owner)
            return owner

        try:
            owner = await run_owner("register")
            old_key = await owner.expect("identity")
            await owner.finish()

            rotating = await run_owner("rotate", kills[0])
            assert await rotating.expect("identity") == old_key
            new_key = await rotating.expect("pending")
            assert new_key != old_key
            await rotating.expect(f"paused {kills[0]}")
            await rotating.kill()

            for point in kills[1:]:  # killed again, while reopening the profile
                reopened = await run_owner("identity", point)
                await reopened.expect(f"paused {point}")
                await reopened.kill()

            await peer.connect(relay.url)
            await peer.register(PEER)
            checking = await run_owner("check")
            assert await checking.expect("identity") == new_key
            await checking.expect("online")
            await peer.send(HANDLE, "hello after the crash")
            replies = peer.messages()
            async with asyncio.timeout(TIMEOUT_S):
                reply = await anext(replies)
            await replies.aclose()
            assert (reply.sender, reply.body) == (HANDLE, "echo hello after the crash")
            assert await checking.expect("safety") == peer.safety_number(HANDLE)
            await checking.finish()

            again = await run_owner("identity")
            assert await again.expect("identity") == new_key
            await again.finish()
            assert not any(line.startswith("pending") for line in again.lines)
        finally:
            for owner in started:
                if owner.proc.returncode is None:
                    owner.proc.kill()
                    await owner.proc.wait()
            await peer.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT_S))
