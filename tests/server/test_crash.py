"""Crash test: SIGKILL the relay under send load; no acknowledged envelope is lost.

SPEC §6.3: SENT goes out only after the envelope is committed, and a client resends
(same msg_id) whatever has no SENT yet; §6.4: per-pair order, at-least-once delivery,
clients deduplicate by (sender, msg_id); §6.5: ACK deletes.

A relay subprocess on one database file is killed with SIGKILL at moments drawn from
a seeded RNG (after a random number of SENTs since its last start, so the kill lands
while other SENDs, commits, deliveries and ACKs are in flight) and restarted on the
same file. Senders reconnect and resend; one recipient is online throughout and
acknowledges what it receives (so lost ACKs cause redeliveries), the other stays
offline until the end and then drains its queue. Nothing waits on a timer: every wait
is for a line, a frame or a process exit, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from blindrelay.protocol import SUBPROTOCOL
from blindrelay.protocol.channel import MAX_TRANSPORT_MESSAGE_BYTES
from blindrelay.protocol.codec import encode
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.frames import Ack, Deliver, Send, Sent, Welcome

from .conftest import SealedSocket, sealed_connect

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("BLINDRELAY_CRASH_SEED", "20261122"))
"""Kill moments and message ids derive from this; set the variable to try another."""
KILLS = 20
SENDERS = 4
MESSAGES_PER_SENDER = 500
WINDOW = 8
SENTS_BEFORE_KILL = (1, 80)
"""A kill comes after this many SENTs (inclusive range, seeded) since the last start;
KILLS × the maximum stays below the total so every kill happens under load."""
START_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 120.0
UNLIMITED = "1000000000"

LISTENING = re.compile(rb"listening (ws://127\.0\.0\.1:\d+)")


class Relay:
    """``blindrelay serve`` on one database file; killed and restarted on it."""

    def __init__(self, db: Path, log: Path) -> None:
        self.db = db
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.generation = 0
        """Incremented at each start; a client waits for a newer one after a kill."""
        self.alive = False
        self.changed = asyncio.Condition()
        self.kills = 0
        self.failed = ""
        """Why the last start failed, if it did."""

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "blindrelay.server.cli", "serve",
                "--host", "127.0.0.1", "--port", "0", "--db", str(self.db),
                "--log-level", "WARNING",
                "--send-rate-user", UNLIMITED, "--send-burst-user", UNLIMITED,
                "--send-rate-pair", UNLIMITED, "--send-burst-pair", UNLIMITED,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    said = self.log.read_text(errors="replace").strip().splitlines()
                    self.failed = f"relay exited before listening: {said[-1:]}"
                    async with self.changed:
                        self.changed.notify_all()  # clients waiting for it fail now
                    raise AssertionError(self.failed)
                if match := LISTENING.search(line):
                    break
        async with self.changed:
            self.url = match.group(1).decode()
            self.generation += 1
            self.alive = True
            self.changed.notify_all()

    def kill(self) -> None:
        """SIGKILL now, from inside whatever callback decided it."""
        assert self.proc is not None and self.alive
        self.alive = False
        self.proc.send_signal(signal.SIGKILL)
        self.kills += 1

    async def reap(self) -> None:
        assert self.proc is not None
        status = await self.proc.wait()
        assert status == -signal.SIGKILL, f"relay exited with {status} before the kill"

    async def url_after(self, generation: int) -> tuple[str, int]:
        """The URL of a running relay newer than ``generation``, or the current one if alive."""
        async with self.changed:
            await self.changed.wait_for(
                lambda: self.failed or (self.alive and self.generation >= generation)
            )
            # A restart that failed (once: the check of the file torn by the kill refused
            # it) must fail the test at once, not after RUN_TIMEOUT_S of waiting.
            assert not self.failed, self.failed
            return self.url, self.generation

    def next_generation(self, failed: int) -> int:
        """After a disconnect from relay ``failed``: wait for its successor.

        A disconnect while that relay still runs is not a kill: it is a relay bug,
        and re-raising makes the test fail instead of waiting for a restart that
        may never come.
        """
        if self.alive and self.generation == failed:
            raise AssertionError("disconnected by a relay that was not killed")
        return failed + 1

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()


@dataclass
class Account:
    handle: str
    key: SigningKey = field(default_factory=SigningKey.generate)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message).signature


async def open_session(
    url: str, account: Account, *, register: bool
) -> tuple[SealedSocket, ClientConnection, Welcome]:
    ws = await sealed_connect(
        url,
        subprotocols=[SUBPROTOCOL],
        compression=None,
        max_size=MAX_TRANSPORT_MESSAGE_BYTES,
        open_timeout=START_TIMEOUT_S,
    )
    conn = ClientConnection(ws.channel.handshake_hash, ws.channel.relay_key)
    conn.receive_data(await _recv(ws))
    conn.events_received()  # the HELLO; the machine keeps its challenge
    if register:
        conn.register(account.handle, "user", bytes(account.key.verify_key), account.sign)
    else:
        conn.login(account.handle, account.sign)
    await _flush(ws, conn)
    conn.receive_data(await _recv(ws))
    (answer,) = conn.events_received()
    assert isinstance(answer, Welcome), f"{account.handle}: {answer}"
    return ws, conn, answer


async def _recv(ws: SealedSocket) -> bytes:
    data = await ws.recv()
    assert isinstance(data, bytes)
    return data


async def _flush(ws: SealedSocket, conn: ClientConnection) -> None:
    for data in conn.data_to_send():
        await ws.send(data)


DISCONNECTED = (ConnectionClosed, InvalidHandshake, OSError, asyncio.IncompleteReadError)
"""What a client sees when the relay dies under it; it then waits for the next start."""


class Sender:
    """Keeps WINDOW SENDs in flight; after a reconnect resends everything without SENT."""

    def __init__(self, account: Account, recipients: list[str], rng: random.Random) -> None:
        self.account = account
        self.recipients = recipients
        self.messages = [
            (recipients[seq % len(recipients)], rng.randbytes(16), _body(account.handle, seq, rng))
            for seq in range(MESSAGES_PER_SENDER)
        ]
        self.unanswered: dict[bytes, int] = {}
        """msg_id → seq of SENDs without SENT, in send order (dicts keep insertion order)."""
        self.next_seq = 0
        self.acknowledged: set[bytes] = set()
        self.resent = 0

    async def run(self, relay: Relay, on_sent: Callable[[], None]) -> None:
        generation = 1
        while len(self.acknowledged) < MESSAGES_PER_SENDER:
            url, generation = await relay.url_after(generation)
            try:
                ws, conn, _ = await open_session(url, self.account, register=False)
                async with ws:
                    await self._send_loop(ws, conn, on_sent)
            except DISCONNECTED:
                generation = relay.next_generation(generation)

    async def _send_loop(
        self, ws: SealedSocket, conn: ClientConnection, on_sent: Callable[[], None]
    ) -> None:
        for seq in list(self.unanswered.values()):  # SPEC §6.3.1: resend, same msg_id
            self._queue_send(conn, seq)
            self.resent += 1
        while len(self.unanswered) < WINDOW and self.next_seq < MESSAGES_PER_SENDER:
            self.unanswered[self.messages[self.next_seq][1]] = self.next_seq
            self._queue_send(conn, self.next_seq)
            self.next_seq += 1
        await _flush(ws, conn)
        while len(self.acknowledged) < MESSAGES_PER_SENDER:
            conn.receive_data(await _recv(ws))
            for frame in conn.events_received():
                assert isinstance(frame, Sent), f"{self.account.handle} got {frame}"
                self.unanswered.pop(frame.msg_id, None)
                self.acknowledged.add(frame.msg_id)
                if self.next_seq < MESSAGES_PER_SENDER:
                    self.unanswered[self.messages[self.next_seq][1]] = self.next_seq
                    self._queue_send(conn, self.next_seq)
                    self.next_seq += 1
                on_sent()
            await _flush(ws, conn)

    def _queue_send(self, conn: ClientConnection, seq: int) -> None:
        to, msg_id, body = self.messages[seq]
        conn.send(Send(id=conn.next_request_id(), to=to, msg_id=msg_id, intent="chat", body=body))


def _body(sender: str, seq: int, rng: random.Random) -> bytes:
    return f"{sender}:{seq}:".encode() + rng.randbytes(64)


class Recipient:
    """Deduplicates by (sender, msg_id) and acknowledges after 'persisting' (SPEC §6.4-6.5)."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.first_arrivals: dict[tuple[str, bytes], bytes] = {}
        self.order: dict[str, list[int]] = {}
        self.duplicates = 0

    def deliver(self, frame: Deliver) -> None:
        key = (frame.sender, frame.msg_id)
        if key in self.first_arrivals:
            self.duplicates += 1
            return
        self.first_arrivals[key] = frame.body
        seq = int(frame.body.split(b":")[1])
        self.order.setdefault(frame.sender, []).append(seq)

    async def receive(self, url: str, expected: int, *, register: bool = False) -> Welcome:
        """Log in, take DELIVERs and ACK them until ``expected`` distinct envelopes arrived."""
        ws, conn, welcome = await open_session(url, self.account, register=register)
        async with ws:
            while len(self.first_arrivals) < expected:
                conn.receive_data(await _recv(ws))
                ids = []
                for frame in conn.events_received():
                    assert isinstance(frame, Deliver), f"{self.account.handle} got {frame}"
                    self.deliver(frame)
                    ids.append(frame.delivery_id)
                if ids:
                    await ws.send(encode(Ack(delivery_ids=tuple(ids))))
        return welcome

    async def run_online(self, relay: Relay, expected: int) -> None:
        generation = 1
        while len(self.first_arrivals) < expected:
            url, generation = await relay.url_after(generation)
            try:
                await self.receive(url, expected)
            except DISCONNECTED:
                generation = relay.next_generation(generation)


