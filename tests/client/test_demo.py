"""``blindrelay demo`` (client/demo/) run as a newcomer runs it: one command, piped.

The story's secrets may appear only in the lines of what a client sees; every
other line — the relay's view of the wire, its inventory, its log digest — must
be free of them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from blindrelay.client.demo import (
    ANSWER,
    AWAY_MESSAGE,
    EXPLANATION,
    NOTIFICATION,
    STORY_PLAINTEXTS,
    Style,
    describe_envelope,
)
from blindrelay.protocol.crypto.padding import BUCKETS
from blindrelay.protocol.crypto.ratchet import AEAD_TAG_LEN, Header
from blindrelay.protocol.crypto.session import PendingPreKey, encode_envelope

CLIENT_LINE_PREFIXES = ("  maria   │", "  skyway  │")


@pytest.fixture(scope="module")
def demo_output() -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    result = subprocess.run(
        [sys.executable, "-m", "blindrelay.server.cli", "demo"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_the_demo_plays_the_whole_story_and_exits_0(demo_output: str) -> None:
    expected = [
        "✔  Skyway Air (verified by the operator)",
        f'maria   │ asks for utility: "{EXPLANATION}"',
        "skyway  │ receipt from maria: grant utility, signature verified",
        f'maria   │ utility from skyway: "{NOTIFICATION}"',
        f'maria   │ from skyway: "{ANSWER}"',
        "desk closed, 21:30",
        f'maria   │ from skyway: "{AWAY_MESSAGE}"',
        "skyway  │ notification to maria refused: RecipientUnavailable",
        "skyway → relay  SEND to=maria intent=notification category=utility",
        "maria → relay   STATEMENT block -> skyway",
        "relay → skyway  ERROR 400 RECIPIENT_UNAVAILABLE",
        "What the relay holds: blindrelay inspect",
        "(private seed stored, not shown)",
        "What the relay logged",
    ]
    missing = [line for line in expected if line not in demo_output]
    assert not missing, demo_output


@pytest.mark.slow
def test_no_secret_of_the_story_appears_outside_what_the_clients_see(demo_output: str) -> None:
    lines = demo_output.splitlines()
    outside = [line for line in lines if not line.startswith(CLIENT_LINE_PREFIXES)]
    inside = [line for line in lines if line.startswith(CLIENT_LINE_PREFIXES)]
    relay_lines = [line for line in outside if "→ relay" in line or "relay →" in line]
    assert len(relay_lines) > 20  # the relay's view is there to be searched
    for secret in STORY_PLAINTEXTS:
        assert any(secret in line for line in inside), secret  # the search can find it
        assert not [line for line in outside if secret in line], secret


@pytest.mark.slow
def test_piped_output_is_plain(demo_output: str) -> None:
    assert "\x1b[" not in demo_output


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert Style.for_stream(FakeTty()).client("x") == "\x1b[32mx\x1b[0m"
    assert Style.for_stream(io.StringIO()).client("x") == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert Style.for_stream(FakeTty()).client("x") == "x"


def test_an_envelope_is_shown_as_its_kind_and_ciphertext_not_its_header() -> None:
    header = Header(b"\x01" * 32, 0, 7)
    ciphertext = b"\xab" * (BUCKETS[0] + AEAD_TAG_LEN)
    message = encode_envelope(header, ciphertext)
    assert describe_envelope(message) == f"{len(message)} B message, ciphertext {'ab' * 12}…"
    for one_time_id in (None, 9):  # the optional prekey id moves the ciphertext (SPEC §13.6)
        ids = PendingPreKey(signed_prekey_id=5, one_time_prekey_id=one_time_id)
        prekey = encode_envelope(header, ciphertext, (b"\x4e" * 32, b"\x02" * 32, ids))
        assert describe_envelope(prekey) == (
            f"{len(prekey)} B prekey message from key {'4e' * 6}…, ciphertext {'ab' * 12}…"
        )


def test_bytes_that_are_no_envelope_are_shown_as_such() -> None:
    header = Header(b"\x01" * 32, 0, 7).encode()
    unpadded = encode_envelope(Header(b"\x01" * 32, 0, 7), b"\xab" * 32)  # no padding bucket
    for body in (b"plain", b"", b"\x02\x02" + header[:10], unpadded):
        assert describe_envelope(body) == f"{len(body)} B, not an envelope"
