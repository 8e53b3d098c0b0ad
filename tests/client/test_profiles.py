"""Businesses as a client shows them (client/profiles.py, SPEC §8.1–8.2): the profile
checked against the pinned identity key, the badge against the operator key pinned
in configuration and our clock, and only the badge's name shown as verified.

Unit tests over the in-memory relay of :mod:`.fake_relay`; then against a real relay
whose operator issues real badges (``blindrelay admin verify-business``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sqlite3
from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.profiles import same_name
from blindrelay.client.sdk import Client
from blindrelay.client.trust import IdentityState
from blindrelay.protocol import frames
from blindrelay.protocol.business import BadgeStatus, BusinessProfile
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import InvalidProfile, KeyNotLogged, UntrustedIdentity
from blindrelay.protocol.transparency.evidence import badge_entry
from blindrelay.server.admin import public_key_of
from blindrelay.server.cli import main as relay_cli

from ..relays import T0, FakeClock, relay_at
from .fake_relay import URL, RelayEnd
from .harness import (
    FAST,
    business_online,
    online,
    run,
    skewed_relay_clock,
    within,
)
from .harness import bundle as harness_bundle
from .log_relay import AIRLINE_SEED, FAKE_SEED, LoggingRelay, binding
from .profile_directory import AIRLINE, DAY_MS, OPERATOR, Directory, alice_of, badge, signed_profile


async def test_a_badge_of_the_pinned_operator_shows_its_name_as_verified() -> None:
    relay = Directory(signed_profile("Example Air"), badge("Example Air"))
    alice = await alice_of(relay, OPERATOR.public)
    info = await within(alice.business_info("airline"))
    assert info.verified and info.badge.status is BadgeStatus.VERIFIED
    assert (info.verified_name, info.claimed_name, info.name_mismatch) == (
        "Example Air", "Example Air", False,
    )  # fmt: skip
    assert alice.trust.pinned_key("airline") == AIRLINE.public  # pinned on first use
    await alice.close()


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no operator key", BadgeStatus.ABSENT),
        ("another operator", BadgeStatus.BAD_SIGNATURE),
        ("expired", BadgeStatus.EXPIRED),
        ("no badge", BadgeStatus.ABSENT),
    ],
)
async def test_nothing_is_verified_without_a_valid_badge_of_the_pinned_operator(
    case: str, status: BadgeStatus
) -> None:
    other = IdentityKeyPair.from_seed(b"\x83" * 32)
    issued = None if case == "no badge" else badge("Example Air", operator=(
        other if case == "another operator" else OPERATOR
    ))  # fmt: skip
    relay = Directory(signed_profile("Example Air"), issued)
    now = T0 + 2 * DAY_MS if case == "expired" else T0
    alice = await alice_of(relay, None if case == "no operator key" else OPERATOR.public, now)
    info = await within(alice.business_info("airline"))
    assert info.badge.status is status
    assert not info.verified and info.verified_name is None
    assert info.claimed_name == "Example Air"  # still shown, as the business's own claim
    await alice.close()


async def test_a_badge_the_relay_does_not_prove_logged_shows_nothing_as_verified() -> None:
    """SPEC §15.6 rule 6: the operator's signature alone is not enough; the relay must
    prove the badge is in its log (the head here was signed long after the badge)."""
    relay = Directory(signed_profile("Example Air"), badge("Example Air"), logged=False)
    alice = await alice_of(relay, OPERATOR.public)
    info = await within(alice.business_info("airline"))
    assert info.badge.status is BadgeStatus.NOT_LOGGED and not info.verified
    assert info.verified_name is None
    await alice.close()


async def test_a_profile_name_other_than_the_badge_s_is_flagged_a_case_change_is_not() -> None:
    relay = Directory(signed_profile("British Airways"), badge("Bob's Bakery"))
    alice = await alice_of(relay, OPERATOR.public)
    info = await within(alice.business_info("airline"))
    assert info.verified_name == "Bob's Bakery" and info.name_mismatch
    relay.record = (AIRLINE.public, signed_profile("bob's  BAKERY"), badge("Bob's Bakery"))
    assert not (await within(alice.business_info("airline"))).name_mismatch
    await alice.close()


async def test_a_key_other_than_the_pinned_one_shows_nothing_as_verified() -> None:
    relay = Directory(signed_profile("Example Air"), badge("Example Air"))
    alice = await alice_of(relay, OPERATOR.public)
    await within(alice.business_info("airline"))  # pins the airline's key
    impostor = IdentityKeyPair.from_seed(b"\x84" * 32)
    relay.record = (
        impostor.public, signed_profile("Example Air", impostor),
        badge("Example Air", impostor.public),
    )  # fmt: skip
    relay.log.append(badge_entry(badge("Example Air", impostor.public)))  # logged, even
    relay.log.sign_head(T0 + 1)
    info = await within(alice.business_info("airline"))
    assert info.key_changed and not info.verified and info.verified_name is None
    assert info.badge.verified  # a valid badge for the new key: still not shown as verified
    assert alice.identity_change_pending("airline")
    await alice.close()


async def test_a_profile_not_signed_by_the_business_key_is_refused() -> None:
    impostor = IdentityKeyPair.from_seed(b"\x84" * 32)
    relay = Directory(signed_profile("Example Air", impostor), None)
    alice = await alice_of(relay, OPERATOR.public)
    with pytest.raises(InvalidProfile):
        await within(alice.business_info("airline"))
    await alice.close()


def test_names_are_the_same_as_a_person_reads_them() -> None:
    assert same_name("Bob's  BAKERY", "bob's bakery")
    assert same_name("Ｂob's Bakery", "Bob's Bakery")  # NFKC: a fullwidth letter
    assert not same_name("Bob's Bakery", "Bobs Bakery")
    assert not same_name("British Airways", "BritishAirways")  # a space is read, too
    assert not same_name("Bank", "\u0392ank")  # Greek capital beta: flagged, not folded


# --- Against a real relay ---------------------------------------------------------------


def operator_key(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    path = tmp_path / f"{name}.key"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert relay_cli(["admin", "keygen", "--out", str(path)]) == 0
    return path, public_key_of(out.getvalue())


async def heads_cover_the_log(db_path: Path) -> None:
    """Until the relay has signed a head over every entry, the badge's the operator's
    command just appended included. This relay's clock is hours ahead and frozen, so
    every head it signs looks signed long after the badge, and one signed before the
    badge was appended decides "not logged" at once (SPEC §15.6 rule 6): on a busy
    machine alice's fetch could meet such a head (2 of 9 runs, found by a helper)."""
    while True:
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            (entries,) = db.execute("SELECT count(*) FROM log_entries").fetchone()
            (signed,) = db.execute("SELECT coalesce(max(size), 0) FROM log_heads").fetchone()
        if signed >= entries:
            return
        await asyncio.sleep(0.01)


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
                argv += ["--operator-key-file", str(issuer[case]), "--db", str(relay.config.db_path)]
                assert relay_cli(argv) == 0
                await within(heads_cover_the_log(relay.config.db_path))
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
            argv += ["--operator-key-file", str(key_path), "--db", str(relay.config.db_path)]
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


