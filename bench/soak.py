"""Soak (issue 19): the relay at a quarter of its maximum for a long time, with a mixed load.

Why: a benchmark of a minute says how fast the relay is, not whether it stays that way.
A leak (memory, descriptors, queue rows) or a message lost in a rare interleaving of
disconnects, consent changes and blocks only shows over time. So this runs the relay for
``--minutes`` (30 for the closing note) and judges, at the end, four things a deployment
needs: RSS and open descriptors flat, no acknowledged message lost, no error the load did
not ask for.

Rate: ``--rate R`` messages/s (SEND attempts over all links), or a quarter of the relay's
maximum measured first on the same store: ``bench/scale.py``'s run of workload 1 (50 pairs
x 1000 messages of 1 KiB, window 10, fresh relay and database; a few seconds). The relay
runs as ``bench/scale.py`` starts it — ``blindrelay serve`` on 127.0.0.1, clean
environment, send, statement and registration limits raised out of reach (the rate and the
statements' cadence are set here, not by token buckets) — plus ``--metrics-listen`` on a
loopback port.

The mix, per load process (``--workers``, 2 by default), every link paced at the same rate
(R / links, open loop: a message's latency runs from its due time, so a stalled relay is
charged for the wait) with at most WINDOW SENDs in flight:

==========  =====  ===========================================================================
link        count  what it does (intervals drawn from a ``random.Random`` seeded by ``--seed``)
==========  =====  ===========================================================================
steady      8      a user pair chatting; both always connected
offline     3      the recipient goes away for 2-8 s every 10-25 s: its messages queue, then
                   drain after its LOGIN (deliveries not acknowledged before it left come
                   again: at least once, SPEC §6.4.3)
reconnect   3      the sender drops its connection every 10-25 s with SENDs in flight, logs in
                   again after 0.2-1 s and resends each unanswered one with its ``msg_id``
                   (SPEC §6.3.1-2: stored once either way)
block       3      every 15-30 s the recipient blocks the sender, the sender tries 3 messages
                   (each must be refused: ERROR 400, *provoked*), the recipient unblocks
consent     6      one business per process notifies its customers (``utility``); every 15-30 s
                   a customer revokes, the business tries 3 notifications (ERROR 400,
                   provoked), the customer grants again
==========  =====  ===========================================================================

Before a block or a revoke the link stops sending and waits until everything it sent has
been delivered: a block or revoke deletes what is still queued (SPEC §7.4), which must not
be mistaken for a loss, and nothing is excused as "deleted by the revoke" either.

Tracked per message (its ``msg_id`` names its link and sequence number): SENT, DELIVER (the
body must come back byte for byte from the right sender), ACK. At the end every link stops,
everyone reconnects, and the load processes wait until everything acknowledged has been
delivered (DRAIN_TIMEOUT_S at most). *Lost* = SENT received but never delivered. A second
DELIVER of a message is *redelivered* if it came on a later connection (expected, §6.4.3),
and an unexpected error if it came on the same one. *Unexpected errors*: any ERROR but the
provoked 400s, a SENT where a 400 was due, a DELIVER of something refused or unknown, a
connection the relay dropped, an answer not received within REQUEST_TIMEOUT_S, the relay
exiting.

Measured every SAMPLE_S seconds, printed once a minute: messages SENT, RSS of the relay's
process tree (the SQLite writer process included), its open descriptors (``/proc/PID/fd``),
the queue (the ``blindrelay_envelopes_queued`` gauge when the relay exports it — the relay
recounts it every 15 s, so it lags — else a count of the queue table: read-only SQLite, or
``SELECT count(*)`` on PostgreSQL; after the drain always the count), p99 delivery
latency of messages delivered on the connection that was open when they were sent (the
offline ones' latency is how long their recipient was away), and unexpected errors.

Verdict: PASS when RSS and descriptors are flat, 0 acknowledged messages are lost, 0
unexpected errors happened, and the queue is empty after the drain; else FAIL and the
reasons, exit status 1. *Flat*: the least-squares slope over the last FLAT_WINDOW_MIN minutes
(the last half of runs shorter than twice that) is below RSS_SLOPE_MAX_MIB MiB/min and
FD_SLOPE_MAX descriptors/min. Why these: samples every 10 s make the slope of a flat series
close to 0 (allocator arenas and the SQLite page cache move RSS by a few hundred KiB, the
flapping accounts move descriptors by a handful, both back and forth), while 1 MiB/min is
1.4 GiB a day and 1 descriptor/min exhausts a 64k limit in weeks — leaks a soak must catch.
Flatness is not judged over a window under MIN_FLAT_WINDOW_MIN (a 1-minute run is warm-up),
and the output says so.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate R] [--seed 1] [--workers 2]
        [--size 1024] [--store sqlite|postgresql|both] [--postgres URL] [--json PATH]

``--store postgresql`` (or ``both``) runs on a fresh database on ``--postgres URL`` (else
``BLINDRELAY_BENCH_POSTGRES`` or ``BLINDRELAY_TEST_POSTGRES``), dropped afterwards. Exit
status: 0 PASS, 1 FAIL, 2 bad arguments or a soak that could not run (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from bench import scale
from bench.loadgen import (
    STAMP,
    T_DELIVER,
    T_ERROR,
    T_SENT,
    LoadError,
    LoadSpec,
    WebSocket,
    introduce,
    open_account,
    percentile,
    report_phase,
    run_phases,
    run_worker,
)
from bench.procs import ServerError, ServerProcess, process_memory_kib, raise_nofile_limit
from bench.relay import free_port, metrics_text
from bench.run import Params, count_rows
from blindrelay.protocol import frames
from blindrelay.protocol.codec import encode
from blindrelay.protocol.fastcodec import encode_ack, encode_send
from blindrelay.protocol.limits import MAX_ACK_IDS, MAX_CIPHERTEXT_BYTES, MESSAGE_ID_CLOCK_BYTES
from blindrelay.protocol.signed import make_statement

T_OK = 8
REFUSED = 400
"""RECIPIENT_UNAVAILABLE (SPEC §9): the only refusal the mix provokes (blocked, revoked)."""
CATEGORY = "utility"

MIX = {"steady": 8, "offline": 3, "reconnect": 3, "block": 3, "consent": 6}
"""Links per load process by kind (the module docstring says what each does)."""
AWAY_EVERY_S = (10.0, 25.0)
"""offline / reconnect links: connected this long between two departures."""
OFFLINE_S = (2.0, 8.0)
RECONNECT_GAP_S = (0.2, 1.0)
EPISODE_EVERY_S = (15.0, 30.0)
"""block / consent links: normal traffic this long between two episodes."""
PROVOKED_PER_EPISODE = 3
WINDOW = 10
"""SENDs in flight per link."""
RECENT = 4096
"""Completed messages remembered per link, to tell a redelivery from an unknown message."""
EXAMPLES = 20
"""Unexpected errors kept word for word per load process (all are counted)."""

SAMPLE_S = 10.0
SAMPLES_PER_ROW = 6
REQUEST_TIMEOUT_S = 30.0
QUIESCE_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 120.0
SETUP_TIMEOUT_S = 120.0
QUEUE_EMPTY_WAIT_S = 10.0
"""After the drain: how long the queue may take to show the last ACKs' deletions."""

