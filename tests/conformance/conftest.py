"""Fixtures of the black-box conformance suite: deployments, and self-registered accounts.

The same tests run against each **deployment** of the reference relay, started for
the suite (``blindrelay serve --port 0``; its ``listening ws://…`` line awaited;
SIGTERM at the end of the package):

- ``sqlite`` — one relay on a fresh SQLite file (the embedded default);
- ``sqlite-pow`` — the same with registration proof of work on (SPEC §4.6.3, at the
  lowest cost the relay accepts), so the suite's own solving, which a relay anywhere
  may ask for, and the tests' branches for a relay that asks run here too;
- ``postgresql`` — one relay on a fresh PostgreSQL database (``--store postgresql://…``);
- ``postgresql-2`` — two relay processes (workers) on one fresh database, each on its
  own port. The ``relay`` fixture alternates new connections between the workers and
  sends an account's next login to the worker it was not on, so the accounts of a
  test sit on both workers: a test's first two accounts (its two parties, in most
  tests) always on different ones. After every test a check fails it if it had two
  accounts or more and they all sat on one worker; the run ends with a line per
  deployment counting connections per worker and SENDs that crossed workers.

The PostgreSQL deployments need ``BLINDRELAY_TEST_POSTGRES`` (tests/pg.py): without it
their tests are deselected and counted in the closing line. ``--relay-url ws://…``
(declared in ``tests/conftest.py``) runs the suite against that relay only, any
implementation. Nothing here reads a relay's database or imports its code: accounts
are registered over the wire with fresh random handles, so the suite can run again
and again against a live relay.

Async tests run under ``asyncio.run`` via the hook below (no plugin needed);
every connection a test opens through the ``relay`` fixture is closed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blindrelay.protocol.frames import PrekeysUpload, Welcome

from ..asyncrun import AsyncFixture, async_test_runner
from ..pg import fresh_database
from .wire import Account, Peer, new_handle, one_time_prekeys, open_peer, signed_prekey

TEST_TIMEOUT_S = 30.0
"""Upper bound for one test; every wait inside is bounded much tighter."""

STARTUP_TIMEOUT_S = 15.0
LOCAL_RELAY_FLAGS = [
    "--register-burst", "100000", "--register-rate-per-h", "100000", "--sth-interval-s", "0.2",
    "--connections-burst-source", "100000", "--connections-per-s-source", "100000",
]  # fmt: skip
"""The local relay's defaults but three: every test registers from 127.0.0.1, and a run
registers a few hundred accounts, so the per-address limit (SPEC §4.6.1) is raised, and
opens as many connections, so is the per-address connection rate (§1.2.2); and tree
heads are signed every 0.2 s rather than 10 s, so the log's tests (§15) wait for one
briefly. docs/conformance.md says what an external relay needs."""
_LISTENING = re.compile(r"listening (wss?://\S+)")

POW_FLAGS = ["--pow-bits", "2", "--pow-opslimit", "1", "--pow-memlimit", str(1 << 20)]
"""Four Argon2id evaluations of 1 MiB expected per registration: a few milliseconds."""

EXTERNAL = "external"
WORKERS = {"sqlite": 1, "sqlite-pow": 1, "postgresql": 1, "postgresql-2": 2}
"""Each local deployment and how many relay processes it runs."""
FLAGS = {"sqlite-pow": POW_FLAGS}
"""A deployment's flags beside ``LOCAL_RELAY_FLAGS``."""


