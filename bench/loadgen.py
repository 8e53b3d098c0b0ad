"""Load generator: sender→recipient pairs over real WebSockets, spread over processes.

Why processes: on a 2-core machine a single-process asyncio client does about as much
work per message as the server it measures (encode SEND, decode SENT, decode DELIVER,
encode ACK), so it becomes the bottleneck and the server looks slower than it is.
Each worker process owns a slice of the pairs (sender and recipient of a pair in the
same process) and its own event loop; the parent only coordinates and aggregates.

Per pair, after a warm-up in which the recipient writes first (:func:`introduce`: the
two are contacts, SPEC §7.3): the sender keeps ``window`` SENDs in flight (a new one goes
out when a SENT arrives), the recipient acknowledges deliveries with batched ACKs (one ACK per
event-loop turn, at most MAX_ACK_IDS ids). Bodies are ``size`` random bytes whose
first 8 bytes carry the send time (``time.monotonic``, which is system-wide on Linux),
so delivery latency is measured where DELIVER arrives without shared state. The
relay treats bodies as opaque, as it does real ciphertext.

Accounts are registered with real Ed25519 signatures through
``ClientConnection.register`` (SPEC §4.2). The hot path after WELCOME packs and
unpacks plain msgpack maps in canonical field order (SPEC §2.3) rather than going
through the strict codec: it is the client side, and its cost must stay small.

Paced mode (``LoadSpec.rate`` > 0) is open loop: message k of pair i is due at
``start + (i + k * pairs) / rate`` whatever the server does, so the whole load is one
evenly spaced stream of ``rate`` messages/s. The body carries the *due* time, not the
time it actually left, so a stalled server is charged for every message it delayed
(no coordinated omission); the window still caps what is in flight, and waiting for
it counts as latency.

Besides pairs, two connection-shaped workloads for ``bench/run.py``:
:func:`run_idle` (many authenticated idle connections) and :func:`run_drain`
(envelopes queued for offline recipients, then drained by their login). Workers of
every workload move through named phases; the parent measures the server between
phases (:func:`run_phases`).

Not here: starting servers and printing results (``bench/relay.py``, ``bench/run.py``).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import secrets
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import msgpack
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection as RawWebSocket
from websockets.asyncio.client import connect

from bench.procs import process_schedstat, raise_nofile_limit
from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.channel import MAX_TRANSPORT_MESSAGE_BYTES, ChannelError, ClientChannel
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.frames import MESSAGE_ID_RANDOM_BYTES, Error, Welcome, message_id

T_SEND, T_SENT, T_DELIVER, T_ACK, T_ERROR = 20, 21, 22, 23, 9
STAMP = struct.Struct(">d")
LEFT = struct.Struct(">d")
"""Paced mode only, after :data:`STAMP`: when the SEND actually left the load generator.
The latency from it leaves out the generator's own lateness (its process waiting for a
core, or the window full), which the latency from the due time includes (issue 19)."""

CONNECT_CONCURRENCY = 64
"""Handshakes in flight per worker process when opening thousands of connections: enough
to keep the server busy, few enough that none waits past the relay's auth timeout."""


class LoadError(RuntimeError):
    """The load could not complete: an ERROR frame, a closed socket or a timeout."""


