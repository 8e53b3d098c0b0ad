"""Two relay workers on one PostgreSQL database; one is SIGKILLed ten times under load.

SPEC §6.3: SENT only after the commit, and a client resends (same msg_id) whatever
has no SENT; §6.4: per-pair order, at-least-once delivery, the client drops duplicates
by (sender, msg_id); §6.5: ACK deletes. Here across processes: any worker serves any
client, and a client whose worker dies reconnects to the other one.

24 SDK senders and 8 SDK recipients, each with a *home* worker (half on each); a
sender writes only to recipients homed on the other worker, so every message crosses
workers. They reach the workers through a load balancer (tests/scale/harness.py):
while a worker is down its clients are served by the other, and once it is back the
balancer sends them home. The workers are killed in turn, each after a seeded number
of SENTs since the previous cycle ended, and each cycle waits — for conditions, not
for time — until every client of the dead worker reconnected to the live one, the
dead one runs again (a new process), and every client is home again.

At the end, every acknowledged message (``Client.send`` returned) reached its
recipient's application exactly once; the DELIVERs the recipients' sockets saw
include redeliveries (the duplicates the SDK suppressed), counted from the wire.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from ..pg import PostgresDatabase
from .harness import LOAD_FLAGS, Balancer, Changes, Party, body, timed, workers

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("BLINDRELAY_SCALE_SEED", "20261124"))
"""Kill moments derive from this; set the variable to try another."""
SENDERS = 24
RECIPIENTS = 8
KILLS = 10
SENTS_BEFORE_KILL = (40, 160)
"""A kill comes after this many SENTs (inclusive range, seeded) since the last cycle
ended: always under load, at a different moment of the traffic each time."""
SENTS_AFTER_LAST = 100
"""Load after the last restart, so both workers carry traffic again before the end."""
RECOVERY_TIMEOUT_S = 20.0
"""Reconnects (SDK backoff 25–500 ms) and a worker start on a loaded machine."""
DRAIN_TIMEOUT_S = 20.0
SEND_TIMEOUT_S = 2 * RECOVERY_TIMEOUT_S
"""A SENT takes at most one kill cycle (a send stalls while its worker is down)."""
RUN_TIMEOUT_S = 150.0


async def scenario(database: PostgresDatabase, logs: Path) -> dict[str, object]:
    rng = random.Random(SEED)
    thresholds = [rng.randint(*SENTS_BEFORE_KILL) for _ in range(KILLS)]
    laps: dict[str, float] = {}
    async with workers(database.url, logs, 2, LOAD_FLAGS) as pool:
        balancer = Balancer([w.port for w in pool])
        await balancer.start()
        recipients = [Party(f"recipient-{n}", balancer.url(n % 2)) for n in range(RECIPIENTS)]
        senders = [Party(f"sender-{n}", balancer.url(n % 2)) for n in range(SENDERS)]
        parties = recipients + senders
        home = {p.handle: n % 2 for n, p in enumerate(recipients)}
        home.update({p.handle: n % 2 for n, p in enumerate(senders)})
        clients_of = Counter(home.values())
        targets = {
            s.handle: [r.handle for r in recipients if home[r.handle] != home[s.handle]]
            for s in senders
        }
        received = Changes()
        acknowledged: dict[tuple[str, bytes], tuple[str, str]] = {}
        """(sender, msg_id) → (recipient, text) of every send the relay answered SENT."""
        stop = asyncio.Event()
        ready = True
        progress = 0
        kills: list[int] = []
        failovers: list[int] = []
        """Per kill: connections the killed worker's clients made to the other worker."""
        recoveries: list[asyncio.Task[None]] = []
        load = asyncio.TaskGroup()
        """The send loops and the recoveries: the first to fail cancels the others."""
        pids = [w.pid for w in pool]

        def all_home() -> bool:
            return len(balancer.links) == len(parties) and all(
                balancer.live(w, home=w) == clients_of[w] for w in (0, 1)
            )

        async def recover(victim: int, moved_before: int) -> None:
            nonlocal ready, progress
            other = 1 - victim
            worker = pool[victim]
            await worker.reap()
            await balancer.changes.wait_for(
                lambda: balancer.live(other) == len(parties),
                RECOVERY_TIMEOUT_S,
                f"every client of killed worker {victim} reconnected to worker {other}",
            )
            failovers.append(balancer.connections[(victim, other)] - moved_before)
            await worker.start()
            pids.append(worker.pid)
            balancer.set_backend(victim, worker.port)
            balancer.rebalance(victim)
            await balancer.changes.wait_for(
                all_home, RECOVERY_TIMEOUT_S, f"every client back home after worker {victim}"
            )
            progress, ready = 0, True

        def on_sent() -> None:
            nonlocal ready, progress
            progress += 1
            if not ready:
                return
            if len(kills) == KILLS:
                if progress >= SENTS_AFTER_LAST:
                    stop.set()
                return
            if progress >= thresholds[len(kills)]:
                victim = len(kills) % 2
                ready = False
                balancer.set_backend(victim, None)  # the health check notices first
                pool[victim].kill()
                kills.append(victim)
                moved = balancer.connections[(victim, 1 - victim)]
                recoveries.append(load.create_task(recover(victim, moved)))

        async def send_loop(sender: Party) -> None:
            seq = 0
            to = targets[sender.handle]
            while not stop.is_set():
                recipient, text = to[seq % len(to)], body(sender.handle, seq)
                msg_id = await asyncio.wait_for(sender.client.send(recipient, text), SEND_TIMEOUT_S)
                acknowledged[(sender.handle, msg_id)] = (recipient, text)
                seq += 1
                on_sent()

        def delivered_all() -> bool:
            return all(key in by_handle[to].received for key, (to, _) in acknowledged.items())

        by_handle = {p.handle: p for p in parties}
        try:
            with timed(laps, "register_s"):
                await asyncio.gather(*(p.register() for p in parties))
            for recipient in recipients:
                recipient.read(received)
            with timed(laps, "load_s"):
                async with load:
                    for sender in senders:
                        load.create_task(send_loop(sender))
            with timed(laps, "drain_s"):
                await received.wait_for(
                    delivered_all, DRAIN_TIMEOUT_S, "every acknowledged message delivered"
                )
        finally:
            await asyncio.gather(*(p.close() for p in parties), return_exceptions=True)
            await balancer.close()

    app_seen = Counter[tuple[str, bytes]]()
    raw_seen = Counter[tuple[str, bytes]]()
    out_of_order = 0
    for r in recipients:
        app_seen.update(r.received)
        raw_seen.update(r.wire.delivered)
        out_of_order += sum(seqs != sorted(seqs) for seqs in r.order.values())
    wrong = sum(
        by_handle[to].bodies.get(key, text) != text for key, (to, text) in acknowledged.items()
    )
    errors = Counter[int]()
    for p in parties:
        errors.update(p.wire.errors)
    return {
        "kills": len(kills),
        "killed_workers": Counter(kills),
        "distinct_pids": len(set(pids)),
        "acknowledged": len(acknowledged),
        "delivered": len(set(app_seen) & set(acknowledged)),
        "lost": len(set(acknowledged) - set(app_seen)),
        "wrong_body": wrong,
        "never_sent_but_seen": len(set(app_seen) - set(acknowledged)),
        "app_duplicates": sum(n - 1 for n in app_seen.values()),
        "raw_deliveries": sum(raw_seen.values()),
        "raw_duplicates_suppressed": sum(n - 1 for n in raw_seen.values()),
        "sends_resent": sum(n - 1 for s in senders for n in s.wire.sends.values()),
        "out_of_order_pairs": out_of_order,
        "failover_connections": failovers,
        "connections_by_home_worker": dict(balancer.connections),
        "error_codes": dict(errors),
        "exit_statuses": [w.exit_status for w in pool],
        **laps,
    }


async def test_workers_killed_under_load_lose_nothing_acknowledged(
    pg_database: PostgresDatabase, tmp_path: Path
) -> None:
    counts = await asyncio.wait_for(scenario(pg_database, tmp_path), RUN_TIMEOUT_S)
    print("worker kills:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    assert counts["kills"] == KILLS
    assert counts["distinct_pids"] == 2 + KILLS  # each kill really replaced a process
    assert counts["lost"] == 0
    assert counts["wrong_body"] == 0
    assert counts["never_sent_but_seen"] == 0
    assert counts["app_duplicates"] == 0  # the SDK suppressed every redelivery …
    assert counts["raw_duplicates_suppressed"] > 0  # … and there were some (dozens here)
    assert counts["sends_resent"] > 0  # SENDs cut off by a kill went again, stored once
    assert counts["out_of_order_pairs"] == 0
    assert counts["delivered"] == counts["acknowledged"] > SENDERS * KILLS
    # Each kill moved the dead worker's clients (half of all) to the other worker.
    assert counts["failover_connections"] == [(SENDERS + RECIPIENTS) // 2] * KILLS
    assert counts["error_codes"] == {}
    assert counts["exit_statuses"] == [0, 0]  # SIGTERM at the end: a clean shutdown