# --- the deployment under test ----------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What the suite tests: a name and one URL per relay worker."""

    name: str
    urls: tuple[str, ...]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that talks to a relay runs once per deployment (only ``external`` with
    ``--relay-url``); the PostgreSQL ones carry the ``postgres`` mark (tests/pg.py)."""
    if "deployment" not in metafunc.fixturenames:
        return
    if metafunc.config.getoption("--relay-url"):
        params = [pytest.param(EXTERNAL, id=EXTERNAL)]
    else:
        params = [
            pytest.param(name, id=name, marks=[] if _on_sqlite(name) else [pytest.mark.postgres])
            for name in WORKERS
        ]
    metafunc.parametrize("deployment", params, indirect=True, scope="package")


def _on_sqlite(name: str) -> bool:
    return name.startswith("sqlite")


def _serve_command() -> list[str]:
    script = shutil.which("blindrelay", path=str(Path(sys.executable).parent))
    if script is None:
        script = shutil.which("blindrelay")
    if script is None:
        raise RuntimeError("no `blindrelay` command: install the package or pass --relay-url")
    return [script, "serve"]


@pytest.fixture(scope="package")
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The relay under test: ``--relay-url``, or a local deployment started for the
    package and stopped (workers first, then its database dropped) after it."""
    name: str = request.param
    if name == EXTERNAL:
        yield Deployment(name, (request.config.getoption("--relay-url"),))
        return
    workdir = tmp_path_factory.mktemp(name)
    with contextlib.ExitStack() as stack:
        if _on_sqlite(name):
            store = ["--db", str(workdir / "relay.db")]
        else:
            server: str = request.getfixturevalue("pg_server_url")
            database = stack.enter_context(fresh_database(server, f"conformance {name}"))
            store = ["--store", database.url]
        urls = []
        for n in range(WORKERS[name]):  # one after the other: see harness.workers
            command = [
                *_serve_command(), "--port", "0", *store, *LOCAL_RELAY_FLAGS,
                *FLAGS.get(name, []),
            ]  # fmt: skip
            urls.append(_wait_for_url(*_start(stack, command, workdir / f"worker{n}.log")))
        yield Deployment(name, tuple(urls))


def _start(
    stack: contextlib.ExitStack, command: list[str], log_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start one relay process; ``stack`` stops it (SIGTERM, then SIGKILL) on exit."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)  # no shell
    stack.callback(_stop, proc)
    return proc, log_path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def _wait_for_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            break
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            break
        if match := _LISTENING.search(line):
            return match.group(1)
    proc.kill()
    raise RuntimeError(f"relay did not start; its log:\n{log.read_text(errors='replace')}")


# --- running async tests --------------------------------------------------------


pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)


# --- accounts and connections ---------------------------------------------------


