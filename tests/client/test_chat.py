"""``blindrelay chat`` (client/chat/) driven the way a person drives it: on a terminal.

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
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.business import Business
from blindrelay.client.sdk import Client, Message
from blindrelay.protocol.errors import RecipientUnavailable
from blindrelay.protocol.signed import ConsentStatement
from blindrelay.server.admin import public_key_of
from blindrelay.server.cli import main as relay_cli

from .harness import cheap_profile, replace_relay_key

TIMEOUT_S = 15.0
PASSPHRASE_ENV = "CHAT_TEST_PASSPHRASE"


class Terminal:
    """A process on a pseudo-terminal (echo off), read until a pattern appears."""

    def __init__(self, args: list[str], env: dict[str, str], term: str = "dumb") -> None:
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # what we type is not mistaken for what it prints
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        # A dumb terminal gets the chat's line mode; the line editor's test names another.
        env = {**env, "TERM": term}
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
                raise AssertionError(f"no {pattern!r} in:\n{self.seen[self.read_to :]}")
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


@contextlib.contextmanager
def relay_process(db: Path, port: int = 0) -> Iterator[str]:
    """``blindrelay serve`` on ``db`` as a subprocess; yields its URL."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "blindrelay.server.cli", "serve", "--port", str(port),
         "--db", str(db), "--sth-interval-s", "0.1"],
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


@pytest.fixture
def relay_url(tmp_path: Path) -> Iterator[str]:
    with relay_process(tmp_path / "relay.db") as url:
        yield url


def passphrase_of(handle: str) -> str:
    return f"passphrase of {handle}"


def made(profile: Path, handle: str, *, real_cost: bool) -> Path:
    """``profile``, made first at the tests' low Argon2id cost (``cheap_profile``) unless it
    exists or ``real_cost``. The chat still registers it; only the tests about registration
    and passphrases pay the default cost (about a second of CPU) at every chat start."""
    if not real_cost and not profile.exists():
        cheap_profile(profile, passphrase_of(handle))
    return profile


