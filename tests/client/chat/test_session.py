"""One run of the chat (client/chat/session.py): against an endpoint that is not a relay,
whatever it says comes back as one line without control characters (threat model T39);
bad input is one line; a relay key changed at a reconnect ends it with the way on (T41)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from blindrelay.client.chat.session import Options, PassphraseError, read_passphrase, session
from blindrelay.client.keystore import LogFork, open_profile
from blindrelay.protocol import SUBPROTOCOL
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.relay import serve as serve_relay

from ...relays import MANY_REGISTRATIONS, QUICK_TREE_HEADS
from ..harness import cheap_profile, replace_relay_key

REASON = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;bank\x07\x1b[2K\rlogged in as alice"
"""A WebSocket close reason is outside the Noise channel: anyone on the path writes it."""
PASS = "a passphrase"
"""Of the profiles made at the tests' low Argon2id cost (``cheap_profile``): none of these
tests is about registration, and each start at the default cost is a second of CPU."""


async def test_a_close_reason_from_the_network_is_shown_without_its_escapes(
    tmp_path: Path,
) -> None:
    async def close_with_escapes(ws: ServerConnection) -> None:
        await ws.recv()  # the client's first handshake message
        await ws.close(1000, REASON)

    async with serve(
        close_with_escapes, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL], compression=None,  # type: ignore[list-item]
    ) as server:  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        out = io.StringIO()
        options = Options(
            relay=f"ws://127.0.0.1:{port}", profile=cheap_profile(tmp_path / "alice.db", PASS),
            handle="alice", kind="user", passphrase=PASS, operator_key=None,
        )  # fmt: skip
        assert await session(options, out) == 1
    shown = out.getvalue()
    assert re.findall(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", shown) == []
    assert shown.count("\n") == 1 and "not connected to the relay" in shown


def test_a_passphrase_that_is_not_text_is_one_line_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes that are not UTF-8 in the variable (Python keeps them as lone surrogates)
    cannot seal a profile: the chat stopped with 'unexpected error' and a traceback file,
    after the relay was asked; now the passphrase is refused where it is read."""
    monkeypatch.setenv("CHAT_PASSPHRASE", "caf\udce9")  # b"caf\xe9", Latin-1
    with pytest.raises(PassphraseError, match=r"\$CHAT_PASSPHRASE is not UTF-8 text"):
        read_passphrase("CHAT_PASSPHRASE")


async def test_a_profile_that_cannot_be_made_is_one_line_saying_so(tmp_path: Path) -> None:
    """A profile where the person may not write (a folder of another user's, a read-only
    file system: here, below a file) raised PermissionError or the like out of the chat,
    'unexpected error' and a traceback file, where a wrong passphrase gets one line."""
    (tmp_path / "a-file").write_text("")
    out = io.StringIO()
    options = Options(
        relay="ws://127.0.0.1:1", profile=tmp_path / "a-file" / "alice.db", handle="alice",
        kind="user", passphrase="a passphrase", operator_key=None,
    )  # fmt: skip
    assert await session(options, out) == 1
    assert out.getvalue() == (
        f"blindrelay chat: {options.profile}: cannot open or create it (Not a directory); "
        "give a --profile in a folder you can write to\n"
    )


@contextlib.asynccontextmanager
async def relay_on(db: Path, port: int) -> AsyncIterator[RunningRelay]:
    """A relay on ``port``, so that a second one answers where the first did."""
    relay = await serve_relay(
        RelayConfig(host="127.0.0.1", port=port, db_path=db, **MANY_REGISTRATIONS,
                    **QUICK_TREE_HEADS)
    )  # fmt: skip
    try:
        yield relay
    finally:
        await relay.close()


async def test_a_relay_key_changed_at_a_reconnect_ends_the_chat_with_the_way_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threat model T41: at a reconnect another key answers (another server, or someone on
    the path). The client stops for good (T25), but the chat went on as if waiting: no
    message arrived any more, /msg said 'refused: RelayKeyChanged …' and nothing told the
    person what happened or what to do, as the chat does when it starts on such a relay."""
    reading, typing = os.pipe()  # a person who types nothing
    stdin = open(reading)  # noqa: SIM115 - the chat's to read, closed below
    monkeypatch.setattr(sys, "stdin", stdin)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db, out = tmp_path / "relay.db", io.StringIO()
    options = Options(
        relay=f"ws://127.0.0.1:{port}", profile=cheap_profile(tmp_path / "alice.db", PASS),
        handle="alice", kind="user", passphrase=PASS, operator_key=None,
    )  # fmt: skip
    try:
        async with relay_on(db, port):
            chatting = asyncio.create_task(session(options, out))
            while "registered alice" not in out.getvalue():
                assert not chatting.done(), out.getvalue()
                await asyncio.sleep(0.02)
        replace_relay_key(db)
        async with relay_on(db, port):
            status = await asyncio.wait_for(chatting, 20)
    finally:
        os.close(typing)  # the end of input: the chat's reader thread ends
        stdin.close()  # (after its read, whose lock it takes)
    shown = out.getvalue()
    assert status == 1
    assert re.search(
        r"blindrelay chat: ws://127\.0\.0\.1:\d+ presents relay key [0-9a-f]{64}, not "
        r"[0-9a-f]{64} pinned in this profile; nothing was sent\. If the relay's operator "
        r"confirms the new key, run again with --accept-relay-key [0-9a-f]{64}\n$",
        shown,
    ), shown


async def test_a_fork_kept_from_an_earlier_run_is_the_first_thing_the_chat_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §15.6 rule 5: once the relay was caught showing two histories, the alarm
    stands across restarts and the application is told once a run. The SDK told
    ``on_log_forked``, which the chat did not listen to: a person who opened the chat
    again saw nothing until a send failed, and reading never fails."""
    reading, typing = os.pipe()  # a person who types nothing
    stdin = open(reading)  # noqa: SIM115 - the chat's to read, closed below
    monkeypatch.setattr(sys, "stdin", stdin)
    out = io.StringIO()
    options = Options(
        relay="", profile=cheap_profile(tmp_path / "alice.db", PASS), handle="alice",
        kind="user", passphrase=PASS, operator_key=None,
    )  # fmt: skip
    try:
        async with relay_on(tmp_path / "relay.db", 0) as relay:
            options = dataclasses.replace(options, relay=relay.url)
            chatting = asyncio.create_task(session(options, out))
            while "registered alice" not in out.getvalue():
                assert not chatting.done(), out.getvalue()
                await asyncio.sleep(0.02)
            chatting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chatting
            store = open_profile(options.profile, options.passphrase)
            relay_key = store.relay_key()
            assert relay_key is not None
            store.keep_log_fork(LogFork(relay_key, b"one head", b"another", "no proof"))
            store.close()
            out = io.StringIO()
            chatting = asyncio.create_task(session(options, out))
            deadline = asyncio.get_running_loop().time() + 10
            while "ALARM" not in out.getvalue():
                assert not chatting.done(), out.getvalue()
                assert asyncio.get_running_loop().time() < deadline, out.getvalue()
                await asyncio.sleep(0.02)
            chatting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chatting
    finally:
        os.close(typing)
        stdin.close()
    (line,) = [line for line in out.getvalue().splitlines() if "ALARM" in line]
    assert "two different histories" in line and "stop trusting this relay" in line