class WebSocket:
    """A connection inside its Noise channel (SPEC §1.3): ``send`` seals a frame,
    ``recv`` opens one, as every client does; sealing and handing the message to
    websockets happen with no await between, so frames leave in nonce order."""

    __slots__ = ("channel", "raw")

    def __init__(self, raw: RawWebSocket, channel: ClientChannel) -> None:
        self.raw = raw
        self.channel = channel

    async def send(self, frame: bytes) -> None:
        await self.raw.send(self.channel.encrypt(frame))

    async def recv(self) -> bytes:
        message = await self.raw.recv()
        try:
            return self.channel.decrypt(message)
        except ChannelError as exc:
            raise LoadError(f"a message that fails the channel: {exc}") from exc

    async def close(self) -> None:
        await self.raw.close()


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One workload: how many pairs, messages per pair, window, body size, processes."""

    url: str
    pairs: int = 50
    messages: int = 1000
    window: int = 10
    size: int = 1024
    workers: int = 2
    timeout_s: float = 300.0
    """Upper bound for the whole run; exceeded → LoadError, workers terminated."""
    rate: float = 0.0
    """Messages/s over all pairs, paced open loop; 0 = as fast as the window allows."""
    relays: tuple[str, ...] = ()
    """Several relay workers sharing one store (``bench/scale.py``): pair ``i``'s sender
    connects to ``relays[i % n]`` and its recipient to ``relays[(i + 1) % n]``
    (:func:`pair_urls`), so with two or more every message crosses workers. Empty: every
    connection goes to ``url``."""
    crossing: bool = True
    """With ``relays``: False puts pair ``i``'s recipient on its sender's worker too, so
    no message crosses workers (the pairs are split across them, each pair whole)."""

    def __post_init__(self) -> None:
        if self.size < STAMP.size or self.size > limits.MAX_CIPHERTEXT_BYTES:
            raise ValueError(f"size must be {STAMP.size}..{limits.MAX_CIPHERTEXT_BYTES}")
        if min(self.pairs, self.messages, self.window, self.workers) < 1:
            raise ValueError("pairs, messages, window and workers must be positive")
        if self.rate < 0:
            raise ValueError("rate must be >= 0")
        if self.rate > 0 and self.size < STAMP.size + LEFT.size:
            raise ValueError(f"a paced load needs size >= {STAMP.size + LEFT.size}")


def pair_urls(spec: LoadSpec, pair: int) -> tuple[str, str]:
    """(sender URL, recipient URL) of pair ``pair``: see :attr:`LoadSpec.relays`."""
    if not spec.relays:
        return spec.url, spec.url
    n = len(spec.relays)
    return spec.relays[pair % n], spec.relays[(pair + spec.crossing) % n]


@dataclass(slots=True)
class LoadResult:
    """Aggregate over all workers; latencies in seconds, sorted."""

    messages: int
    elapsed_s: float
    delivery_latency: array = field(repr=False)
    sent_latency: array = field(repr=False)
    client_cpu_s: float
    client_cpu_wait_s: float = 0.0
    """What the load processes' threads waited for a core (``procs.process_schedstat``):
    their wait shows in every latency too."""
    departure_latency: array = field(default_factory=lambda: array("d"), repr=False)
    """Paced mode: each first DELIVER's latency from when its SEND left (:data:`LEFT`)."""

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed_s

    def delivery_ms(self, q: float) -> float:
        return percentile(self.delivery_latency, q) * 1000

    def sent_ms(self, q: float) -> float:
        return percentile(self.sent_latency, q) * 1000

    def departure_ms(self, q: float) -> float:
        """NaN unless paced."""
        return percentile(self.departure_latency, q) * 1000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    # ceil, not round(x + 0.5): round() goes to even, so p99 of 100 values was the max.
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def due_time(start: float, rate: float, pairs: int, pair: int, k: int) -> float:
    """When message ``k`` of pair ``pair`` is due in paced mode: one evenly spaced stream."""
    return start + (pair + k * pairs) / rate


PhaseHook = Callable[[str, list[dict[str, Any]]], None]


def run_phases(
    target: Callable[..., None],
    worker_args: Sequence[tuple[Any, ...]],
    phases: Sequence[str],
    timeout_s: float,
    on_phase: PhaseHook | None = None,
) -> list[dict[str, Any]]:
    """Run ``target(*args, pipe, events)`` once per ``worker_args`` in spawned processes.

    Every worker reports each phase in order (:func:`_phase`); once all have, the
    parent calls ``on_phase(name, reports)`` (to measure the server in between) and
    sets that phase's event, releasing the workers into the next one. Returns the
    reports of the last phase. Bounded by ``timeout_s``; workers are always reaped.
    """
    ctx = mp.get_context("spawn")
    events = [ctx.Event() for _ in phases]
    pipes: list[Connection] = []
    procs = []
    try:
        for args in worker_args:
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=target, args=(*args, child_end, events), daemon=True)
            proc.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(proc)
        deadline = time.monotonic() + timeout_s
        reports: list[dict[str, Any]] = []
        for phase, event in zip(phases, events, strict=True):
            reports = [_expect(pipe, phase, deadline - time.monotonic()) for pipe in pipes]
            if on_phase is not None:
                on_phase(phase, reports)
            event.set()
        return reports
    finally:
        for event in events:  # a worker blocked on a barrier must not outlive an error
            event.set()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


