"""Who may create an account: the relay's registration policy (SPEC §4.6).

Accounts must cost something, or every per-account limit is one REGISTER
away from being multiplied (issue 13: six free accounts drained a user's
one-time prekeys, fifty filled a queue). The operator chooses the price:

- a token bucket per **source address**, on by default: cheap, and invisible to
  honest people, who register once per device. It is kept by the store (operation
  ``take_budget``), not in this process: every relay worker sharing the store spends
  the same bucket, so N workers do not give a source N buckets (SPEC §10);
- a **proof of work** (Argon2id, cost in HELLO), off by default: every honest
  registration pays it, so it is for a relay under attack from many addresses.
  Checking one costs one Argon2id evaluation — milliseconds and ``memlimit``
  bytes — so it runs on a small pool of worker threads, never on the event loop
  (libsodium releases the GIL), and only after the cheap checks passed;
- **invites** issued by the operator (``blindrelay admin invite``), off by
  default: for a closed deployment. The relay keeps a hash of each unused one and
  consumes it in the transaction that creates the account (``create_account``).

Not here: the order of the checks and the answers (``auth``), the account
row and the lookalike rule (operation ``create_account``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from blindrelay.protocol import limits
from blindrelay.protocol.errors import RateLimited, RegistrationRefused

from .config import RelayConfig
from .ratelimit import Clock
from .store.rules import REGISTRATIONS

IPV6_SOURCE_PREFIX = 64
"""IPv6 sources are limited per /64, not per address: a /64 is the smallest block a
network hands to one subscriber or LAN, and any host in it may pick new addresses
from its 2^64 at will (SLAAC privacy addresses), so a per-address bucket would not
limit anyone. Larger blocks (/56, /48) are what one customer of many ISPs gets, so
an attacker may still hold hundreds of /64s; proof of work and invites are the
answer to address-rich attackers, this limit is for everyone else."""


PROOF_CHECK_THREADS = 2
"""Proofs of work checked at once: one per core of a small relay. Each holds
``memlimit`` bytes (at most 256 MiB) while it runs; more would buy no throughput on
two cores and multiply that memory. Later proofs wait their turn."""


MAX_PENDING_PROOF_CHECKS = 64
"""Proofs waiting for a check or being checked, over every source (SPEC §4.6.3). A
wrong nonce costs its sender nothing and the relay an evaluation, so without a bound an
attacker holding many sources (IPv6 /64s) could queue checks faster than two threads
run them, and every honest REGISTER would wait behind the queue until its challenge
expired. 64 is ~3 s of checks at the defaults' tens of ms each, well inside the
challenge's 120 s."""

PROOF_BUSY_RETRY_MS = 1000
"""The ``retry_after`` of a REGISTER refused because checks are full."""


INVITE_CONTEXT = b"blindrelay/v1/invite\x00"


def invite_digest(token: bytes) -> bytes:
    """What the relay stores of an invite (SPEC §4.6.4): SHA-256 of context || token."""
    return hashlib.sha256(INVITE_CONTEXT + token).digest()


def source_key(host: str) -> str:
    """The key of a connection's registration bucket (SPEC §4.6.1).

    An IPv4 address as itself (also when it arrives IPv4-mapped, ``::ffff:a.b.c.d``,
    on a dual-stack socket), an IPv6 address as its /64 prefix, anything else (a
    Unix socket) as given.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        shift = 128 - IPV6_SOURCE_PREFIX
        return str(ipaddress.IPv6Network((int(address) >> shift << shift, IPV6_SOURCE_PREFIX)))
    return str(address)


class RegistrationPolicy:
    """The checks of SPEC §4.6 that the handler runs before the account is created."""

    def __init__(self, config: RelayConfig, clock: Clock) -> None:
        self.rate_per_h = config.register_rate_per_h
        self.burst = config.register_burst
        self.proof_of_work = config.proof_of_work
        """The cost every HELLO announces, or None (SPEC §4.6.3)."""
        self.auth_timeout_s = config.auth_timeout_s
        """How long a connection may stay unauthenticated (SPEC §1.2.2): longer when
        a slow device must first solve a proof of work."""
        if self.proof_of_work is not None:
            self.auth_timeout_s = max(self.auth_timeout_s, limits.POW_CHALLENGE_TTL_MS / 1000)
        self.require_invites = config.require_invites
        self._checks: ThreadPoolExecutor | None = None
        self._pending: set[str] = set()
        """Sources with a proof waiting or being checked (at most one each)."""

    def budget(self, source: str, now: int) -> tuple[str, str, float, int, int]:
        """SPEC §4.6.1: the arguments of the ``take_budget`` operation that spends a token
        of the source's bucket."""
        return (REGISTRATIONS, source, self.rate_per_h, self.burst, now)

    @staticmethod
    def admitted(wait_ms: int) -> None:
        """Raise RateLimited unless ``take_budget`` answered that a token was spent."""
        if wait_ms:
            raise RateLimited("registrations from this address", retry_after_ms=wait_ms)

    def invite_to_consume(self, invite: bytes | None) -> bytes | None:
        """SPEC §4.6.4: the hash the store operation must consume, or None when invites
        are not required (an invite sent anyway is ignored). A missing invite is
        refused here, before the proof of work is checked."""
        if not self.require_invites:
            return None
        if invite is None:
            raise RegistrationRefused("invite required")
        return invite_digest(invite)

    def check_off_loop(
        self, source: str, check: Callable[[], bool], done: Callable[[asyncio.Future[bool]], None]
    ) -> None:
        """Run a proof check on a worker thread; ``done`` gets its future on the loop.

        Refused with RateLimited, before anything is queued, while ``source`` has a proof
        pending or :data:`MAX_PENDING_PROOF_CHECKS` are (SPEC §4.6.3): one source queues
        one evaluation at a time, and all of them no more than the threads run in seconds.
        """
        if source in self._pending or len(self._pending) >= MAX_PENDING_PROOF_CHECKS:
            raise RateLimited("proofs of work being checked", retry_after_ms=PROOF_BUSY_RETRY_MS)
        if self._checks is None:
            self._checks = ThreadPoolExecutor(PROOF_CHECK_THREADS, thread_name_prefix="pow")
        self._pending.add(source)
        future = asyncio.get_running_loop().run_in_executor(self._checks, check)

        def finished(future: asyncio.Future[bool]) -> None:
            self._pending.discard(source)
            done(future)

        future.add_done_callback(finished)

    def close(self) -> None:
        """Drop the checks not started; one running finishes on its own."""
        if self._checks is not None:
            self._checks.shutdown(wait=False, cancel_futures=True)