FLAT_WINDOW_MIN = 10.0
MIN_FLAT_WINDOW_MIN = 1.0
RSS_SLOPE_MAX_MIB = 1.0
FD_SLOPE_MAX = 1.0

W1 = Params()
MAX_RATE_SPEC = LoadSpec(
    url="", pairs=W1.pairs, messages=W1.messages, window=W1.window, size=W1.size, workers=W1.workers
)
"""Workload 1 of ``bench/run.py`` (one run, a few seconds): its msg/s / 4 is the soak's rate."""
RATE_FRACTION = 4
MSG_ID = struct.Struct(">II")
"""What a soak message id carries after its clock (SPEC §6.1.1, as the SDK makes ids): link
and sequence number, then 2 random bytes — 80 bits after the clock, as recommended, so the
relay's idempotence memory is written to as real clients write to it."""


def soak_msg_id(link: int, seq: int, now_ms: int) -> bytes:
    """Message ``seq`` of link ``link``, written at ``now_ms``: the SDK's layout, our fields."""
    return frames.message_id(now_ms, MSG_ID.pack(link, seq) + os.urandom(2))


def link_and_seq(msg_id: bytes) -> tuple[int, int]:
    """What :func:`soak_msg_id` put after the clock."""
    link, seq = MSG_ID.unpack_from(msg_id, MESSAGE_ID_CLOCK_BYTES)
    return link, seq


class UsageError(Exception):
    """Bad arguments: one line, exit status 2."""


class Disconnected(Exception):
    """The account's connection closed (on purpose) before the answer came."""


@dataclass(frozen=True, slots=True)
class SoakSpec:
    """One soak's load: the relay's URL, msg/s over all links, how long, the mix's seed."""

    url: str
    rate: float
    minutes: int
    seed: int = 1
    workers: int = 2
    size: int = 1024

    @property
    def links(self) -> int:
        return sum(MIX.values()) * self.workers

    @property
    def samples(self) -> int:
        return round(self.minutes * 60 / SAMPLE_S)


# --- inside a load process --------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """What a load process saw since its last report (the parent sums the reports)."""

    attempted: int = 0
    acked: int = 0
    delivered: int = 0
    redelivered: int = 0
    queued_deliveries: int = 0
    provoked_block: int = 0
    provoked_consent: int = 0
    statements: int = 0
    reconnects: int = 0
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)
    latency: array[float] = field(default_factory=lambda: array("d"))

    def take(self) -> dict[str, Any]:
        """This interval's figures, and start a new interval."""
        report = {name: getattr(self, name) for name in self.__slots__ if name != "latency"}
        report["latency"] = self.latency.tobytes()
        fresh = Stats()
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))
        return report


class Worker:
    """One load process: its accounts, links and counters."""

    def __init__(self, spec: SoakSpec, prefix: str, index: int) -> None:
        self.spec = spec
        self.prefix = prefix
        self.index = index
        self.stats = Stats()
        self.examples = 0
        self.links: dict[int, Link] = {}
        self.stop = asyncio.Event()
        self.sending: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()

    def unexpected(self, what: str) -> None:
        self.stats.unexpected += 1
        if self.examples < EXAMPLES:
            self.examples += 1
            self.stats.examples.append(
                f"w{self.index} +{time.monotonic() - self.started:.1f}s {what}"
            )

    async def pause(self, bounds: tuple[float, float], rng: random.Random) -> bool:
        """Sleep a random time within ``bounds``; True if the soak is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), rng.uniform(*bounds))
        return self.stop.is_set()

    def delivered(self, account: Account, frame: dict[str, Any], generation: int) -> None:
        """A DELIVER on ``account``'s connection number ``generation``: check and count it."""
        if frame.get("intent") == "statement":  # a customer's grant or revoke, forwarded
            if account.kind != "business":
                self.unexpected(f"{account.handle}: a statement forwarded to a user")
            self.stats.statements += 1
            return
        msg_id = frame.get("msg_id")
        if not isinstance(msg_id, bytes) or len(msg_id) != 16:
            self.unexpected(f"{account.handle}: DELIVER with msg_id {msg_id!r}")
            return
        link_id, seq = link_and_seq(msg_id)
        link = self.links.get(link_id)
        if link is None or link.recipient is not account:
            self.unexpected(f"{account.handle}: DELIVER of someone else's message {msg_id.hex()}")
            return
        link.delivered(frame, seq, generation)