class Relay(AsyncFixture):
    """The relay under test as a test sees it: connect, register, log in again.

    With several workers, new connections alternate between them and an account's
    next login goes to a worker it is not on; on leaving, the test fails if its
    accounts (two or more) all sat on one worker.
    """

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.url = deployment.urls[0]
        """The first worker's URL, for tests that open raw WebSockets."""
        self._peers: list[tuple[Peer, int]] = []
        totals = _TOTALS.setdefault(deployment.name, Counter())
        self._next_worker = totals["tests"] % len(deployment.urls)
        """Tests start on the workers in turn, so one-connection tests run on each."""

    async def __aexit__(self, *exc: object) -> None:
        for peer, _ in self._peers:
            try:
                await asyncio.wait_for(peer.close(), 2)
            except Exception:
                peer.ws.transport.abort()  # never leak a socket, even from a stuck relay
        crossing = _count_crossing(self.deployment, self._peers)
        if exc[0] is None and len(self.deployment.urls) > 1 and crossing.account_count > 1:
            assert crossing.worker_count > 1, (
                f"harness: the test's {crossing.account_count} accounts all sat on one "
                f"worker of {self.deployment.name}; the relay fixture must spread them"
            )
            assert crossing.crossing_sends or not crossing.sends, (
                f"harness: none of the test's {crossing.sends} SENDs between its accounts "
                f"went to another worker of {self.deployment.name}: open its accounts so "
                "that the parties of a conversation alternate"
            )

    async def connect(self, worker: int | None = None) -> Peer:
        """A new connection, HELLO read, not authenticated (on the next worker in turn,
        or on ``worker``)."""
        if worker is None:
            worker = self._next_worker
        self._next_worker = (worker + 1) % len(self.deployment.urls)
        peer = await open_peer(self.deployment.urls[worker])
        self._peers.append((peer, worker))
        return peer

    async def account(
        self,
        kind: str = "user",
        *,
        prefix: str | None = None,
        one_time: int = 0,
        signed: bool = False,
    ) -> Peer:
        """A freshly registered account, connected; optionally with prekeys published."""
        account = Account(new_handle(prefix or kind[:3]), kind)
        peer = await self.connect()
        welcome = await peer.register(account)
        assert isinstance(welcome, Welcome), f"registration refused: {welcome}"
        if signed or one_time:
            await self.publish(peer, one_time=one_time)
        return peer

    async def user(self, **kwargs: Any) -> Peer:
        return await self.account("user", **kwargs)

    async def business(self, **kwargs: Any) -> Peer:
        return await self.account("business", **kwargs)

    async def publish(self, peer: Peer, *, one_time: int = 0, first_id: int = 1) -> None:
        """Upload a signed prekey and ``one_time`` one-time prekeys (SPEC §5.2)."""
        assert peer.account is not None
        spk = signed_prekey(peer.account.key)
        keys = one_time_prekeys(first_id, one_time)
        for start in range(0, max(len(keys), 1), 100):
            answer = await peer.request(
                lambda i, s=start: PrekeysUpload(
                    id=i, signed_prekey=spk if s == 0 else None, one_time=keys[s : s + 100]
                )
            )
            assert type(answer).__name__ == "Ok", f"prekey upload refused: {answer}"

    async def login(self, account: Account | Peer) -> Peer:
        """A new authenticated connection for an existing account, on a worker other
        than the one it was last connected to."""
        if isinstance(account, Peer):
            assert account.account is not None
            account = account.account
        last = [w for peer, w in self._peers if peer.account is not None
                and peer.account.handle == account.handle]  # fmt: skip
        worker = (last[-1] + 1) % len(self.deployment.urls) if last else None
        peer = await self.connect(worker)
        welcome = await peer.login(account)
        assert isinstance(welcome, Welcome), f"login refused: {welcome}"
        return peer


@pytest.fixture
def relay(deployment: Deployment) -> Relay:
    return Relay(deployment)


# --- proof that the parties of a test sit on different workers ----------------------


@dataclass
class Crossing:
    """Where one test's accounts sat and which of its SENDs crossed workers."""

    account_count: int
    worker_count: int
    """Workers that had at least one of the test's authenticated connections."""
    sends: int
    """SENDs to an account of this test."""
    crossing_sends: int
    """Those whose recipient had a connection on another worker than the sender's."""


_TOTALS: dict[str, Counter[str]] = {}
"""Per deployment: connections per worker, tests, tests with several accounts, those
whose accounts crossed workers, SENDs between the test's accounts and crossing ones."""


def _count_crossing(deployment: Deployment, peers: list[tuple[Peer, int]]) -> Crossing:
    workers_of: dict[str, set[int]] = {}
    for peer, worker in peers:
        if peer.account is not None:
            workers_of.setdefault(peer.account.handle, set()).add(worker)
    sends = crossing = 0
    for peer, worker in peers:
        for to in peer.sent_to:
            if to in workers_of:
                sends += 1
                crossing += bool(workers_of[to] - {worker})
    on_workers = set().union(*workers_of.values()) if workers_of else set()
    result = Crossing(len(workers_of), len(on_workers), sends, crossing)
    totals = _TOTALS.setdefault(deployment.name, Counter())
    totals.update(f"connections on worker {w}" for _, w in peers)
    totals["tests"] += 1
    if result.account_count > 1:
        totals["tests with 2+ accounts"] += 1
        totals["of them on 2+ workers"] += result.worker_count > 1
    totals["SENDs between a test's accounts"] += sends
    totals["of them to another worker"] += crossing
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, totals in _TOTALS.items():
        counts = ", ".join(f"{key}: {value}" for key, value in sorted(totals.items()))
        terminalreporter.write_line(f"conformance deployment {name}: {counts}")
