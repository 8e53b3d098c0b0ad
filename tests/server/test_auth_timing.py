"""LOGIN is no account-existence oracle by timing either (SPEC §4.3, §11.1).

The attack: a LOGIN with a made-up signature for a handle that exists costs the
relay an Ed25519 verification; for an unknown handle the relay used to answer at
once. The review classified one login per handle correctly 72–89 % of the time
over the network, from a 70–110 µs difference.

How this measures it: the relay's real login handling in process — the
dispatcher, the sans-I/O ``RelayConnection`` and the account lookup on a reader
connection of a real relay database, exactly as ``serve`` wires them; only the
socket is left out (a network adds jitter, never removes a difference). Logins
of existing and unknown handles are interleaved in random order, so whatever
else the machine does falls on both classes alike.

The statistic is what an attacker would do with one try per handle: learn the
best time threshold (and its direction) on half of the samples and classify the
other half. With timing noise of spread σ, a difference Δ gives an accuracy of
about Φ(Δ / 2σ); the bound ``MAX_ACCURACY`` = 0.6 means Δ < σ / 2. In process σ
is about a microsecond (it only grows on a busy machine), so the bound admits
sub-microsecond residue (SQLite and CPU caches) and nothing like the missing
verification: the unfixed relay is classified ~100 % correctly here.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from blindrelay.protocol.codec import encode
from blindrelay.protocol.connection import RelayConnection, State
from blindrelay.protocol.frames import Login
from blindrelay.server.config import RelayConfig
from blindrelay.server.context import RelayContext, Session
from blindrelay.server.dispatch import Dispatcher
from blindrelay.server.limiters import Limiters
from blindrelay.server.registration import RegistrationPolicy
from blindrelay.server.store import Account, Done
from blindrelay.server.store.sqlite.database import connect, connect_reader
from blindrelay.server.store.sqlite.tables import Accounts, Tables

from .conftest import FakeClock

ACCOUNTS = 200
"""Existing handles (and as many unknown ones), so no single row stays hot."""
PAIRS = 8000
"""Logins per class; ~1 s in all. The held-out accuracy's standard error is
0.5 / sqrt(PAIRS) ≈ 0.006. It must stay well below the margin to ``MAX_ACCURACY``,
which is smaller than it was: measured on a 2-core VM (2026-12-05), an existing handle's
lookup (``Accounts.get_evenly``) is still 0.1–0.2 µs slower than an unknown one's — its
``SELECT rowid … WHERE handle = ?`` returns a row id on a hit and NULL on a miss, ~110 ns
apart; an ``EXISTS`` would be 11 ns apart but gives no row id — against a spread of
~0.45 µs, so a one-try classifier reaches 53–58 % here. With 2,000 logins per class
(standard error 0.011) one full-suite run in three hit 60.6 %."""
WARM_UP = 100
MAX_ACCURACY = 0.6
"""Best one-try classification allowed; see the module docstring."""
NO_ORACLE_NS = 1_000
"""A difference of medians below this is no oracle anywhere but in this process, whatever
the classifier makes of it: over any network the jitter is tens of µs. Why it is needed
beside ``MAX_ACCURACY``: the accuracy grows as this machine's own noise shrinks, and on a
quiet 2-core VM (2026-12-07, spread ~0.48 µs) the documented residue of 0.19 µs was
classified 60.2 % right in one full-suite run of four. The missing verification this
test exists for is 70–110 µs: far past both bounds."""
HOUR_MS = 3_600_000


class _Discard:
    """A transport that drops what the machine queued (the bytes are read from the machine)."""

    congested = False

    def flush(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass

    def hold(self, reason: str) -> None:
        raise AssertionError(f"a LOGIN answered at once held the connection ({reason})")

    def release(self, reason: str) -> None:
        raise AssertionError(f"nothing was held ({reason})")


class _LoginOnly:
    """The SQLite store's LOGIN read (``SqliteStore.read`` of ``account_for_login``: its
    event-loop reader, answered at once); a failed login uses nothing else of the
    store, and any other use is a test failure."""

    def __init__(self, accounts: Accounts) -> None:
        self._get_evenly = accounts.get_evenly

    def read(self, name: str, args: tuple[Any, ...], done: Done) -> None:
        assert name == "account_for_login", name
        try:
            value = self._get_evenly(*args)
        except Exception as exc:
            done(False, exc)
            return
        done(True, value)

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"a refused LOGIN used the store ({name})")


def _handles(rng: random.Random, count: int) -> list[str]:
    return ["h" + rng.randbytes(5).hex() for _ in range(count)]


def _login_relay(tmp_path: Path, existing: list[str]) -> tuple[Dispatcher, FakeClock, bytes]:
    db = tmp_path / "relay.db"
    store = Tables(connect(db))
    with store.db.atomic():
        for n, handle in enumerate(existing):
            kind = "business" if n % 4 == 0 else "user"
            key = bytes(SigningKey.generate().verify_key)
            store.accounts.create(Account(handle, kind, key), 0)
    store.db.conn.close()
    clock = FakeClock()
    config = RelayConfig(db_path=db)
    ctx = RelayContext(
        config=config,
        clock=clock,
        relay_key=bytes(SigningKey.generate().verify_key),
        store=_LoginOnly(Accounts(connect_reader(db))),  # type: ignore[arg-type]
        limiters=Limiters.from_config(config, clock),
        registration=RegistrationPolicy(config, clock),  # REGISTER only; LOGIN never uses it
    )
    return Dispatcher(ctx), clock, ctx.relay_key


def _held_out_accuracy(existing: list[int], unknown: list[int]) -> float:
    """Train the best threshold on the even pairs, classify the odd ones."""
    train = sorted([(t, True) for t in existing[::2]] + [(t, False) for t in unknown[::2]])
    total = len(train)
    # Sweep the threshold: "slower than t means existing", and the reverse.
    best, threshold, slower_exists = 0.0, 0, True
    below_existing = below_unknown = 0
    all_existing = sum(1 for _, e in train if e)
    for index, (t, is_existing) in enumerate(train):
        if index == 0 or t != train[index - 1][0]:
            correct = (all_existing - below_existing) + below_unknown  # slower → existing
            for accuracy, direction in ((correct / total, True), (1 - correct / total, False)):
                if accuracy > best:
                    best, threshold, slower_exists = accuracy, t, direction
        if is_existing:
            below_existing += 1
        else:
            below_unknown += 1
    test = [(t, True) for t in existing[1::2]] + [(t, False) for t in unknown[1::2]]
    right = sum(1 for t, is_existing in test if (t >= threshold) == (is_existing == slower_exists))
    return right / len(test)


def _describe(samples: list[int]) -> str:
    low, median, high = statistics.quantiles(samples, n=4)
    return f"median {median / 1000:.2f} µs (IQR {(high - low) / 1000:.2f} µs)"


def test_login_takes_as_long_for_an_unknown_handle_as_for_an_existing_one(
    tmp_path: Path,
) -> None:
    """SPEC §4.3: "An unknown handle MUST fail exactly like a wrong signature (ERROR 200,
    same frame)" — and with the same work, so that login is no account-existence oracle."""
    rng = random.Random(13)
    existing_handles = _handles(rng, ACCOUNTS)
    unknown_handles = _handles(rng, ACCOUNTS)
    dispatcher, clock, relay_key = _login_relay(tmp_path, existing_handles)
    # A well-formed signature by a key the relay does not know: what a prober sends.
    signature = SigningKey.generate().sign(b"probe").signature
    answers: set[bytes] = set()

    def login_ns(handle: str) -> int:
        clock.advance(HOUR_MS)  # a fresh challenge; any per-time limiter has refilled
        conn = RelayConnection(relay_key, clock(), os.urandom)
        session = Session(conn, _Discard(), peer="127.0.0.1:40000")
        data = encode(Login(id=7, handle=handle, signature=signature))
        start = time.perf_counter_ns()
        dispatcher.data_received(session, data)
        elapsed = time.perf_counter_ns() - start
        assert conn.state is State.CLOSED  # ERROR 200 closes
        answers.add(conn.data_to_send()[-1])
        return elapsed

    timings: dict[bool, list[int]] = {True: [], False: []}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for n in range(WARM_UP + PAIRS):
            pair = [(True, rng.choice(existing_handles)), (False, rng.choice(unknown_handles))]
            rng.shuffle(pair)
            for is_existing, handle in pair:
                elapsed = login_ns(handle)
                if n >= WARM_UP:
                    timings[is_existing].append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()

    assert len(answers) == 1  # one ERROR 200, the same bytes for every login
    existing, unknown = timings[True], timings[False]
    accuracy = _held_out_accuracy(existing, unknown)
    difference = abs(statistics.median(existing) - statistics.median(unknown))
    summary = (
        f"existing {_describe(existing)}, unknown {_describe(unknown)};"
        f" one-try classification {accuracy:.1%}"
    )
    assert accuracy <= MAX_ACCURACY or difference < NO_ORACLE_NS, summary


def test_the_classifier_finds_a_difference_when_there_is_one() -> None:
    """Positive control: the statistic is not blind. Half a σ apart (Φ(0.25) ≈ 60 %
    expected) is near the bound; five σ apart is caught every time."""
    rng = random.Random(1)
    base = [int(rng.gauss(60_000, 1_000)) for _ in range(2 * PAIRS)]
    same = _held_out_accuracy(base[:PAIRS], base[PAIRS:])
    far = _held_out_accuracy([t + 5_000 for t in base[:PAIRS]], base[PAIRS:])
    near = _held_out_accuracy([t + 500 for t in base[:PAIRS]], base[PAIRS:])
    assert same < 0.54 and far > 0.95 and 0.55 < near < 0.65
