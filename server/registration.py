"""Who may create an account: the relay's registration policy (SPEC §4.6).

Accounts must cost something, or every per-account limit is one REGISTER
away from being multiplied (issue 13: six free accounts drained a user's
one-time prekeys, fifty filled a queue). The operator chooses the price:

- a token bucket per **source address**, on by default: cheap, and invisible to
  honest people, who register once per device;

Not here: the order of the checks and the answers (``auth``), the account
row and the lookalike rule (``jobs.create_account``).
"""

from __future__ import annotations

import ipaddress

from .config import RelayConfig
from .ratelimit import Clock, TokenBuckets

IPV6_SOURCE_PREFIX = 64
"""IPv6 sources are limited per /64, not per address: a /64 is the smallest block a
network hands to one subscriber or LAN, and any host in it may pick new addresses
from its 2^64 at will (SLAAC privacy addresses), so a per-address bucket would not
limit anyone. Larger blocks (/56, /48) are what one customer of many ISPs gets, so
an attacker may still hold hundreds of /64s; proof of work and invites are the
answer to address-rich attackers, this limit is for everyone else."""


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
        self._by_source = TokenBuckets(
            config.register_rate_per_h / 3600.0, config.register_burst, clock
        )

    def admit(self, source: str) -> None:
        """SPEC §4.6.1: spend a token of the source's bucket or raise RateLimited."""
        self._by_source.take(source)