async def make_contacts(url: str, recipients: list[Account], senders: list[Account]) -> None:
    """Each recipient writes to each sender first, so the load is conversations between
    contacts, not message requests to strangers (SPEC §7.3); the senders take it."""
    for recipient in recipients:
        ws, conn, _ = await open_session(url, recipient, register=False)
        async with ws:
            for sender in senders:
                conn.send(Send(id=conn.next_request_id(), to=sender.handle,
                               msg_id=os.urandom(16), intent="chat", body=b"hello"))  # fmt: skip
            await _flush(ws, conn)
            answered = 0
            while answered < len(senders):
                conn.receive_data(await _recv(ws))
                for frame in conn.events_received():
                    assert isinstance(frame, Sent), frame
                    answered += 1
    for sender in senders:
        ws, conn, welcome = await open_session(url, sender, register=False)
        async with ws:
            ids: list[int] = []
            while len(ids) < welcome.queued:
                conn.receive_data(await _recv(ws))
                ids.extend(f.delivery_id for f in conn.events_received() if isinstance(f, Deliver))
            await ws.send(encode(Ack(delivery_ids=tuple(ids))))


async def crash_scenario(tmp_path: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    relay = Relay(tmp_path / "relay.db", tmp_path / "relay.log")
    online = Recipient(Account("online-recipient"))
    offline = Recipient(Account("offline-recipient"))
    senders = [
        Sender(Account(f"sender-{i}"), [online.account.handle, offline.account.handle], rng)
        for i in range(SENDERS)
    ]
    total = SENDERS * MESSAGES_PER_SENDER
    per_recipient = Counter(to for s in senders for to, _, _ in s.messages)
    assert KILLS * SENTS_BEFORE_KILL[1] < total
    thresholds = [rng.randint(*SENTS_BEFORE_KILL) for _ in range(KILLS)]
    restarts: list[asyncio.Task[None]] = []
    progress = 0

    def on_sent() -> None:
        nonlocal progress
        progress += 1
        if relay.kills < KILLS and relay.alive and progress >= thresholds[relay.kills]:
            progress = 0
            relay.kill()
            restarts.append(asyncio.create_task(restart()))

    async def restart() -> None:
        await relay.reap()
        await relay.start()

    await relay.start()
    try:
        for account in [online.account, offline.account, *(s.account for s in senders)]:
            ws, _, _ = await open_session(relay.url, account, register=True)
            await ws.close()
        await make_contacts(relay.url, [online.account, offline.account],
                            [s.account for s in senders])  # fmt: skip
        await asyncio.gather(
            *(s.run(relay, on_sent) for s in senders),
            online.run_online(relay, per_recipient[online.account.handle]),
        )
        await asyncio.gather(*restarts)
        assert relay.kills == KILLS, f"only {relay.kills} kills happened under load"
        url, _ = await relay.url_after(relay.generation)
        await offline.receive(url, per_recipient[offline.account.handle])
        # Everything acknowledged was deleted: a fresh login finds empty queues.
        queued_after = [
            (await open_session(url, r.account, register=False)) for r in (online, offline)
        ]
        leftover = 0
        for ws, _, welcome in queued_after:
            leftover += welcome.queued
            await ws.close()
    finally:
        for task in restarts:
            task.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)
        await relay.stop()

    sent = {(s.account.handle, msg_id): body for s in senders for _, msg_id, body in s.messages}
    acknowledged = {(s.account.handle, m) for s in senders for m in s.acknowledged}
    delivered = {**online.first_arrivals, **offline.first_arrivals}
    for key, body in delivered.items():
        assert sent.get(key) == body, f"delivered something never sent: {key}"
    out_of_order = sum(seqs != sorted(seqs) for r in (online, offline) for seqs in r.order.values())
    return {
        "kills": relay.kills,
        "acknowledged": len(acknowledged),
        "resent_after_restart": sum(s.resent for s in senders),
        "delivered": len(delivered),
        "duplicates_dropped": online.duplicates + offline.duplicates,
        "lost": len(acknowledged - delivered.keys()),
        "out_of_order_pairs": out_of_order,
        "queued_after_drain": leftover,
    }


def test_relay_killed_under_load_loses_no_acknowledged_envelope(tmp_path: Path) -> None:
    counts = asyncio.run(asyncio.wait_for(crash_scenario(tmp_path), RUN_TIMEOUT_S))
    print("crash test:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    assert counts["kills"] >= 10
    assert counts["acknowledged"] == SENDERS * MESSAGES_PER_SENDER
    assert counts["lost"] == 0
    assert counts["delivered"] == counts["acknowledged"]
    assert counts["out_of_order_pairs"] == 0
    assert counts["queued_after_drain"] == 0
