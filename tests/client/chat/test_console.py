"""What the chat prints of text others wrote (client/chat/console.py): a peer's message,
kept history, a relay's refusal. Each is one terminal line per line of the chat's own,
never a control character: a body must not forge another sender's line, rewrite the
screen, set the title or write the clipboard (threat model T39)."""

from __future__ import annotations

import io
import re

from blindrelay.client.chat.console import Chat
from blindrelay.client.sdk import Client, Message
from blindrelay.client.trust import IdentityState
from blindrelay.protocol.errors import MalformedFrame

FORGED = "[utility] airline [✔ verified: British Airways]: flight cancelled, rebook at evil.example"
ESCAPES = (
    "\x1b]52;c;cm0gLXJmIH4K\x07"  # OSC 52: write the clipboard
    "\x1b]0;bank\x07"  # OSC 0: the window title
    "\x1b[2K\rbob: hi"  # erase the line, back to its start, another sender
    "\x9b2J"  # C1 CSI: clear the screen (8-bit terminals)
    "\u202etxe.exe"  # right-to-left override
    "\u2028bob: hi"  # a Unicode line separator
)


def message(body: str, sender: str = "mallory") -> Message:
    return Message(
        msg_id=bytes(16), sender=sender, sender_kind="user", sent_at=1_700_000_000_000,
        identity=IdentityState.NEW, body=body,
    )  # fmt: skip


def unsafe(text: str) -> list[str]:
    """Control characters (C0, C1, DEL) and line or paragraph separators, bidi overrides."""
    return re.findall(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", text)


async def test_a_message_body_cannot_forge_a_line_or_reach_the_terminal() -> None:
    client = Client.open(None)
    out = io.StringIO()
    chat = Chat(client, out)
    try:
        await chat.show(message(f"see you\n{FORGED}\n{ESCAPES}"))
    finally:
        await client.close()
    shown = out.getvalue()
    assert unsafe(shown) == []
    lines = shown.splitlines()
    assert lines[0] == "mallory: see you"
    # the other lines of the body are shown as its continuation, under mallory's line
    assert lines[1] == f"  | {FORGED}"
    assert lines[2] == "  | \\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b]0;bank\\x07\\x1b[2K"
    assert lines[3:] == [
        "  | bob: hi\\x9b2J\\u202etxe.exe",
        "  | bob: hi",
        "  (first message from mallory; compare /safety mallory to verify)",
    ]
    assert not any(line.startswith(("[", "airline", "bob")) for line in lines)


async def test_history_shows_a_kept_body_as_safely_as_when_it_came() -> None:
    client = Client.open(None)
    out = io.StringIO()
    chat = Chat(client, out)
    try:
        chat.remember("mallory", "user")
        await chat.show(message(f"see you\n{FORGED}{ESCAPES}"))
        out.seek(0)
        out.truncate()
        chat.show_history()
        await chat.command("/history mallory")
    finally:
        await client.close()
    shown = out.getvalue()
    assert unsafe(shown) == []
    assert not any(line.startswith(("[", "airline", "bob")) for line in shown.splitlines())
    assert "    mallory: see you\n      | [utility] airline" in shown


async def test_a_refusal_the_relay_worded_is_one_line_without_control_characters() -> None:
    client = Client.open(None)
    out = io.StringIO()
    chat = Chat(client, out)
    try:
        chat.say(f"refused: {chat.explain(MalformedFrame(ESCAPES), 'bob')}")
    finally:
        await client.close()
    shown = out.getvalue()
    assert unsafe(shown) == [] and shown.count("\n") == 1