class Account:
    """One account and its current connection: answers matched to requests by id, every
    DELIVER acknowledged (one ACK per event-loop turn, as ``loadgen.receive_all``)."""

    def __init__(self, worker: Worker, handle: str, kind: str = "user") -> None:
        self.worker = worker
        self.handle = handle
        self.kind = kind
        self.key = SigningKey.generate()
        self.ws: WebSocket | None = None
        self.generation = 0
        """Connections opened so far: the number of the current one."""
        self.online = asyncio.Event()
        self.answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.last_id = 0
        self.to_ack: list[int] = []
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, *, login: bool) -> None:
        """REGISTER (or LOGIN) a connection; frames are read once :meth:`start` runs."""
        self.ws, _ = await open_account(
            self.worker.spec.url, self.handle, self.key, login=login, kind=self.kind
        )
        self.generation += 1

    def start(self) -> None:
        assert self.ws is not None
        self.tasks = [
            asyncio.create_task(self._read(self.ws, self.generation)),
            asyncio.create_task(self._acknowledge(self.ws)),
        ]
        self.online.set()

    async def reconnect(self) -> None:
        """LOGIN again; a failed attempt is an unexpected error, retried every second."""
        while True:
            try:
                await self.open(login=True)
                break
            except (OSError, LoadError, ConnectionClosed, TimeoutError) as exc:
                self.worker.unexpected(f"{self.handle}: LOGIN failed: {exc}")
                await asyncio.sleep(1.0)
        self.worker.stats.reconnects += 1
        self.start()

    async def close(self) -> None:
        """Leave on purpose: requests in flight fail with :class:`Disconnected`."""
        ws, self.ws = self.ws, None
        self.online.clear()
        for task in self.tasks:
            task.cancel()
        self.to_ack.clear()  # ids of this connection: the next one's deliveries are new
        self._fail_answers()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    def _fail_answers(self) -> None:
        for future in self.answers.values():
            if not future.done():
                future.set_exception(Disconnected())
        self.answers.clear()

    async def request(self, build: Callable[[int], bytes]) -> dict[str, Any]:
        """Send the frame ``build(request id)`` and return the relay's answer to it."""
        ws = self.ws
        if ws is None:
            raise Disconnected
        self.last_id = self.last_id % 0xFFFFFFFE + 1
        rid = self.last_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answers[rid] = future
        try:
            try:
                await ws.send(build(rid))
            except ConnectionClosed:
                raise Disconnected from None
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await future
        finally:
            self.answers.pop(rid, None)

    async def statement(self, action: str, target: str, categories: tuple[str, ...] | None) -> bool:
        """Sign and send a consent or block statement (SPEC §7.4); True on OK."""
        ws = self.ws
        assert ws is not None and ws.channel.relay_key is not None
        signed = make_statement(
            action,
            signer=self.handle,
            signer_key=bytes(self.key.verify_key),
            target=target,
            relay_key=ws.channel.relay_key,
            now_ms=int(time.time() * 1000),
            rng=os.urandom,
            categories=categories,
        ).sign(lambda m: self.key.sign(m).signature)
        try:
            answer = await self.request(
                lambda rid: encode(frames.Statement(id=rid, statement=signed))
            )
        except (Disconnected, TimeoutError) as exc:
            self.worker.unexpected(f"{self.handle}: {action} {target}: {type(exc).__name__}")
            return False
        if answer.get("t") != T_OK:
            self.worker.unexpected(f"{self.handle}: {action} {target}: ERROR {answer.get('code')}")
            return False
        return True

    async def _read(self, ws: WebSocket, generation: int) -> None:
        worker = self.worker
        try:
            while True:
                data = await ws.recv()
                try:
                    frame = msgpack.unpackb(data)
                except (ValueError, msgpack.ExtraData) as exc:
                    worker.unexpected(f"{self.handle}: undecodable frame: {exc}")
                    continue
                if not isinstance(frame, dict):
                    worker.unexpected(f"{self.handle}: a frame that is not a map")
                    continue
                kind = frame.get("t")
                if kind == T_DELIVER:
                    self.to_ack.append(frame["delivery_id"])
                    self.wake.set()
                    worker.delivered(self, frame, generation)
                elif (future := self.answers.get(frame.get("re", -1))) is not None:
                    if not future.done():
                        future.set_result(frame)
                else:
                    worker.unexpected(
                        f"{self.handle}: unasked frame t={kind} code={frame.get('code')}"
                    )
        except (ConnectionClosed, LoadError) as exc:
            if self.ws is ws:  # not closed by us: count it, and carry on with a new one
                worker.unexpected(f"{self.handle}: connection lost: {exc}")
                self.ws = None
                self.online.clear()
                self._fail_answers()
                self.tasks.append(asyncio.create_task(self.reconnect()))

    async def _acknowledge(self, ws: WebSocket) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.to_ack:
                    ids = self.to_ack[:MAX_ACK_IDS]
                    del self.to_ack[:MAX_ACK_IDS]
                    await ws.send(encode_ack(ids))


