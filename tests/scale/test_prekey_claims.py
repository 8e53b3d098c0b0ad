"""One-time prekey claims are atomic across workers: none is ever handed out twice.

SPEC §5.3: a one-time prekey is removed from the directory when a bundle serves it.
With two workers on one database, two BUNDLE_FETCHes on different workers race for
the same rows; the store claims each row once (``FOR UPDATE SKIP LOCKED``).

One hot account publishes 10,000 one-time prekeys. 100 requesters, 50 on each worker,
fetch its bundle concurrently, each 20 times in a row (2,000 claims, 100 always in
flight); the per-requester and per-owner budgets are raised with serve flags so that
no claim is refused and none is hidden behind a refusal. Then: no key id served twice,
every served key is one that was published (same public key), and what the owner's
next WELCOME reports as left plus what was served is exactly 10,000.

Wire level (tests/conformance/wire.py): the relay's answers are checked frame by
frame as everywhere in the conformance suite.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from blindrelay.protocol.frames import Bundle, BundleFetch, Ok, PrekeysUpload, Welcome

from ..conformance.wire import Account, Peer, new_handle, one_time_prekeys, open_peer, signed_prekey
from ..pg import PostgresDatabase
from .harness import UNLIMITED, timed, workers

pytestmark = pytest.mark.slow

PUBLISHED = 10_000
REQUESTERS_PER_WORKER = 50
FETCHES_PER_REQUESTER = 20
UPLOAD_BATCH = 100
"""MAX_PREKEYS_PER_UPLOAD (SPEC §10): 100 uploads, all in flight at once."""
FLAGS = [
    "--log-level", "WARNING",
    "--register-burst", UNLIMITED, "--register-rate-per-h", UNLIMITED,
    "--max-unauthenticated-per-source", UNLIMITED,
    "--connections-per-s-source", UNLIMITED, "--connections-burst-source", UNLIMITED,
    "--bundle-burst", UNLIMITED, "--bundle-rate-per-min", UNLIMITED,
    "--one-time-prekey-burst", UNLIMITED, "--one-time-prekey-rate-per-h", UNLIMITED,
    "--prekeys-upload-burst", UNLIMITED, "--prekeys-upload-rate-per-min", UNLIMITED,
    "--max-stored-one-time-prekeys", str(PUBLISHED),
]  # fmt: skip
RUN_TIMEOUT_S = 90.0


async def account(url: str, prefix: str) -> Peer:
    peer = await open_peer(url)
    welcome = await peer.register(Account(new_handle(prefix), "user"))
    assert isinstance(welcome, Welcome), welcome
    return peer


async def publish(owner: Peer) -> dict[int, bytes]:
    """PUBLISHED one-time prekeys (and a signed one), every upload pipelined."""
    assert owner.account is not None
    keys = one_time_prekeys(1, PUBLISHED)
    uploads = [
        PrekeysUpload(
            id=owner.next_id(),
            signed_prekey=signed_prekey(owner.account.key) if start == 0 else None,
            one_time=keys[start : start + UPLOAD_BATCH],
        )
        for start in range(0, PUBLISHED, UPLOAD_BATCH)
    ]
    for frame in uploads:
        await owner.send(frame)
    for frame in uploads:
        answer = await owner.response(frame.id)
        assert isinstance(answer, Ok), answer
    return {key.key_id: key.public for key in keys}


async def claim(requester: Peer, owner: str) -> list[tuple[int, bytes] | None]:
    """FETCHES_PER_REQUESTER bundle fetches, one after the other; what each served."""
    served: list[tuple[int, bytes] | None] = []
    for _ in range(FETCHES_PER_REQUESTER):
        bundle = await requester.request(lambda i: BundleFetch(id=i, handle=owner))
        assert isinstance(bundle, Bundle), bundle
        one_time = bundle.one_time
        served.append(None if one_time is None else (one_time.key_id, one_time.public))
    return served


async def scenario(database: PostgresDatabase, logs: Path) -> dict[str, object]:
    laps: dict[str, float] = {}
    async with workers(database.url, logs, 2, FLAGS) as pool:
        peers: list[Peer] = []
        try:
            with timed(laps, "publish_s"):
                owner = await account(pool[0].url, "hot")
                peers.append(owner)
                published = await publish(owner)
                check = await open_peer(pool[1].url)
                peers.append(check)
                assert owner.account is not None
                welcome = await check.login(owner.account)
                assert isinstance(welcome, Welcome)
                assert welcome.one_time_prekeys == PUBLISHED  # seen from the other worker
            with timed(laps, "register_s"):
                requesters = await asyncio.gather(
                    *(account(pool[n % 2].url, "req") for n in range(2 * REQUESTERS_PER_WORKER))
                )
                peers.extend(requesters)
            with timed(laps, "claims_s"):
                results = await asyncio.gather(*(claim(r, owner.handle) for r in requesters))
            after = await open_peer(pool[0].url)
            peers.append(after)
            left = await after.login(owner.account)
            assert isinstance(left, Welcome)
        finally:
            for peer in peers:
                await peer.close()

    served = [item for result in results for item in result]
    issued = [item for item in served if item is not None]
    ids = Counter(key_id for key_id, _ in issued)
    return {
        "fetches": len(served),
        "issued": len(issued),
        "without_one_time": len(served) - len(issued),
        "issued_twice": sum(1 for n in ids.values() if n > 1),
        "not_published": sum(1 for key_id, public in issued if published.get(key_id) != public),
        "remaining": left.one_time_prekeys,
        **laps,
    }


async def test_two_workers_never_hand_out_a_one_time_prekey_twice(
    pg_database: PostgresDatabase, tmp_path: Path
) -> None:
    counts = await asyncio.wait_for(scenario(pg_database, tmp_path), RUN_TIMEOUT_S)
    print("prekey claims:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    fetches = 2 * REQUESTERS_PER_WORKER * FETCHES_PER_REQUESTER
    assert counts["fetches"] == fetches
    assert counts["issued_twice"] == 0
    assert counts["not_published"] == 0
    assert counts["issued"] == fetches  # fewer than published: every fetch got one
    assert counts["issued"] + counts["remaining"] == PUBLISHED  # type: ignore[operator]
