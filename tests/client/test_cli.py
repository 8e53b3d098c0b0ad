"""The client's subcommands (client/cli.py): ``blindrelay chat`` refuses a malformed
option in one line, before it asks for a passphrase or opens anything; ``demo`` and
``chat`` are registered beside the relay's commands.

What the commands then do is test_chat.py and test_demo.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.server.cli import main


def test_chat_refuses_an_invite_that_is_not_hex_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["chat", "--relay", "ws://127.0.0.1:9", "--profile", str(tmp_path / "p"),
                 "--invite", "not-hex"])  # fmt: skip
    assert code == 2
    out = capsys.readouterr().out
    assert out.startswith("blindrelay chat: --invite") and out.count("\n") == 1


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        ("--operator-key", "xyz", "blindrelay chat: --operator-key must be hex\n"),
        ("--accept-relay-key", "zz", "blindrelay chat: --accept-relay-key must be 64 hex digits"),
        ("--accept-relay-key", "ab" * 31, "blindrelay chat: --accept-relay-key must be 64 hex"),
    ],
)
def test_chat_refuses_a_malformed_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, line: str
) -> None:
    profile = tmp_path / "p"
    code = main(["chat", "--relay", "ws://127.0.0.1:9", "--profile", str(profile), option, value])
    out = capsys.readouterr().out
    assert code == 2 and out.startswith(line) and out.count("\n") == 1
    assert not profile.exists()  # refused before anything was opened


def test_demo_and_chat_are_commands_of_blindrelay(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as help_shown:
        main(["--help"])
    assert help_shown.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "chat" in out
    for command in ("demo", "chat"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"usage: blindrelay {command}" in capsys.readouterr().out
