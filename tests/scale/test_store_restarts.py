"""PostgreSQL crash-restarted three times under load; the relay workers ride it out.

SPEC §6.3.3 (store outage): while a worker cannot reach its store it MUST NOT answer
SENT; it answers ERROR 902 STORE_UNAVAILABLE with a ``retry_after``, keeps the
connection open and reconnects by itself; a SEND cut off by the outage is sent again
with the same msg_id and stored once. Routing hints are only hints: after the outage a
worker catches up from the tables (docs: operations guide).

Two workers, 24 SDK senders and 8 SDK recipients connected straight to them, every
sender writing to recipients on the other worker. Each restart
(``pg_ctlcluster … restart -m immediate`` through tests/pg.py, which waits for other
test modules on this machine) comes after a seeded number of SENTs, while the senders
keep sending. It is over when every sender had a SENT again after the server came
back. At the end: every acknowledged message — and in particular every one
acknowledged before a crash — reached its recipient; every restart drew 902s and no
other error; no connection was dropped and the workers are the same processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from ..pg import RESTART_TIMEOUT_S, PostgresDatabase
from .harness import LOAD_FLAGS, Changes, Party, body, timed, workers

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("BLINDRELAY_SCALE_SEED", "20261124"))
SENDERS = 24
RECIPIENTS = 8
RESTARTS = 3
SENTS_BEFORE_RESTART = (100, 300)
"""A restart comes after this many SENTs (seeded) since the previous one recovered."""
SENTS_AFTER_LAST = 100
RECOVERY_TIMEOUT_S = 30.0
"""From the server accepting connections again to a SENT for every sender: the
workers' reconnect backoff is capped well below this (docs/operations.md)."""
DRAIN_TIMEOUT_S = 20.0
SEND_TIMEOUT_S = RESTART_TIMEOUT_S + RECOVERY_TIMEOUT_S
"""A SENT takes at most an outage (a crash restart with its recovery) and a recovery."""
OUTAGE = 902


