"""Benchmark: encrypt+decrypt of 1 KiB messages, ours vs the independent implementation.

Two scenarios, each as full sessions (padding, envelope, Double Ratchet):
  steady     one side sends, the other decrypts in order (symmetric ratchet only)
  ping-pong  sides alternate, so every message carries a new ratchet key and
             the receiver does a DH ratchet step (2 X25519 + 2 HKDF)
The independent implementation is the x3dh/doubleratchet packages configured as
SPEC §13 (tests/protocol/crypto/signal_oracle.py). Counts are bounded.

    .venv/bin/python bench/crypto.py [--messages 2000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blindrelay.protocol.crypto import session as ours
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
)
from tests.protocol.crypto import signal_oracle as theirs

PAYLOAD = os.urandom(1024)
SPK_ID, OTPK_ID = 1, 2


def our_pair():
    rng = os.urandom
    alice, bob = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    spk, otpk = SignedPreKey.generate(bob, SPK_ID, rng), OneTimePreKey.generate(OTPK_ID, rng)
    bundle = PreKeyBundle(bob.public, SPK_ID, spk.public, spk.signature, OTPK_ID, otpk.public)
    a = ours.initiate_session(alice, bundle, rng)
    a, env = ours.encrypt(a, b"hi", rng)
    b, _, _ = ours.accept_session(bob, env, {SPK_ID: spk}.get, {OTPK_ID: otpk}.get, rng)
    b, env = ours.encrypt(b, b"hi", rng)
    a, _ = ours.decrypt(a, env, rng)
    return a, b


def bench_ours(messages: int, ping_pong: bool) -> float:
    rng = os.urandom
    a, b = our_pair()
    start = time.perf_counter()
    for i in range(messages):
        if ping_pong and i % 2:
            b, env = ours.encrypt(b, PAYLOAD, rng)
            a, pt = ours.decrypt(a, env, rng)
        else:
            a, env = ours.encrypt(a, PAYLOAD, rng)
            b, pt = ours.decrypt(b, env, rng)
    elapsed = time.perf_counter() - start
    assert pt == PAYLOAD
    return messages / elapsed


async def their_pair():
    recipient = theirs.create_state(os.urandom(32), os.urandom)
    initiator = theirs.create_state(os.urandom(32), os.urandom, num_pre_keys=0)
    a = theirs.TheirParty(initiator.bundle.identity_key, os.urandom, initiator)
    b = theirs.TheirParty(recipient.bundle.identity_key, os.urandom, recipient)
    (otpk,) = recipient.bundle.pre_keys
    b.spk_ids, b.otpk_ids = {SPK_ID: recipient.bundle.signed_pre_key}, {OTPK_ID: otpk}
    env = await a.initiate(recipient.bundle, SPK_ID, OTPK_ID, b"hi")
    await b.decrypt(env)
    await a.decrypt(await b.encrypt(b"hi"))
    return a, b


async def _bench_theirs(messages: int, ping_pong: bool) -> float:
    a, b = await their_pair()
    start = time.perf_counter()
    for i in range(messages):
        sender, receiver = (b, a) if ping_pong and i % 2 else (a, b)
        pt = await receiver.decrypt(await sender.encrypt(PAYLOAD))
    elapsed = time.perf_counter() - start
    assert pt == PAYLOAD
    return messages / elapsed


def bench_theirs(messages: int, ping_pong: bool) -> float:
    return asyncio.run(_bench_theirs(messages, ping_pong))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="1 KiB encrypt+decrypt throughput")
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (max 100000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per cell; best is kept (max 20)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    messages = max(2, min(args.messages, 100_000))
    repeat = max(1, min(args.repeat, 20))
    rows = []
    for name, ping_pong in (("steady", False), ("ping-pong", True)):
        our_rate = max(bench_ours(messages, ping_pong) for _ in range(repeat))
        their_rate = max(bench_theirs(messages, ping_pong) for _ in range(repeat))
        rows.append(
            {
                "scenario": name,
                "messages": messages,
                "ours_msgs_per_s": round(our_rate),
                "theirs_msgs_per_s": round(their_rate),
                "ratio": round(our_rate / their_rate, 2),
            }
        )
    print(f"{'scenario':<10} {'messages':>8} {'ours msg/s':>11} {'theirs msg/s':>13} {'ratio':>6}")
    for r in rows:
        print(f"{r['scenario']:<10} {r['messages']:>8} {r['ours_msgs_per_s']:>11} "
              f"{r['theirs_msgs_per_s']:>13} {r['ratio']:>5}x")  # fmt: skip
    print("(1 KiB plaintext; one message = encrypt + decrypt; best of", repeat, "runs)")
    if args.json:
        args.json.write_text(json.dumps({"payload_bytes": 1024, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
