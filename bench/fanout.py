"""Fan-out benchmark (issue 6): one business notifies N consenting, connected customers.

The business is the real SDK (:class:`blindrelay.client.business.Business` on a
:class:`Client` with an in-memory keystore) in this process; every notification
is its own end-to-end encrypted envelope (SPEC §8.3), sent with the SDK's
pipelined window. Customers are raw protocol connections spread over
``--customer-procs`` load processes: each registers, signs a ``grant utility``
statement (SPEC §7.4), stays connected, and acknowledges its notification
(they do not decrypt it: that is the customer's device, not the fan-out).
Sessions are set up in-process: the business starts each from a bundle built
here from the customer's key, as a business with established sessions would
hold them.

The customers share the 2 cores with the relay and the business, so they are
built to cost little while still doing what the protocol asks of a client. Each
is an ``asyncio.Protocol``: setup awaits each answer; after it, a notification
is handled in the callback that read it — no task, future or keepalive timer
per connection. Every DELIVER is checked — a ``utility`` ``notification`` from
the business, exactly the fields of a DELIVER, delivery id, message id and body
of the right wire types — and acknowledged with its ``delivery_id``; anything
else (another frame, a text or fragmented message, a second notification on
one connection, a lost connection, a message that fails the Noise channel)
fails the run. websockets' sans-I/O ``ClientProtocol`` does the opening
handshake and answers pings and closes; each customer then runs the Noise
handshake (SPEC §1.3) and seals and opens every frame in its channel, as a
client must.
Three shortcuts, each held to the real thing by
tests/bench/test_fanout_customers.py, took the customers from ~110 to ~25 µs
of CPU per notification:

- the customer splits the byte stream into frames itself (a relay sends each
  message as one unmasked, unfragmented binary frame) and hands websockets only
  the HTTP response and whole control frames: its generator-based parser was
  most of what was left;
- the check reads the frame with the fast reader of ``protocol.fastcodec``
  rather than the generic codec (the same frame, and a DELIVER it leaves to
  the codec fails the run: the relay writes only canonical ones);
- acks are encoded by ``protocol.fastcodec`` and framed here, masked (RFC 6455
  §5.3) with keys read from ``os.urandom`` 16 KiB at a time rather than 4 bytes
  (a syscall) per frame: the same CSPRNG, each key used once.

Reported: time from the first SEND to the last customer's DELIVER (all load
processes share CLOCK_MONOTONIC), notifications/s, and the business client's
time in encryption + enqueueing vs the rest (waiting on the relay). In the
same run ``bench/relay.py``'s :func:`throughput` measures the relay's
pair-to-pair rate on envelopes of the same size; issue 6's target is
fan-out ≥ 0.5× that rate.

The relay runs as ``blindrelay serve`` in a subprocess with its defaults except
the send rate limits, raised out of reach for the benchmark (user, pair and
business buckets: the business default of 5,000/s would measure the bucket).
Everything binds 127.0.0.1; every wait is bounded by ``--timeout``. RLIMIT_NOFILE
is raised inside this script's processes only.

    .venv/bin/python bench/fanout.py [--customers 10000] [--customer-procs N]
        [--notify-window N] [--pairs 50] [--messages 400] [--workers 2]
        [--json PATH] [--profile DIR]

``--profile DIR`` writes py-spy profiles (raw collapsed stacks; ``bench/profile.py``
summarises them) of the relay's processes and of the business, taken during the
fan-out only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from bench.loadgen import LoadError, LoadSpec
from bench.procs import ServerProcess, process_cpu_s, raise_nofile_limit
from bench.relay import ROOT, UNLIMITED_RATE, relay_argv, start_profiler, throughput
from blindrelay.client.business import NOTIFY_WINDOW, Business
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.protocol import SUBPROTOCOL, frames
from blindrelay.protocol.channel import MAX_TRANSPORT_MESSAGE_BYTES, ChannelError, ClientChannel
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.crypto.keys import IdentityKeyPair, SignedPreKey
from blindrelay.protocol.fastcodec import encode_ack, read_deliver
from blindrelay.protocol.signed import ConsentStatement, make_statement

TARGET_RATIO = 0.5
"""Issue 6: fan-out notifications/s ≥ this × the relay's pair-to-pair msg/s."""
CUSTOMER_PROCS = 2
"""Customer load processes on the 2 cores. Measured against 1 (10,000 customers, three
paired runs): one process spent ~4 µs less CPU per notification (fewer wake-ups), but its
setup took ~25% longer (signing and handshakes on one core) and its fan-out was slower in
every pair; 3 processes cost more per notification than 2."""
SETUP_BATCH = 200
"""Customers connecting at once per load process: enough to overlap round trips,
few enough not to stall the relay's accept loop."""
BUSINESS = "airline"
TEXT = "BA123 to Lisbon now boards at gate B7."

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask


def relay_command(workdir: Path) -> list[str]:
    raised = [f"--{n}={UNLIMITED_RATE}" for n in ("send-rate-business", "send-burst-business")]
    return [*relay_argv("FULL")(workdir), *raised]


# --- load processes: the customers ------------------------------------------------

NOTIFICATION = (BUSINESS, "business", "notification", "utility")
"""What every DELIVER a customer receives must say: a utility notification from the business
(its sender, sender_kind, intent and category)."""
FIN_BINARY = 0x80 | Opcode.BINARY
"""First byte of an unfragmented binary frame: how the relay sends every message."""
FIN_CONTROL = frozenset(0x80 | op for op in (Opcode.CLOSE, Opcode.PING, Opcode.PONG))
MAX_HANDSHAKE_BYTES = 16 * 1024
SETUP_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 10.0


def check_notification(message: bytes) -> int:
    """The ``delivery_id`` of ``message`` if it is the notification customers expect.

    The DELIVER is read as strictly as the codec reads it (:func:`read_deliver`);
    one the fast reader leaves to the codec fails the run like any other frame,
    since the relay writes DELIVER in the codec's canonical form. Raises
    :class:`LoadError` for anything but a utility notification from the business.
    """
    frame = read_deliver(message)
    if frame is not None and (
        frame.sender, frame.sender_kind, frame.intent, frame.category
    ) == NOTIFICATION:  # fmt: skip
        return frame.delivery_id
    raise LoadError(f"not a utility notification from {BUSINESS}: {_describe(message)}")


def _describe(message: bytes) -> str:
    """A refused message as the strict codec reads it (error path only)."""
    try:
        return repr(decode(message))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def client_frame(payload: bytes, mask: bytes) -> bytes:
    """``payload`` as one masked binary WebSocket frame, as a client sends it (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        head = bytes((FIN_BINARY, 0x80 | size))
    elif size < 65536:
        head = struct.pack("!BBH", FIN_BINARY, 0x80 | 126, size)
    else:
        raise ValueError("customers send frames under 64 KiB")
    return head + mask + apply_mask(payload, mask)


class Masks:
    """Client frame masks (RFC 6455 §5.3), each used once, read from ``os.urandom`` in blocks.

    RFC 6455 wants every client frame masked with a fresh key the server cannot predict.
    websockets asks the OS for 4 bytes per frame (``secrets.token_bytes``), a syscall per
    ack; one 16 KiB read from the same CSPRNG serves 4,096 frames, no more predictable.
    """

    BLOCK = 16 * 1024

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self.BLOCK), 0
        self._at = at + 4
        return self._pool[at : at + 4]


class Tally:
    """One load process's notifications: how many are still due, first and last arrival."""

    def __init__(self, expected: int) -> None:
        self.expected = self.remaining = expected
        self.first = self.last = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if expected == 0:
            self.done.set_result(None)

    def notified(self, at: float) -> None:
        if self.remaining == self.expected:
            self.first = at
        self.last = at
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)

    def fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(LoadError(reason))