@dataclass(slots=True)
class Msg:
    seq: int
    due: float
    msg_id: bytes
    body: bytes
    provoked: bool
    online_generation: int
    """The recipient's connection when it was sent (0: offline)."""
    resent: bool = False
    acked: bool = False
    delivered_on: int = 0


class Link:
    """A sender → recipient stream of paced messages, with its kind's disturbances."""

    def __init__(
        self, worker: Worker, link_id: int, kind: str, sender: Account, recipient: Account
    ) -> None:
        self.worker = worker
        self.id = link_id
        self.kind = kind
        self.sender = sender
        self.recipient = recipient
        self.rng = random.Random(f"{worker.spec.seed}:{link_id}")
        self.interval = worker.spec.links / worker.spec.rate
        self.next_seq = 1
        self.next_due = 0.0
        self.pending: dict[int, Msg] = {}
        self.recent: dict[int, int] = {}
        """Completed sequence numbers → the connection they were delivered on."""
        self.slots = asyncio.Semaphore(WINDOW)
        self.intent = "notification" if kind == "consent" else "chat"

    # sending

    async def run(self) -> None:
        """Pace messages until the soak stops, with this kind's disturbances."""
        self.next_due = time.monotonic() + self.rng.random() * self.interval
        tasks = []
        if self.kind == "offline":
            tasks.append(asyncio.create_task(self._flap(self.recipient, OFFLINE_S)))
        elif self.kind == "reconnect":
            tasks.append(asyncio.create_task(self._flap(self.sender, RECONNECT_GAP_S)))
        episode_at = time.monotonic() + self.rng.uniform(*EPISODE_EVERY_S)
        try:
            while not self.worker.stop.is_set():
                if self.kind in ("block", "consent") and time.monotonic() >= episode_at:
                    await self._episode()
                    episode_at = time.monotonic() + self.rng.uniform(*EPISODE_EVERY_S)
                    self.next_due = time.monotonic()
                if not self.sender.online.is_set():  # our own doing: not the relay's latency
                    await self.sender.online.wait()
                    self.next_due = max(self.next_due, time.monotonic())
                await self._send_next(provoked=False)
        finally:
            await asyncio.gather(*tasks)

    async def _send_next(self, *, provoked: bool) -> Msg:
        due = self.next_due
        self.next_due += self.interval
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        seq = self.next_seq
        self.next_seq += 1
        body = STAMP.pack(due) + os.urandom(self.worker.spec.size - STAMP.size)
        msg = Msg(
            seq,
            due,
            soak_msg_id(self.id, seq, time.time_ns() // 1_000_000),
            body,
            provoked,
            self.recipient.generation if self.recipient.online.is_set() else 0,
        )
        self.pending[seq] = msg
        await self.slots.acquire()
        self.worker.stats.attempted += 1
        task = asyncio.create_task(self._send(msg))
        self.worker.sending.add(task)
        task.add_done_callback(self.worker.sending.discard)
        return msg

    async def _send(self, msg: Msg) -> None:
        worker = self.worker
        category = CATEGORY if self.intent == "notification" else None
        try:
            while True:
                try:
                    answer = await self.sender.request(
                        lambda rid: encode_send(
                            rid, self.recipient.handle, msg.msg_id, self.intent, msg.body, category
                        )
                    )
                    break
                except Disconnected:  # the sender left: send it again once back (same msg_id)
                    await self.sender.online.wait()
                    msg.resent = True
        except TimeoutError:
            worker.unexpected(f"{self.sender.handle}: no answer to SEND {msg.msg_id.hex()}")
            self._forget(msg)
            return
        finally:
            self.slots.release()
        if answer.get("t") == T_SENT:
            msg.acked = True
            worker.stats.acked += 1
            if msg.provoked:
                worker.unexpected(
                    f"{self.sender.handle} → {self.recipient.handle}: SENT while "
                    f"{'blocked' if self.kind == 'block' else 'revoked'}"
                )
            if msg.delivered_on:
                self._complete(msg)
        elif answer.get("t") == T_ERROR and answer.get("code") == REFUSED and msg.provoked:
            if self.kind == "block":
                worker.stats.provoked_block += 1
            else:
                worker.stats.provoked_consent += 1
            self._forget(msg)
        else:
            worker.unexpected(
                f"{self.sender.handle}: SEND answered t={answer.get('t')} code={answer.get('code')}"
            )
            self._forget(msg)

    # receiving

    def delivered(self, frame: dict[str, Any], seq: int, generation: int) -> None:
        worker = self.worker
        msg = self.pending.get(seq)
        if msg is None or msg.delivered_on:
            first_on = msg.delivered_on if msg is not None else self.recent.get(seq)
            if first_on is None:
                worker.unexpected(f"{self.recipient.handle}: DELIVER of unknown message {seq}")
            elif first_on == generation:
                worker.unexpected(f"{self.recipient.handle}: message {seq} twice on one connection")
            else:
                worker.stats.redelivered += 1
            return
        if (frame.get("msg_id"), frame.get("body"), frame.get("sender"), frame.get("intent")) != (
            msg.msg_id,
            msg.body,
            self.sender.handle,
            self.intent,
        ):
            worker.unexpected(f"{self.recipient.handle}: message {seq} altered")
        if msg.provoked:
            worker.unexpected(f"{self.recipient.handle}: got message {seq} sent while refused")
        msg.delivered_on = generation
        worker.stats.delivered += 1
        if msg.online_generation == generation and not msg.resent:
            worker.stats.latency.append(time.monotonic() - msg.due)
        else:
            worker.stats.queued_deliveries += 1
        if msg.acked:
            self._complete(msg)

    def _complete(self, msg: Msg) -> None:
        del self.pending[msg.seq]
        self.recent[msg.seq] = msg.delivered_on
        if len(self.recent) > RECENT:
            del self.recent[next(iter(self.recent))]

    def _forget(self, msg: Msg) -> None:
        self.pending.pop(msg.seq, None)

    # disturbances

    async def quiesce(self, timeout_s: float) -> bool:
        """Wait until everything sent is answered and everything acknowledged delivered."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _episode(self) -> None:
        """block: block, provoke, unblock. consent: revoke, provoke, grant."""
        if not await self.quiesce(QUIESCE_TIMEOUT_S):
            self.worker.unexpected(
                f"link {self.id}: {len(self.pending)} messages not delivered "
                f"within {QUIESCE_TIMEOUT_S:.0f} s"
            )
            return
        actor, target = self.recipient, self.sender.handle
        refuse, allow = ("block", "unblock") if self.kind == "block" else ("revoke", "grant")
        categories = None if self.kind == "block" else (CATEGORY,)
        if not await actor.statement(refuse, target, categories):
            return
        self.next_due = time.monotonic()
        for _ in range(PROVOKED_PER_EPISODE):
            await self._send_next(provoked=True)
        await self.quiesce(REQUEST_TIMEOUT_S)  # the refusals (or the violations) are in
        await actor.statement(allow, target, categories)

    async def _flap(self, account: Account, away_s: tuple[float, float]) -> None:
        """``account`` leaves and comes back until the soak stops; connected at the end."""
        worker = self.worker
        while not await worker.pause(AWAY_EVERY_S, self.rng):
            await account.close()
            await worker.pause(away_s, self.rng)
            await account.reconnect()


async def _soak_worker(
    spec: SoakSpec, prefix: str, index: int, pipe: Connection, events: list[Any]
) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT_S + spec.minutes * 60 + DRAIN_TIMEOUT_S + 60
    worker = Worker(spec, prefix, index)

    async with asyncio.timeout_at(asyncio.get_running_loop().time() + SETUP_TIMEOUT_S):
        business = Account(worker, f"b{prefix}", "business")
        await business.open(login=False)
        accounts = [business]
        link_id = index * 1000
        for kind, count in MIX.items():
            for _ in range(count):
                link_id += 1
                recipient = Account(worker, f"u{prefix}r{link_id}")
                await recipient.open(login=False)
                accounts.append(recipient)
                if kind == "consent":
                    sender = business
                else:
                    sender = Account(worker, f"u{prefix}s{link_id}")
                    await sender.open(login=False)
                    accounts.append(sender)
                    assert sender.ws is not None and recipient.ws is not None
                    await introduce(recipient.ws, sender.ws, sender.handle)  # contacts
                worker.links[link_id] = Link(worker, link_id, kind, sender, recipient)
        for account in accounts:
            account.start()
        for link in worker.links.values():
            if link.kind == "consent" and not await link.recipient.statement(
                "grant", business.handle, (CATEGORY,)
            ):
                raise LoadError(f"{link.recipient.handle} could not grant {business.handle}")
    if worker.stats.unexpected:
        raise LoadError(f"setup: {worker.stats.examples[0]}")
    worker.stats = Stats()
    await report_phase(pipe, events, 0, {"kind": "ready"}, deadline)
    start = worker.started = time.monotonic()
    runs = [asyncio.create_task(link.run()) for link in worker.links.values()]
    for k in range(1, spec.samples + 1):
        await asyncio.sleep(max(0.0, start + k * SAMPLE_S - time.monotonic()))
        await report_phase(pipe, events, k, {"kind": f"s{k}", **worker.stats.take()}, deadline)
    # The drain: every link back to normal and connected, everything sent answered, then
    # everything acknowledged delivered (or the timeout).
    worker.stop.set()
    drain_start = time.monotonic()
    await asyncio.gather(*runs)
    await asyncio.gather(*list(worker.sending))
    for link in worker.links.values():
        await link.quiesce(max(drain_start + DRAIN_TIMEOUT_S - time.monotonic(), 0.0))
    drain_s = time.monotonic() - drain_start
    lost = [m for link in worker.links.values() for m in link.pending.values() if m.acked]
    for account in accounts:
        await account.close()
    report = {
        "kind": "drained",
        **worker.stats.take(),
        "drain_s": drain_s,
        "lost": len(lost),
        "lost_ids": [m.msg_id.hex() for m in lost[:EXAMPLES]],
    }
    await report_phase(pipe, events, spec.samples + 1, report, deadline)


def _soak_main(*args: Any) -> None:
    run_worker(_soak_worker, *args)


# --- the parent: relay, samples, verdict ----------------------------------------------


@dataclass(slots=True)
class Sample:
    """The relay at one moment: t seconds since the load started."""

    t: float
    rss_kib: int
    fds: int
    rss_kib_by_process: list[int]
    """The relay's main process first, then the processes it started (SQLite's writer)."""
    queue: int | None
    queue_from: str
    """``gauge`` (the relay's own count, refreshed every 15 s) or ``count`` (the table)."""
    connections: int | None


@dataclass(slots=True)
class Row:
    """One minute as printed."""

    minute: int
    sent: int
    delivered: int
    rss_mib: float
    fds: int
    queue: int | None
    p99_ms: float | None
    provoked: int
    unexpected: int


@dataclass(slots=True)
class Verdict:
    passed: bool
    reasons: list[str]
    flat_window_min: float
    flat_judged: bool
    rss_slope_mib_per_min: float | None
    fd_slope_per_min: float | None

    @property
    def line(self) -> str:
        return "PASS" if self.passed else "FAIL: " + "; ".join(self.reasons)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``points`` (x, y); 0 for fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def judge(samples: Sequence[Sample], minutes: float, totals: dict[str, Any]) -> Verdict:
    """The verdict from the samples and the drained totals (see the module docstring)."""
    window = FLAT_WINDOW_MIN if minutes >= 2 * FLAT_WINDOW_MIN else minutes / 2
    end = samples[-1].t if samples else 0.0
    recent = [s for s in samples if s.t >= end - window * 60 - 1e-6]
    judged = window >= MIN_FLAT_WINDOW_MIN and len(recent) >= 3
    rss = slope([(s.t / 60, s.rss_kib / 1024) for s in recent]) if len(recent) >= 2 else None
    fds = slope([(s.t / 60, s.fds) for s in recent]) if len(recent) >= 2 else None
    reasons = []
    if judged and rss is not None and rss >= RSS_SLOPE_MAX_MIB:
        reasons.append(
            f"RSS grows {rss:+.2f} MiB/min over the last {window:g} min "
            f"(limit {RSS_SLOPE_MAX_MIB:g})"
        )
    if judged and fds is not None and fds >= FD_SLOPE_MAX:
        reasons.append(
            f"open fds grow {fds:+.2f}/min over the last {window:g} min (limit {FD_SLOPE_MAX:g})"
        )
    if totals["lost"]:
        reasons.append(f"{totals['lost']} acknowledged messages lost")
    if totals["unexpected"]:
        reasons.append(f"{totals['unexpected']} unexpected errors")
    if totals.get("queue_after_drain"):
        reasons.append(f"{totals['queue_after_drain']} envelopes still queued after the drain")
    return Verdict(
        not reasons,
        reasons,
        window,
        judged,
        None if rss is None else round(rss, 3),
        None if fds is None else round(fds, 3),
    )


def open_fds(pids: Sequence[int]) -> int:
    """Descriptors open in ``pids`` (each /proc/PID/fd entry; a process gone counts 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def scrape(address: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The relay's /metrics as {sample name: {labels: value}}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics_text(address)):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


class Probe:
    """Reads the relay under soak: /proc, its /metrics, its queue."""

    def __init__(self, server: ServerProcess, metrics: str, queue_count: Callable[[], int | None]):
        self.server = server
        self.metrics = metrics
        self.queue_count = queue_count

    def sample(self, t: float) -> Sample:
        metrics = scrape(self.metrics)
        queued = metrics.get("blindrelay_envelopes_queued", {}).get(())
        connections = metrics.get("blindrelay_connections", {}).get(())
        tree = self.server.tree()
        by_process = [process_memory_kib(pid)[0] for pid in tree]
        return Sample(
            t=round(t, 1),
            rss_kib=sum(by_process),
            fds=open_fds(tree),
            rss_kib_by_process=by_process,
            queue=int(queued) if queued is not None else self.queue_count(),
            queue_from="gauge" if queued is not None else "count",
            connections=int(connections) if connections is not None else None,
        )

    def errors_sent(self) -> dict[str, int]:
        by_code = scrape(self.metrics).get("blindrelay_errors_sent_total", {})
        return {dict(labels).get("code", "?"): int(v) for labels, v in by_code.items() if v}


@dataclass(slots=True)
class Soak:
    """One soak on one store: what the hook collects as the load runs."""

    store: str
    spec: SoakSpec
    probe: Probe
    out: Callable[[str], None]
    samples: list[Sample] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    intervals: list[dict[str, Any]] = field(default_factory=list)
    """Per sample: the load processes' reports, summed (latencies kept apart)."""
    latencies: array[float] = field(default_factory=lambda: array("d"))
    minute_latencies: array[float] = field(default_factory=lambda: array("d"))
    examples: list[str] = field(default_factory=list)
    drained: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0

    def hook(self, phase: str, reports: list[dict[str, Any]]) -> None:
        if phase == "ready":
            self.started = time.monotonic()
            self.samples.append(self.probe.sample(0.0))
            self.out(
                f"{'minute':>6}{'sent':>9}{'delivered':>10}{'RSS MiB':>9}{'fds':>6}"
                f"{'queue':>7}{'p99 ms':>8}{'provoked':>9}{'unexpected':>11}"
            )
            return
        merged = self._merge(reports)
        if self.probe.server.proc.poll() is not None:
            merged["unexpected"] += 1
            self.examples.append(f"the relay exited with {self.probe.server.proc.returncode}")
        if phase == "drained":
            self.drained = merged
            return
        self.intervals.append(merged)
        self.samples.append(self.probe.sample(time.monotonic() - self.started))
        if len(self.intervals) % SAMPLES_PER_ROW == 0 or len(self.intervals) == self.spec.samples:
            self._row()

    def _merge(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for report in reports:
            for name, value in report.items():
                if name == "latency":
                    lat = array("d")
                    lat.frombytes(value)
                    self.latencies.extend(lat)
                    self.minute_latencies.extend(lat)
                elif name in ("examples", "lost_ids"):
                    merged.setdefault(name, []).extend(value)
                    if name == "examples":
                        self.examples.extend(value)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    merged[name] = merged.get(name, 0) + value
        return merged

    def _row(self) -> None:
        first = (len(self.rows)) * SAMPLES_PER_ROW
        chunk = self.intervals[first:]
        last = self.samples[-1]
        lat = sorted(self.minute_latencies)
        self.minute_latencies = array("d")
        row = Row(
            minute=len(self.rows) + 1,
            sent=sum(i["acked"] for i in chunk),
            delivered=sum(i["delivered"] for i in chunk),
            rss_mib=round(last.rss_kib / 1024, 1),
            fds=last.fds,
            queue=last.queue,
            p99_ms=round(percentile(lat, 99) * 1000, 1) if lat else None,
            provoked=sum(i["provoked_block"] + i["provoked_consent"] for i in chunk),
            unexpected=sum(i["unexpected"] for i in chunk),
        )
        self.rows.append(row)
        p99 = f"{row.p99_ms:.1f}" if row.p99_ms is not None else "-"
        self.out(
            f"{row.minute:>6}{row.sent:>9,}{row.delivered:>10,}{row.rss_mib:>9.1f}"
            f"{row.fds:>6}{_opt(row.queue):>7}{p99:>8}{row.provoked:>9}"
            f"{row.unexpected:>11}"
        )

    def totals(self, queue_after_drain: int | None) -> dict[str, Any]:
        everything = [*self.intervals, self.drained]

        def total(name: str) -> int:
            return int(sum(i.get(name, 0) for i in everything))

        lat = sorted(self.latencies)
        return {
            "attempted": total("attempted"),
            "acknowledged": total("acked"),
            "delivered": total("delivered"),
            "lost": int(self.drained.get("lost", 0)),
            "lost_ids": self.drained.get("lost_ids", []),
            "redelivered_after_reconnect": total("redelivered"),
            "delivered_after_queueing": total("queued_deliveries"),
            "provoked_blocked": total("provoked_block"),
            "provoked_revoked": total("provoked_consent"),
            "statements_forwarded": total("statements"),
            "reconnects": total("reconnects"),
            "unexpected": total("unexpected"),
            "unexpected_examples": self.examples[:EXAMPLES],
            "p99_ms": round(percentile(lat, 99) * 1000, 1) if lat else None,
            "p50_ms": round(percentile(lat, 50) * 1000, 1) if lat else None,
            "drain_s": round(float(self.drained.get("drain_s", 0.0)), 2),
            "queue_after_drain": queue_after_drain,
        }


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def max_rate(store: str, pg: scale.PgServer | None, workdir: Path) -> float:
    """The relay's msg/s on a short workload 1 on ``store`` (``bench/scale.py``'s run)."""
    deployment = scale.Deployment.parse("sqlite" if store == "sqlite" else "pg1")
    workdir.mkdir()
    return scale.run_once(deployment, MAX_RATE_SPEC, workdir, pg, 0).msgs_per_s


def run_soak(
    store: str,
    spec: SoakSpec,
    pg: scale.PgServer | None,
    workdir: Path,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """Start a fresh relay on ``store``, soak it, return the record (rows, samples, verdict)."""
    deployment = scale.Deployment.parse("sqlite" if store == "sqlite" else "pg1")
    metrics = f"127.0.0.1:{free_port()}"
    with contextlib.ExitStack() as stack:
        store_url = ""
        if store == "postgresql":
            assert pg is not None
            stack.enter_context(pg.in_use("bench/soak.py"))
            database = pg.create_database()
            stack.callback(pg.drop_database, database)
            store_url = scale.database_url(pg.url, database)
        argv = [*scale.relay_argv(deployment, workdir, store_url), "--metrics-listen", metrics]
        server = stack.enter_context(
            scale.start_relay(
                argv, workdir / "relay.log", f"{store} relay", scale.RELAY_START_TIMEOUT_S
            )
        )
        if store == "sqlite":
            db = workdir / "relay.db"

            def queue_count() -> int | None:
                return count_rows(db, "queue")
        else:
            counter = scale.PgServer(store_url)

            def queue_count() -> int | None:
                return int(counter.run(("SELECT count(*) FROM queue", ()))[0][0][0])

        soak = Soak(store, spec, Probe(server, metrics, queue_count), out)
        full = SoakSpec(**{**asdict(spec), "url": server.url})
        tag = secrets.token_hex(3)
        args = [(full, f"{tag}w{i}", i) for i in range(spec.workers)]
        phases = ["ready", *(f"s{k}" for k in range(1, spec.samples + 1)), "drained"]
        timeout = SETUP_TIMEOUT_S + spec.minutes * 60 + DRAIN_TIMEOUT_S + 120
        run_phases(_soak_main, args, phases, timeout, soak.hook)
        queue_after = soak.probe.queue_count()
        deadline = time.monotonic() + QUEUE_EMPTY_WAIT_S
        while queue_after and time.monotonic() < deadline:
            time.sleep(0.5)
            queue_after = soak.probe.queue_count()
        relay_errors = soak.probe.errors_sent()
    totals = soak.totals(queue_after)
    verdict = judge(soak.samples, spec.minutes, totals)
    return {
        "store": store,
        "rate": spec.rate,
        "minutes": spec.minutes,
        "seed": spec.seed,
        "workers": spec.workers,
        "links": spec.links,
        "mix_per_worker": MIX,
        "rows": [asdict(r) for r in soak.rows],
        "samples": [asdict(s) for s in soak.samples],
        "totals": totals,
        "relay_errors_sent": relay_errors,
        "verdict": asdict(verdict),
        "verdict_line": verdict.line,
    }


def summary(record: dict[str, Any]) -> list[str]:
    """The lines printed after the minute rows."""
    t, v = record["totals"], record["verdict"]
    flat = (
        f"over the last {v['flat_window_min']:g} min: RSS {v['rss_slope_mib_per_min']:+.2f} "
        f"MiB/min (limit {RSS_SLOPE_MAX_MIB:g}), fds {v['fd_slope_per_min']:+.2f}/min "
        f"(limit {FD_SLOPE_MAX:g})"
    )
    if not v["flat_judged"]:
        flat += f" — not judged (window under {MIN_FLAT_WINDOW_MIN:g} min: warm-up)"
    achieved = t["attempted"] / (record["minutes"] * 60)
    lines = [
        f"rate: {achieved:,.0f} msg/s attempted of {record['rate']:,.0f} asked"
        + (
            ""
            if achieved >= 0.95 * record["rate"]
            else " — the load fell behind: latency figures include its lag"
        ),
        f"drain: {t['drain_s']} s; queue after the drain: {_opt(t['queue_after_drain'])}",
        f"messages: {t['acknowledged']:,} acknowledged, {t['delivered']:,} delivered, "
        f"lost {t['lost']}; {t['delivered_after_queueing']:,} delivered after queueing or a "
        f"resend; p50/p99 online {t['p50_ms']}/{t['p99_ms']} ms",
        f"duplicates: {t['redelivered_after_reconnect']} redelivered after a reconnect "
        f"(expected, SPEC §6.4.3); on one connection: counted as unexpected",
        f"provoked refusals (ERROR {REFUSED}): {t['provoked_blocked']} blocked, "
        f"{t['provoked_revoked']} revoked; relay's ERRORs by code: {record['relay_errors_sent']}",
        f"reconnects {t['reconnects']}, consent statements forwarded {t['statements_forwarded']}",
        f"flatness {flat}",
    ]
    lines += [f"unexpected: {e}" for e in t["unexpected_examples"]]
    lines += [f"lost: {i}" for i in t["lost_ids"]]
    lines.append(f"verdict ({record['store']}): {record['verdict_line']}")
    return lines


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block): see :func:`main`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30, help="load duration (default 30)")
    parser.add_argument("--rate", type=float, help="msg/s (default: a quarter of the measured max)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mix's timings")
    parser.add_argument("--workers", type=int, default=2, help="load processes")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="PostgreSQL server (default: $" + " or $".join(scale.URL_VARIABLES) + ")",
    )
    parser.add_argument("--json", type=Path, help="write rows, samples and verdicts here")
    args = parser.parse_args(argv)
    if not 1 <= args.minutes <= 24 * 60:
        raise UsageError("--minutes must be 1..1440")
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise UsageError("--rate must be a positive number of messages/s")
    if not 1 <= args.workers <= 16:
        raise UsageError("--workers must be 1..16")
    if not STAMP.size <= args.size <= MAX_CIPHERTEXT_BYTES:
        raise UsageError(f"--size must be {STAMP.size}..{MAX_CIPHERTEXT_BYTES}")
    if args.store != "sqlite":
        args.postgres = scale.pg_url_from(args.postgres, os.environ)
        if not args.postgres:
            raise UsageError(f"--store {args.store}: {scale.no_server_reason()}")
    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(f"--json {args.json}: no such directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except UsageError as exc:
        print(f"soak.py: {exc}", file=sys.stderr)
        return 2
    raise_nofile_limit()

    def out(line: str) -> None:
        print(line, flush=True)

    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    records = []
    try:
        pg = scale.PgServer(args.postgres) if "postgresql" in stores else None
        if pg is not None:
            pg.check()
        with tempfile.TemporaryDirectory(prefix="blindrelay-soak-") as tmp:
            for store in stores:
                rate, measured = args.rate, None
                if rate is None:
                    out(
                        f"{store}: measuring the relay's maximum (workload 1, "
                        f"{MAX_RATE_SPEC.pairs}x{MAX_RATE_SPEC.messages}) ..."
                    )
                    measured = max_rate(store, pg, Path(tmp) / f"max-{store}")
                    rate = round(measured / RATE_FRACTION, 1)
                spec = SoakSpec(
                    url="",
                    rate=rate,
                    minutes=args.minutes,
                    seed=args.seed,
                    workers=args.workers,
                    size=args.size,
                )
                source = f"a quarter of {measured:,.0f} msg/s measured" if measured else "--rate"
                out(
                    f"soak {store}: {spec.minutes} min at {rate:,.1f} msg/s ({source}), "
                    f"{spec.links} links over {spec.workers} load processes, seed {spec.seed}"
                )
                workdir = Path(tmp) / store
                workdir.mkdir()
                record = run_soak(store, spec, pg, workdir, out)
                record["max_rate"] = measured
                for line in summary(record):
                    out(line)
                records.append(record)
    except (LoadError, ServerError, scale.ScaleError, OSError) as exc:
        print(f"soak.py: could not run: {exc}", file=sys.stderr)
        return 2
    passed = all(r["verdict"]["passed"] for r in records)
    if args.json:
        args.json.write_text(
            json.dumps({"soak": "blindrelay-soak", "passed": passed, "runs": records}, indent=2)
            + "\n"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
