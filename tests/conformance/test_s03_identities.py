"""SPEC §3 Identities: handle format and identity-key rotation."""

from __future__ import annotations

import msgpack
import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.business import BusinessProfile
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.frames import (
    Error,
    Ok,
    Profile,
    ProfileFetch,
    ProfilePut,
    RotateIdentity,
    Welcome,
)
from blindrelay.protocol.transcripts import register_transcript

from .wire import Account, new_handle, rng, rotation


@pytest.mark.spec("3.2")
@pytest.mark.parametrize(
    "handle",
    [
        "ab",
        "a" * 33,
        "Alice",
        "\u0430irline",
        ".alice",
        "-alice",
        "al ice",
        "al@ice",
        "alice\u00e9",
        "alice.",
        "alice-",
        "al..ice",
        "al_-ice",
    ],
    ids=[
        "too-short",
        "too-long",
        "uppercase",
        "cyrillic-a",
        "leading-dot",
        "leading-dash",
        "space",
        "at-sign",
        "non-ascii",
        "trailing-dot",
        "trailing-dash",
        "double-dot",
        "double-punctuation",
    ],
)
async def test_register_refuses_a_handle_outside_the_pattern(relay, handle):
    """SPEC: "A handle MUST be 3 to 32 characters from [a-z0-9._-] that start and end with
    a letter or a digit and never have two punctuation characters in a row": anything else
    is a malformed REGISTER (100, naming its id), or 101 when it is longer than its
    maximum (§2.3)."""
    peer = await relay.connect()
    key = IdentityKeyPair.generate(rng)
    request_id = peer.next_id()
    signature = key.sign(
        register_transcript(
            peer.hello.relay_key, peer.hello.challenge, "abc", "user", key.public,
            handshake_hash=peer.channel.handshake_hash,
        )
    )
    data = msgpack.packb(
        {
            "t": 2,
            "id": request_id,
            "handle": handle,
            "kind": "user",
            "identity_key": key.public,
            "signature": signature,
        }
    )
    await peer.send_raw(data, expect_re=request_id)
    error = await peer.response(request_id)
    code = 101 if len(handle) > limits.HANDLE_MAX_LEN else 100
    assert isinstance(error, Error) and (error.code, error.re) == (code, request_id)


@pytest.mark.spec("3.2")
@pytest.mark.parametrize("handle_form", ["0.a_b-c", "x" * 32, "a1-"])
async def test_register_accepts_every_handle_of_the_pattern(relay, handle_form):
    """SPEC: handles match ``^[a-z0-9]+([._-][a-z0-9]+)*$``, 3…32 long — the edges of the
    pattern register (made unique with a random tail of the same alphabet)."""
    tail = new_handle("").replace("-", "")
    handle = (handle_form + tail)[: limits.HANDLE_MAX_LEN]
    if len(handle_form) == limits.HANDLE_MAX_LEN:
        handle = tail[:16] + "x" * 16
    peer = await relay.connect()
    welcome = await peer.register(Account(handle, "user"))
    assert isinstance(welcome, Welcome) and welcome.handle == handle


@pytest.mark.spec("3.2")
async def test_lookalikes_of_a_business_are_refused_like_a_taken_handle(relay):
    """SPEC §3.2.1: "The relay MUST refuse a REGISTER (of either kind) whose handle has a
    leading skeleton equal to the skeleton of an existing business account, with ERROR 201
    HANDLE_TAKEN — the same frame as for a taken handle." """
    business = await relay.business(prefix="lux")
    name = business.handle  # lux-<hex>
    lookalikes = [
        ("user", "1ux." + name[4:]),
        ("user", "lux_" + name[4:]),
        ("user", name + ".com"),
        ("business", name + "-support"),
    ]
    for kind, handle in lookalikes:
        peer = await relay.connect()
        refused = await peer.register(Account(handle, kind))
        taken = await (await relay.connect()).register(Account(name, kind))
        assert isinstance(refused, Error) and isinstance(taken, Error), (handle, refused)
        assert (refused.code, refused.reason) == (taken.code, taken.reason) == (201, None)
    allowed = await (await relay.connect()).register(Account("support-" + name, "user"))
    assert isinstance(allowed, Welcome)


@pytest.mark.spec("3.4")
async def test_rotation_replaces_the_key_and_deletes_the_prekeys(relay):
    """SPEC: the relay MUST check both signatures and issued_at, "then replace the key,
    delete the account's signed and one-time prekeys …, and answer OK"."""
    alice = await relay.user(one_time=2)
    old = alice.account
    new_key = IdentityKeyPair.generate(rng)
    assert isinstance(await alice.request(lambda i: rotation(alice, new_key, request_id=i)), Ok)
    stale = await relay.connect()
    refused = await stale.login(old)
    assert isinstance(refused, Error) and refused.code == 200
    again = await relay.login(Account(old.handle, old.kind, new_key))
    assert again.welcome is not None
    assert (again.welcome.has_signed_prekey, again.welcome.one_time_prekeys) == (False, 0)