class Customer(asyncio.Protocol):
    """One customer's connection, a callback per read (see the module docstring).

    Setup (REGISTER, grant) awaits each message from :attr:`inbox`. After it,
    :meth:`data_received` checks and acknowledges each notification in the callback that
    read it. websockets' ``ClientProtocol`` gets the handshake and whole control frames.
    """

    def __init__(self, handle: str, uri: WebSocketURI, tally: Tally, masks: Masks) -> None:
        self.handle = handle
        self.tally = tally
        self.masks = masks
        self.ws = ClientProtocol(
            uri, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=MAX_TRANSPORT_MESSAGE_BYTES
        )  # no extensions: no permessage-deflate (SPEC §1.1.4)
        self.channel = ClientChannel(os.urandom)
        """The Noise channel (SPEC §1.3): message 1 goes out once the WebSocket is open."""
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        """Received bytes not yet parsed: the start of a frame (or of the HTTP response)."""
        self.framing = False
        """Past the handshake: the bytes received are WebSocket frames."""
        self.inbox: asyncio.Queue[bytes | Exception] | None = asyncio.Queue()
        self.notified = False
        self.closing = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls, uri: WebSocketURI, handle: str, seed: bytes, tally: Tally, masks: Masks
    ) -> Customer:
        """Connect, register ``handle`` and grant the business utility notifications."""
        loop = asyncio.get_running_loop()
        _, customer = await loop.create_connection(
            lambda: cls(handle, uri, tally, masks), uri.host, uri.port
        )
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                await customer._setup(seed)
        except BaseException:
            customer.abort()
            raise
        return customer

    async def _setup(self, seed: bytes) -> None:
        """REGISTER, then a signed ``grant utility`` statement (SPEC §4.2, §7.4)."""
        hello_data = await self._receive()  # the channel is established before HELLO
        conn = ClientConnection(self.channel.handshake_hash, self.channel.relay_key)
        conn.receive_data(hello_data)
        hello = conn.hello
        assert hello is not None
        key = SigningKey(seed)
        sign = lambda m: key.sign(m).signature  # noqa: E731
        conn.register(self.handle, "user", bytes(key.verify_key), sign)
        for data in conn.data_to_send():
            self.send(data)
        welcome = decode(await self._receive())
        if not isinstance(welcome, frames.Welcome):
            raise LoadError(f"REGISTER {self.handle}: {welcome!r}")
        statement = make_statement(
            "grant", signer=self.handle, signer_key=bytes(key.verify_key), target=BUSINESS,
            relay_key=hello.relay_key, now_ms=hello.now, rng=os.urandom, categories=("utility",),
        )  # fmt: skip
        self.send(encode(frames.Statement(id=1, statement=statement.sign(sign))))
        answer = decode(await self._receive())
        if not isinstance(answer, frames.Ok):
            raise LoadError(f"grant by {self.handle}: {answer!r}")
        inbox, self.inbox = self.inbox, None
        while inbox is not None and not inbox.empty():  # arrived with the OK: check them now
            item = inbox.get_nowait()
            if isinstance(item, Exception):
                raise item
            self._on_message(item)

    async def _receive(self) -> bytes:
        assert self.inbox is not None
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    def send(self, payload: bytes) -> None:
        """One frame to the relay, sealed in the channel (a WebSocket frame written
        directly, see :class:`Masks`)."""
        if self.ws.state is not State.OPEN or self.transport is None:
            raise LoadError(f"{self.handle}: connection {self.ws.state.name.lower()}")
        self.transport.write(client_frame(self.channel.encrypt(payload), self.masks.next()))

    def _on_message(self, sealed: bytes) -> None:
        channel = self.channel
        try:
            if not channel.established:
                channel.receive_handshake(sealed)
                return
            message = channel.decrypt(sealed)
        except ChannelError as exc:
            self._broken(f"channel: {exc}")
            return
        if self.inbox is not None:
            self.inbox.put_nowait(message)
            return
        try:
            delivery_id = check_notification(message)
            if self.notified:
                raise LoadError("a second notification")
            self.notified = True
            self.tally.notified(time.monotonic())
            self.send(encode_ack((delivery_id,)))
        except LoadError as exc:
            self._fail(str(exc))

    def _fail(self, reason: str) -> None:
        if self.inbox is not None:
            self.inbox.put_nowait(LoadError(f"{self.handle}: {reason}"))
        elif not self.closing:
            self.tally.fail(f"{self.handle}: {reason}")

    def _flush(self) -> None:
        """Write what websockets queued itself: handshake, pongs, close frames, EOF."""
        assert self.transport is not None
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()

    async def close(self) -> None:
        """Closing handshake: close 1000, then wait for the relay to close TCP."""
        self.closing = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.framing:
            buffer = self._handshake(buffer)
            if not self.framing:
                self.buffer = buffer
                return
        size, at = len(buffer), 0
        while size - at >= 2:  # one turn per whole frame; a partial one waits in self.buffer
            first, length = buffer[at], buffer[at + 1]
            head = 2
            if length >= 126:
                if length > 127:
                    self._broken("a masked frame (a relay never masks)")
                    return
                head = 4 if length == 126 else 10
                if size - at < head:
                    break
                length = int.from_bytes(buffer[at + 2 : at + head])
                if length > MAX_TRANSPORT_MESSAGE_BYTES:
                    self._broken(f"a {length}-byte frame")
                    return
            end = at + head + length
            if end > size:
                break
            if first == FIN_BINARY:
                self._on_message(buffer[at + head : end])
            elif first in FIN_CONTROL:
                self._control(buffer[at:end])
            else:
                self._broken(f"frame byte {first:#04x} (the relay sends whole binary messages)")
                return
            at = end
        self.buffer = buffer[at:]

    def _handshake(self, buffer: bytes) -> bytes:
        """Give websockets exactly the HTTP response; what follows it is frames."""
        end = buffer.find(b"\r\n\r\n") + 4
        if end == 3:  # not all of it yet
            if len(buffer) <= MAX_HANDSHAKE_BYTES:
                return buffer
            self._broken("handshake: response too long")
            return b""
        ws = self.ws
        ws.receive_data(buffer[:end])
        ws.events_received()
        self._flush()
        if ws.state is not State.OPEN:
            self._broken(f"handshake: {ws.handshake_exc}")
        elif ws.subprotocol != SUBPROTOCOL:
            self._broken(f"handshake: subprotocol {ws.subprotocol!r}")
        else:
            self.framing = True
            assert self.transport is not None
            self.transport.write(client_frame(self.channel.start(), self.masks.next()))
        return buffer[end:]

    def _control(self, frame: bytes) -> None:
        """A whole ping, pong or close frame: websockets answers it (pong, close reply)."""
        self.ws.receive_data(frame)
        self.ws.events_received()
        self._flush()

    def _broken(self, reason: str) -> None:
        self._fail(reason)
        self.abort()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        if not self.notified or self.inbox is not None:
            self._fail(f"connection lost: {exc or self.ws.close_exc}")
        if not self.closed.done():
            self.closed.set_result(None)


