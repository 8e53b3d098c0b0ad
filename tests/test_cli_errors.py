"""Every bad input a newcomer met (issue 18) is one line and an exit status, never a
traceback — run as a person runs it: the installed ``blindrelay`` command, stdin closed.

Each row: the command, the environment it adds, the exit status (2 a usage error, 1 a
failure), and words the one line must hold. Lines the relay logs as JSON before it stops
(``serve``) are its log, not the message; everything else on stderr is that one line.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindrelay.client.keystore import SqliteKeyStore

BLINDRELAY = [sys.executable, "-m", "blindrelay.server.cli"]
PASSPHRASE = {"PW": "correct horse"}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "notadb.txt").write_text("consent: yes\n")
    (tmp_path / "empty.db").touch()  # a file that is no relay's: made by hand, or cut short
    with SqliteKeyStore.open(tmp_path / "profile.db", PASSPHRASE["PW"], create=True, opslimit=1,
                             memlimit=8192 * 1024):
        pass  # a chat profile: a SQLite file that is not a relay's
    return tmp_path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


CASES = [
    # (name, argv, environment, status, words)
    ("inspect a file that is not SQLite", ["inspect", "--db", "notadb.txt"], {}, 1,
     "is not a relay database"),
    ("inspect a chat profile", ["inspect", "--db", "profile.db"], {}, 1,
     "is not a relay database"),
    ("serve into a missing folder", ["serve", "--db", "/nonexistent/x.db"], {}, 1,
     "the folder /nonexistent does not exist"),
    ("serve on a chat profile", ["serve", "--port", "0", "--db", "profile.db"], {}, 1,
     "is not a relay database"),
    ("serve with a queue cap of 0", ["serve", "--queue-cap", "0"], {}, 2,
     "--queue-cap (BLINDRELAY_QUEUE_CAP) must be positive"),
    ("serve on port 70000", ["serve", "--port", "70000"], {}, 2, "--port (BLINDRELAY_PORT)"),
    ("serve on a port that is not a number", ["serve", "--port", "abc"], {}, 2,
     "argument --port: invalid int value"),
    ("serve with a send rate of nan", ["serve", "--send-rate-user", "nan"], {}, 2,
     "--send-rate-user (BLINDRELAY_SEND_RATE_USER) must be positive"),
    ("serve with BLINDRELAY_AUTH_TIMEOUT=nan", ["serve"], {"BLINDRELAY_AUTH_TIMEOUT": "nan"}, 2,
     "--auth-timeout (BLINDRELAY_AUTH_TIMEOUT) must be positive"),
    ("serve with BLINDRELAY_HOST set empty", ["serve"], {"BLINDRELAY_HOST": ""}, 2,
     "--host (BLINDRELAY_HOST) is empty"),
    ("serve with BLINDRELAY_PORT=abc", ["serve"], {"BLINDRELAY_PORT": "abc"}, 2,
     "BLINDRELAY_PORT='abc' is not a whole number"),
    ("serve with a bogus log level", ["serve", "--db", "r.db"],
     {"BLINDRELAY_LOG_LEVEL": "bogus"}, 2, "BLINDRELAY_LOG_LEVEL"),
    ("an unknown command", ["sevre"], {}, 2, "invalid choice: 'sevre'"),
    ("inspect an empty file", ["inspect", "--db", "empty.db"], {}, 1,
     "empty.db is empty, not a relay database"),
    ("invite into an empty file", ["admin", "invite", "--db", "empty.db"], {}, 1,
     "empty.db is empty, not a relay database"),
    ("admin usage on an empty file", ["admin", "usage", "--db", "empty.db"], {}, 1,
     "empty.db is empty, not a relay database"),
    ("serve a PostgreSQL URL with a broken host",
     ["serve", "--store", "postgresql://u:secret@[::1/relay"], {}, 2,
     "--store (BLINDRELAY_STORE): not a usable PostgreSQL URL"),
    ("serve a PostgreSQL URL with a port that is no number",
     ["serve", "--store", "postgresql://127.0.0.1:abc/relay"], {}, 2,
     "--store (BLINDRELAY_STORE): not a usable PostgreSQL URL"),
    ("serve a PostgreSQL URL with a port out of range",
     ["serve", "--store", "postgresql://127.0.0.1:99999/relay"], {}, 2,
     "--store (BLINDRELAY_STORE): not a usable PostgreSQL URL"),
    ("admin usage on a PostgreSQL URL with a broken host",
     ["admin", "usage", "--store", "postgresql://u:secret@[::1/relay"], {}, 1,
     "not a usable PostgreSQL URL"),
    ("keygen into a missing folder", ["admin", "keygen", "--out", "/nonexistent/dir/k"], {}, 1,
     "cannot create the key file /nonexistent/dir/k"),
    ("admin usage on a chat profile", ["admin", "usage", "--db", "profile.db"], {}, 1,
     "is not a relay database"),
    ("revoke-badge on a chat profile", ["admin", "revoke-badge", "shop", "--db", "profile.db"],
     {}, 1, "is not a relay database"),
    ("verify-business on a chat profile",
     ["admin", "verify-business", "shop", "--name", "Shop", "--operator-key-file", "k",
      "--db", "profile.db"], {}, 1, "operator key"),
    ("chat with a profile in a missing folder",
     ["chat", "--relay", "ws://127.0.0.1:9", "--profile", "/nonexistent/u.db", "--handle",
      "alice", "--passphrase-env", "PW"], PASSPHRASE, 2, "the folder /nonexistent does not exist"),
    ("chat with an empty passphrase",
     ["chat", "--relay", "ws://127.0.0.1:9", "--profile", "u.db", "--handle", "alice",
      "--passphrase-env", "EMPTY"], {"EMPTY": ""}, 2, "the passphrase is empty"),
    ("chat < /dev/null, asked for a passphrase",
     ["chat", "--relay", "ws://127.0.0.1:9", "--profile", "u.db", "--handle", "alice"], {}, 2,
     "--passphrase-env"),
    ("chat with a new profile and no handle",
     ["chat", "--relay", "ws://127.0.0.1:9", "--profile", "me.db", "--passphrase-env", "PW"],
     PASSPHRASE, 2, "give --handle NAME"),
    ("chat with the operator's key file as its public key",
     ["chat", "--relay", "ws://127.0.0.1:9", "--profile", "me.db", "--handle", "alice",
      "--passphrase-env", "PW", "--operator-key", "notadb.txt"], PASSPHRASE, 2,
     "never its key file"),
    ("chat to a relay that is not there",
     ["chat", "--relay", "ws://127.0.0.1:9", "--profile", "me.db", "--handle", "alice",
      "--passphrase-env", "PW"], PASSPHRASE, 1, "cannot connect"),
]  # fmt: skip


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BLINDRELAY_")}
    return subprocess.run(
        [*BLINDRELAY, *argv], cwd=cwd, env={**clean, **env}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, words: str) -> None:
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    message = [line for line in said if not line.startswith("{")]  # the relay's JSON log
    assert "Traceback" not in done.stdout + done.stderr, done
    assert done.returncode == status, done
    assert len(message) == 1 and message[0].startswith("blindrelay"), said
    assert words in message[0], message


@pytest.mark.parametrize(("argv", "env", "status", "words"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])  # fmt: skip
def test_a_bad_input_is_one_line_and_an_exit_status(
    argv: list[str], env: dict[str, str], status: int, words: str, workdir: Path
) -> None:
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert_one_line(run(argv, env, workdir), status, words)
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert after == before or (status == 1 and argv[0] == "chat"), "a refused command wrote"


def test_a_broken_store_url_is_refused_without_its_password(workdir: Path) -> None:
    for argv in (["serve"], ["admin", "usage"], ["inspect"]):
        done = run([*argv, "--store", "postgresql://u:hunter2@[::1/relay"], {}, workdir)
        assert "not a usable PostgreSQL URL" in done.stderr, done
        assert "hunter2" not in done.stdout + done.stderr, done


def test_output_its_reader_stops_reading_is_no_error(workdir: Path) -> None:
    """``blindrelay admin invite --count 10000 | head -1`` (or ``inspect | head``): the
    pipe closes early; that is the reader's choice, not an unexpected error with a
    traceback file (as it was)."""
    from blindrelay.server.store.sqlite.database import connect

    connect(workdir / "relay.db").conn.close()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BLINDRELAY_")}
    with subprocess.Popen(
        [*BLINDRELAY, "admin", "invite", "--count", "10000", "--db", "relay.db"], cwd=workdir,
        env=clean, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as done:  # fmt: skip
        assert done.stdout is not None and done.stderr is not None
        assert len(done.stdout.readline()) == 33  # one token, then the reader is gone
        done.stdout.close()
        said = done.stderr.read()
        status = done.wait(60)
    assert said == b"", said
    assert status == 141


def test_a_port_in_use_is_one_line(busy_port: int, workdir: Path) -> None:
    done = run(["serve", "--port", str(busy_port), "--db", "r.db"], {}, workdir)
    assert_one_line(done, 1, "address already in use")


def test_an_unexpected_error_says_where_its_traceback_is(workdir: Path) -> None:
    """A failure nobody planned for (here: the relay database's file replaced by a broken
    one after the check) is one line naming the file that holds the traceback."""
    with sqlite3.connect(workdir / "relay.db") as db:
        db.execute("CREATE TABLE relay_identity (id INTEGER)")  # passes the check, not the schema
    db.close()
    done = run(["inspect", "--db", "relay.db"], {}, workdir)
    message = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stdout + done.stderr and done.returncode == 1, done
    assert len(message) == 1 and message[0].startswith("blindrelay: unexpected error: "), message
    path = Path(message[0].split("full traceback is in ")[1].split(" ")[0])
    assert "Traceback" in path.read_text() and path.stat().st_mode & 0o077 == 0
    path.unlink()
    shown = run(["--debug", "inspect", "--db", "relay.db"], {}, workdir)
    assert "Traceback" in shown.stderr and shown.returncode == 1


def test_every_serve_flag_says_its_variable_and_default_and_every_admin_command_is_described(
    workdir: Path,
) -> None:
    """Issue 18: ``serve --help`` answers what a flag is, its unit where it has one, its
    BLINDRELAY_* variable and its default; every admin subcommand has a description."""
    from dataclasses import fields

    from blindrelay.server.config import RelayConfig

    done = run(["serve", "--help"], {}, workdir)
    text = " ".join(done.stdout.split())
    for field in fields(RelayConfig):
        flag = {"db_path": "db", "auth_timeout_s": "auth_timeout"}.get(field.name, field.name)
        if field.name in ("store", "db_path", "reuse_port"):
            continue  # described at length, with the store's URL forms
        assert f"env BLINDRELAY_{flag.upper()}; default:" in text, field.name
    assert text.count("(milliseconds;") == 3 and text.count("(seconds;") >= 6
    for command in ("keygen", "verify-business", "revoke-badge", "usage", "invite"):
        shown = run(["admin", command, "--help"], {}, workdir)
        assert shown.returncode == 0 and len(shown.stdout.split("\n\n")[1]) > 40, command
