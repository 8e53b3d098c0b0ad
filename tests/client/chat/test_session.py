"""One run of the chat (client/chat/session.py) against an endpoint that is not a relay:
whatever it says comes back as one line without control characters (threat model T39)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from blindrelay.client.chat.session import Options, PassphraseError, read_passphrase, session
from blindrelay.protocol import SUBPROTOCOL

REASON = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;bank\x07\x1b[2K\rlogged in as alice"
"""A WebSocket close reason is outside the Noise channel: anyone on the path writes it."""


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
            relay=f"ws://127.0.0.1:{port}", profile=tmp_path / "alice.db", handle="alice",
            kind="user", passphrase="a passphrase", operator_key=None,
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