async def _customers(url: str, entries: list[tuple[str, bytes]], pipe: Connection) -> None:
    started = time.monotonic()
    uri, tally, masks = parse_uri(url), Tally(len(entries)), Masks()
    customers: list[Customer] = []
    for first in range(0, len(entries), SETUP_BATCH):
        batch = entries[first : first + SETUP_BATCH]
        customers += await asyncio.gather(
            *(Customer.connect(uri, h, s, tally, masks) for h, s in batch)
        )
    pipe.send({"kind": "ready", "setup_s": time.monotonic() - started})
    await tally.done
    pipe.send({"kind": "done", "first": tally.first, "last": tally.last, "count": tally.expected})
    await asyncio.to_thread(pipe.poll, 60)  # the parent says when to hang up
    await asyncio.gather(*(c.close() for c in customers), return_exceptions=True)


def _customers_main(url: str, pipe: Connection) -> None:
    try:
        entries: list[tuple[str, bytes]] = pipe.recv()
        raise_nofile_limit()
        asyncio.run(_customers(url, entries, pipe))
    except BaseException as exc:  # report to the parent, then exit
        pipe.send({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


def _expect(pipes: list[Connection], kind: str, deadline: float) -> list[dict[str, Any]]:
    reports = []
    for pipe in pipes:
        if not pipe.poll(max(deadline - time.monotonic(), 0)):
            raise LoadError(f"timed out waiting for the customers to be {kind}")
        report: dict[str, Any] = pipe.recv()
        if report["kind"] != kind:
            raise LoadError(f"customer process: {report}")
        reports.append(report)
    return reports


# --- the business ------------------------------------------------------------------


def _cpu_by_role(server: ServerProcess, customers: list[int]) -> dict[str, float]:
    """CPU seconds used so far by each role: where the 2 cores go during the fan-out."""
    relay = server.tree()
    return {
        "relay_main": process_cpu_s(relay[0]),
        "relay_writer": sum(process_cpu_s(pid) for pid in relay[1:]),
        "business": process_cpu_s(os.getpid()),
        "customers": sum(process_cpu_s(pid) for pid in customers),
    }


PROFILE_RATE_HZ = 1000
"""py-spy samples/s while fanning out: the phase lasts about a second."""
PROFILER_START_S = 1.0
"""py-spy needs a moment to attach before its first sample."""


def _start_profilers(server: ServerProcess, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on the relay's processes and on this one (the business), fan-out only."""
    tree = server.tree()
    targets = {"relay_main": tree[0], "business": os.getpid()}
    targets |= {f"relay_writer{i}": pid for i, pid in enumerate(tree[1:])}
    return [start_profiler(pid, out / f"{role}.txt", PROFILE_RATE_HZ)
            for role, pid in targets.items()]  # fmt: skip


def _stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(timeout=60)


async def fanout(
    server: ServerProcess,
    customers: int,
    workers: int,
    timeout_s: float,
    window: int = NOTIFY_WINDOW,
    profile: Path | None = None,
) -> dict[str, Any]:
    url = server.url
    deadline = time.monotonic() + timeout_s
    received = 0
    all_granted = asyncio.Event()

    def on_statement(_: ConsentStatement) -> None:
        nonlocal received
        received += 1
        if received == customers:
            all_granted.set()

    client = Client(MemoryKeyStore())
    await client.connect(url)
    await client.register(BUSINESS, "business")
    business = Business(client, on_consent_change=on_statement, notify_window=window)

    started = time.monotonic()
    seeds = [(f"c{i:05d}", os.urandom(32)) for i in range(customers)]
    for handle, seed in seeds:
        identity = IdentityKeyPair.from_seed(seed)
        prekey = SignedPreKey.generate(identity, 1, os.urandom)
        client.sessions.start_session(
            frames.Bundle(
                re=1, handle=handle, kind="user", identity_key=identity.public,
                signed_prekey=frames.SignedPreKeyRecord(1, prekey.public, prekey.signature),
            )
        )  # fmt: skip
    sessions_s = time.monotonic() - started

    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    procs: list[multiprocessing.context.SpawnProcess] = []
    spies: list[subprocess.Popen[bytes]] = []
    try:
        for w in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_customers_main, args=(url, child))
            proc.start()
            procs.append(proc)
            pipes.append(parent)
            child.close()
            # Through the pipe, not the start arguments: start() blocks forever writing
            # arguments larger than a pipe buffer to a child that died before reading
            # them; this send fails (BrokenPipeError) once the child's end is closed.
            parent.send(seeds[w::workers])
        ready = await asyncio.to_thread(_expect, pipes, "ready", deadline)
        await asyncio.wait_for(all_granted.wait(), max(deadline - time.monotonic(), 0.1))
        setup_s = time.monotonic() - started
        if len(business.consenting("utility")) != customers:
            raise LoadError("the business does not hold every customer's grant")

        customer_pids = [proc.pid for proc in procs if proc.pid is not None]
        spies = _start_profilers(server, profile) if profile else []
        if spies:
            await asyncio.sleep(PROFILER_START_S)
        cpu_before = _cpu_by_role(server, customer_pids)
        t0 = time.monotonic()
        result = await business.notify("utility", TEXT)
        sent_s = time.monotonic() - t0
        done = await asyncio.to_thread(_expect, pipes, "done", deadline)
        cpu_after = _cpu_by_role(server, customer_pids)
    finally:
        _stop_profilers(spies)
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send({"kind": "close"})
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
        await client.close()
    if result.skipped or sum(r["count"] for r in done) != customers:
        raise LoadError(f"not every customer got the notification: {result.failed}")
    total_s = max(r["last"] for r in done) - t0
    return {
        "customers": customers,
        "customer_procs": workers,
        "notify_window": window,
        "setup_s": round(setup_s, 2),
        "setup_ms_per_customer": round(setup_s / customers * 1000, 3),
        "business_sessions_s": round(sessions_s, 2),
        "customer_connect_s": round(max(r["setup_s"] for r in ready), 2),
        "all_delivered_s": round(total_s, 3),
        "all_sent_s": round(sent_s, 3),
        "notifications_per_s": round(customers / total_s, 1),
        "encrypt_s": round(result.encrypt_seconds, 3),
        "waiting_s": round(result.seconds - result.encrypt_seconds, 3),
        "cpu_s": {role: round(cpu_after[role] - cpu_before[role], 2) for role in cpu_before},
    }


def envelope_size() -> int:
    """Bytes of one notification envelope, so the pair benchmark carries the same size."""
    from blindrelay.protocol.content import Content, Labels, Text, encode_content

    store = MemoryKeyStore()
    sender = Client(store)
    sender.sessions.create_identity(BUSINESS, "business")
    identity = IdentityKeyPair.generate(os.urandom)
    prekey = SignedPreKey.generate(identity, 1, os.urandom)
    sender.sessions.start_session(
        frames.Bundle(
            re=1, handle="c00000", kind="user", identity_key=identity.public,
            signed_prekey=frames.SignedPreKeyRecord(1, prekey.public, prekey.signature),
        )
    )  # fmt: skip
    labels = Labels("notification", "utility")  # its content carries them (SPEC §13.11)
    plaintext = encode_content(Content(os.urandom(16), Text(TEXT), None, labels))
    return len(sender.sessions.encrypt("c00000", plaintext))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument(
        "--customer-procs", type=int, default=CUSTOMER_PROCS, help="customer load processes"
    )
    parser.add_argument(
        "--notify-window", type=int, default=NOTIFY_WINDOW, help="the business's SENDs in flight"
    )
    parser.add_argument("--workers", type=int, default=2, help="pair benchmark: load processes")
    parser.add_argument(
        "--pairs", type=int, default=50, help="pair benchmark: sender→recipient pairs"
    )
    parser.add_argument("--messages", type=int, default=400, help="pair benchmark: per pair")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for each phase")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--profile", type=Path, help="py-spy profiles of the relay and business while fanning out"
    )
    args = parser.parse_args(argv)
    raise_nofile_limit()
    size = envelope_size()
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        workdir = Path(tmp)
        spec = LoadSpec(url="", pairs=args.pairs, messages=args.messages, size=size,
                        workers=args.workers, timeout_s=args.timeout)  # fmt: skip
        pair = throughput("relay", spec, workdir, None)
        (workdir / "fanout").mkdir()
        with ServerProcess(relay_command(workdir / "fanout"), log=workdir / "fanout.log",
                           cwd=ROOT) as server:  # fmt: skip
            run = fanout(server, args.customers, args.customer_procs, args.timeout,
                         args.notify_window, args.profile)  # fmt: skip
            figures = asyncio.run(run)
    ratio = figures["notifications_per_s"] / pair.msgs_per_s
    figures |= {
        "pair_msgs_per_s": pair.msgs_per_s,
        "pair_messages": pair.messages,
        "envelope_bytes": size,
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "rate_limits": "send rate/burst for user, pair and business raised to "
        f"{UNLIMITED_RATE} for the benchmark",
    }
    rows = [
        ("customers (connected, consenting)", f"{figures['customers']:,}"),
        ("setup per customer (sessions, connect, grant)",
         f"{figures['setup_ms_per_customer']} ms"),
        ("first SEND → last DELIVER", f"{figures['all_delivered_s']} s"),
        ("notifications/s", f"{figures['notifications_per_s']:,}"),
        ("business: encrypt + enqueue", f"{figures['encrypt_s']} s"),
        ("business: waiting on the relay", f"{figures['waiting_s']} s"),
        ("CPU s while fanning out (2 cores)",
         ", ".join(f"{role} {cpu}" for role, cpu in figures["cpu_s"].items())),
        (f"relay pair-to-pair msg/s ({size}-byte envelopes)", f"{pair.msgs_per_s:,}"),
        (f"fan-out / pair (target ≥ {TARGET_RATIO})",
         f"{ratio:.2f} {'met' if ratio >= TARGET_RATIO else 'NOT met'}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(relay: blindrelay serve, synchronous=FULL; {figures['rate_limits']})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
