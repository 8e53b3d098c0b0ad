"""``blindrelay chat`` (client/chat.py) driven the way a person drives it: on a terminal.

Two chat processes on pseudo-terminals against a ``blindrelay serve``
subprocess. Input is typed line by line; every wait reads the terminal until
the expected line appears (with a timeout) — no sleeps.
"""

from __future__ import annotations

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