def chat(url: str, profile: Path, handle: str, *options: str, real_cost: bool = False) -> Terminal:
    made(profile, handle, real_cost=real_cost)
    env = {**os.environ, PASSPHRASE_ENV: passphrase_of(handle)}
    return Terminal(
        [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", url,
         "--profile", str(profile), "--handle", handle, "--passphrase-env", PASSPHRASE_ENV,
         *options],
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
        bob.expect(r"\n\[message request\] alice: hello bob, it is alice\n")
        bob.expect(r"alice is not one of your contacts: /accept alice \(or a reply\) accepts, "
                   r"/block alice blocks")  # fmt: skip
        bob.expect(r"first message from alice; compare /safety alice")
        bob.type("/accept alice")
        bob.expect("accepted alice's message request")
        alice.expect(r"\(bob: delivered 1 message\(s\)\)")  # the receipt it was owed
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
        alice.expect(r"-> bob: sent|refused: no such user as bob, or you cannot write to them")
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
    first = chat(relay_url, profile, "carol", real_cost=True)
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


def customer(relay_url: str, tmp_path: Path, handle: str) -> tuple[Terminal, Path]:
    """A chat user who pins a fresh operator key (so badges verify), and that key's file."""
    key_file = tmp_path / "operator.key"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert relay_cli(["admin", "keygen", "--out", str(key_file)]) == 0
    operator_key = public_key_of(out.getvalue()).hex()
    env = {**os.environ, PASSPHRASE_ENV: passphrase_of(handle),
           "BLINDRELAY_OPERATOR_KEY": operator_key}  # fmt: skip
    profile = made(tmp_path / f"{handle}.profile", handle, real_cost=False)
    terminal = Terminal(
        [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", relay_url,
         "--profile", str(profile), "--handle", handle,
         "--passphrase-env", PASSPHRASE_ENV],
        env,
    )  # fmt: skip
    return terminal, key_file


async def verified_airline(
    relay_url: str, tmp_path: Path, key_file: Path, **options: Any
) -> Business:
    """The business "airline" (in-process SDK), its badge signed by the operator key."""
    client = Client.open(None)
    airline = Business(client, **options)
    await client.connect(relay_url)
    await client.register("airline", "business")
    await airline.publish_profile(display_name="Example Air", timezone="UTC", hours=[])
    with contextlib.redirect_stdout(io.StringIO()):
        assert relay_cli(["admin", "verify-business", "airline", "--name", "Example Air",
                          "--operator-key-file", str(key_file),
                          "--db", str(tmp_path / "relay.db")]) == 0  # fmt: skip
    return airline


def reader(terminal: Terminal) -> Callable[[str], Awaitable[re.Match[str]]]:
    """``terminal.expect`` for a coroutine: waits in a thread, the event loop runs on."""

    async def expect(pattern: str) -> re.Match[str]:
        return await asyncio.get_running_loop().run_in_executor(None, terminal.expect, pattern)

    return expect


@pytest.mark.slow
def test_a_consent_request_is_shown_with_the_badge_and_granted_then_blocked(
    relay_url: str, tmp_path: Path
) -> None:
    """A verified business (SDK) asks a chat user; the person answers with /grant, /block."""
    dave, key_file = customer(relay_url, tmp_path, "dave")
    expect = reader(dave)

    async def business_side() -> None:
        statements: asyncio.Queue[ConsentStatement] = asyncio.Queue()
        airline = await verified_airline(
            relay_url, tmp_path, key_file, on_consent_change=statements.put
        )
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
            assert refused.skipped == ["dave"], refused  # not sent, or refused by the relay
            dave.type("/contacts")
            # Its key came in its messages and dave never wrote to it: no log proof yet
            # (SPEC §15.6), which a first message to it would ask for.
            await expect(r"  airline \(business\) unlogged, BLOCKED by you \[✔ verified: Example Air\]")
        finally:
            await airline.close()

    try:
        asyncio.run(business_side())
    finally:
        assert dave.close() == 0
    assert "Gate B9" not in dave.seen


async def rotate_identity(relay_url: str, profile: Path, passphrase: str) -> None:
    """The profile's owner replaces its identity key (SPEC §3.4), as a new device would."""
    client = Client.open(profile, passphrase)
    try:
        await client.connect(relay_url)
        await client.login()
        await client.rotate_identity()
    finally:
        await client.close()


@pytest.mark.slow
def test_a_changed_identity_key_is_announced_and_blocks_sending_until_approved(
    relay_url: str, tmp_path: Path
) -> None:
    """Bob verified alice; her key changes; his chat warns, holds her message, refuses /msg."""
    alice_profile = tmp_path / "alice.profile"
    alice = chat(relay_url, alice_profile, "alice")
    bob = chat(relay_url, tmp_path / "bob.profile", "bob")
    try:
        alice.expect("registered alice")
        bob.expect("registered bob")
        alice.type("/msg bob hello bob")
        bob.expect(r"\n\[message request\] alice: hello bob\n")
        bob.type("/verify alice")
        bob.expect("alice marked verified")
        assert alice.close() == 0

        asyncio.run(rotate_identity(relay_url, alice_profile, passphrase_of("alice")))
        alice = chat(relay_url, alice_profile, "alice")
        alice.expect("logged in as alice")
        alice.type("/msg bob it is me, on a new phone")
        alice.expect("-> bob: sent")

        bob.expect(r"!!! WARNING: ALICE'S IDENTITY KEY CHANGED\. .*Compare /safety alice "
                   r"with them, then /approve alice\.")  # fmt: skip
        bob.type("/msg alice is that really you?")
        bob.expect(r"!!! WARNING: ALICE'S IDENTITY KEY CHANGED")
        bob.type("/contacts")
        bob.expect(r"  alice \(user\) KEY CHANGED, /approve after comparing\n")
        bob.type("/verify alice")
        bob.expect(r"alice's key changed: compare /safety alice, then /approve alice")
        assert "on a new phone" not in bob.seen  # held until bob decides

        alice.type("/safety bob")
        bob.type("/safety alice")
        number = alice.expect(r"safety number with bob: ((?:\d{5} ){11}\d{5})").group(1)
        assert bob.expect(r"safety number with alice: ([\d ]+)\n").group(1) == number
        bob.type("/approve alice")
        bob.expect("accepted alice's new key; messages to alice allowed again")
        bob.expect(r"\] alice: it is me, on a new phone\n")  # the held message follows
        bob.type("/msg alice welcome back")
        bob.expect("-> alice: sent")
        alice.expect(r"\nbob: welcome back\n")
        assert "is that really you" not in alice.seen  # refused before approval: never sent
        bob.type("/contacts")
        bob.expect(r"  alice \(user\) trusted\n")  # approved, no longer verified
        bob.type("/approve alice")
        bob.expect("no key change pending for alice")
    finally:
        assert alice.close() == 0
        assert bob.close() == 0


@pytest.mark.slow
def test_a_denied_business_cannot_ask_again_and_a_revoked_one_cannot_notify(
    relay_url: str, tmp_path: Path
) -> None:
    erin, key_file = customer(relay_url, tmp_path, "erin")
    expect = reader(erin)

    async def business_side() -> None:
        statements: asyncio.Queue[ConsentStatement] = asyncio.Queue()
        airline = await verified_airline(
            relay_url, tmp_path, key_file, on_consent_change=statements.put
        )
        await expect("registered erin")
        try:
            await airline.request_consent("erin", ["utility"], "Gate changes?")
            await expect(r"\[consent request\] airline .* asks for utility: Gate changes\?")
            erin.type("/deny airline")
            await expect("denied airline: utility")
            assert (await asyncio.wait_for(statements.get(), TIMEOUT_S)).action == "deny"
            with pytest.raises(RecipientUnavailable):
                await airline.request_consent("erin", ["utility"], "Pretty please?")
            erin.type("/requests")
            await expect("no consent requests waiting")

            erin.type("/grant airline utility")  # she changed her mind (no request needed)
            await expect("granted airline: utility")
            assert (await asyncio.wait_for(statements.get(), TIMEOUT_S)).action == "grant"
            assert (await airline.notify("utility", "Gate B7", to=["erin"])).sent == ["erin"]
            await expect(r"\[utility\] airline \[✔ verified: Example Air\]: Gate B7\n")
            erin.type("/revoke airline utility")
            await expect("revoked airline: utility")
            assert (await asyncio.wait_for(statements.get(), TIMEOUT_S)).action == "revoke"
            refused = await airline.notify("utility", "Gate C1", to=["erin"])
            assert refused.not_consented == ["erin"], refused  # the revoke has arrived
            erin.type("/revoke airline utility")  # nothing granted any more
            await expect("refused: ")
        finally:
            await airline.close()

    try:
        asyncio.run(business_side())
    finally:
        assert erin.close() == 0
    assert "Pretty please" not in erin.seen
    assert "Gate C1" not in erin.seen


@pytest.mark.slow
def test_unblocking_a_business_lets_the_user_write_but_keeps_consent_revoked(
    relay_url: str, tmp_path: Path
) -> None:
    fay, key_file = customer(relay_url, tmp_path, "fay")
    expect = reader(fay)

    async def business_side() -> None:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        blocks: asyncio.Queue[ConsentStatement] = asyncio.Queue()
        airline = await verified_airline(
            relay_url, tmp_path, key_file, on_message=inbox.put, on_block=blocks.put
        )
        airline.start()
        await expect("registered fay")
        try:
            fay.type("/grant airline utility")
            await expect("granted airline: utility")
            await airline.wait_for_consent("fay", "utility", timeout=TIMEOUT_S)
            assert (await airline.notify("utility", "Gate B7", to=["fay"])).sent == ["fay"]
            await expect(r"\[utility\] airline \[✔ verified: Example Air\]: Gate B7\n")
            fay.type("/block airline")
            await expect("blocked airline")
            assert (await asyncio.wait_for(blocks.get(), TIMEOUT_S)).action == "block"
            fay.type("/msg airline while blocked")
            await expect("refused: you blocked airline; /unblock airline first")
            fay.type("/grant airline utility")  # SPEC §7.4: refused while blocked (T54)
            await expect("refused: you blocked airline; /unblock airline first")

            fay.type("/unblock airline")
            await expect("unblocked airline")
            assert (await asyncio.wait_for(blocks.get(), TIMEOUT_S)).action == "unblock"
            refused = await airline.notify("utility", "Gate C1", to=["fay"])
            assert refused.not_consented == ["fay"], refused  # the block revoked consent
            fay.type("/msg airline is my booking still on?")
            await expect("-> airline: sent")
            message = await asyncio.wait_for(inbox.get(), TIMEOUT_S)
            assert (message.sender, message.body) == ("fay", "is my booking still on?")
            await airline.reply("fay", "Yes, see you on board")
            await expect(r"\nairline \[✔ verified: Example Air\]: Yes, see you on board\n")
        finally:
            await airline.close()

    try:
        asyncio.run(business_side())
    finally:
        assert fay.close() == 0
    assert "Gate C1" not in fay.seen


@pytest.mark.slow
def test_a_profile_name_other_than_the_badge_s_is_never_shown_as_verified(
    relay_url: str, tmp_path: Path
) -> None:
    """Issue 13 item 1: verified as "Bob's Bakery", the profile says "British Airways"."""
    gus, key_file = customer(relay_url, tmp_path, "gus")
    expect = reader(gus)

    async def business_side() -> None:
        client = Client.open(None)
        bakery = Business(client)
        await client.connect(relay_url)
        await client.register("bakery", "business")
        await bakery.publish_profile(display_name="British Airways", timezone="UTC", hours=[])
        with contextlib.redirect_stdout(io.StringIO()):
            assert relay_cli(["admin", "verify-business", "bakery", "--name", "Bob's Bakery",
                              "--operator-key-file", str(key_file),
                              "--db", str(tmp_path / "relay.db")]) == 0  # fmt: skip
        await expect("registered gus")
        try:
            await bakery.request_consent("gus", ["marketing"], "Your boarding pass?")
            await expect(r"\[consent request\] bakery \[✔ verified: Bob's Bakery\] "
                         r"\[!! its profile says \"British Airways\": NOT verified\] "
                         r"asks for marketing")  # fmt: skip
            gus.type("/contacts")
            await expect(r"  bakery \(business\) .*\[✔ verified: Bob's Bakery\] "
                         r"\[!! its profile says \"British Airways\": NOT verified\]")  # fmt: skip
        finally:
            await bakery.close()

    try:
        asyncio.run(business_side())
    finally:
        assert gus.close() == 0
    assert "verified: British Airways" not in gus.seen


@pytest.mark.slow
def test_a_relay_with_another_key_is_one_line_until_the_person_accepts_it(
    tmp_path: Path,
) -> None:
    """Issue 13 item 11: no traceback, nothing sent, and a deliberate way on."""
    db, profile = tmp_path / "relay.db", tmp_path / "hal.profile"
    with relay_process(db) as url:
        hal = chat(url, profile, "hal")
        hal.expect("registered hal")
        assert hal.close() == 0
    replace_relay_key(db)
    with relay_process(db) as url:
        hal = chat(url, profile, "hal")
        line = hal.expect(
            r"blindrelay chat: \S+ presents relay key ([0-9a-f]{64}), not [0-9a-f]{64} pinned "
            r"in this profile; nothing was sent\. If the relay's operator confirms the new "
            r"key, run again with --accept-relay-key ([0-9a-f]{64})\n"
        )
        assert hal.close() == 1
        assert "Traceback" not in hal.seen and "logged in" not in hal.seen
        new_key = line.group(1)
        assert line.group(2) == new_key

        hal = chat(url, profile, "hal", "--accept-relay-key", new_key)
        hal.expect("logged in as hal")
        assert hal.close() == 0
        hal = chat(url, profile, "hal")  # pinned from now on
        hal.expect("logged in as hal")
        assert hal.close() == 0


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_chat_command_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: the README's chat command, word for word (only the relay's port is this
    test's), registers on its first run with the passphrase typed at the prompt, and the
    same command without --handle logs in on the next."""
    written = re.search(r"`(blindrelay chat [^`]+)`", README.read_text())
    assert written is not None, "the README shows no chat command"
    argv = written.group(1).split()
    assert argv[:2] == ["blindrelay", "chat"] and "--handle" in argv
    monkeypatch.chdir(tmp_path)  # me.db is made where the person stands
    with relay_process(tmp_path / "relay.db") as url:
        command = [sys.executable, "-m", "blindrelay.server.cli",
                   *[url if word.startswith("ws://") else word for word in argv[1:]]]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDRELAY_")}
        for run, says in ((command, "registered alice"),
                          (command[: command.index("--handle")], "logged in as alice")):  # fmt: skip
            terminal = Terminal(run, env)
            terminal.expect("profile passphrase:")
            terminal.type("correct horse battery")
            terminal.expect(says)
            assert terminal.close() == 0
            assert "Traceback" not in terminal.seen


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB012]|\x1b[=>]")


def editor_chat(url: str, profile: Path, handle: str) -> Terminal:
    """The chat on a terminal that is not dumb: prompt_toolkit's line editor. CPR is off
    (a pty answers no cursor-position request)."""
    made(profile, handle, real_cost=False)
    env = {**os.environ, PASSPHRASE_ENV: passphrase_of(handle), "PROMPT_TOOLKIT_NO_CPR": "1"}
    return Terminal(
        [sys.executable, "-m", "blindrelay.server.cli", "chat", "--relay", url,
         "--profile", str(profile), "--handle", handle, "--passphrase-env", PASSPHRASE_ENV],
        env, term="xterm",
    )  # fmt: skip


def plain(terminal: Terminal) -> str:
    """What the terminal showed, its escape sequences removed."""
    return ANSI.sub("", terminal.seen)


def wait_for(terminal: Terminal, pattern: str) -> None:
    """Until ``pattern`` is in the terminal's text without escapes (the line editor redraws
    its prompt around what is printed above it)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not re.search(pattern, plain(terminal)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in:\n{plain(terminal)}")
        with contextlib.suppress(AssertionError):
            terminal.expect(r"[\s\S]")  # read whatever came


@pytest.mark.slow
def test_the_line_editor_prompts_with_the_contact_keeps_history_and_prints_above(
    relay_url: str, tmp_path: Path
) -> None:
    """Issue 18: on a real terminal the prompt says who we talk to; plain lines go to them;
    ↑ recalls the last line; a message arriving while we type is printed above the prompt;
    and the conversation is shown again when the profile is opened the next time."""
    bob = chat(relay_url, tmp_path / "bob.db", "bob")
    bob.expect("registered bob")
    alice = editor_chat(relay_url, tmp_path / "alice.db", "alice")
    wait_for(alice, r"registered alice")
    wait_for(alice, r"alice>")
    os.write(alice.master, b"/to bob\r")
    wait_for(alice, r"alice → bob>")
    os.write(alice.master, b"hello from the editor\r")
    bob.expect(r"\[message request\] alice: hello from the editor\n")
    wait_for(alice, r"-> bob: sent")
    os.write(alice.master, b"\x1b[A\r")  # ↑ then Enter: the same line again
    bob.expect(r"alice: hello from the editor\n")
    os.write(alice.master, b"half a li")  # typing, not sent yet
    bob.type("/msg alice hi alice")
    wait_for(alice, r"bob: hi alice")
    os.write(alice.master, b"ne\r")
    bob.expect(r"alice: half a line\n")
    os.write(alice.master, b"/quit\r")
    assert alice.process.wait(timeout=TIMEOUT_S) == 0
    os.close(alice.master)
    assert "Traceback" not in plain(alice)

    again = chat(relay_url, tmp_path / "alice.db", "alice")
    again.expect("logged in as alice")
    again.expect(r"history with bob:\n    you: hello from the editor\n")
    again.expect(r"    you: half a line\n")
    assert again.close() == 0
    assert bob.close() == 0


@pytest.mark.slow
def test_a_business_plays_the_consent_story_from_the_chat(relay_url: str, tmp_path: Path) -> None:
    """Issue 18: a business account in the chat publishes its profile and hours, asks a
    customer who wrote to it for consent, hears the grant, and notifies."""
    shop = chat(relay_url, tmp_path / "shop.db", "corner-shop", "--business")
    expect = reader(shop)

    async def customer_side() -> None:
        await expect("registered corner-shop")
        await expect("business commands: /request-consent, /notify")
        shop.type("/help notify")
        await expect(r"/notify CATEGORY TEXT: send TEXT to every customer who granted")
        shop.type("/profile Corner Shop Europe/Berlin")
        await expect(r"profile published: Corner Shop \(Europe/Berlin\)")
        shop.type("/hours mon-fri 09:00-17:00")
        await expect(r"profile published: Corner Shop \(Europe/Berlin, 5 opening interval")
        dave = Client.open(None)
        await dave.connect(relay_url)
        await dave.register("dave")
        incoming = dave.messages()
        try:
            await dave.send("corner-shop", "do you deliver?")
            await expect(r"dave: do you deliver\?")
            shop.type("/request-consent dave utility We text you when your order is ready")
            await expect("asked dave for utility")
            request = await asyncio.wait_for(anext(incoming), TIMEOUT_S)
            assert request.is_consent_request and request.categories == ("utility",)
            await dave.grant("corner-shop", ["utility"])
            await expect(r"\[consent\] dave grant utility")
            shop.type("/notify utility Your order is ready")
            await expect("notified 1: dave")
            note = await asyncio.wait_for(anext(incoming), TIMEOUT_S)
            assert (note.category, note.body) == ("utility", "Your order is ready")
            shop.type("/away Closed until Monday")
            await expect("away reply: Closed until Monday")
            shop.type("/notify gold nothing")
            await expect(r"usage: /notify CATEGORY TEXT")
        finally:
            await dave.close()

    try:
        asyncio.run(customer_side())
    finally:
        assert shop.close() == 0
    assert "Traceback" not in shop.seen


@pytest.mark.slow
def test_the_chat_says_when_the_relay_goes_away_and_comes_back(tmp_path: Path) -> None:
    """Issue 18: a stopped relay is a visible line, not silence; what is typed meanwhile
    waits, and goes once the relay is back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    terminals: list[Terminal] = []
    try:
        with relay_process(tmp_path / "relay.db", port) as url:
            bob = chat(url, tmp_path / "bob.db", "bob")
            terminals.append(bob)
            bob.expect("registered bob")
            alice = chat(url, tmp_path / "alice.db", "alice")
            terminals.append(alice)
            alice.expect("registered alice")
        alice.expect("disconnected from the relay — reconnecting")
        alice.type("/msg bob typed while the relay was away")
        alice.expect("-> bob: waiting for the relay")
        with relay_process(tmp_path / "relay.db", port):
            said = {alice.expect(r"reconnected to the relay|-> bob: sent").group(0) for _ in "12"}
            assert said == {"reconnected to the relay", "-> bob: sent"}, alice.seen
            bob.expect(r"alice: typed while the relay was away\n")
    finally:
        assert [terminal.close() for terminal in terminals] == [0] * len(terminals)
