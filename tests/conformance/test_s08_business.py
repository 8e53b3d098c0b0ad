"""SPEC §8 Business accounts: signed profiles (and §14 signed objects), metering."""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
import pytest

from blindrelay.protocol import codec
from blindrelay.protocol.business import BusinessProfile, OpeningHours, open_profile
from blindrelay.protocol.codec import decode
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.frames import (
    BillFetch,
    Error,
    Ok,
    Profile,
    ProfileFetch,
    ProfilePut,
    Send,
    Sent,
    Statement,
    Usage,
    UsageCount,
    UsageFetch,
)
from blindrelay.protocol.signed import make_statement

from .wire import Peer, new_handle, new_msg_id, non_canonical, rng


def _code(frame) -> int | None:
    return frame.code if isinstance(frame, Error) else None


def profile(peer: Peer, *, handle: str | None = None, key: IdentityKeyPair | None = None) -> bytes:
    body = BusinessProfile(
        v=1,
        handle=handle or peer.handle,
        display_name="Conformance Air",
        description="flights, gates, bags",
        timezone="Europe/Berlin",
        hours=(OpeningHours(day=0, open=9 * 60, close=17 * 60),),
        exceptions=(),
        issued_at=peer.relay_now(),
    )
    return body.sign((key or peer.account.key).sign)


async def put(peer: Peer, data: bytes):
    return await peer.request(lambda i: ProfilePut(id=i, profile=data))


async def fetch(peer: Peer, handle: str):
    return await peer.request(lambda i: ProfileFetch(id=i, handle=handle))


@pytest.mark.spec("8.2")
async def test_profile_is_stored_and_served_unaltered(relay):
    """SPEC §8.2: PROFILE_PUT by a business; "anyone fetches it with PROFILE_FETCH, which
    returns PROFILE with the handle, identity key, the profile"; "The relay stores and
    serves the profile but cannot alter it"."""
    shop = await relay.business()
    user = await relay.user()
    data = profile(shop)
    assert isinstance(await put(shop, data), Ok)
    served = await fetch(user, shop.handle)
    assert isinstance(served, Profile)
    assert (served.handle, served.identity_key, served.profile) == (
        shop.handle,
        shop.account.public,
        data,
    )
    assert open_profile(served.profile, served.identity_key, served.handle).display_name == (
        "Conformance Air"
    )


@pytest.mark.spec("8.2")
@pytest.mark.spec("14")
@pytest.mark.parametrize("case", ["tampered_body", "other_key", "other_handle", "garbage"])
async def test_malformed_or_wrongly_signed_profile_gets_600(relay, case):
    """SPEC §8.2: "a malformed or wrongly signed profile gets ERROR 600 INVALID_PROFILE";
    §14: "A verifier MUST check the signature over the exact body bytes received"."""
    shop = await relay.business()
    match case:
        case "tampered_body":
            good = profile(shop)
            index = good.index(b"Conformance")
            data = good[:index] + b"C0nformance" + good[index + 11 :]
        case "other_key":
            data = profile(shop, key=IdentityKeyPair.generate(rng))
        case "other_handle":
            data = profile(shop, handle=new_handle("else"))
        case _:
            data = b"\x93\x01\x02\x03"
    assert _code(await put(shop, data)) == 600
    served = await fetch(shop, shop.handle)
    assert isinstance(served, Profile) and served.profile is None


@pytest.mark.spec("8.2")
async def test_only_businesses_may_put_a_profile(relay):
    """SPEC §8.2: "Only businesses may PROFILE_PUT (ERROR 202 otherwise)"."""
    user = await relay.user()
    assert _code(await put(user, profile(user))) == 202


@pytest.mark.spec("8.2")
async def test_fetching_without_profile_or_unknown_handle(relay):
    """SPEC §8.2: "fetching a business without a profile returns PROFILE without
    profile"; an unknown handle gets ERROR 601 NOT_FOUND."""
    shop = await relay.business()
    user = await relay.user()
    bare = await fetch(user, shop.handle)
    assert isinstance(bare, Profile) and bare.profile is None
    assert bare.identity_key == shop.account.public
    assert _code(await fetch(user, new_handle("nobody"))) == 601


@pytest.mark.spec("8.2")
@pytest.mark.spec("11.1")
async def test_a_user_has_no_profile_and_is_refused_like_an_unknown_handle(relay):
    """SPEC §8.2: "A PROFILE_FETCH naming a user account or an unknown handle MUST get
    the same ERROR 601 NOT_FOUND — the same bytes for the same request id": profiles
    are public for businesses only; a user's existence and identity key are not."""
    asker = await relay.user()
    users = [await relay.user(), await relay.user(signed=True), asker]
    answers = []
    for handle in (new_handle("nobody"), *(u.handle for u in users)):
        await asker.send(ProfileFetch(id=601, handle=handle))
        answers.append((await asker.response_raw(601)).raw)
    assert len(set(answers)) == 1
    assert decode(answers[0]) == Error(code=601, re=601)


def _month(peer: Peer) -> str:
    return datetime.fromtimestamp(peer.relay_now() / 1000, UTC).strftime("%Y-%m")


async def usage(peer: Peer):
    return await peer.request(lambda i: UsageFetch(id=i, month=_month(peer)))


