"""An account's owner in a process of its own, for tests/client/test_rotation_crash.py.

    python tests/client/rotation_owner.py URL PROFILE HANDLE ACTION [PEER]

ACTION is one of:

- ``register``: create the profile (a SQLite keystore) and the account;
- ``rotate``: log in and replace the identity key (SPEC §3.4);
- ``check``: log in, print ``online``, wait for a message from PEER, answer it,
  and print the safety number with PEER;
- ``identity``: log in and print the identity key the profile holds.

Every run prints ``identity <hex>`` once logged in, and ``pending <hex>`` each time
the seed of a new identity key is written before a rotation.

With ``ROTATION_PAUSE_AT=<point>`` the process stops the first time it reaches that
point of its keystore writes: it prints ``paused <point>`` and blocks reading stdin
until the test kills it with SIGKILL. The points, in the order a rotation passes them:

- ``seed-kept``: the new key's seed was written (the relay may not know it yet);
- ``identity-replacing``: our identity is about to be replaced (the relay has
  accepted the new key: the SDK replaces it only after the relay's OK or WELCOME);
- ``identity-replaced``: our identity was just replaced;
- ``seed-forgotten``: the pending seed was just deleted (the SDK replaces the identity
  and deletes the seed in one transaction: killed at these two, it is rolled back);
- ``prekeys-made``: one-time prekeys were just stored, before they are published (the
  first time in the process: after a rotation, or at a login that adopted a new key).

The points are keystore writes seen from outside the SDK (a wrapper around the store),
so the SDK carries no test hook. Nothing here waits on a timer.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable
from typing import Any

import nacl.pwhash.argon2id as argon2id

from blindrelay.client.keystore import OneTimePreKeyRecord, OurIdentity, SqliteKeyStore
from blindrelay.client.sdk import Backoff, Client
from blindrelay.protocol.crypto.keys import IdentityKeyPair

PAUSE_ENV = "ROTATION_PAUSE_AT"
PASSPHRASE = "passphrase of the rotating owner"


def pause(point: str) -> None:
    if os.environ.get(PAUSE_ENV) != point:
        return
    print(f"paused {point}", flush=True)
    sys.stdin.buffer.read()  # until SIGKILL, or EOF if the test went away
    os._exit(3)


class PausingStore:
    """The profile's keystore, stopping at the points named in the module docstring."""

    def __init__(self, inner: SqliteKeyStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def set_rotating_identity_seed(self, seed: bytes | None) -> None:
        had_seed = self._inner.rotating_identity_seed() is not None
        self._inner.set_rotating_identity_seed(seed)
        if seed is not None:
            print("pending", IdentityKeyPair.from_seed(seed).public.hex(), flush=True)
            pause("seed-kept")
        elif had_seed:
            pause("seed-forgotten")

    def store_one_time_prekeys(self, records: Iterable[OneTimePreKeyRecord]) -> None:
        self._inner.store_one_time_prekeys(records)
        pause("prekeys-made")

    def set_identity(self, identity: OurIdentity) -> None:
        replacing = self._inner.get_identity() is not None
        if replacing:
            pause("identity-replacing")
        self._inner.set_identity(identity)
        if replacing:
            pause("identity-replaced")


async def main(url: str, profile: str, handle: str, action: str, peer: str | None) -> None:
    store = SqliteKeyStore.open(
        profile,
        PASSPHRASE,
        create=action == "register",
        opslimit=argon2id.OPSLIMIT_MIN,
        memlimit=argon2id.MEMLIMIT_MIN,
    )
    client = Client(
        PausingStore(store),  # type: ignore[arg-type]
        backoff=Backoff(initial=0.01, factor=2.0, cap=0.05),
        owns_store=True,
    )
    try:
        await client.connect(url)
        if action == "register":
            await client.register(handle)
        else:
            await client.login()
        identity = store.get_identity()
        assert identity is not None
        print("identity", identity.identity_public.hex(), flush=True)
        if action == "rotate":
            await client.rotate_identity()
            print("rotated", flush=True)
        elif action == "check":
            assert peer is not None
            print("online", flush=True)
            async for message in client.messages():
                if message.sender == peer and isinstance(message.body, str):
                    await client.send(peer, f"echo {message.body}")
                    break
            print("safety", client.safety_number(peer), flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    url, profile, handle, action, *rest = sys.argv[1:]
    asyncio.run(main(url, profile, handle, action, rest[0] if rest else None))
