"""``blindrelay chat`` (client/chat.py) driven the way a person drives it: on a terminal.

Two chat processes on pseudo-terminals against a ``blindrelay serve``
subprocess. Input is typed line by line; every wait reads the terminal until
the expected line appears (with a timeout) — no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindrelay.client.business import Business
from blindrelay.client.sdk import Client
from blindrelay.protocol.signed import ConsentStatement
from blindrelay.server.cli import main as relay_cli

TIMEOUT_S = 15.0
PASSPHRASE_ENV = "CHAT_TEST_PASSPHRASE"


class Terminal:
    """A process on a pseudo-terminal (echo off), read until a pattern appears."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # what we type is not mistaken for what it prints
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.master = master
        self.seen = ""
        self.read_to = 0

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def expect(self, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` in output not yet consumed by an earlier expect."""
        deadline = time.monotonic() + TIMEOUT_S
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.seen, self.read_to)
            if match is not None:
                self.read_to = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in:\n{self.seen[self.read_to:]}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {pattern!r}:\n{self.seen}")
                self.seen += chunk.decode(errors="replace").replace("\r", "")

    def close(self) -> int:
        if self.process.poll() is None:
            self.type("/quit")
        try:
            status = self.process.wait(timeout=TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.master)
        return status


@pytest.fixture
def relay_url(tmp_path: Path) -> Iterator[str]:
    relay = subprocess.Popen(
        [sys.executable, "-m", "blindrelay.server.cli", "serve", "--port", "0",
         "--db", str(tmp_path / "relay.db")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert relay.stdout is not None
    try:
        line = relay.stdout.readline().decode().strip()
        assert line.startswith("listening "), line
        yield line.removeprefix("listening ")
    finally:
        relay.terminate()
        relay.wait(timeout=10)
        relay.stdout.close()


def chat(url: str, profile: Path, handle: str) -> Terminal:
    env = {**os.environ, PASSPHRASE_ENV: f"passphrase of {handle}"}
    return Terminal(
        [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", url,
         "--profile", str(profile), "--handle", handle, "--passphrase-env", PASSPHRASE_ENV],
        env,
    )  # fmt: skip


@pytest.mark.slow
def test_two_people_chat_compare_safety_numbers_and_one_blocks_the_other(
    relay_url: str, tmp_path: Path
) -> None:
    alice = chat(relay_url, tmp_path / "alice.profile", "alice")
    bob = chat(relay_url, tmp_path / "bob.profile", "bob")
    try:
        alice.expect("registered alice on ws://")
        bob.expect("registered bob on ws://")

        alice.type("/msg bob hello bob, it is alice")
        alice.expect("-> bob: sent")
        bob.expect(r"\nalice: hello bob, it is alice\n")
        bob.expect(r"first message from alice; compare /safety alice")
        bob.type("/msg alice hi alice")
        alice.expect(r"\nbob: hi alice\n")

        alice.type("/safety bob")
        bob.type("/safety alice")
        number = alice.expect(r"safety number with bob: ((?:\d{5} ){11}\d{5})").group(1)
        assert bob.expect(r"safety number with alice: ([\d ]+)\n").group(1) == number
        alice.type("/verify bob")
        alice.expect("bob marked verified")
        alice.type("/contacts")
        alice.expect(r"  bob \(user\) verified")

        bob.type("/block alice")
        bob.expect("blocked alice")
        alice.type("/msg bob are you still there")
        alice.expect(r"-> bob: sent|refused: RecipientUnavailable")
        bob.type("/unblock alice")
        bob.expect("unblocked alice")
        alice.type("/msg bob after the unblock")
        bob.expect(r"\nalice: after the unblock\n")
        assert "are you still there" not in bob.seen  # the blocked one never arrived

        alice.type("/nonsense")
        alice.expect("unknown command /nonsense")
    finally:
        assert alice.close() == 0
        assert bob.close() == 0


@pytest.mark.slow
def test_a_profile_logs_in_again_and_refuses_a_wrong_passphrase(
    relay_url: str, tmp_path: Path
) -> None:
    profile = tmp_path / "carol.profile"
    first = chat(relay_url, profile, "carol")
    first.expect("registered carol")
    assert first.close() == 0

    again = chat(relay_url, profile, "carol")
    again.expect("logged in as carol")
    assert again.close() == 0

    env = {**os.environ, PASSPHRASE_ENV: "not the passphrase"}
    wrong = Terminal(
        [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", relay_url,
         "--profile", str(profile), "--passphrase-env", PASSPHRASE_ENV],
        env,
    )  # fmt: skip
    wrong.expect("wrong passphrase")
    assert wrong.close() == 1


@pytest.mark.slow
def test_a_consent_request_is_shown_with_the_badge_and_granted_then_blocked(
    relay_url: str, tmp_path: Path
) -> None:
    """A verified business (SDK) asks a chat user; the person answers with /grant, /block."""
    key_file = tmp_path / "operator.key"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert relay_cli(["admin", "keygen", "--out", str(key_file)]) == 0
    operator_key = out.getvalue().strip()
    env = {**os.environ, PASSPHRASE_ENV: "dave's passphrase", "BLINDRELAY_OPERATOR_KEY": operator_key}
    dave = Terminal(
        [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", relay_url,
         "--profile", str(tmp_path / "dave.profile"), "--handle", "dave",
         "--passphrase-env", PASSPHRASE_ENV],
        env,
    )  # fmt: skip

    async def business_side() -> None:
        loop = asyncio.get_running_loop()

        async def expect(pattern: str) -> re.Match[str]:
            return await loop.run_in_executor(None, dave.expect, pattern)

        statements: asyncio.Queue[ConsentStatement] = asyncio.Queue()
        client = Client.open(None)
        airline = Business(client, on_consent_change=statements.put)
        await client.connect(relay_url)
        await client.register("airline", "business")
        await airline.publish_profile(display_name="Example Air", timezone="UTC", hours=[])
        with contextlib.redirect_stdout(io.StringIO()):
            assert relay_cli(["admin", "verify-business", "airline", "--name", "Example Air",
                              "--operator-key", str(key_file),
                              "--db", str(tmp_path / "relay.db")]) == 0  # fmt: skip
        await expect("registered dave")
        try:
            await airline.request_consent("dave", ["utility"], "Gate changes for your flights?")
            await expect(r"\[consent request\] airline \[✔ verified: Example Air\] asks for "
                         r"utility: Gate changes for your flights\?")  # fmt: skip
            dave.type("/requests")
            await expect(r"  airline \[✔ verified: Example Air\] asks for utility")
            dave.type("/grant airline")
            await expect("granted airline: utility")
            assert (await asyncio.wait_for(statements.get(), TIMEOUT_S)).action == "grant"
            await airline.notify("utility", "Gate B7", to=["dave"])
            await expect(r"\[utility\] airline \[✔ verified: Example Air\]: Gate B7")
            dave.type("/block airline")
            await expect("blocked airline")
            refused = await airline.notify("utility", "Gate B9", to=["dave"])
            assert refused.refused == ["dave"], refused
            dave.type("/contacts")
            await expect(r"  airline \(business\) trusted \[✔ verified: Example Air\]")
        finally:
            await airline.close()

    try:
        asyncio.run(business_side())
    finally:
        assert dave.close() == 0
    assert "Gate B9" not in dave.seen
