"""The README's commands run as written on a fresh directory (issue 18).

The relay's own commands of the README's table are run word for word in an empty
directory: ``blindrelay serve`` (on a free port: BLINDRELAY_PORT=0, so that it cannot
collide with another relay of the machine), then ``blindrelay inspect --db
blindrelay.db`` on the database it made, and ``blindrelay audit`` against it (its
``ws://…`` replaced by the relay's). The chat command is run word for word on a
pseudo-terminal by tests/client/test_chat.py; the demo by tests/client/test_demo.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def commands() -> dict[str, list[str]]:
    """Each ``blindrelay SUBCOMMAND …`` of the README's table, by subcommand (the first
    one written for each)."""
    found: dict[str, list[str]] = {}
    for written in re.findall(r"\| `(blindrelay [^`]+)`", README.read_text()):
        words = re.sub(r"\s*\[[^\]]*\]", "", written).split()  # without the optional parts
        found.setdefault(words[1], words)
    return found


def test_the_readmes_relay_commands_run_as_written(tmp_path: Path) -> None:
    written = commands()
    assert {"serve", "inspect", "chat", "demo", "audit", "admin"} <= set(written)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDRELAY_")}
    env |= {"BLINDRELAY_PORT": "0", "BLINDRELAY_STH_INTERVAL_S": "0.1"}
    serve = written["serve"]
    assert serve == ["blindrelay", "serve"]
    relay = subprocess.Popen(
        [sys.executable, "-m", "blindrelay", *serve[1:]], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert relay.stdout is not None
    try:
        line = relay.stdout.readline().strip()
        assert line.startswith("listening ws://127.0.0.1:"), line
        url = line.removeprefix("listening ")
        assert (tmp_path / "blindrelay.db").exists()  # the default database, where we stand
        for name in ("inspect", "audit"):
            argv = [url if word.startswith("ws://") else word for word in written[name][1:]]
            done = subprocess.run(
                [sys.executable, "-m", "blindrelay", *argv], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, (name, done.stdout, done.stderr)
            assert "Traceback" not in done.stdout + done.stderr
    finally:
        relay.terminate()
        assert relay.wait(timeout=30) == 0
        relay.stdout.close()