@pytest.mark.spec("8.4")
async def test_usage_counts_billable_and_free_traffic_once_per_envelope(relay):
    """SPEC §8.4: billable notifications per category, free service replies and
    user-initiated chats; "an idempotent resend (§6.3) counts once"; consent requests
    and statements are not counted."""
    shop = await relay.business()
    user = await relay.user()
    fresh = await usage(shop)
    assert isinstance(fresh, Usage)
    assert (fresh.notifications, fresh.service_replies, fresh.user_initiated) == ((), 0, 0)

    msg_id = new_msg_id()
    for _ in range(2):  # the second is an idempotent resend
        send = await user.request(
            lambda i: Send(id=i, to=shop.handle, msg_id=msg_id, intent="chat", body=b"hi")
        )
        assert isinstance(send, Sent)
    assert isinstance(
        await shop.request(
            lambda i: Send(
                id=i,
                to=user.handle,
                msg_id=new_msg_id(),
                intent="consent_request",
                body=b"may we?",
                categories=("utility",),
            )
        ),
        Sent,
    )
    grant = make_statement(
        "grant",
        signer=user.handle,
        signer_key=user.account.public,
        target=shop.handle,
        relay_key=user.hello.relay_key,
        now_ms=user.relay_now(),
        rng=rng,
        categories=("utility",),
    ).sign(user.account.key.sign)
    assert isinstance(await user.request(lambda i: Statement(id=i, statement=grant)), Ok)
    note_id = new_msg_id()
    for msg in (note_id, note_id, new_msg_id()):
        note = await shop.request(
            lambda i, m=msg: Send(
                id=i,
                to=user.handle,
                msg_id=m,
                intent="notification",
                body=b"gate",
                category="utility",
            )
        )
        assert isinstance(note, Sent)
    reply = await shop.request(
        lambda i: Send(id=i, to=user.handle, msg_id=new_msg_id(), intent="chat", body=b"sure")
    )
    assert isinstance(reply, Sent)
    counted = await usage(shop)
    assert isinstance(counted, Usage) and counted.month == _month(shop)
    assert counted.notifications == (UsageCount(category="utility", count=2),)
    assert (counted.service_replies, counted.user_initiated) == (1, 1)


@pytest.mark.spec("8.4")
async def test_usage_is_for_businesses_only(relay):
    """SPEC §8.4: "A business reads its own counts with USAGE_FETCH …; a user gets ERROR 202"."""
    user = await relay.user()
    assert _code(await usage(user)) == 202


@pytest.mark.spec("8.5")
async def test_a_bill_is_a_businesses_own_and_none_before_its_month_is_closed(relay):
    """SPEC §8.5 rule 1: "BILL_FETCH by a user gets ERROR 202. A month without a closed
    bill [...] gets ERROR 601 NOT_FOUND" — the current month is not over, and a month
    before the account existed has no bill."""
    shop = await relay.business()
    user = await relay.user()
    for peer, month, code in [
        (user, _month(user), 202),
        (shop, _month(shop), 601),
        (shop, "2001-01", 601),
    ]:
        answer = await peer.request(lambda i, m=month: BillFetch(id=i, month=m, start=0))
        assert _code(answer) == code, (month, answer)


@pytest.mark.spec("14")
@pytest.mark.spec("8.2")
async def test_a_non_canonical_profile_is_served_byte_for_byte(relay):
    """SPEC §14: the relay "serves (§8.1, §8.2) exactly the bytes it accepted, byte for
    byte — the outer map and body alike, canonical or not"."""
    shop = await relay.business()
    user = await relay.user()
    body = non_canonical(msgpack.unpackb(codec.encode_object(open_profile(
        profile(shop), shop.account.public, shop.handle
    ))))  # fmt: skip
    sig = shop.account.key.sign(BusinessProfile.CONTEXT + b"\x00" + body)
    data = non_canonical({"body": body, "sig": sig})
    assert isinstance(await put(shop, data), Ok)
    served = await fetch(user, shop.handle)
    assert isinstance(served, Profile) and served.profile == data
    assert open_profile(served.profile, shop.account.public, shop.handle).display_name == (
        "Conformance Air"
    )


@pytest.mark.spec("8.2")
@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("without_hours", {"hours": None}),
        ("without_description", {"description": None}),
        ("display_name_too_long", {"display_name": "N" * 65}),
        ("display_name_blank", {"display_name": "   "}),
        ("description_too_long", {"description": "d" * 513}),
    ],
)
async def test_a_profile_breaking_its_table_gets_600(relay, case, change):
    """SPEC §8.2: "Every profile field is required …; a profile that breaks a rule of this
    table … is refused with 600" (display_name 1 … 64 characters, not only white space;
    description 0 … 512)."""
    shop = await relay.business()
    fields = msgpack.unpackb(codec.encode_object(open_profile(
        profile(shop), shop.account.public, shop.handle
    )))  # fmt: skip
    for key, value in change.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    body = msgpack.packb(fields, use_bin_type=True)
    sig = shop.account.key.sign(BusinessProfile.CONTEXT + b"\x00" + body)
    data = msgpack.packb({"body": body, "sig": sig}, use_bin_type=True)
    assert _code(await put(shop, data)) == 600


@pytest.mark.spec("8.2")
async def test_a_profile_with_the_longest_fields_is_accepted(relay):
    """SPEC §8.2: display_name up to DISPLAY_NAME_MAX_LEN (64) characters, description up to
    512, may be empty."""
    shop = await relay.business()
    for name, description in (("N" * 64, "d" * 512), ("N", "")):
        fields = msgpack.unpackb(codec.encode_object(open_profile(
            profile(shop), shop.account.public, shop.handle
        )))  # fmt: skip
        fields.update(display_name=name, description=description)
        body = msgpack.packb(fields, use_bin_type=True)
        sig = shop.account.key.sign(BusinessProfile.CONTEXT + b"\x00" + body)
        data = msgpack.packb({"body": body, "sig": sig}, use_bin_type=True)
        assert isinstance(await put(shop, data), Ok)
