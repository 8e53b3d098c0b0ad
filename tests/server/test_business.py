"""Business accounts over real sockets: profiles, badges via ``blindrelay admin``, metering (SPEC §8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from blindrelay.protocol.business import (
    BusinessProfile,
    OpeningHours,
    check_badge,
    open_profile,
)
from blindrelay.protocol.codec import decode, encode_object
from blindrelay.protocol.errors import ErrorCode, NotFound
from blindrelay.protocol.frames import (
    Ok,
    Profile,
    ProfileFetch,
    ProfilePut,
    Sent,
    Usage,
    UsageCount,
    UsageFetch,
)
from blindrelay.protocol.signed import SignedObject, peek_signed
from blindrelay.protocol.transparency.bills import month_of
from blindrelay.server import cli
from blindrelay.server.admin import public_key_of
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite import jobs
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

from .conftest import (
    ALL_BACKENDS,
    TEST_TIMEOUT_S,
    Clients,
    FakeClock,
    RawClient,
    db_rows,
    error_code,
    store_flags,
)
from .consent_helpers import stated

BACKENDS = ALL_BACKENDS


def _profile(client: RawClient, now: int, handle: str | None = None, name: str = "Air") -> bytes:
    profile = BusinessProfile(
        v=1, handle=handle or client.handle, display_name=name, description="We fly.",
        timezone="Europe/Berlin", hours=(OpeningHours(day=0, open=540, close=1020),),
        exceptions=(), issued_at=now,
    )  # fmt: skip
    return profile.sign(lambda m: client.key.sign(m).signature)


async def _fetch(client: RawClient, handle: str) -> Profile:
    answer = await client.request(lambda i: ProfileFetch(id=i, handle=handle))
    assert isinstance(answer, Profile), answer
    return answer


async def _raw_response(client: RawClient, request_id: int) -> bytes:
    """The answer to ``request_id`` as the bytes the relay sent (others stay queued)."""
    while True:
        data = await asyncio.wait_for(client.ws.recv(), TEST_TIMEOUT_S)
        assert isinstance(data, bytes)
        frame = decode(data)
        if getattr(frame, "re", None) == request_id:
            return data
        client.inbox.append(frame)


async def test_a_business_publishes_a_signed_profile_the_relay_cannot_alter(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")
    signed = _profile(airline, clock.now)
    assert isinstance(await airline.request(lambda i: ProfilePut(id=i, profile=signed)), Ok)
    fetched = await _fetch(bob, "airline")
    assert (fetched.profile, fetched.badge) == (signed, None)
    assert fetched.identity_key == bytes(airline.key.verify_key)
    assert open_profile(fetched.profile, fetched.identity_key, "airline").display_name == "Air"
    # A business without a profile: PROFILE without one. A user and an unknown
    # handle: the same ERROR 601, byte for byte (SPEC §8.2, §11.1).
    shop = await clients.registered(relay.url, "shop", "business")
    assert (await _fetch(bob, "shop")).profile is None
    refusals = []
    for handle in ("bob", "nobody", "airline-not"):
        await shop.send(ProfileFetch(id=41, handle=handle))
        refusals.append(await _raw_response(shop, 41))
    assert len(set(refusals)) == 1
    assert error_code(decode(refusals[0])) == ErrorCode.NOT_FOUND


def _statements_run(store: Tables, run: Callable[[], object]) -> list[str]:
    """The SQL ``run`` executes, with every literal (handle, key, number) as ``?``."""
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        with contextlib.suppress(NotFound):
            run()
    finally:
        store.db.conn.set_trace_callback(None)
    return [re.sub(r"x?'[^']*'|\b\d+\b", "?", sql) for sql in statements]


def test_a_user_and_an_unknown_handle_cost_a_profile_fetch_the_same_work(tmp_path: Path) -> None:
    """SPEC §8.2: the same ERROR 601 "after the same work": the relay runs the same
    lookups for a user as for an unknown handle and decides only afterwards."""
    store = Tables(connect(tmp_path / "relay.db"))
    with store.db.atomic():
        store.accounts.create(Account("alice", "user", b"a" * 32), 0)
        store.accounts.create(Account("airline", "business", b"b" * 32), 0)
    assert store.accounts.get("alice") is not None  # now in the writer's cache

    def fetch(handle: str) -> Callable[[], object]:
        return lambda: jobs.fetch_profile(store, handle, 1)

    with pytest.raises(NotFound):
        fetch("alice")()
    with pytest.raises(NotFound):
        fetch("nobody")()
    user, unknown = _statements_run(store, fetch("alice")), _statements_run(store, fetch("nobody"))
    assert user == unknown and len(user) == 3
    assert _statements_run(store, fetch("airline")) == user  # a business: the same lookups


async def test_bad_profiles_are_refused(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")

    async def put(client: RawClient, data: bytes) -> int:
        return error_code(await client.request(lambda i: ProfilePut(id=i, profile=data)))

    assert await put(bob, _profile(bob, clock.now)) == ErrorCode.FORBIDDEN  # users have none
    outer = peek_signed(BusinessProfile, _profile(airline, clock.now))
    tampered = encode_object(SignedObject(body=outer.body.replace(b"Air", b"Evil"), sig=outer.sig))
    assert await put(airline, tampered) == ErrorCode.INVALID_PROFILE
    assert (
        await put(airline, _profile(bob, clock.now, handle="airline")) == ErrorCode.INVALID_PROFILE
    )
    assert (
        await put(airline, _profile(airline, clock.now, handle="shop")) == ErrorCode.INVALID_PROFILE
    )
    assert await put(airline, b"\x80") == ErrorCode.INVALID_PROFILE
    assert (await _fetch(bob, "airline")).profile is None


def _admin(*argv: str) -> int:
    return cli.main(["admin", *argv])


async def test_badges_are_issued_served_and_revoked_through_the_cli(
    config: RelayConfig, clients: Clients, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import RelayFixture

    wall = FakeClock(time.time_ns() // 1_000_000)  # the CLI stamps badges with the wall clock
    async with RelayFixture(config, wall) as relay:
        airline = await clients.registered(relay.url, "airline", "business")
        await clients.registered(relay.url, "bob")
        key_file = tmp_path / "operator.key"
        assert _admin("keygen", "--out", str(key_file)) == 0
        operator_public = public_key_of(capsys.readouterr().out)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert _admin("keygen", "--out", str(key_file)) == 1  # never overwrites a key
        store = store_flags(relay.config)
        verify = ["verify-business", *store, "--operator-key-file", str(key_file)]
        # A user cannot be verified, and nobody can be verified by the protocol itself.
        assert await asyncio.to_thread(_admin, *verify, "bob", "--name", "Bob") == 1
        assert await asyncio.to_thread(_admin, *verify, "airline", "--name", "Air Example") == 0
        fetched = await _fetch(airline, "airline")
        wall.now = time.time_ns() // 1_000_000
        check = check_badge(
            fetched.badge, operator_key=operator_public, handle="airline",
            identity_key=fetched.identity_key, now_ms=wall.now,
        )  # fmt: skip
        assert check.verified and check.display_name == "Air Example"
        other_operator = os.urandom(32)
        assert not check_badge(
            fetched.badge, operator_key=other_operator, handle="airline",
            identity_key=fetched.identity_key, now_ms=wall.now,
        ).verified  # fmt: skip
        # Revoked while the relay runs: the very next fetch has no badge.
        assert await asyncio.to_thread(_admin, "revoke-badge", *store, "airline") == 0
        assert (await _fetch(airline, "airline")).badge is None
        assert await asyncio.to_thread(_admin, "revoke-badge", *store, "airline") == 1
        rows = db_rows(relay.config, "SELECT revoked_at IS NOT NULL FROM badges")
        assert rows == [(1,)]


def test_admin_commands_on_an_unusable_database_print_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_database = tmp_path / "a-directory"
    not_a_database.mkdir()
    assert _admin("usage", "--db", str(not_a_database)) == 1
    err = capsys.readouterr().err
    assert err.startswith("blindrelay admin: ") and "is a folder" in err and err.count("\n") == 1
    for flags, says in (
        (["--store", "postgresql://127.0.0.1:1/test"], "cannot reach the PostgreSQL server"),
        (["--store", "sqlite:x.db", "--db", "y.db"], "give --store or --db, not both"),
        (["--db", str(tmp_path / "none.db")], "no relay database at"),
    ):
        assert _admin("invite", *flags) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"blindrelay admin: {says}") and err.count("\n") == 1, err


async def _business_with_customers(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> tuple[RawClient, RawClient, RawClient]:
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")
    eve = await clients.registered(relay.url, "eve")
    await stated(bob, "grant", "airline", clock.now, ("utility", "marketing"))
    return airline, bob, eve


async def test_usage_counts_are_exact_per_category_and_month(
    relay: RunningRelay, clients: Clients, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    airline, bob, eve = await _business_with_customers(relay, clients, clock)
    month = month_of(clock.now)
    notify = {"intent": "notification"}
    for _ in range(3):
        assert isinstance(
            await airline.send_message("bob", b"u", category="utility", **notify), Sent
        )
    msg_id = os.urandom(16)
    for _ in range(3):  # one notification, resent twice: counted once
        sent = await airline.send_message("bob", b"m", msg_id, category="marketing", **notify)
        assert isinstance(sent, Sent)
    refused = await airline.send_message("eve", b"u", category="utility", **notify)
    assert error_code(refused) == ErrorCode.RECIPIENT_UNAVAILABLE  # refused: not counted
    assert isinstance(await eve.send_message("airline", b"help"), Sent)  # user-initiated
    ask = await airline.send_message("eve", b"?", intent="consent_request", categories=("utility",))
    assert isinstance(ask, Sent)  # consent requests are not counted
    assert isinstance(await bob.send_message("airline", b"hi"), Sent)
    assert isinstance(await airline.send_message("eve", b"reply 1"), Sent)  # service replies
    assert isinstance(await airline.send_message("eve", b"reply 2"), Sent)
    assert isinstance(await eve.send_message("bob", b"x"), Sent)  # user↔user: nobody's usage
    usage = await airline.request(lambda i: UsageFetch(id=i, month=month))
    assert usage == Usage(
        re=usage.re, month=month,  # type: ignore[union-attr]
        notifications=(UsageCount("marketing", 1), UsageCount("utility", 3)),
        service_replies=2, user_initiated=2,
    )  # fmt: skip
    other = await airline.request(lambda i: UsageFetch(id=i, month="2001-01"))
    assert isinstance(other, Usage) and other.notifications == () and other.service_replies == 0
    assert error_code(await bob.request(lambda i: UsageFetch(id=i, month=month))) == 202
    # Next month starts from zero.
    clock.advance(32 * 24 * 3600 * 1000)
    assert isinstance(await airline.send_message("bob", b"u", category="utility", **notify), Sent)
    later = await airline.request(lambda i: UsageFetch(id=i, month=month_of(clock.now)))
    assert isinstance(later, Usage) and later.notifications == (UsageCount("utility", 1),)

    await relay.housekeeping.close_bills()  # SPEC §8.5: the month is over
    await relay.housekeeping.publish_tree_head()
    store = store_flags(relay.config)
    prices = ["--price", "utility=0.005", "--price", "marketing=0.02"]
    args = ["usage", *store, "--business", "airline", "--month", month]
    assert await asyncio.to_thread(_admin, *args, "--format", "json", *prices) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["notifications"] == {"utility": 3, "marketing": 1}
    assert Decimal(row["total"]) == Decimal("0.035")  # exact: 3 × 0.005 + 0.02
    assert (row["service_replies"], row["user_initiated"]) == (2, 2)
    assert await asyncio.to_thread(_admin, "usage", *store, "--format", "csv", *prices) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("business,month,utility,marketing")
    # January's bill is closed (the clock is past its end): by the relay's timer, or here.
    assert re.fullmatch(rf"airline,{month},3,1,2,2,0.015,0.02,0.035,logged #\d+ \(4 items\) ok",
                        lines[1]), lines  # fmt: skip
    assert lines[2:] == [f"airline,{month_of(clock.now)},1,0,0,0,0.005,0.00,0.005,open (1 kept)"]
    assert await asyncio.to_thread(_admin, "usage", *store) == 0
    assert "airline" in capsys.readouterr().out
    if not relay.config.store:
        db = str(relay.config.db_path)
        assert await asyncio.to_thread(_admin, "usage", "--store", f"sqlite://{db}") == 0
        assert "airline" in capsys.readouterr().out  # the same store, named by its URL
    assert await asyncio.to_thread(_admin, *args, "--price", "gold=1") == 1


async def test_inspect_shows_consent_and_business_tables_as_metadata(
    relay: RunningRelay, clients: Clients, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    airline, _, _ = await _business_with_customers(relay, clients, clock)
    signed = _profile(airline, clock.now)
    assert isinstance(await airline.request(lambda i: ProfilePut(id=i, profile=signed)), Ok)
    notify = {"intent": "notification", "category": "utility"}
    assert isinstance(await airline.send_message("bob", b"u", **notify), Sent)
    assert await asyncio.to_thread(cli.main, ["inspect", *store_flags(relay.config)]) == 0
    out = capsys.readouterr().out
    assert "airline ↔ bob consent=" in out and '"utility": ["granted", 0]' in out
    assert "*#1 bob → airline grant/utility,marketing" in out
    assert f"airline {month_of(clock.now)} notification/utility 1" in out
    assert f"airline {len(signed)} bytes" in out
    assert signed.hex()[:32] not in out  # metadata only: no signed bodies
