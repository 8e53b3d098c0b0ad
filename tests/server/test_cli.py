"""``blindrelay serve`` as a subprocess and ``blindrelay inspect`` (SPEC §11)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from blindrelay.protocol.frames import Sent
from blindrelay.server.cli import main
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import serve

from .conftest import TEST_TIMEOUT_S, Clients, RawClient

BLINDRELAY = Path(sys.executable).with_name("blindrelay")
CANARY = b"CANARY-" + os.urandom(12).hex().encode() + b"-END-OF-CANARY"


async def _start(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        str(BLINDRELAY), "serve", *args,
        cwd=tmp_path, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), TEST_TIMEOUT_S)).decode()
    assert line.startswith("listening ws://127.0.0.1:"), line
    return process, line.split()[1]


@pytest.mark.slow
async def test_serve_prints_its_url_serves_and_stops_on_sigterm(
    tmp_path: Path, clients: Clients
) -> None:
    started = time.monotonic()
    process, url = await _start(
        tmp_path, "--port", "0", "--log-level", "debug", env={"BLINDRELAY_DB": "env.db"}
    )
    startup_s = time.monotonic() - started
    alice = await clients.registered(url, "alice")
    await clients.registered(url, "bob")
    assert isinstance(await alice.send_message("bob", CANARY), Sent)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), TEST_TIMEOUT_S)
    assert process.returncode == 0
    assert (tmp_path / "env.db").exists()  # BLINDRELAY_DB was honoured
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    assert {"listening", "registered", "stopped"} <= {line["event"] for line in lines}
    assert CANARY.decode() not in stderr.decode() and CANARY.hex() not in stderr.decode()
    assert startup_s < 3.0  # generous for CI; locally ~0.3 s


async def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    process, url = await _start(tmp_path, "--port", "0")
    port = url.rsplit(":", 1)[1]
    second = await asyncio.create_subprocess_exec(
        str(BLINDRELAY), "serve", "--port", port, "--db", "other.db",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(second.communicate(), TEST_TIMEOUT_S)
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.communicate(), TEST_TIMEOUT_S)
    assert second.returncode == 1 and stdout == b""
    assert process.returncode == 0


async def test_serve_with_an_unusable_database_path_prints_one_line(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(BLINDRELAY), "serve", "--port", "0", "--db", "missing-dir/relay.db",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), TEST_TIMEOUT_S)
    last = stderr.decode().splitlines()[-1]
    assert process.returncode == 1 and b"Traceback" not in stderr
    assert last.startswith("blindrelay serve: cannot open the database") and "relay.db" in last


async def test_serve_applies_the_configured_gc_policy_in_the_relay_and_its_writer(
    tmp_path: Path,
) -> None:
    """server/gcpolicy.py: both processes freeze their start-up objects and use the
    threshold given (here by environment variable, like every flag)."""
    process, _url = await _start(tmp_path, "--port", "0", env={"BLINDRELAY_GC_THRESHOLD": "12345"})
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), TEST_TIMEOUT_S)
    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    policies = {line["role"]: line for line in lines if line["event"] == "gc_policy"}
    assert policies.keys() == {"relay", "writer"}
    for policy in policies.values():
        assert policy["threshold"] == 12345
        assert policy["frozen"] > 10_000  # at least the imported modules' objects


@pytest.fixture
def canary_db(tmp_path: Path) -> Path:
    """A relay database holding one queued envelope whose body is the canary."""
    db = tmp_path / "inspect.db"

    async def scenario() -> None:
        relay = await serve(RelayConfig(port=0, db_path=db))
        alice = await RawClient.open(relay.url)
        await alice.register("alice")
        bob = await RawClient.open(relay.url)
        await bob.register("bob")
        await bob.close()
        assert isinstance(await alice.send_message("bob", CANARY), Sent)
        await alice.close()
        await relay.close()

    asyncio.run(scenario())
    return db


def test_inspect_shows_metadata_and_only_a_ciphertext_prefix(
    canary_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "--db", str(canary_db)]) == 0
    out = capsys.readouterr().out
    counts = dict(re.findall(r"^  (\w+) +(\d+) rows$", out, re.MULTILINE))
    assert counts["queue"] == "1" and counts["accounts"] == "2" and counts["sent"] == "1"
    assert {"relay_identity", "signed_prekeys", "one_time_prekeys"} <= counts.keys()
    assert "alice → bob chat" in out
    assert CANARY[:8].hex() in out
    assert CANARY[8:16].hex() not in out and CANARY[:8].decode() not in out
    assert "private seed stored, not shown" in out


@pytest.mark.parametrize(
    "flags", [["--max-outgoing-buffer-bytes", "1000"], ["--write-timeout-s", "0"]]
)
def test_serve_refuses_a_bad_limit_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["serve", "--db", str(tmp_path / "r.db"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blindrelay serve: ") and err.count("\n") == 1, err
    assert not (tmp_path / "r.db").exists()


def test_inspect_without_a_database_fails(tmp_path: Path) -> None:
    assert main(["inspect", "--db", str(tmp_path / "missing.db")]) == 1


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.slow
async def test_serve_exits_1_when_its_writer_process_dies(tmp_path: Path) -> None:
    """A relay that can no longer store anything stops, so a supervisor restarts it."""
    process, _url = await _start(tmp_path, "--port", "0")
    [writer] = _children(process.pid)
    os.kill(writer, signal.SIGKILL)
    _, stderr = await asyncio.wait_for(process.communicate(), TEST_TIMEOUT_S)
    assert process.returncode == 1
    assert b"writer process exited" in stderr


@pytest.mark.parametrize(
    "flags", [["--pow-bits", "7"], ["--pow-bits", "2", "--pow-memlimit", "1000"], ["--queue-cap", "0"]]
)
def test_serve_refuses_a_bad_configuration_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """A proof of work over SPEC §4.6.3's bound (or any invalid value) is one line, no
    traceback, and no relay."""
    assert main(["serve", "--db", str(tmp_path / "r.db"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blindrelay serve: ") and err.count("\n") == 1
    assert not (tmp_path / "r.db").exists()


def test_require_invites_is_an_on_off_flag_with_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from blindrelay.server.cli import build_parser

    assert build_parser().parse_args(["serve"]).require_invites is False
    assert build_parser().parse_args(["serve", "--require-invites"]).require_invites is True
    monkeypatch.setenv("BLINDRELAY_REQUIRE_INVITES", "yes")
    assert build_parser().parse_args(["serve"]).require_invites is True
    assert build_parser().parse_args(["serve", "--no-require-invites"]).require_invites is False


@pytest.mark.slow
async def test_serve_takes_its_store_as_a_url_by_flag_or_environment(tmp_path: Path) -> None:
    """``--store sqlite:///PATH`` (or BLINDRELAY_STORE) is the SQLite store ``--db PATH``
    names; the log says where it is."""
    for args, env, named in (
        (["--store", f"sqlite://{tmp_path}/by-flag.db"], {}, f"{tmp_path}/by-flag.db"),
        ([], {"BLINDRELAY_STORE": "sqlite:by-env.db"}, "by-env.db"),
    ):
        process, _url = await _start(tmp_path, "--port", "0", *args, env=env)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), TEST_TIMEOUT_S)
        assert process.returncode == 0 and (tmp_path / named).exists()
        [listening] = [
            line for line in map(json.loads, stderr.decode().splitlines())
            if line["event"] == "listening"
        ]  # fmt: skip
        assert listening["store"] == f"{named} (SQLite, synchronous=FULL)"
    assert not (tmp_path / "blindrelay.db").exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--store", "redis://127.0.0.1/0"], "unknown kind 'redis'"),
        (["--store", "sqlite:other.db", "--db", "r.db"], "give --store or --db, not both"),
    ],
)
def test_serve_refuses_a_store_it_cannot_use_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    says: str,
) -> None:
    from blindrelay.server.logs import LOGGER

    monkeypatch.chdir(tmp_path)
    handlers = list(LOGGER.handlers)
    assert main(["serve", "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blindrelay serve: ") and says in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
    assert LOGGER.handlers == handlers  # refused before anything started, logging included


def test_inspect_opens_its_store_by_url_and_refuses_one_it_cannot_use(
    canary_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "--store", f"sqlite://{canary_db}"]) == 0
    assert "alice → bob chat" in capsys.readouterr().out
    assert main(["inspect", "--store", "redis://127.0.0.1/0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blindrelay inspect: store 'redis://127.0.0.1/0': unknown kind")
    assert err.count("\n") == 1
    assert main(["inspect", "--store", "postgresql://relay:secret@127.0.0.1:1/none"]) == 1
    err = capsys.readouterr().err  # nothing listens on port 1: one line, no password
    assert err.startswith("blindrelay inspect: cannot read postgresql://relay:***@127.0.0.1:1/none")
    assert err.count("\n") == 1 and "secret" not in err


def test_serve_without_the_postgresql_driver_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "asyncpg" else find_spec(name, *a),
    )
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--port", "0", "--store", "postgresql://127.0.0.1/relay"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blindrelay serve: ") and err.count("\n") == 1, err
    assert "pip install 'blindrelay[postgresql]'" in err


def test_serve_on_an_unreachable_postgresql_exits_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql://relay:secret@127.0.0.1:1/relay"  # nothing listens on port 1
    assert main(["serve", "--port", "0", "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blindrelay serve: cannot open the database: cannot use ")
    assert err.count("\n") == 1 and "secret" not in err


def test_reuse_port_is_an_on_off_flag_with_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from blindrelay.server.cli import build_parser

    assert build_parser().parse_args(["serve"]).reuse_port is False
    assert build_parser().parse_args(["serve", "--reuse-port"]).reuse_port is True
    monkeypatch.setenv("BLINDRELAY_REUSE_PORT", "on")
    assert build_parser().parse_args(["serve"]).reuse_port is True
    assert build_parser().parse_args(["serve", "--no-reuse-port"]).reuse_port is False


async def test_with_reuse_port_two_relays_listen_on_one_port(
    tmp_path: Path, clients: Clients
) -> None:
    """Two workers behind one port (docs/operations.md, Two workers); without the flag the
    port is refused as before."""
    first = await serve(RelayConfig(port=0, db_path=tmp_path / "a.db", reuse_port=True))
    try:
        port = int(first.url.rsplit(":", 1)[1])
        second = await serve(RelayConfig(port=port, db_path=tmp_path / "b.db", reuse_port=True))
        try:
            assert second.url == first.url
            with pytest.raises(OSError):
                await serve(RelayConfig(port=port, db_path=tmp_path / "c.db"))
            await clients.registered(first.url, "alice")  # one of them answers
        finally:
            await second.close()
    finally:
        await first.close()