async def report_phase(
    pipe: Connection, events: Sequence[Any], index: int, report: dict[str, Any], deadline: float
) -> None:
    """Report phase ``index`` to the parent, then wait until every worker has."""
    pipe.send(report)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, events[index].wait, deadline - time.monotonic()):
        raise LoadError(f"never released from phase {report['kind']}")


def run_load(spec: LoadSpec, on_phase: PhaseHook | None = None) -> LoadResult:
    """Run the workload in ``spec.workers`` processes; raises LoadError on any failure.

    Phases: every worker registers its accounts and reports ready; then one shared
    event starts all senders at once, so the clock starts with everyone connected.
    ``on_phase("ready", …)`` runs just before that start and ``on_phase("done", …)``
    once every worker has finished (to measure the servers over the load alone).
    """
    tag = secrets.token_hex(3)
    slices = [range(w, spec.pairs, spec.workers) for w in range(min(spec.workers, spec.pairs))]
    args = [(spec, f"{tag}w{index}", list(ids)) for index, ids in enumerate(slices)]
    reports = run_phases(_worker_main, args, ("ready", "done"), spec.timeout_s, on_phase)
    delivery: list[float] = []
    sent: list[float] = []
    departure: list[float] = []
    for report in reports:
        delivery.extend(array("d", report["delivery"]))
        sent.extend(array("d", report["sent"]))
        departure.extend(array("d", report["departure"]))
    delivery.sort()
    sent.sort()
    departure.sort()
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return LoadResult(
        messages=sum(r["delivered"] for r in reports),
        elapsed_s=elapsed,
        delivery_latency=array("d", delivery),
        sent_latency=array("d", sent),
        client_cpu_s=sum(r["cpu"] for r in reports),
        client_cpu_wait_s=sum(r["cpu_wait"] for r in reports),
        departure_latency=array("d", departure),
    )


def _expect(pipe: Connection, kind: str, timeout: float) -> dict[str, Any]:
    if timeout <= 0 or not pipe.poll(timeout):
        raise LoadError(f"timed out waiting for workers to be {kind}")
    try:
        message: dict[str, Any] = pipe.recv()
    except EOFError:
        raise LoadError("a worker exited without reporting") from None
    if message.get("kind") == "error":
        raise LoadError(f"worker failed: {message['error']}")
    if message.get("kind") != kind:
        raise LoadError(f"unexpected worker message {message.get('kind')!r}")
    return message


# --- inside a worker process --------------------------------------------------


