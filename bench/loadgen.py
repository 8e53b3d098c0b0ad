"""Load generator: sender→recipient pairs over real WebSockets, spread over processes.

Why processes: on a 2-core machine a single-process asyncio client does about as much
work per message as the server it measures (encode SEND, decode SENT, decode DELIVER,
encode ACK), so it becomes the bottleneck and the server looks slower than it is.
Each worker process owns a slice of the pairs (sender and recipient of a pair in the
same process) and its own event loop; the parent only coordinates and aggregates.

Per pair: the sender keeps ``window`` SENDs in flight (a new one goes out when a SENT
arrives), the recipient acknowledges deliveries with batched ACKs (one ACK per
event-loop turn, at most MAX_ACK_IDS ids). Bodies are ``size`` random bytes whose
first 8 bytes carry the send time (``time.monotonic``, which is system-wide on Linux),
so delivery latency is measured where DELIVER arrives without shared state. The
relay treats bodies as opaque, as it does real ciphertext.

Accounts are registered with real Ed25519 signatures through
``ClientConnection.register`` (SPEC §4.2). The hot path after WELCOME packs and
unpacks plain msgpack maps in canonical field order (SPEC §2.3) rather than going
through the strict codec: it is the client side, and its cost must stay small.

Not here: starting servers and printing results (``bench/relay.py``).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import secrets
import struct
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import msgpack
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect

from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.frames import Error, Welcome

T_SEND, T_SENT, T_DELIVER, T_ACK, T_ERROR = 20, 21, 22, 23, 9
STAMP = struct.Struct(">d")

READY_TIMEOUT_S = 60.0
"""Registering all accounts must finish within this (100 signatures take well under 1 s)."""


class LoadError(RuntimeError):
    """The load could not complete: an ERROR frame, a closed socket or a timeout."""


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

    def __post_init__(self) -> None:
        if self.size < STAMP.size or self.size > limits.MAX_CIPHERTEXT_BYTES:
            raise ValueError(f"size must be {STAMP.size}..{limits.MAX_CIPHERTEXT_BYTES}")
        if min(self.pairs, self.messages, self.window, self.workers) < 1:
            raise ValueError("pairs, messages, window and workers must be positive")


@dataclass(slots=True)
class LoadResult:
    """Aggregate over all workers; latencies in seconds, sorted."""

    messages: int
    elapsed_s: float
    delivery_latency: array = field(repr=False)
    sent_latency: array = field(repr=False)
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed_s

    def delivery_ms(self, q: float) -> float:
        return percentile(self.delivery_latency, q) * 1000

    def sent_ms(self, q: float) -> float:
        return percentile(self.sent_latency, q) * 1000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the workload in ``spec.workers`` processes; raises LoadError on any failure.

    Phases: every worker registers its accounts and reports ready; then one shared
    event starts all senders at once, so the clock starts with everyone connected.
    """
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    tag = secrets.token_hex(3)
    slices = [range(w, spec.pairs, spec.workers) for w in range(min(spec.workers, spec.pairs))]
    pipes: list[Connection] = []
    procs = []
    for index, pair_ids in enumerate(slices):
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker_main,
            args=(spec, f"{tag}w{index}", list(pair_ids), child_end, go),
            daemon=True,
        )
        proc.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(proc)
    deadline = time.monotonic() + spec.timeout_s
    try:
        for pipe in pipes:
            _expect(pipe, "ready", min(READY_TIMEOUT_S, deadline - time.monotonic()))
        go.set()
        reports = [_expect(pipe, "done", deadline - time.monotonic()) for pipe in pipes]
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    delivery: list[float] = []
    sent: list[float] = []
    for report in reports:
        delivery.extend(array("d", report["delivery"]))
        sent.extend(array("d", report["sent"]))
    delivery.sort()
    sent.sort()
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return LoadResult(
        messages=sum(r["delivered"] for r in reports),
        elapsed_s=elapsed,
        delivery_latency=array("d", delivery),
        sent_latency=array("d", sent),
        client_cpu_s=sum(r["cpu"] for r in reports),
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


def _worker_main(
    spec: LoadSpec, prefix: str, pair_ids: list[int], pipe: Connection, go: Any
) -> None:
    try:
        asyncio.run(_worker(spec, prefix, pair_ids, pipe, go))
    except BaseException as exc:  # report every failure to the parent, then exit
        pipe.send({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


async def _worker(
    spec: LoadSpec, prefix: str, pair_ids: list[int], pipe: Connection, go: Any
) -> None:
    deadline = time.monotonic() + spec.timeout_s
    async with asyncio.timeout_at(asyncio.get_running_loop().time() + spec.timeout_s):
        recipients = [await open_account(spec.url, f"r{prefix}p{i}") for i in pair_ids]
        senders = [await open_account(spec.url, f"s{prefix}p{i}") for i in pair_ids]
        pipe.send({"kind": "ready"})
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, deadline - time.monotonic()):
            raise LoadError("never started")
        start = time.monotonic()
        cpu0 = time.process_time()
        delivery = array("d")
        sent = array("d")
        receivers = [
            asyncio.create_task(receive_all(ws, spec.messages, delivery)) for ws, _ in recipients
        ]
        await asyncio.gather(
            *(
                send_all(ws, to, spec.messages, spec.window, spec.size, sent)
                for (ws, _), (_, to) in zip(senders, recipients, strict=True)
            ),
            *receivers,
        )
        end = time.monotonic()
        cpu = time.process_time() - cpu0
        for ws, _ in (*senders, *recipients):
            await ws.close()
    pipe.send(
        {
            "kind": "done",
            "start": start,
            "end": end,
            "cpu": cpu,
            "delivered": len(delivery),
            "delivery": delivery.tobytes(),
            "sent": sent.tobytes(),
        }
    )


async def open_account(url: str, handle: str) -> tuple[WebSocket, str]:
    """Connect and REGISTER ``handle`` with a fresh Ed25519 identity key (SPEC §4.2)."""
    ws = await connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        max_size=limits.MAX_FRAME_BYTES,
        open_timeout=10,
    )
    key = SigningKey.generate()
    conn = ClientConnection()
    conn.receive_data(await _recv_bytes(ws))
    conn.register(handle, "user", bytes(key.verify_key), lambda m: key.sign(m).signature)
    for data in conn.data_to_send():
        await ws.send(data)
    conn.receive_data(await _recv_bytes(ws))
    events = conn.events_received()
    answer = events[-1] if events else None
    if isinstance(answer, Error):
        raise LoadError(f"REGISTER {handle} refused with ERROR {answer.code}")
    if not isinstance(answer, Welcome):
        raise LoadError(f"REGISTER {handle}: unexpected {answer!r}")
    return ws, handle


async def _recv_bytes(ws: WebSocket) -> bytes:
    data = await ws.recv()
    if not isinstance(data, bytes):
        raise LoadError("text message from the server")
    return data


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
            "msg_id": urandom(16),
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


async def receive_all(ws: WebSocket, count: int, latency: array) -> None:
    """Take DELIVERs until ``count`` distinct msg_ids arrived; ACK once per loop turn."""
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
                    latency.append(monotonic() - unpack_from(frame["body"])[0])
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
