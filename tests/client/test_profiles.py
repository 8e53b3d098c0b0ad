"""Businesses as a client shows them (client/profiles.py, SPEC §8.1–8.2): the profile
checked against the pinned identity key, the badge against the operator key pinned
in configuration and our clock, and only the badge's name shown as verified.

Unit tests over the in-memory relay of :mod:`.fake_relay`; then against a real relay
whose operator issues real badges (``blindrelay admin verify-business``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.protocol.business import BadgeStatus, BusinessProfile
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import InvalidProfile
from blindrelay.server.cli import main as relay_cli

from ..relays import FakeClock, relay_at
from .harness import (
    FAST,
    business_online,
    online,
    run,
    skewed_relay_clock,
    within,
)

DAY_MS = 24 * 3600 * 1000


# --- Against a real relay ---------------------------------------------------------------


def operator_key(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    path = tmp_path / f"{name}.key"
    assert relay_cli(["admin", "keygen", "--out", str(path)]) == 0
    seed = bytes.fromhex(path.read_text().strip())
    return path, IdentityKeyPair.from_seed(seed).public


@pytest.mark.parametrize("case", ["valid", "forged", "expired", "absent"])
def test_business_info_checks_the_badge_with_the_pinned_operator_key(
    tmp_path: Path, case: str
) -> None:
    async def scenario() -> None:
        pinned_path, pinned = operator_key(tmp_path, "operator")
        other_path, _ = operator_key(tmp_path, "impostor")
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            airline = await business_online(relay.url, "airline")
            await within(
                airline.publish_profile(
                    display_name="Example Air", timezone="Europe/Berlin", hours=[]
                )
            )
            issuer = {"valid": pinned_path, "expired": pinned_path, "forged": other_path}
            if case in issuer:
                argv = ["admin", "verify-business", "airline", "--name", "Example Air"]
                argv += ["--operator-key", str(issuer[case]), "--db", str(relay.config.db_path)]
                assert relay_cli(argv) == 0
            clock = FakeClock(airline.client.clock())
            if case == "expired":
                clock.advance(366 * DAY_MS)
            alice = Client(MemoryKeyStore(), backoff=FAST, operator_key=pinned, clock=clock)
            await within(alice.connect(relay.url))
            await within(alice.register("alice"))
            info = await within(alice.business_info("airline"))
            assert info.profile is not None and info.profile.display_name == "Example Air"
            expected = {
                "valid": BadgeStatus.VERIFIED,
                "forged": BadgeStatus.BAD_SIGNATURE,
                "expired": BadgeStatus.EXPIRED,
                "absent": BadgeStatus.ABSENT,
            }[case]
            assert info.badge.status is expected and info.verified is (case == "valid")
            assert info.identity_key == airline.client.sessions.identity.identity_public
            await alice.close()
            await airline.close()

    run(scenario())


def test_business_info_refuses_a_profile_the_relay_altered(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            airline = await business_online(relay.url, "airline")
            profile = await within(
                airline.publish_profile(display_name="Example Air", timezone="UTC", hours=[])
            )
            impostor = IdentityKeyPair.generate(os.urandom)
            fake = BusinessProfile(
                v=1, handle="airline", display_name="Example Air (new bank details!)",
                description="", timezone="UTC", hours=(), exceptions=(),
                issued_at=profile.issued_at,
            ).sign(impostor.sign)  # fmt: skip
            with sqlite3.connect(relay.config.db_path) as db:
                db.execute("UPDATE profiles SET signed = ? WHERE handle = 'airline'", (fake,))
            alice = await online(relay.url, "alice")
            with pytest.raises(InvalidProfile):
                await within(alice.business_info("airline"))
            await alice.close()
            await airline.close()

    run(scenario())


def test_a_badge_for_one_name_never_shows_the_profile_s_other_name_as_verified(
    tmp_path: Path,
) -> None:
    """Issue 13 item 1 (SPEC §8.1–8.2): the badge names "Bob's Bakery", the business's own
    profile says "British Airways". Only the badge's name is the verified one; the profile
    name is an unverified claim, and the difference is flagged."""

    async def scenario() -> None:
        key_path, pinned = operator_key(tmp_path, "operator")
        async with relay_at(tmp_path, skewed_relay_clock()) as relay:
            bakery = await business_online(relay.url, "bakery")
            await within(
                bakery.publish_profile(display_name="British Airways", timezone="UTC", hours=[])
            )
            argv = ["admin", "verify-business", "bakery", "--name", "Bob's Bakery"]
            argv += ["--operator-key", str(key_path), "--db", str(relay.config.db_path)]
            assert relay_cli(argv) == 0
            clock = FakeClock(bakery.client.clock())
            alice = Client(MemoryKeyStore(), backoff=FAST, operator_key=pinned, clock=clock)
            await within(alice.connect(relay.url))
            await within(alice.register("alice"))

            info = await within(alice.business_info("bakery"))
            assert info.verified
            assert info.verified_name == "Bob's Bakery"
            assert info.claimed_name == "British Airways"
            assert info.name_mismatch

            await within(
                bakery.publish_profile(display_name="bob's  BAKERY", timezone="UTC", hours=[])
            )
            same = await within(alice.business_info("bakery"))
            assert same.verified_name == "Bob's Bakery" and not same.name_mismatch

            clock.advance(366 * DAY_MS)  # the badge expired: nothing is verified any more
            expired = await within(alice.business_info("bakery"))
            assert not expired.verified and expired.verified_name is None
            assert expired.claimed_name == "bob's  BAKERY" and not expired.name_mismatch

            unpinned = await online(relay.url, "bob")  # no operator key: nothing verifies
            assert (await within(unpinned.business_info("bakery"))).verified_name is None
            for client in (alice, unpinned):
                await client.close()
            await bakery.close()

    run(scenario())