def run_worker(coro_fn: Callable[..., Any], *args: Any) -> None:
    """Body of every worker process: run the coroutine, report any failure, exit."""
    pipe: Connection = args[-2]
    try:
        raise_nofile_limit()
        asyncio.run(coro_fn(*args))
    except BaseException as exc:  # report every failure to the parent, then exit
        pipe.send({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


def _worker_main(
    spec: LoadSpec, prefix: str, pair_ids: list[int], pipe: Connection, events: list[Any]
) -> None:
    run_worker(_worker, spec, prefix, pair_ids, pipe, events)


async def _worker(
    spec: LoadSpec, prefix: str, pair_ids: list[int], pipe: Connection, events: list[Any]
) -> None:
    deadline = time.monotonic() + spec.timeout_s
    async with asyncio.timeout_at(asyncio.get_running_loop().time() + spec.timeout_s):
        urls = [pair_urls(spec, i) for i in pair_ids]
        recipients = [
            await open_account(to, f"r{prefix}p{i}")
            for i, (_, to) in zip(pair_ids, urls, strict=True)
        ]
        senders = [
            await open_account(frm, f"s{prefix}p{i}")
            for i, (frm, _) in zip(pair_ids, urls, strict=True)
        ]
        for (recipient, _), (sender, handle) in zip(recipients, senders, strict=True):
            await introduce(recipient, sender, handle)
        await report_phase(pipe, events, 0, {"kind": "ready"}, deadline)
        start = time.monotonic()
        cpu0 = time.process_time()
        wait0 = process_schedstat(os.getpid())[0]
        delivery = array("d")
        sent = array("d")
        departure = array("d")
        paced = departure if spec.rate > 0 else None
        receivers = [
            asyncio.create_task(receive_all(ws, spec.messages, delivery, paced))
            for ws, _ in recipients
        ]
        if spec.rate > 0:
            senders_done = [
                send_paced(
                    ws,
                    to,
                    spec,
                    sent,
                    [due_time(start, spec.rate, spec.pairs, i, k) for k in range(spec.messages)],
                )
                for i, (ws, _), (_, to) in zip(pair_ids, senders, recipients, strict=True)
            ]
        else:
            senders_done = [
                send_all(ws, to, spec.messages, spec.window, spec.size, sent)
                for (ws, _), (_, to) in zip(senders, recipients, strict=True)
            ]
        await asyncio.gather(*senders_done, *receivers)
        end = time.monotonic()
        cpu = time.process_time() - cpu0
        cpu_wait = process_schedstat(os.getpid())[0] - wait0
        for ws, _ in (*senders, *recipients):
            await ws.close()
    pipe.send(
        {
            "kind": "done",
            "start": start,
            "end": end,
            "cpu": cpu,
            "cpu_wait": cpu_wait,
            "delivered": len(delivery),
            "delivery": delivery.tobytes(),
            "sent": sent.tobytes(),
            "departure": departure.tobytes(),
        }
    )


async def open_account(
    url: str,
    handle: str,
    key: SigningKey | None = None,
    *,
    login: bool = False,
    kind: str = "user",
) -> tuple[WebSocket, str]:
    """Connect and authenticate ``handle`` (SPEC §4.2) with Ed25519 identity ``key`` (fresh
    if None): REGISTER a new account of ``kind`` (``user`` or ``business``), or LOGIN to an
    existing one."""
    raw = await connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        max_size=MAX_TRANSPORT_MESSAGE_BYTES,
        open_timeout=30,
    )
    try:
        channel = ClientChannel(os.urandom)
        await raw.send(channel.start())
        try:
            channel.receive_handshake(await raw.recv())
        except ChannelError as exc:
            raise LoadError(f"handshake with {url}: {exc}") from exc
        ws = WebSocket(raw, channel)
        conn = ClientConnection(channel.handshake_hash, channel.relay_key)
        conn.receive_data(await _recv_bytes(ws))
        sk = key or SigningKey.generate()
        if login:
            conn.login(handle, lambda m: sk.sign(m).signature)
            verb = "LOGIN"
        else:
            conn.register(handle, kind, bytes(sk.verify_key), lambda m: sk.sign(m).signature)
            verb = "REGISTER"
        for data in conn.data_to_send():
            await ws.send(data)
        conn.receive_data(await _recv_bytes(ws))
        events = conn.events_received()
        answer = events[-1] if events else None
        if isinstance(answer, Error):
            raise LoadError(f"{verb} {handle} refused with ERROR {answer.code}")
        if not isinstance(answer, Welcome):
            raise LoadError(f"{verb} {handle}: unexpected {answer!r}")
    except BaseException:
        await raw.close()
        raise
    return ws, handle


async def open_many(
    url: str,
    handles: Sequence[str],
    keys: Sequence[SigningKey | None] | None = None,
    *,
    login: bool = False,
    keep: bool = True,
) -> list[WebSocket]:
    """Authenticate many accounts, CONNECT_CONCURRENCY at a time; ``keep=False`` closes
    each as soon as it is authenticated (so registering never holds them all open)."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    key_list = list(keys) if keys is not None else [None] * len(handles)

    async def one(handle: str, key: SigningKey | None) -> WebSocket | None:
        async with gate:
            ws, _ = await open_account(url, handle, key, login=login)
            if keep:
                return ws
            await ws.close()
            return None

    opened = await asyncio.gather(
        *(one(h, k) for h, k in zip(handles, key_list, strict=True)), return_exceptions=True
    )
    failures = [r for r in opened if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(r.close() for r in opened if isinstance(r, WebSocket)))
        raise failures[0]
    return [r for r in opened if isinstance(r, WebSocket)]


def new_msg_id() -> bytes:
    """A ``msg_id`` as the SDK makes it (SPEC §6.1.1: the clock, then 80 random bits), so
    the relay's idempotence memory sees what it sees from real clients."""
    return message_id(time.time_ns() // 1_000_000, os.urandom(MESSAGE_ID_RANDOM_BYTES))


async def introduce(recipient: WebSocket, sender: WebSocket, sender_handle: str) -> None:
    """Warm-up: the recipient writes to the sender first and the sender takes it, so the
    pair are contacts (SPEC §7.3) and the load that follows is a conversation, not
    message requests to a stranger — the same work the relay always did per message."""
    await recipient.send(msgpack.packb({
        "t": T_SEND, "id": 1, "to": sender_handle, "msg_id": new_msg_id(),
        "intent": "chat", "body": os.urandom(STAMP.size),
    }))  # fmt: skip
    answer = msgpack.unpackb(await _recv_bytes(recipient))
    if answer["t"] != T_SENT:
        raise LoadError(f"warm-up SEND to {sender_handle} refused: {answer!r}")
    deliver = msgpack.unpackb(await _recv_bytes(sender))
    if deliver["t"] != T_DELIVER:
        raise LoadError(f"warm-up: {sender_handle} got {deliver!r}")
    await sender.send(msgpack.packb({"t": T_ACK, "delivery_ids": [deliver["delivery_id"]]}))


async def _recv_bytes(ws: WebSocket) -> bytes:
    return await ws.recv()


async def send_all(
    ws: WebSocket, to: str, count: int, window: int, size: int, sent_latency: array
) -> None:
    """Send ``count`` chat envelopes to ``to`` keeping ``window`` unanswered SENDs."""
    packb, unpackb, monotonic, urandom = msgpack.packb, msgpack.unpackb, time.monotonic, os.urandom
    in_flight: dict[int, float] = {}
    next_id = 1
    answered = 0

    async def send_next() -> None:
        nonlocal next_id
        now = monotonic()
        body = STAMP.pack(now) + urandom(size - STAMP.size)
        frame = {
            "t": T_SEND,
            "id": next_id,
            "to": to,
            "msg_id": new_msg_id(),
            "intent": "chat",
            "body": body,
        }
        in_flight[next_id] = now
        next_id += 1
        await ws.send(packb(frame))

    for _ in range(min(window, count)):
        await send_next()
    while answered < count:
        frame = unpackb(await ws.recv())
        t = frame["t"]
        if t == T_SENT:
            sent_latency.append(monotonic() - in_flight.pop(frame["re"]))
            answered += 1
            if next_id <= count:
                await send_next()
        elif t == T_ERROR:
            raise LoadError(f"SEND refused: ERROR {frame['code']} (re={frame.get('re')})")


async def send_paced(
    ws: WebSocket, to: str, spec: LoadSpec, sent_latency: array, due: Sequence[float]
) -> None:
    """Send one envelope at each ``due`` time (open loop), at most ``spec.window`` in flight.

    The body is stamped with the due time, and SENT latency is measured from it too; then
    with the time the SEND left (:data:`LEFT`).
    """
    packb, unpackb, monotonic, urandom = msgpack.packb, msgpack.unpackb, time.monotonic, os.urandom
    stamped = STAMP.size + LEFT.size
    in_flight: dict[int, float] = {}
    slots = asyncio.Semaphore(spec.window)
    count = len(due)

    async def read() -> None:
        answered = 0
        while answered < count:
            frame = unpackb(await ws.recv())
            if frame["t"] == T_SENT:
                sent_latency.append(monotonic() - in_flight.pop(frame["re"]))
                answered += 1
                slots.release()
            elif frame["t"] == T_ERROR:
                raise LoadError(f"SEND refused: ERROR {frame['code']} (re={frame.get('re')})")

    async def write() -> None:
        for request_id, at in enumerate(due, start=1):
            if (delay := at - monotonic()) > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            body = STAMP.pack(at) + LEFT.pack(monotonic()) + urandom(spec.size - stamped)
            frame = {"t": T_SEND, "id": request_id, "to": to, "msg_id": new_msg_id(),
                     "intent": "chat", "body": body}  # fmt: skip
            in_flight[request_id] = at
            await ws.send(packb(frame))

    async with asyncio.TaskGroup() as group:
        group.create_task(read())
        group.create_task(write())


async def receive_all(
    ws: WebSocket, count: int, latency: array, departure: array | None = None
) -> None:
    """Take DELIVERs until ``count`` distinct msg_ids arrived; ACK once per loop turn.

    ``departure``: the bodies are paced ones, and each first DELIVER's latency from the
    SEND's departure (:data:`LEFT`) goes there too."""
    unpackb, monotonic, unpack_from = msgpack.unpackb, time.monotonic, STAMP.unpack_from
    seen: set[bytes] = set()
    to_ack: list[int] = []
    wake = asyncio.Event()
    finished = False

    async def acknowledge() -> None:
        # Runs only when the receive loop yields, i.e. when no message is buffered:
        # every DELIVER that arrived in one read is acknowledged in one ACK.
        while True:
            await wake.wait()
            wake.clear()
            while to_ack:
                ids = to_ack[: limits.MAX_ACK_IDS]
                del to_ack[: limits.MAX_ACK_IDS]
                await ws.send(msgpack.packb({"t": T_ACK, "delivery_ids": ids}))
            if finished:
                return

    acker = asyncio.create_task(acknowledge())
    try:
        while len(seen) < count:
            frame = unpackb(await ws.recv())
            t = frame["t"]
            if t == T_DELIVER:
                msg_id = frame["msg_id"]
                if msg_id not in seen:
                    now = monotonic()
                    body = frame["body"]
                    latency.append(now - unpack_from(body)[0])
                    if departure is not None:
                        departure.append(now - unpack_from(body, STAMP.size)[0])
                    seen.add(msg_id)
                to_ack.append(frame["delivery_id"])
                wake.set()
            elif t == T_ERROR:
                raise LoadError(f"recipient got ERROR {frame['code']}")
        finished = True
        wake.set()
        await acker
    finally:
        acker.cancel()


# --- connection-shaped workloads (bench/run.py) --------------------------------


def _spread(total: int, workers: int) -> list[range]:
    """Indices 0..total-1 dealt round-robin to at most ``workers`` workers."""
    return [range(w, total, workers) for w in range(min(workers, total))]


def run_idle(
    url: str, connections: int, workers: int, timeout_s: float, on_phase: PhaseHook
) -> None:
    """Hold ``connections`` authenticated idle connections, spread over ``workers`` processes.

    Phases reported to ``on_phase``: ``registered`` (every account registered, and each
    connection closed again right away, so the server never held many at once),
    ``connected`` (every account logged in and idle: measure the server now), ``done``.
    Logging in existing accounts, rather than registering on the measured connections,
    keeps account creation out of the per-connection figure.
    """
    tag = secrets.token_hex(3)
    args = [(url, f"i{tag}w{index}", len(ids), timeout_s)
            for index, ids in enumerate(_spread(connections, workers))]  # fmt: skip
    run_phases(_idle_main, args, ("registered", "connected", "done"), timeout_s, on_phase)


def _idle_main(*args: Any) -> None:
    run_worker(_idle_worker, *args)


async def _idle_worker(
    url: str, prefix: str, count: int, timeout_s: float, pipe: Connection, events: list[Any]
) -> None:
    deadline = time.monotonic() + timeout_s
    async with asyncio.timeout_at(asyncio.get_running_loop().time() + timeout_s):
        handles = [f"{prefix}n{i}" for i in range(count)]
        keys = [SigningKey.generate() for _ in handles]
        started = time.monotonic()
        await open_many(url, handles, keys, keep=False)
        await report_phase(pipe, events, 0, {"kind": "registered", "s": time.monotonic() - started},
                     deadline)  # fmt: skip
        started = time.monotonic()
        sockets = await open_many(url, handles, keys, login=True)
        try:
            await report_phase(pipe, events, 1, {"kind": "connected", "open": len(sockets),
                                           "s": time.monotonic() - started}, deadline)  # fmt: skip
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
    pipe.send({"kind": "done"})


@dataclass(frozen=True, slots=True)
class DrainResult:
    """Queueing and draining times; the drain clock runs from the first LOGIN to the
    last ACK sent, over all recipients."""

    queued: int
    queue_s: float
    delivered: int
    drain_s: float

    @property
    def drain_rate(self) -> float:
        return self.delivered / self.drain_s

    @property
    def queue_rate(self) -> float:
        return self.queued / self.queue_s


def run_drain(
    url: str,
    recipients: int,
    per_recipient: int,
    *,
    window: int,
    size: int,
    workers: int,
    timeout_s: float,
    on_phase: PhaseHook,
) -> DrainResult:
    """Queue ``per_recipient`` envelopes for each of ``recipients`` offline accounts (one
    sender each, ``window`` SENDs in flight), then log them all in and take everything.

    Phases: ``ready`` (accounts registered, recipients offline), ``queued`` (every SEND
    acknowledged, i.e. committed: measure the database now), ``done``.
    """
    tag = secrets.token_hex(3)
    args = [(url, f"d{tag}w{index}", len(ids), per_recipient, window, size, timeout_s)
            for index, ids in enumerate(_spread(recipients, workers))]  # fmt: skip
    phases: dict[str, list[dict[str, Any]]] = {}

    def hook(phase: str, reports: list[dict[str, Any]]) -> None:
        phases[phase] = reports
        on_phase(phase, reports)

    done = run_phases(_drain_main, args, ("ready", "queued", "done"), timeout_s, hook)
    queued = phases["queued"]
    return DrainResult(
        queued=sum(r["queued"] for r in queued),
        queue_s=max(r["end"] for r in queued) - min(r["start"] for r in queued),
        delivered=sum(r["delivered"] for r in done),
        drain_s=max(r["end"] for r in done) - min(r["start"] for r in done),
    )


def _drain_main(*args: Any) -> None:
    run_worker(_drain_worker, *args)


async def _drain_worker(
    url: str,
    prefix: str,
    count: int,
    per_recipient: int,
    window: int,
    size: int,
    timeout_s: float,
    pipe: Connection,
    events: list[Any],
) -> None:
    deadline = time.monotonic() + timeout_s
    async with asyncio.timeout_at(asyncio.get_running_loop().time() + timeout_s):
        handles = [f"r{prefix}n{i}" for i in range(count)]
        keys = [SigningKey.generate() for _ in handles]
        recipients = await open_many(url, handles, keys)
        sender_handles = [f"s{prefix}n{i}" for i in range(count)]
        senders = await open_many(url, sender_handles)
        for recipient, sender, handle in zip(recipients, senders, sender_handles, strict=True):
            await introduce(recipient, sender, handle)  # then the recipients go offline
        await asyncio.gather(*(ws.close() for ws in recipients))
        await report_phase(pipe, events, 0, {"kind": "ready"}, deadline)
        start = time.monotonic()
        sent = array("d")
        await asyncio.gather(*(send_all(ws, to, per_recipient, window, size, sent)
                               for ws, to in zip(senders, handles, strict=True)))  # fmt: skip
        end = time.monotonic()
        await asyncio.gather(*(ws.close() for ws in senders))
        await report_phase(pipe, events, 1, {"kind": "queued", "queued": len(sent), "start": start,
                                       "end": end}, deadline)  # fmt: skip
        start = time.monotonic()
        delivery = array("d")
        finished: list[float] = []

        async def drain(handle: str, key: SigningKey) -> None:
            ws, _ = await open_account(url, handle, key, login=True)
            try:
                await receive_all(ws, per_recipient, delivery)
                finished.append(time.monotonic())  # the last ACK has been sent
            finally:
                await ws.close()

        await asyncio.gather(*(drain(h, k) for h, k in zip(handles, keys, strict=True)))
    pipe.send({"kind": "done", "delivered": len(delivery), "start": start, "end": max(finished)})
