"""Metering survives SIGKILL mid-burst: exact counts, never lost, never doubled (SPEC §8.4).

"Counts MUST be committed in the same transaction as the envelope they count,
so that a crash neither loses nor doubles a count; an idempotent resend (§6.3)
counts once." A ``blindrelay serve`` subprocess is killed while a business
streams notifications to consenting users; on restart the business resends
(same msg_id) everything it has no SENT for, and the bill must equal the
number of notifications — each now SENT-acknowledged — exactly. Every wait is
for a line, a frame or a process exit, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from blindrelay.protocol.frames import Deliver, Error, Send, Sent, Usage, UsageCount, UsageFetch
from blindrelay.protocol.transparency.bills import month_of

from .conftest import RawClient, db_rows
from .consent_helpers import stated

pytestmark = pytest.mark.slow

USERS = 4
NOTIFICATIONS = 1200
IN_FLIGHT = 64
KILL_AFTER_SENTS = 400
"""Kill once this many SENTs are in: well inside the burst, with IN_FLIGHT pending."""
UNLIMITED = "1000000000"
LISTENING = re.compile(rb"listening (ws://127\.0\.0\.1:\d+)")
TIMEOUT_S = 20.0


async def _start(db: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "blindrelay.server.cli", "serve",
            "--host", "127.0.0.1", "--port", "0", "--db", str(db), "--log-level", "WARNING",
            "--send-rate-business", UNLIMITED, "--send-burst-business", UNLIMITED,
            "--send-rate-pair", UNLIMITED, "--send-burst-pair", UNLIMITED,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
    match = LISTENING.search(line)
    assert match, (line, log.read_text())
    return proc, match.group(1).decode()


async def _burst(
    airline: RawClient, planned: list[tuple[str, bytes, bytes]], proc: asyncio.subprocess.Process
) -> set[bytes]:
    """Stream notifications with IN_FLIGHT outstanding; SIGKILL after KILL_AFTER_SENTS."""
    acknowledged: set[bytes] = set()
    outstanding = 0
    for n, (to, msg_id, body) in enumerate(planned):
        frame = Send(id=n + 1, to=to, msg_id=msg_id, body=body, intent="notification",
                     category="utility")  # fmt: skip
        await airline.send(frame)
        outstanding += 1
        while outstanding >= IN_FLIGHT:
            answer = await airline.recv()
            if isinstance(answer, Deliver):
                continue  # the users' consent receipts
            assert isinstance(answer, Sent), answer
            acknowledged.add(answer.msg_id)
            outstanding -= 1
        if len(acknowledged) >= KILL_AFTER_SENTS:
            proc.send_signal(signal.SIGKILL)
            break
    await asyncio.wait_for(proc.wait(), TIMEOUT_S)
    # SENTs already on their way before the kill still count as acknowledged.
    try:
        while True:
            answer = await airline.recv()
            if isinstance(answer, Sent):
                acknowledged.add(answer.msg_id)
    except Exception:  # the connection died with the relay
        pass
    return acknowledged


async def _scenario(tmp_path: Path) -> None:
    db, log = tmp_path / "relay.db", tmp_path / "relay.log"
    proc, url = await _start(db, log)
    airline = await RawClient.open(url)
    await airline.register("airline", "business")
    users = []
    for n in range(USERS):
        user = await RawClient.open(url)
        await user.register(f"user{n}")
        await stated(user, "grant", "airline", time.time_ns() // 1_000_000, ("utility",))
        users.append(user)
    for user in users:
        await user.close()
    planned = [(f"user{n % USERS}", os.urandom(16), os.urandom(48)) for n in range(NOTIFICATIONS)]
    acknowledged = await _burst(airline, planned, proc)
    assert KILL_AFTER_SENTS <= len(acknowledged) < NOTIFICATIONS  # killed mid-burst

    # On disk after the kill: one count per committed envelope, none for the rest.
    (committed,) = db_rows(db, "SELECT COUNT(*) FROM sent WHERE sender = 'airline'")[0]
    counted = db_rows(db, "SELECT COALESCE(SUM(count), 0) FROM usage WHERE business = 'airline'")
    assert counted == [(committed,)]
    assert len(acknowledged) <= committed < NOTIFICATIONS

    proc, url = await _start(db, log)
    try:
        again = await RawClient.open(url)
        await again.login("airline", airline.key)
        for n, (to, msg_id, body) in enumerate(planned):  # resend everything without a SENT
            if msg_id in acknowledged:
                continue
            answer = await again.request(
                lambda i, to=to, msg_id=msg_id, body=body: Send(
                    id=i, to=to, msg_id=msg_id, body=body, intent="notification",
                    category="utility",
                )
            )  # fmt: skip
            assert isinstance(answer, Sent), (n, answer)
            acknowledged.add(answer.msg_id)
        # A resend of an already acknowledged one is answered from memory: no new count.
        to, msg_id, body = planned[0]
        resent = await again.request(
            lambda i: Send(id=i, to=to, msg_id=msg_id, body=body, intent="notification",
                           category="utility")
        )  # fmt: skip
        assert isinstance(resent, Sent)
        assert len(acknowledged) == NOTIFICATIONS
        month = month_of(time.time_ns() // 1_000_000)
        usage = await again.request(lambda i: UsageFetch(id=i, month=month))
        if isinstance(usage, Error) and usage.retry_after is not None:
            # SPEC §10: the killed relay never recorded the connection's end, so the new
            # one took the account's buckets over as emptied at the LOGIN; a client
            # retries after retry_after.
            await asyncio.sleep(usage.retry_after / 1000)
            usage = await again.request(lambda i: UsageFetch(id=i, month=month))
        assert not isinstance(usage, Error), usage
        assert isinstance(usage, Usage)
        assert usage.notifications == (UsageCount("utility", NOTIFICATIONS),)
        await again.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), TIMEOUT_S)


def test_metering_is_exact_after_sigkill_mid_burst(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_scenario(tmp_path), 90))