@pytest.mark.parametrize("served", ["the relay's key", "the real key, then a change"])
async def test_a_business_looked_up_stays_published_when_the_relay_calls_it_a_user(
    served: str,
) -> None:
    """PROFILE answers for businesses only (SPEC §8.2): a handle looked up is a published
    account, and its key is used only once the log proves it (§15.6 rule 5). The attack
    (found in review): the relay served its own key in PROFILE, which pinned it, then a
    bundle of that key labelled ``user`` without a log proof, and the message went out
    encrypted to the relay's key, as the handle had never been marked published. Or it
    served the real key (and badge: verified), then its own as a user's: a key change,
    and once the person approved it, the same."""
    forged = IdentityKeyPair.from_seed(FAKE_SEED)
    real = IdentityKeyPair.from_seed(AIRLINE_SEED)
    shown = forged if served == "the relay's key" else real
    relay = LoggingRelay()
    relay.append(binding("airline", AIRLINE_SEED))
    relay.sign_head()
    relay.bundles = [harness_bundle("airline", FAKE_SEED, "user")]
    answer_log = relay.answer

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.ProfileFetch):
            end.send(frames.Profile(
                re=frame.id, handle="airline", identity_key=shown.public,
                profile=signed_profile("Example Air", shown), badge=None,
            ))  # fmt: skip
        else:
            answer_log(end, frame)

    relay.answer = answer
    alice = await online(
        URL, "alice", open_transport=relay.open, operator_key=OPERATOR.public,
        clock=FakeClock(T0), log_wait_s=0.3,
    )  # fmt: skip
    await within(alice.business_info("airline"))
    assert alice.trust.state("airline") is IdentityState.UNLOGGED
    if shown is real:  # a key change the person is asked about (once), and approves
        with contextlib.suppress(UntrustedIdentity, KeyNotLogged):
            await within(alice.send("airline", "hello"))
        if alice.identity_change_pending("airline"):
            alice.approve_identity("airline")
    with pytest.raises(KeyNotLogged):
        await within(alice.send("airline", "my card number"))
    assert relay.ends[-1].received(frames.Send) == []
    await alice.close()
