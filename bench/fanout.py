"""Fan-out benchmark (issue 6): one business notifies N consenting, connected customers.

The business is the real SDK (:class:`blindrelay.client.business.Business` on a
:class:`Client` with an in-memory keystore) in this process; every notification
is its own end-to-end encrypted envelope (SPEC §8.3), sent with the SDK's
pipelined window. Customers are raw protocol connections spread over
``--workers`` load processes: each registers, signs a ``grant utility``
statement (SPEC §7.4), stays connected, and acknowledges its notification
(they do not decrypt it: that is the customer's device, not the fan-out).
Sessions are set up in-process: the business starts each from a bundle built
here from the customer's key, as a business with established sessions would
hold them.

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

    .venv/bin/python bench/fanout.py [--customers 10000] [--workers 2]
        [--pairs 50] [--messages 400] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect

from bench.loadgen import LoadError, LoadSpec
from bench.procs import ServerProcess, process_cpu_s, raise_nofile_limit
from bench.relay import ROOT, UNLIMITED_RATE, relay_argv, throughput
from blindrelay.client.business import Business
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.protocol import SUBPROTOCOL, frames, limits
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.crypto.keys import IdentityKeyPair, SignedPreKey
from blindrelay.protocol.signed import ConsentStatement, make_statement

TARGET_RATIO = 0.5
"""Issue 6: fan-out notifications/s ≥ this × the relay's pair-to-pair msg/s."""
SETUP_BATCH = 200
"""Customers connecting at once per load process: enough to overlap round trips,
few enough not to stall the relay's accept loop."""
BUSINESS = "airline"
TEXT = "BA123 to Lisbon now boards at gate B7."


def relay_command(workdir: Path) -> list[str]:
    raised = [f"--{n}={UNLIMITED_RATE}" for n in ("send-rate-business", "send-burst-business")]
    return [*relay_argv("FULL")(workdir), *raised]


# --- load processes: the customers ------------------------------------------------


async def _recv(ws: WebSocket) -> frames.Frame:
    data = await ws.recv()
    assert isinstance(data, bytes)
    return decode(data)


async def _customer(url: str, handle: str, seed: bytes) -> WebSocket:
    """Register ``handle`` and grant the business utility notifications (SPEC §4.2, §7.4)."""
    ws = await connect(
        url, subprotocols=[SUBPROTOCOL], compression=None,  # type: ignore[list-item]
        max_size=limits.MAX_FRAME_BYTES, open_timeout=60,
    )  # fmt: skip
    conn = ClientConnection()
    conn.receive_data(await ws.recv())  # type: ignore[arg-type]
    hello = conn.hello
    assert hello is not None
    key = SigningKey(seed)
    sign = lambda m: key.sign(m).signature  # noqa: E731
    conn.register(handle, "user", bytes(key.verify_key), sign)
    for data in conn.data_to_send():
        await ws.send(data)
    welcome = await _recv(ws)
    if not isinstance(welcome, frames.Welcome):
        raise LoadError(f"REGISTER {handle}: {welcome!r}")
    statement = make_statement(
        "grant", signer=handle, signer_key=bytes(key.verify_key), target=BUSINESS,
        relay_key=hello.relay_key, now_ms=hello.now, rng=os.urandom, categories=("utility",),
    )  # fmt: skip
    await ws.send(encode(frames.Statement(id=1, statement=statement.sign(sign))))
    answer = await _recv(ws)
    if not isinstance(answer, frames.Ok):
        raise LoadError(f"grant by {handle}: {answer!r}")
    return ws


async def _await_notification(ws: WebSocket) -> float:
    while True:
        frame = await _recv(ws)
        if isinstance(frame, frames.Deliver) and frame.intent == frames.Intent.NOTIFICATION:
            arrived = time.monotonic()
            await ws.send(encode(frames.Ack(delivery_ids=(frame.delivery_id,))))
            return arrived


async def _customers(url: str, entries: list[tuple[str, bytes]], pipe: Connection) -> None:
    started = time.monotonic()
    sockets: list[WebSocket] = []
    for first in range(0, len(entries), SETUP_BATCH):
        batch = entries[first : first + SETUP_BATCH]
        sockets += await asyncio.gather(*(_customer(url, h, s) for h, s in batch))
    waiting = [asyncio.create_task(_await_notification(ws)) for ws in sockets]
    pipe.send({"kind": "ready", "setup_s": time.monotonic() - started})
    arrivals = await asyncio.gather(*waiting)
    pipe.send(
        {"kind": "done", "first": min(arrivals), "last": max(arrivals), "count": len(arrivals)}
    )
    await asyncio.to_thread(pipe.poll, 60)  # the parent says when to hang up
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def _customers_main(url: str, entries: list[tuple[str, bytes]], pipe: Connection) -> None:
    try:
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


async def fanout(
    server: ServerProcess, customers: int, workers: int, timeout_s: float
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
    business = Business(client, on_consent_change=on_statement)

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
    pipes, procs = [], []
    for w in range(workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_customers_main, args=(url, seeds[w::workers], child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        ready = await asyncio.to_thread(_expect, pipes, "ready", deadline)
        await asyncio.wait_for(all_granted.wait(), max(deadline - time.monotonic(), 0.1))
        setup_s = time.monotonic() - started
        if len(business.consenting("utility")) != customers:
            raise LoadError("the business does not hold every customer's grant")

        customer_pids = [proc.pid for proc in procs if proc.pid is not None]
        cpu_before = _cpu_by_role(server, customer_pids)
        t0 = time.monotonic()
        result = await business.notify("utility", TEXT)
        sent_s = time.monotonic() - t0
        done = await asyncio.to_thread(_expect, pipes, "done", deadline)
        cpu_after = _cpu_by_role(server, customer_pids)
    finally:
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
    from blindrelay.protocol.content import Content, Text, encode_content

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
    plaintext = encode_content(Content(os.urandom(16), Text(TEXT)))
    return len(sender.sessions.encrypt("c00000", plaintext))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="customer load processes")
    parser.add_argument(
        "--pairs", type=int, default=50, help="pair benchmark: sender→recipient pairs"
    )
    parser.add_argument("--messages", type=int, default=400, help="pair benchmark: per pair")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for each phase")
    parser.add_argument("--json", type=Path, help="write the figures here")
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
            figures = asyncio.run(fanout(server, args.customers, args.workers, args.timeout))
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