async def scenario(database: PostgresDatabase, logs: Path) -> dict[str, object]:
    rng = random.Random(SEED)
    thresholds = [rng.randint(*SENTS_BEFORE_RESTART) for _ in range(RESTARTS)]
    laps: dict[str, float] = {}
    async with workers(database.url, logs, 2, LOAD_FLAGS) as pool:
        pids = [w.pid for w in pool]
        recipients = [Party(f"recipient-{n}", pool[n % 2].url) for n in range(RECIPIENTS)]
        senders = [Party(f"sender-{n}", pool[n % 2].url) for n in range(SENDERS)]
        parties = recipients + senders
        by_handle = {p.handle: p for p in parties}
        targets = {
            s.handle: [r.handle for m, r in enumerate(recipients) if m % 2 != n % 2]
            for n, s in enumerate(senders)
        }
        received = Changes()
        sent_at = Changes()
        acknowledged: dict[tuple[str, bytes], tuple[str, str]] = {}
        last_sent: dict[str, float] = {}
        """Per sender, time.monotonic() of its latest SENT."""
        before_crash: list[set[tuple[str, bytes]]] = []
        """Per restart, what had been acknowledged when it began."""
        windows: list[tuple[float, float]] = []
        """Per restart, from its start to the SENT that showed every sender served again."""
        stop = asyncio.Event()
        ready = False
        progress = 0
        restarts: list[asyncio.Task[None]] = []
        load = asyncio.TaskGroup()
        """The send loops and the restarts: the first to fail cancels the others."""

        async def restart() -> None:
            nonlocal ready, progress
            started = time.monotonic()
            before_crash.append(set(acknowledged))
            await database.restart_async()
            back = time.monotonic()
            await sent_at.wait_for(
                lambda: all(last_sent.get(s.handle, 0) > back for s in senders),
                RECOVERY_TIMEOUT_S,
                f"a SENT for every sender after restart {len(windows) + 1}",
            )
            windows.append((started, time.monotonic()))
            progress, ready = 0, True

        def on_sent() -> None:
            nonlocal ready, progress
            progress += 1
            if not ready:
                return
            if len(restarts) == RESTARTS:
                if progress >= SENTS_AFTER_LAST:
                    stop.set()
                return
            if progress >= thresholds[len(restarts)]:
                ready = False
                restarts.append(load.create_task(restart()))

        async def send_loop(sender: Party, warm: asyncio.Event) -> None:
            seq = 0
            to = targets[sender.handle]
            while not stop.is_set():
                recipient, text = to[seq % len(to)], body(sender.handle, seq)
                msg_id = await asyncio.wait_for(sender.client.send(recipient, text), SEND_TIMEOUT_S)
                acknowledged[(sender.handle, msg_id)] = (recipient, text)
                last_sent[sender.handle] = time.monotonic()
                sent_at.changed()
                seq += 1
                if seq == len(to):
                    warm.set()  # sessions with all its recipients exist
                on_sent()

        def delivered_all() -> bool:
            return all(key in by_handle[to].received for key, (to, _) in acknowledged.items())

        try:
            with timed(laps, "register_s"):
                await asyncio.gather(*(p.register() for p in parties))
            for recipient in recipients:
                recipient.read(received)
            with timed(laps, "load_s"):
                warm = [asyncio.Event() for _ in senders]
                async with load:
                    for sender, event in zip(senders, warm, strict=True):
                        load.create_task(send_loop(sender, event))
                    # Restarts begin once every session exists: a bundle fetch refused
                    # with 902 is the application's to retry; this test is about SENDs.
                    await asyncio.wait_for(asyncio.gather(*(w.wait() for w in warm)), 30)
                    progress, ready = 0, True
            with timed(laps, "drain_s"):
                await received.wait_for(
                    delivered_all, DRAIN_TIMEOUT_S, "every acknowledged message delivered"
                )
            running = [w.running for w in pool]
            pids_after = [w.pid for w in pool]
        finally:
            await asyncio.gather(*(p.close() for p in parties), return_exceptions=True)

    app_seen = Counter[tuple[str, bytes]]()
    for r in recipients:
        app_seen.update(r.received)
    errors = Counter[int]()
    outage_errors = [0] * len(windows)
    for p in parties:
        errors.update(p.wire.errors)
        for at, code in p.wire.error_times:
            for n, (start, end) in enumerate(windows):
                if code == OUTAGE and start <= at <= end:
                    outage_errors[n] += 1
    return {
        "restarts": len(windows),
        "acknowledged": len(acknowledged),
        "acknowledged_before_each_crash": [len(s) for s in before_crash],
        "lost": len(set(acknowledged) - set(app_seen)),
        "lost_acknowledged_before_a_crash": len(set().union(*before_crash) - set(app_seen)),
        "never_sent_but_seen": len(set(app_seen) - set(acknowledged)),
        "wrong_body": sum(
            by_handle[to].bodies.get(key, text) != text for key, (to, text) in acknowledged.items()
        ),
        "app_duplicates": sum(n - 1 for n in app_seen.values()),
        "raw_duplicates_suppressed": sum(
            n - 1 for r in recipients for n in r.wire.delivered.values()
        ),
        "sends_resent": sum(n - 1 for s in senders for n in s.wire.sends.values()),
        "errors_902_per_restart": outage_errors,
        "error_codes": dict(errors),
        # From asking for the restart (which first waits for other test modules on this
        # machine to let go of the server) to every sender served again.
        "restart_to_recovery_s": [round(end - start, 2) for start, end in windows],
        "workers_running": running,
        "same_pids": pids_after == pids,
        "connections_per_party": sorted({p.client.connection_count for p in parties}),
        "exit_statuses": [w.exit_status for w in pool],
        **laps,
    }


async def test_postgresql_restarts_under_load_lose_nothing_acknowledged(
    pg_database: PostgresDatabase, tmp_path: Path
) -> None:
    counts = await scenario(pg_database, tmp_path)
    print("postgresql restarts:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    assert counts["restarts"] == RESTARTS
    assert counts["lost"] == 0
    assert counts["lost_acknowledged_before_a_crash"] == 0
    assert counts["never_sent_but_seen"] == 0
    assert counts["wrong_body"] == 0
    assert counts["app_duplicates"] == 0
    # Every outage was answered with the documented error, and with nothing else.
    per_restart = counts["errors_902_per_restart"]
    assert isinstance(per_restart, list) and all(n > 0 for n in per_restart), per_restart
    assert set(counts["error_codes"]) == {OUTAGE}  # type: ignore[arg-type]
    # The workers rode it out: same processes, and no client connection was dropped.
    assert counts["workers_running"] == [True, True]
    assert counts["same_pids"] is True
    assert counts["connections_per_party"] == [1]
    assert counts["exit_statuses"] == [0, 0]  # SIGTERM at the end: a clean shutdown
