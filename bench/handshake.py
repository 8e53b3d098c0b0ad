"""What the Noise channel costs per connection (issue 16): handshake CPU and time to HELLO.

Two figures:

- **CPU per handshake**, in process, each end apart: the client's message 1 and its
  check of message 2, the relay's answer (three X25519 operations on the relay, three
  on the client, one Ed25519 verification on the client; the relay signs its binding
  once at start). Median of ``--repeat`` rounds of ``--count`` handshakes.
- **Connect to HELLO**, against a fresh ``blindrelay serve`` on 127.0.0.1: TCP and
  WebSocket handshakes, the Noise handshake (when the checkout has one), then HELLO,
  then close; ``--connections`` in turn, median and p95 in ms. The same script runs on
  a checkout without the channel (it then skips the Noise part), so the two can be
  compared.

    .venv/bin/python bench/handshake.py [--count 2000] [--repeat 5] [--connections 300]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey
from websockets.asyncio.client import connect

from bench.procs import ServerProcess
from bench.relay import relay_argv
from blindrelay.protocol import SUBPROTOCOL

try:
    from blindrelay.protocol import channel
except ImportError:  # a checkout before the channel (issue 16): time to HELLO only
    channel = None  # type: ignore[assignment]


def handshake_cpu(count: int) -> dict[str, float]:
    """µs of CPU per handshake at each end, over ``count`` handshakes."""
    assert channel is not None
    seed = os.urandom(32)
    static = channel.relay_static_key(seed)
    binding = channel.static_binding(SigningKey(seed), static.public)
    client_s = relay_s = 0.0
    clock = time.process_time
    for _ in range(count):
        t0 = clock()
        client = channel.ClientChannel(os.urandom)
        first = client.start()
        t1 = clock()
        relay = channel.RelayChannel(static, binding, os.urandom)
        second = relay.receive_handshake(first)
        t2 = clock()
        client.receive_handshake(second)
        t3 = clock()
        client_s += (t1 - t0) + (t3 - t2)
        relay_s += t2 - t1
    return {"client_us": client_s / count * 1e6, "relay_us": relay_s / count * 1e6}


async def connect_to_hello(url: str, connections: int) -> list[float]:
    """Seconds from opening the TCP connection to HELLO in hand, one connection at a time."""
    times = []
    for _ in range(connections):
        start = time.perf_counter()
        async with connect(url, subprotocols=[SUBPROTOCOL], compression=None) as ws:  # type: ignore[list-item]
            if channel is not None:
                client = channel.ClientChannel(os.urandom)
                await ws.send(client.start())
                client.receive_handshake(await ws.recv())
                message = await ws.recv()
                assert isinstance(message, bytes)
                client.decrypt(message)
            else:
                await ws.recv()
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"channel": channel is not None}
    if channel is not None:
        rounds = [handshake_cpu(args.count) for _ in range(args.repeat)]
        for key in ("client_us", "relay_us"):
            figures[key] = round(statistics.median(r[key] for r in rounds), 1)
    with tempfile.TemporaryDirectory(prefix="handshake-") as tmp:
        workdir = Path(tmp)
        with ServerProcess(relay_argv("FULL")(workdir), log=workdir / "relay.log") as server:
            times = asyncio.run(connect_to_hello(server.url, args.connections))
    times.sort()
    figures["connect_to_hello_ms_median"] = round(statistics.median(times) * 1000, 2)
    figures["connect_to_hello_ms_p95"] = round(times[int(len(times) * 0.95)] * 1000, 2)
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
