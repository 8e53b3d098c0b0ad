"""Benchmark: encrypt+decrypt of 1 KiB messages, ours vs the independent implementation.

Two scenarios, each as full sessions (padding, envelope, Double Ratchet):
  steady     one side sends, the other decrypts in order (symmetric ratchet only)
  ping-pong  sides alternate, so every message carries a new ratchet key and
             the receiver does a DH ratchet step (2 X25519 + 2 HKDF)
The independent implementation is the x3dh/doubleratchet packages configured as
SPEC §13 (tests/protocol/crypto/signal_oracle.py). Counts are bounded.

Fairness: both sides send the same 1 KiB ``PAYLOAD`` in the same pattern over a
fresh session pair per run (setup untimed), both use our envelope framing and
padding (framing, not cryptography; the adapter needs it to speak our format),
both draw randomness from os.urandom. Each side is warmed up, runs are
interleaved (ours/theirs, then theirs/ours, ...), and the median run per side is
reported with the ratio of the medians and the range of per-pair ratios.

    .venv/bin/python bench/crypto.py [--messages 2000] [--repeat 3]
        [--scenario steady|ping-pong|both] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings

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


def our_pair() -> tuple[ours.Session, ours.Session]:
    rng = os.urandom
    alice, bob = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    spk, otpk = SignedPreKey.generate(bob, SPK_ID, rng), OneTimePreKey.generate(OTPK_ID, rng)
    bundle = PreKeyBundle(bob.public, SPK_ID, spk.public, spk.signature, OTPK_ID, otpk.public)
    a = ours.initiate_session(alice, bundle, rng, our_handle="alice", their_handle="bob")
    a, env = ours.encrypt(a, b"hi", rng)
    b, _, _ = ours.accept_session(
        bob, env, {SPK_ID: spk}.get, {OTPK_ID: otpk}.get, rng,
        our_handle="bob", their_handle="alice",
    )  # fmt: skip
    b, env = ours.encrypt(b, b"hi", rng)
    a, _ = ours.decrypt(a, env, rng)
    return a, b


def bench_ours(messages: int, ping_pong: bool) -> float:
    """Messages per second over one fresh session pair (setup not timed)."""
    rng = os.urandom
    a, b = our_pair()
    pt = b""
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


async def their_pair() -> tuple[theirs.TheirParty, theirs.TheirParty]:
    recipient = theirs.create_state(os.urandom(32), os.urandom)
    initiator = theirs.create_state(os.urandom(32), os.urandom, num_pre_keys=0)
    a = theirs.TheirParty(
        initiator.bundle.identity_key, os.urandom, initiator, our_handle="alice", their_handle="bob"
    )
    b = theirs.TheirParty(
        recipient.bundle.identity_key, os.urandom, recipient, our_handle="bob", their_handle="alice"
    )
    (otpk,) = recipient.bundle.pre_keys
    b.spk_ids, b.otpk_ids = {SPK_ID: recipient.bundle.signed_pre_key}, {OTPK_ID: otpk}
    env = await a.initiate(recipient.bundle, SPK_ID, OTPK_ID, b"hi")
    await b.decrypt(env)
    await a.decrypt(await b.encrypt(b"hi"))
    return a, b


async def _bench_theirs(messages: int, ping_pong: bool) -> float:
    a, b = await their_pair()
    pt = b""
    start = time.perf_counter()
    for i in range(messages):
        sender, receiver = (b, a) if ping_pong and i % 2 else (a, b)
        pt = await receiver.decrypt(await sender.encrypt(PAYLOAD))
    elapsed = time.perf_counter() - start
    assert pt == PAYLOAD
    return messages / elapsed


def bench_theirs(messages: int, ping_pong: bool) -> float:
    return asyncio.run(_bench_theirs(messages, ping_pong))


BENCHES: dict[str, Callable[[int, bool], float]] = {"ours": bench_ours, "theirs": bench_theirs}
WARMUP_MESSAGES = 200
"""Untimed messages per side and scenario before measuring (imports, caches, allocator)."""


def run_scenario(messages: int, ping_pong: bool, repeat: int) -> dict[str, Any]:
    """Interleaved runs (ours, theirs, theirs, ours, ...) so drifting load hits both alike.

    Every run is a fresh session pair sending the same 1 KiB ``PAYLOAD`` in the same
    pattern; the figure per side is the median run, the ratio is of the medians.
    """
    for bench in BENCHES.values():
        bench(WARMUP_MESSAGES, ping_pong)
    runs: dict[str, list[float]] = {name: [] for name in BENCHES}
    for attempt in range(repeat):
        order = list(BENCHES) if attempt % 2 == 0 else list(reversed(BENCHES))
        for name in order:
            runs[name].append(BENCHES[name](messages, ping_pong))
    ours_rate = statistics.median(runs["ours"])
    theirs_rate = statistics.median(runs["theirs"])
    paired = [o / t for o, t in zip(runs["ours"], runs["theirs"], strict=True)]
    return {
        "scenario": "ping-pong" if ping_pong else "steady",
        "messages": messages,
        "ours_msgs_per_s": round(ours_rate),
        "theirs_msgs_per_s": round(theirs_rate),
        "ours_us_per_msg": round(1e6 / ours_rate, 1),
        "theirs_us_per_msg": round(1e6 / theirs_rate, 1),
        "ratio": round(ours_rate / theirs_rate, 2),
        "paired_ratio_min": round(min(paired), 2),
        "paired_ratio_max": round(max(paired), 2),
        "runs": {name: [round(r) for r in rates] for name, rates in runs.items()},
    }


def x25519_floor(calls: int = 300, repeat: int = 5) -> dict[str, float]:
    """Median µs of libsodium's X25519 calls (via nacl.bindings): what a DH step costs
    at least. A ping-pong message does one step: DH, key generation, DH."""
    private, public = os.urandom(32), nacl.bindings.crypto_scalarmult_base(os.urandom(32))

    def per_call(fn: Callable[[], bytes]) -> float:
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - start) / calls * 1e6)
        return statistics.median(runs)

    scalarmult = per_call(lambda: nacl.bindings.crypto_scalarmult(private, public))
    base = per_call(lambda: nacl.bindings.crypto_scalarmult_base(private))
    return {
        "scalarmult_us": round(scalarmult, 1),
        "scalarmult_base_us": round(base, 1),
        "dh_step_us": round(2 * scalarmult + base, 1),
    }


def render(rows: list[dict[str, Any]], repeat: int) -> str:
    lines = [
        f"{'scenario':<10} {'messages':>8} {'ours msg/s':>11} {'theirs msg/s':>13} "
        f"{'ours µs':>8} {'theirs µs':>10} {'ratio':>6}  {'paired min..max':>15}"
    ]
    for r in rows:
        lines.append(
            f"{r['scenario']:<10} {r['messages']:>8} {r['ours_msgs_per_s']:>11} "
            f"{r['theirs_msgs_per_s']:>13} {r['ours_us_per_msg']:>8} {r['theirs_us_per_msg']:>10} "
            f"{r['ratio']:>5}x  {r['paired_ratio_min']:>6}..{r['paired_ratio_max']}x"
        )
    lines.append(
        f"(1 KiB plaintext; one message = encrypt + decrypt; median of {repeat} interleaved "
        f"runs after {WARMUP_MESSAGES} warm-up messages; issue 3 target: ratio >= 3x)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="1 KiB encrypt+decrypt throughput")
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (max 100000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per side and scenario; median kept (max 20)"
    )
    parser.add_argument(
        "--scenario", choices=("steady", "ping-pong", "both"), default="both", help="what to run"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    messages = max(2, min(args.messages, 100_000))
    repeat = max(1, min(args.repeat, 20))
    scenarios = [s for s in ("steady", "ping-pong") if args.scenario in (s, "both")]
    rows = [run_scenario(messages, name == "ping-pong", repeat) for name in scenarios]
    floor = x25519_floor()
    print(render(rows, repeat))
    print(
        f"X25519 (libsodium): scalarmult {floor['scalarmult_us']} µs, scalarmult_base "
        f"{floor['scalarmult_base_us']} µs; a DH step (2 DH + 1 key generation) "
        f"{floor['dh_step_us']} µs"
    )
    for row in rows:
        if row["scenario"] == "ping-pong":
            ceiling = row["theirs_us_per_msg"] / floor["dh_step_us"]
            print(
                f"ping-pong ceiling if everything but X25519 were free: "
                f"{row['theirs_us_per_msg']} / {floor['dh_step_us']} = {ceiling:.2f}x"
            )
    if args.json:
        record = {
            "payload_bytes": len(PAYLOAD),
            "repeat": repeat,
            "results": rows,
            "x25519": floor,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
