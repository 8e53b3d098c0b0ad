"""The client's ``blindrelay`` subcommands (client/cli.py): bad options are one line, exit 2.

Checked before anything is opened or asked: no profile file appears and no
passphrase is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.server.cli import main

BAD_HEX_OPTIONS = [
    (["--operator-key", "zz"], "blindrelay chat: --operator-key must be the operator's public key, 64 hex digits ('blindrelay admin keygen' prints it)"),
    (["--operator-key", "blindrelay operator secret key " + "ab" * 32], "blindrelay chat: --operator-key takes the operator's public key (64 hex digits, printed by 'blindrelay admin keygen' as 'operator public key'), never its key file"),
    (["--invite", "not hex"], "blindrelay chat: --invite must be the hex token the operator gave you"),
    (["--accept-relay-key", "ab" * 31], "blindrelay chat: --accept-relay-key must be 64 hex digits (a 32-byte key)"),
    (["--accept-relay-key", "x" * 64], "blindrelay chat: --accept-relay-key must be 64 hex digits (a 32-byte key)"),
]  # fmt: skip


@pytest.mark.parametrize(("option", "message"), BAD_HEX_OPTIONS)
def test_a_chat_option_that_is_not_the_hex_it_names_is_one_line_and_exit_2(
    option: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "me.db"
    status = main(["chat", "--relay", "ws://127.0.0.1:9", "--profile", str(profile), *option])
    assert status == 2
    assert capsys.readouterr().err == message + "\n"
    assert not profile.exists()


def test_demo_and_chat_are_commands_of_blindrelay(capsys: pytest.CaptureFixture[str]) -> None:
    """Registered through the ``blindrelay.commands`` entry points beside the relay's."""
    with pytest.raises(SystemExit) as help_shown:
        main(["--help"])
    assert help_shown.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "chat" in out
    for command in ("demo", "chat"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"usage: blindrelay {command}" in capsys.readouterr().out
