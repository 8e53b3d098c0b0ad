"""What the chat prints of text others wrote (client/chat/console.py): a peer's message,
kept history, a relay's refusal. Each is one terminal line per line of the chat's own,
never a control character: a body must not forge another sender's line, rewrite the
screen, set the title or write the clipboard (threat model T39)."""

from __future__ import annotations

import asyncio
import io
import re

import pytest

from blindrelay.client.chat.console import BADGE_RECHECK_MS, Chat
from blindrelay.client.incoming import inbox_record
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import BusinessInfo, Client, Message
from blindrelay.client.trust import IdentityState
from blindrelay.protocol import frames
from blindrelay.protocol.business import Badge, BadgeCheck, BadgeStatus
from blindrelay.protocol.content import Content, Text, encode_content
from blindrelay.protocol.errors import LogForked, LogUnchecked, MalformedFrame

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


@pytest.mark.parametrize("intent", ["chat", "consent_request"])
async def test_a_business_message_in_hand_is_kept_when_the_chat_stops_while_its_badge_loads(
    intent: str,
) -> None:
    """A business's message is taken from the inbox (and so acknowledged once the reader
    goes), then its badge fetched from the relay before it was shown or kept: /quit or a
    stopped client meanwhile, and it was gone, neither shown nor in the history. Now what
    the chat keeps is written before it waits for the relay."""
    store = MemoryKeyStore()
    msg_id = b"\x07" * 16
    deliver = frames.Deliver(
        delivery_id=1, sender="airline", sender_kind="business", msg_id=msg_id,
        intent=intent, sent_at=1_700_000_000_000, body=b"ciphertext",
        categories=("utility",) if intent == "consent_request" else None,
    )  # fmt: skip
    plaintext = encode_content(Content(msg_id, Text("Flight BA123 now leaves from gate C1")))
    store.commit_incoming(inbox_record(deliver, IdentityState.NEW, 0, plaintext), b"session")
    client = Client(store)
    asked = asyncio.Event()

    async def business_info(handle: str) -> BusinessInfo:
        asked.set()
        await asyncio.Event().wait()  # the relay takes its time
        raise AssertionError("unreachable")

    client.business_info = business_info  # type: ignore[method-assign]
    chat = Chat(client, io.StringIO())
    receiving = asyncio.create_task(chat.receive())
    await asyncio.wait_for(asked.wait(), 5)
    receiving.cancel()  # /quit
    with pytest.raises(asyncio.CancelledError):
        await receiving
    try:
        kept = [text for _at, _out, text in store.chat_lines("airline", 10)]
        pending = [record.msg_id for record in store.pending_messages()]
        assert kept == ["Flight BA123 now leaves from gate C1"] or pending == [msg_id]
        if intent == "consent_request":
            assert store.consent_requests() == {"airline": ("utility",)}
    finally:
        await client.close()


@pytest.mark.parametrize("line", ["/to 'bob", '/block "bob', "/safety bob'"])
async def test_an_unclosed_quote_is_a_usage_line_not_the_end_of_the_chat(line: str) -> None:
    """A handle is read the way a shell reads a word; an unclosed quote raised shlex's
    ValueError out of the command, which ended the chat with a traceback."""
    client = Client.open(None)
    out = io.StringIO()
    chat = Chat(client, out)
    try:
        assert await chat.command(line) is True
    finally:
        await client.close()
    assert out.getvalue().startswith("usage: /") and out.getvalue().count("\n") == 1


async def test_a_body_padded_to_the_terminal_s_width_cannot_start_a_row_of_its_own() -> None:
    """No control character needed: "ok", spaces to the end of an 80-column row, then the
    forged line. The terminal wrapped it, and the forgery started at column 0 of its own
    row. Now a line is cut to the width, counted high, and each row after the first is
    marked as a continuation (wide characters, counted two, fill a row as well)."""
    client = Client.open(None)
    out = io.StringIO()
    chat = Chat(client, out)
    chat.columns = lambda: 80
    padded = "ok" + " " * (80 - len("mallory: ok")) + FORGED
    wide = "你好" * 36 + FORGED  # 72 characters, 144 columns
    try:
        await chat.show(message(padded))
        await chat.show(message(wide))
    finally:
        await client.close()
    for row in out.getvalue().splitlines():
        assert sum(1 if " " <= c <= "~" else 2 for c in row) < 80, row
        assert not row.startswith(("[", "airline")), row


async def test_a_revoked_badge_stops_showing_as_verified_within_the_recheck_time() -> None:
    """SPEC §8.1, §15.6 rule 6: a client relies on the relay no longer serving a revoked
    badge. The chat asked once per session and kept the answer: a business whose badge
    the operator revoked (or that expired) went on showing "✔ verified" on every message
    until the person restarted the chat. Now an answer older than BADGE_RECHECK_MS is
    asked again."""
    now = [1_700_000_000_000]
    client = Client(MemoryKeyStore(), clock=lambda: now[0])
    badge = Badge(
        v=1, handle="airline", key_fingerprint=bytes(32), display_name="Skyways",
        serial=1, issued_at=now[0] - 1, expires_at=now[0] + 86_400_000,
    )  # fmt: skip
    answers = [BadgeCheck(BadgeStatus.VERIFIED, badge), BadgeCheck(BadgeStatus.ABSENT)]
    asked: list[int] = []

    async def business_info(handle: str) -> BusinessInfo:
        asked.append(now[0])
        check = answers[min(len(asked), len(answers)) - 1]
        return BusinessInfo(handle, bytes(32), None, check, key_changed=False)

    client.business_info = business_info  # type: ignore[method-assign]
    out = io.StringIO()
    chat = Chat(client, out)
    notice = Message(
        msg_id=bytes(16), sender="airline", sender_kind="business", sent_at=now[0],
        identity=IdentityState.TRUSTED, body="Gate C1",
    )  # fmt: skip
    try:
        await chat.show(notice)
        now[0] += BADGE_RECHECK_MS - 1  # within the recheck time: the answer kept
        await chat.show(notice)
        now[0] += 2  # the operator revoked it meanwhile: the relay serves none
        await chat.show(notice)
    finally:
        await client.close()
    assert out.getvalue().splitlines() == [
        "airline [✔ verified: Skyways]: Gate C1",
        "airline [✔ verified: Skyways]: Gate C1",
        "airline [business, not verified: no badge]: Gate C1",
    ]
    assert len(asked) == 2


async def test_the_log_alarms_are_one_line_each_naming_what_is_refused() -> None:
    """What the SDK tells ``on_log_forked`` / ``on_log_unchecked`` (SPEC §15.6 rule 5)."""
    client = Client.open(None)
    out = io.StringIO()
    chat = Chat(client, out)
    try:
        chat.log_alarm(LogForked(b"one head", b"another", "no proof"))
        chat.log_alarm(LogUnchecked("carol", b"her head", None, 6, "402"))
    finally:
        await client.close()
    forked, unchecked = out.getvalue().splitlines()
    assert forked.startswith("!!! ALARM: the relay showed you and a contact two different")
    assert forked.endswith("stop trusting this relay; nothing more is sent through it")
    assert "prove that carol sees the same log" in unchecked
    assert "nothing is sent to carol until it does" in unchecked
