"""One run of ``blindrelay chat``: open the profile, sign in, read commands until /quit.

The profile's keystore is sealed with a passphrase, asked with getpass or read
from ``--passphrase-env``. The first run registers the handle (with the
operator's invite on a closed relay); later runs log in. Every way this can
fail ends as one line and an exit status, never a traceback.

Not here: what a command does and how a message is shown (``console``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from blindrelay.protocol.errors import (
    BlindrelayError,
    HandleTaken,
    LogForked,
    LogUnchecked,
    MalformedFrame,
    RateLimited,
    RegistrationRefused,
)

from ..business import Business
from ..keystore import KeyStoreError
from ..sdk import Client, ConnectionLost, RelayKeyChanged
from .console import Chat


@dataclass(frozen=True, slots=True)
class Options:
    relay: str
    profile: Path
    handle: str | None
    kind: str
    passphrase: str
    operator_key: bytes | None
    invite: bytes | None = None
    """For a relay that requires invites (SPEC §4.6.4); used at registration only."""
    accept_relay_key: bytes | None = None
    """Pin this relay key first (after the relay's operator confirmed a new one)."""


async def session(options: Options, out: IO[str]) -> int:
    """Open the profile, connect, register or log in, then read commands until /quit."""
    chat: Chat | None = None

    def changed(handle: str) -> None:
        if chat is not None:
            chat.warn_identity_change(handle)

    def alarm(exc: LogForked | LogUnchecked) -> None:
        """The SDK tells these once a run (SPEC §15.6 rule 5), a kept fork at the first
        connection: said at once, not only when a send fails (reading never does)."""
        if chat is not None:
            chat.log_alarm(exc)

    try:
        client = Client.open(
            options.profile, options.passphrase,
            operator_key=options.operator_key, on_identity_change=changed,
            on_log_forked=alarm, on_log_unchecked=alarm,
        )  # fmt: skip
    except KeyStoreError as exc:
        print(f"blindrelay chat: {options.profile}: {exc}", file=out, flush=True)
        return 1
    except OSError as exc:  # not ours to write: permissions, a read-only file system
        print(f"blindrelay chat: {options.profile}: cannot open or create it "
              f"({exc.strerror or exc}); give a --profile in a folder you can write to",
              file=out, flush=True)  # fmt: skip
        return 1
    # The SDK's own warnings (a relay error it retries) are for a log, not this screen:
    # what matters is said by the chat in words (``Chat.watch_connection``, refusals).
    sdk_log = logging.getLogger("blindrelay.client")
    level = sdk_log.level
    sdk_log.setLevel(logging.ERROR)
    chat = Chat(client, out)
    chat.columns = _columns
    tasks: list[asyncio.Task[None]] = []
    try:
        if options.accept_relay_key is not None:
            client.accept_relay_key(options.accept_relay_key)
        await client.connect(options.relay)
        refused = await _sign_in(chat, options)
        if refused is not None:
            return refused
        if client.store.get_identity().account_kind == "business":  # type: ignore[union-attr]
            chat.business = Business(
                client, on_message=chat.business_message,
                on_consent_change=chat.statement, on_block=chat.statement,
            )  # fmt: skip
            chat.business.start()
            chat.say("business commands: /request-consent, /notify, /profile, /hours, /away")
        chat.show_history()
        chat.say("/help lists the commands; /to HANDLE, then plain lines go to them")
        tasks = [asyncio.create_task(chat.receive()), asyncio.create_task(chat.watch_connection())]
        await _read_commands_while_receiving(chat, tasks[0])
        await asyncio.wait_for(chat.settled(), SETTLE_S) if chat.client.online else None
        return 0
    except RelayKeyChanged as exc:
        chat.say(
            f"blindrelay chat: {options.relay} presents relay key {exc.presented.hex()}, not "
            f"{exc.pinned.hex()} pinned in this profile; nothing was sent. If the relay's "
            f"operator confirms the new key, run again with --accept-relay-key "
            f"{exc.presented.hex()}"
        )
        return 1
    except (ConnectionLost, BlindrelayError) as exc:
        chat.say(f"blindrelay chat: {chat.explain(exc, options.handle or '')}")
        return 1
    except TimeoutError:
        chat.say("blindrelay chat: left with messages still waiting; they go at the next run")
        return 0
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if chat.business is not None:
            await chat.business.close()
        else:
            await client.close()
        sdk_log.setLevel(level)  # the process's logging is its own again


def _columns() -> int | None:
    """The width of the terminal the chat prints on; None for a pipe, a file, or a
    terminal that does not say (a pseudo-terminal nobody sized)."""
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or None  # type: ignore[union-attr]
    except (OSError, ValueError, AttributeError):
        return None


SETTLE_S = 5.0
"""How long /quit waits for the sends typed before it to be answered."""


async def _sign_in(chat: Chat, options: Options) -> int | None:
    """Register a new profile's handle or log in; the exit status if that was refused."""
    client = chat.client
    if client.registered:
        if options.handle is not None and options.handle != client.handle:
            chat.say(f"blindrelay chat: {options.profile} is the profile of {client.handle}; "
                     "leave out --handle, or give another --profile for a new account")  # fmt: skip
            return 2
        await client.login()
        chat.say(f"logged in as {client.handle} on {options.relay}")
        return None
    if options.handle is None:
        chat.say(f"blindrelay chat: {options.profile} is not registered yet: give --handle "
                 "NAME to register it")  # fmt: skip
        return 2
    try:
        await client.register(options.handle, options.kind, invite=options.invite)  # type: ignore[arg-type]
    except (HandleTaken, RateLimited, RegistrationRefused, MalformedFrame) as exc:
        why = _registration_refused(exc, invited=options.invite is not None)
        if isinstance(exc, HandleTaken | MalformedFrame):  # the profile is still unregistered
            why += "; run again with another --handle (the profile is kept for it)"
        chat.say(f"blindrelay chat: the relay refused to register {options.handle}: {why}")
        return 1
    chat.say(f"registered {options.handle} on {options.relay}")
    return None


def _registration_refused(exc: BlindrelayError, *, invited: bool) -> str:
    """What the person can do about a refused REGISTER (SPEC §3.2, §4.6)."""
    if isinstance(exc, MalformedFrame):
        return f"not a valid handle ({exc.detail})"
    if isinstance(exc, HandleTaken):
        return "the handle is taken or looks like a business's; choose another"
    if isinstance(exc, RateLimited):
        minutes = -(-exc.retry_after_ms // 60_000)
        return f"too many registrations from this address; try again in {minutes} min"
    if invited:
        return "the invite is unknown or already used (or the proof of work failed)"
    return "it needs an invite from its operator (--invite HEX)"


async def _read_commands_while_receiving(chat: Chat, receiving: asyncio.Task[None]) -> None:
    """Run commands until /quit; raise why if the client stops for good meanwhile.

    The messages stop with it, and one stop is an attack's mark: a reconnect that met
    another relay key (RelayKeyChanged, threat model T25, T41). The chat said nothing,
    showed itself waiting for the relay, and refused sends naming the exception; now it
    ends as it does when it starts on such a relay (``session``'s one line, exit 1).
    """
    reading = asyncio.create_task(_read_commands(chat))
    await asyncio.wait([reading, receiving], return_when=asyncio.FIRST_COMPLETED)
    stopped = receiving.exception() if receiving.done() and not reading.done() else None
    if stopped is None:
        await reading
        return
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    while isinstance(stopped, BaseExceptionGroup):  # the readers' TaskGroup
        stopped = stopped.exceptions[0]
    raise stopped


async def _read_commands(chat: Chat) -> None:
    """Run each line typed until /quit or the end of input: with line editing, input
    history and output above the prompt on a terminal (prompt_toolkit), else line by line
    (a pipe, a file, a terminal that declares itself dumb)."""
    if sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("TERM", "dumb") != "dumb":
        await _prompt(chat)
        return
    lines = _stdin_lines()
    while True:
        raw = await lines.get()
        if raw is None:
            return
        if not await chat.command(raw):
            return


async def _prompt(chat: Chat) -> None:
    """prompt_toolkit's prompt: a line editor with history (↑/↓) whose prompt shows whom we
    talk to and whether we are online; what the chat prints appears above it."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    prompt: PromptSession[str] = PromptSession(history=InMemoryHistory())
    with patch_stdout(raw=False):
        chat.out = sys.stdout  # the proxy that prints above the prompt
        while True:
            try:
                line = await prompt.prompt_async(chat.prompt, refresh_interval=0.5)
            except EOFError:  # Ctrl-D
                return
            except KeyboardInterrupt:  # Ctrl-C: a fresh line, as shells do
                continue
            if not await chat.command(line):
                return


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin as they are typed, None at its end: read by a daemon thread, so a
    line never blocks incoming messages, and stdin may be anything — a terminal, a pipe,
    a file or /dev/null (which the event loop's selector refuses to watch)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper
            sys.stdin.reconfigure(errors="replace")  # type: ignore[union-attr]
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError, RuntimeError):  # stdin closed, or the loop is gone
            pass
        with contextlib.suppress(RuntimeError):  # the loop closed first
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    return queue


class PassphraseError(Exception):
    """No usable passphrase: one line for the person, exit status 2."""


def read_passphrase(env: str | None) -> str:
    """The profile's passphrase from ``$env``, else asked on the terminal."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise PassphraseError(f"${env} is not set: export it, or leave out --passphrase-env")
    elif not sys.stdin.isatty():
        raise PassphraseError(
            "standard input is not a terminal, so the passphrase cannot be asked: give "
            "--passphrase-env VAR"
        )
    else:
        try:
            value = getpass.getpass("profile passphrase: ")
        except EOFError:
            raise PassphraseError(
                "no passphrase: standard input is closed; run it on a terminal or give "
                "--passphrase-env VAR"
            ) from None
        except UnicodeDecodeError:
            raise PassphraseError(_NOT_TEXT.format(what="the passphrase typed")) from None
    if not value:
        raise PassphraseError("the passphrase is empty: a profile is sealed with a passphrase")
    try:
        value.encode("utf-8")  # a profile seals the passphrase's UTF-8 (keystore.sealing)
    except UnicodeEncodeError:  # bytes of another encoding, kept as lone surrogates
        what = f"${env}" if env is not None else "the passphrase typed"
        raise PassphraseError(_NOT_TEXT.format(what=what)) from None
    return value


_NOT_TEXT = "{what} is not UTF-8 text: set the terminal or the locale to UTF-8 and give it again"


def run(options: Options) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(session(options, sys.stdout))
    return 130