@pytest.mark.spec("3.4")
async def test_a_business_s_rotation_deletes_the_profile_the_old_key_signed(relay):
    """SPEC: the relay deletes "for a business, its profile (§8.2) — all signed by the old
    key — in the same transaction"; "PROFILE_FETCH answers without ``profile``" until
    the business publishes again, and a profile signed by the old key is refused."""
    shop = await relay.business()
    user = await relay.user()

    def signed_by(key: IdentityKeyPair) -> bytes:
        return BusinessProfile(
            v=1, handle=shop.handle, display_name="Conformance Air", description="",
            timezone="UTC", hours=(), exceptions=(), issued_at=shop.relay_now(),
        ).sign(key.sign)  # fmt: skip

    old_profile = signed_by(shop.account.key)
    assert isinstance(await shop.request(lambda i: ProfilePut(id=i, profile=old_profile)), Ok)
    new_key = IdentityKeyPair.generate(rng)
    assert isinstance(await shop.request(lambda i: rotation(shop, new_key, request_id=i)), Ok)
    served = await user.request(lambda i: ProfileFetch(id=i, handle=shop.handle))
    assert isinstance(served, Profile)
    assert (served.identity_key, served.profile) == (new_key.public, None)
    refused = await shop.request(lambda i: ProfilePut(id=i, profile=old_profile))
    assert isinstance(refused, Error) and refused.code == 600
    new_profile = signed_by(new_key)
    assert isinstance(await shop.request(lambda i: ProfilePut(id=i, profile=new_profile)), Ok)
    served = await user.request(lambda i: ProfileFetch(id=i, handle=shop.handle))
    assert isinstance(served, Profile) and served.profile == new_profile


@pytest.mark.spec("3.4")
@pytest.mark.parametrize("forged", ["old_signature", "new_signature"])
async def test_rotation_with_a_bad_signature_gets_500(relay, forged):
    """SPEC: "The relay MUST check both signatures (ERROR 500 INVALID_STATEMENT otherwise)"."""
    alice = await relay.user()
    new_key, stranger = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    kwargs = {"old_key": stranger} if forged == "old_signature" else {"sign_new": stranger}
    error = await alice.request(lambda i: rotation(alice, new_key, request_id=i, **kwargs))
    assert isinstance(error, Error) and error.code == 500
    await relay.login(alice)  # the old key is still the account's key


@pytest.mark.spec("3.4")
@pytest.mark.parametrize("offset", [-1, 1])
async def test_rotation_outside_the_clock_skew_gets_501(relay, offset):
    """SPEC: "and that issued_at is within STATEMENT_SKEW_MS of its clock (ERROR 501
    STALE_STATEMENT otherwise)"."""
    alice = await relay.user()
    issued_at = alice.relay_now() + offset * (limits.STATEMENT_SKEW_MS + 60_000)
    new_key = IdentityKeyPair.generate(rng)
    error = await alice.request(
        lambda i: rotation(alice, new_key, issued_at=issued_at, request_id=i)
    )
    assert isinstance(error, Error) and error.code == 501


@pytest.mark.spec("3.4")
async def test_rotating_to_the_current_key_gets_100(relay):
    """SPEC: "Rotating to the current key is refused with ERROR 100"."""
    alice = await relay.user()
    error = await alice.request(lambda i: rotation(alice, alice.account.key, request_id=i))
    assert isinstance(error, Error) and error.code == 100


@pytest.mark.spec("3.4")
async def test_of_two_concurrent_rotations_the_second_gets_501_or_500(relay):
    """SPEC: "Of two rotations from the same key sent before either is answered, the first
    MUST succeed and the second MUST be refused: with ERROR 501 if the relay checked its
    signatures before the first was committed …, with ERROR 500 if after"; replaying the
    first afterwards is refused too."""
    alice = await relay.user()
    first = rotation(alice, IdentityKeyPair.generate(rng))
    second = rotation(alice, IdentityKeyPair.generate(rng))
    await alice.send(first)
    await alice.send(second)  # before the first is answered
    answers = [await alice.response(first.id), await alice.response(second.id)]
    assert isinstance(answers[0], Ok)
    assert isinstance(answers[1], Error) and answers[1].code in (500, 501)
    replay = RotateIdentity(
        id=alice.next_id(),
        new_identity_key=first.new_identity_key,
        issued_at=first.issued_at,
        old_signature=first.old_signature,
        new_signature=first.new_signature,
    )
    await alice.send(replay)
    error = await alice.response(replay.id)
    assert isinstance(error, Error) and error.code in (100, 500, 501)
