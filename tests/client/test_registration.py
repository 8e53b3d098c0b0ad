"""The SDK registers under the relay's registration policy (SPEC §4.6)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from nacl.pwhash import argon2id

from blindrelay.protocol import limits
from blindrelay.protocol.errors import HandleTaken, RegistrationRefused
from blindrelay.server.cli import main
from blindrelay.server.registration import invite_digest
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

from ..relays import relay_at
from .harness import make_client, run, within

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


def test_the_sdk_registers_with_the_operators_invite(tmp_path: Path) -> None:
    """SPEC §4.6.4: on a relay that requires invites, register(invite=...) is how."""

    async def scenario() -> None:
        async with relay_at(tmp_path, require_invites=True) as relay:
            invite = secrets.token_bytes(limits.INVITE_BYTES)
            store = Tables(connect(tmp_path / "relay.db"))
            store.invites.add([invite_digest(invite)], 0)
            store.db.conn.close()
            uninvited = make_client()
            await within(uninvited.connect(relay.url))
            with pytest.raises(RegistrationRefused):
                await within(uninvited.register("mallory"))
            await uninvited.close()
            invited = make_client()
            await within(invited.connect(relay.url))
            await within(invited.register("alice", invite=invite))
            await within(invited.send("alice", "note to self"))
            await invited.close()

    run(scenario())


async def test_a_taken_handle_can_be_followed_at_once_by_another(tmp_path: Path) -> None:
    """Client.register: after HandleTaken "the connection is renewed, so another handle
    can be tried". Tried at once — no wait between the two calls — the second REGISTER
    used to go out on the connection the refusal had just ended, and failed with
    ConnectionLost (found by the "Connecting" example of docs/sdk.md)."""
    async with relay_at(tmp_path) as relay:
        first = make_client()
        await within(first.connect(relay.url))
        await within(first.register("alice"))
        second = make_client()
        await within(second.connect(relay.url))
        try:
            await second.register("alice")
        except HandleTaken:
            await second.register("alice.b")
        assert second.handle == "alice.b"
        await within(second.send("alice", "the second account works"))
        for client in (first, second):
            await client.close()


@pytest.mark.parametrize(
    ("policy", "handle", "line"),
    [
        ({"require_invites": True}, "alice",
         r"it needs an invite from its operator \(--invite HEX\)"),
        ({"register_burst": 2, "register_rate_per_h": 1.0}, "alice",
         r"too many registrations from this address; try again in \d+ min"),
        ({}, "air1ine", r"the handle is taken or looks like a business's; choose another; run again with another --handle \(the profile is kept for it\)"),
    ],
)  # fmt: skip
def test_chat_says_in_one_line_what_a_refused_registration_needs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    policy: dict[str, Any],
    handle: str,
    line: str,
) -> None:
    """SPEC §3.2, §4.6: a person registering with ``blindrelay chat`` on a relay that
    refuses them is told what to do, in one line, without a traceback."""
    monkeypatch.setenv("CHAT_PASSPHRASE", "correct horse")

    def chat(url: str) -> int:
        return main(["chat", "--relay", url, "--profile", str(tmp_path / "profile"),
                     "--handle", handle, "--passphrase-env", "CHAT_PASSPHRASE"])  # fmt: skip

    codes: list[int] = []

    async def scenario() -> None:
        async with relay_at(tmp_path, **policy) as relay:
            if not policy.get("require_invites"):  # a business, and the address's tokens
                for name in ("airline", "skyway"):
                    client = make_client()
                    await within(client.connect(relay.url))
                    await within(client.register(name, "business"))
                    await client.close()
            codes.append(await asyncio.to_thread(chat, relay.url))

    run(scenario())
    out = capsys.readouterr().out
    assert codes == [1]
    expected = f"blindrelay chat: the relay refused to register {handle}: {line}\n"
    assert re.fullmatch(expected, out), out


def test_a_refused_registration_strands_nothing_the_profile_registers_another_handle(
    tmp_path: Path,
) -> None:
    """Issue 18: a REGISTER the relay refused leaves the profile unregistered and usable:
    the next run registers another handle, the one after logs in. Run as a person would,
    with standard input closed at once (``chat < /dev/null``): no traceback, no hang."""
    profile = tmp_path / "me.db"
    env = {**os.environ, "CHAT_PASSPHRASE": "correct horse"}

    def chat(url: str, *handle: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", url,
             "--profile", str(profile), "--passphrase-env", "CHAT_PASSPHRASE", *handle],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, env=env,
            check=False,
        )  # fmt: skip

    runs: list[subprocess.CompletedProcess[str]] = []

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            client = make_client()
            await within(client.connect(relay.url))
            await within(client.register("airline", "business"))
            await client.close()
            for handle in (["--handle", "air1ine"], ["--handle", "alice"], [],
                           ["--handle", "bob"]):  # fmt: skip
                runs.append(await asyncio.to_thread(chat, relay.url, *handle))

    run(scenario())
    refused, registered, logged_in, other = runs
    for done in runs:
        assert "Traceback" not in done.stdout + done.stderr, done
    assert refused.returncode == 1 and "run again with another --handle" in refused.stdout
    assert profile.exists()
    assert registered.returncode == 0 and "registered alice" in registered.stdout
    assert logged_in.returncode == 0 and "logged in as alice" in logged_in.stdout
    assert other.returncode == 2 and "is the profile of alice" in other.stdout
