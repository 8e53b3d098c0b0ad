"""SPEC §7 Consent and blocking: what may be delivered, statements, receipts, no oracles."""

from __future__ import annotations

import msgpack
import pytest

from blindrelay.protocol import codec, limits
from blindrelay.protocol.codec import decode
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    Deliver,
    Error,
    Ok,
    Send,
    Sent,
    Statement,
    Statements,
    StatementsList,
    Welcome,
)
from blindrelay.protocol.signed import (
    ConsentStatement,
    SignedObject,
    make_statement,
    verify_statement,
)

from .wire import Account, Peer, new_handle, new_msg_id, non_canonical, rng


def _code(frame) -> int | None:
    return frame.code if isinstance(frame, Error) else None


def statement(
    peer: Peer,
    action: str,
    target: str,
    categories=None,
    *,
    issued_at=None,
    signer=None,
    signer_key=None,
    key=None,
    relay_key=None,
) -> bytes:
    """A statement signed by ``peer``'s account unless a field says otherwise."""
    account = peer.account
    body = make_statement(
        action,
        signer=signer or account.handle,
        signer_key=signer_key or account.public,
        target=target,
        relay_key=relay_key or peer.hello.relay_key,
        now_ms=peer.relay_now() if issued_at is None else issued_at,
        rng=rng,
        categories=tuple(categories) if categories else None,
    )
    return body.sign((key or account.key).sign)


async def submit(peer: Peer, data: bytes):
    return await peer.request(lambda i: Statement(id=i, statement=data))


async def state(peer: Peer, action: str, target: Peer, categories=None) -> bytes:
    data = statement(peer, action, target.handle, categories)
    answer = await submit(peer, data)
    assert isinstance(answer, Ok), f"{action} refused: {answer}"
    return data


def notification(to: str, category: str = "utility", body: bytes = b"note"):
    return lambda i: Send(
        id=i, to=to, msg_id=new_msg_id(), intent="notification", body=body, category=category
    )


def consent_request(to: str, *categories: str):
    return lambda i: Send(
        id=i,
        to=to,
        msg_id=new_msg_id(),
        intent="consent_request",
        body=b"why",
        categories=categories or ("utility",),
    )


def chat(to: str, body: bytes = b"hi"):
    return lambda i: Send(id=i, to=to, msg_id=new_msg_id(), intent="chat", body=body)


async def user_writes_first(user: Peer, business: Peer) -> None:
    """The user chats to the business, which takes it: a black box has no operator to
    verify a business, and an unverified one may only ask users who wrote to it (§7.3)."""
    assert isinstance(await user.request(chat(business.handle, b"hello")), Sent)
    assert (await business.push(Deliver)).sender == user.handle


# --- §7.3 what may be delivered -------------------------------------------------


@pytest.mark.spec("7.3")
async def test_business_cannot_notify_without_a_grant(relay):
    """SPEC §7.3: business → user notification(c) is allowed only when "c is granted"."""
    shop = await relay.business()
    user = await relay.user()
    for category in limits.CATEGORIES:
        assert _code(await shop.request(notification(user.handle, category))) == 400


@pytest.mark.spec("7.3")
async def test_consent_request_grant_then_notification_is_delivered(relay):
    """SPEC §7.3/§7.4: consent_request is delivered; "grant(cs): each c in cs becomes
    granted"; then a notification in c is delivered with its category."""
    shop = await relay.business()
    user = await relay.user()
    await user_writes_first(user, shop)
    assert isinstance(await shop.request(consent_request(user.handle, "utility")), Sent)
    ask = await user.push(Deliver)
    assert (ask.sender, ask.sender_kind, ask.intent, ask.categories) == (
        shop.handle,
        "business",
        "consent_request",
        ("utility",),
    )
    await state(user, "grant", shop, ["utility"])
    assert isinstance(await shop.request(notification(user.handle, "utility", b"gate B7")), Sent)
    note = await user.push(Deliver)
    assert (note.intent, note.category, note.body) == ("notification", "utility", b"gate B7")
    assert _code(await shop.request(notification(user.handle, "marketing"))) == 400


@pytest.mark.spec("7.3")
async def test_a_pending_request_refuses_another_and_a_grant_allows_asking_the_rest(relay):
    """SPEC §7.3 table: "requested (pending)": consent_request ✗; "granted utility":
    consent_request ✓ (marketing only)."""
    shop = await relay.business()
    user = await relay.user()
    await user_writes_first(user, shop)
    assert isinstance(await shop.request(consent_request(user.handle, "utility")), Sent)
    assert _code(await shop.request(consent_request(user.handle, "marketing"))) == 400
    await state(user, "grant", shop, ["utility"])
    assert _code(await shop.request(consent_request(user.handle, "utility"))) == 400
    assert isinstance(await shop.request(consent_request(user.handle, "marketing")), Sent)


@pytest.mark.spec("7.3")
async def test_service_replies_need_the_window_the_user_opens(relay):
    """SPEC §7.3: business → user chat is allowed when "not blocked and window"; a
    user's chat to the business opens the window."""
    shop = await relay.business()
    user = await relay.user()
    assert _code(await shop.request(chat(user.handle, b"hello?"))) == 400
    assert isinstance(await user.request(chat(shop.handle, b"my bag is lost")), Sent)
    assert (await shop.push(Deliver)).body == b"my bag is lost"
    assert isinstance(await shop.request(chat(user.handle, b"on it")), Sent)
    assert (await user.push(Deliver)).body == b"on it"


@pytest.mark.spec("7.3")
async def test_an_unverified_business_cannot_ask_a_stranger(relay):
    """SPEC §7.3: consent_request needs "may ask": "the business is verified, or the user
    has written to it, or the user has granted it some category"; a new business has no
    badge, so a cold request — and a bundle fetch of that user — get the 400 of §7.7."""
    shop = await relay.business()
    user = await relay.user(signed=True)
    answers = []
    for build in (consent_request(user.handle), chat(new_handle("nobody"))):
        await shop.send(build(4545))
        answers.append((await shop.response_raw(4545)).raw)
    await shop.send(BundleFetch(id=4545, handle=user.handle))
    answers.append((await shop.response_raw(4545)).raw)
    assert len(set(answers)) == 1
    assert decode(answers[0]) == Error(code=400, re=4545)


@pytest.mark.spec("7.3")
async def test_message_requests_stop_at_the_limit_until_the_recipient_writes_back(relay):
    """SPEC §7.3: "The relay accepts at most MESSAGE_REQUEST_MAX of them per pair until the
    recipient writes back, and then any number"; the refusal is the 400 of §7.7. (With the
    relay's default MESSAGE_REQUEST_MAX.)"""
    sender = await relay.user()
    recipient = await relay.user()
    for n in range(limits.MESSAGE_REQUEST_MAX):
        assert isinstance(await sender.request(chat(recipient.handle, b"%d" % n)), Sent)
    await sender.send(chat(recipient.handle)(4646))
    refused = (await sender.response_raw(4646)).raw
    await sender.send(chat(new_handle("nobody"))(4646))
    assert refused == (await sender.response_raw(4646)).raw
    assert decode(refused) == Error(code=400, re=4646)
    assert isinstance(await recipient.request(chat(sender.handle, b"hi, who's this?")), Sent)
    for n in range(3):
        assert isinstance(await sender.request(chat(recipient.handle, b"more %d" % n)), Sent)


@pytest.mark.spec("7.3")
async def test_a_user_opens_conversations_with_at_most_the_first_contact_burst(relay):
    """SPEC §7.3: "a user may open at most FIRST_CONTACTS_BURST of those at once"; the
    refusal is the 400 of §7.7, and a user who wrote to the sender is no new stranger.
    (With the relay's default FIRST_CONTACTS_BURST, refilled slowly: an hour per 10.)"""
    sender = await relay.user()
    for _ in range(limits.FIRST_CONTACTS_BURST):
        stranger = await relay.user()
        assert isinstance(await sender.request(chat(stranger.handle)), Sent)
        await stranger.close()
    one_more, contact = await relay.user(), await relay.user()
    await sender.send(chat(one_more.handle)(4747))
    refused = (await sender.response_raw(4747)).raw
    await sender.send(chat(new_handle("nobody"))(4747))
    assert refused == (await sender.response_raw(4747)).raw
    assert decode(refused) == Error(code=400, re=4747)
    assert isinstance(await contact.request(chat(sender.handle)), Sent)
    assert isinstance(await sender.request(chat(contact.handle)), Sent)


@pytest.mark.spec("7.3")
@pytest.mark.parametrize("intent", ["chat", "notification", "consent_request"])
async def test_business_to_business_is_refused_like_an_unknown_recipient(relay, intent):
    """SPEC §7.3: "business → business | any | never (ERROR 400)"; §7.7: the same bytes
    as for a handle that does not exist."""
    shop = await relay.business()
    other = await relay.business()
    build = {"chat": chat, "notification": notification, "consent_request": consent_request}
    answers = []
    for handle in (other.handle, new_handle("nobody")):
        await shop.send(build[intent](handle)(4343))
        answers.append((await shop.response_raw(4343)).raw)
    assert answers[0] == answers[1]
    assert decode(answers[0]) == Error(code=400, re=4343)


@pytest.mark.spec("7.3")
async def test_categories_cooling_down_refuse_asking_and_bundle_fetches(relay):
    """SPEC §7.3 table: "revoked, in cooldown": consent_request ✗ … bundle fetch ✗ (and
    "granted utility": bundle fetch ✓ before)."""
    shop = await relay.business()
    user = await relay.user(signed=True)
    await state(user, "grant", shop, ["utility", "marketing"])
    assert isinstance(await shop.request(lambda i: BundleFetch(id=i, handle=user.handle)), Bundle)
    await state(user, "revoke", shop, ["utility", "marketing"])
    assert _code(await shop.request(consent_request(user.handle, "utility"))) == 400
    assert _code(await shop.request(lambda i: BundleFetch(id=i, handle=user.handle))) == 400


@pytest.mark.spec("6.3.2")
async def test_reusing_a_notifications_msg_id_for_another_category_gets_403(relay):
    """SPEC §6.3: a SEND repeating a remembered msg_id is answered as a resend only "with
    the same to, intent, category, categories and body"; a notification that names
    another category gets ERROR 403 MESSAGE_ID_REUSED, though both are granted."""
    shop = await relay.business()
    user = await relay.user()
    await state(user, "grant", shop, ["utility", "marketing"])
    msg_id = new_msg_id()

    def note(category: str):
        return lambda i: Send(
            id=i, to=user.handle, msg_id=msg_id, intent="notification", body=b"sale",
            category=category,
        )  # fmt: skip

    first = await shop.request(note("utility"))
    assert isinstance(first, Sent)
    again = await shop.request(note("utility"))
    assert isinstance(again, Sent) and again.at == first.at
    assert _code(await shop.request(note("marketing"))) == 403


@pytest.mark.spec("7.3")
async def test_the_window_alone_lets_a_business_fetch_the_bundle(relay):
    """SPEC §7.3: a business fetches a user's bundle when "not blocked and (some category
    granted, or window, or pending request, or may ask and asking allowed for some
    category)": with every category denied it gets the 400, and once the user writes to
    it the window alone is enough (it may reply)."""
    shop = await relay.business()
    user = await relay.user(signed=True)
    await state(user, "deny", shop, list(limits.CATEGORIES))
    assert _code(await shop.request(lambda i: BundleFetch(id=i, handle=user.handle))) == 400
    assert isinstance(await user.request(chat(shop.handle, b"about my order")), Sent)
    assert isinstance(await shop.request(lambda i: BundleFetch(id=i, handle=user.handle)), Bundle)


# --- §7.4 statements and their effects ------------------------------------------


@pytest.mark.spec("7.4")
async def test_revoke_stops_notifications_and_drops_undelivered_ones(relay):
    """SPEC §7.4: revoke makes the category revoked and "from the OK on, the relay MUST NOT
    deliver anything the new state refuses, including envelopes that were queued before"."""
    shop = await relay.business()
    user = await relay.user()
    await state(user, "grant", shop, ["utility"])
    assert isinstance(await shop.request(notification(user.handle, "utility", b"queued")), Sent)
    unacked = await user.push(Deliver)
    assert unacked.body == b"queued"
    await state(user, "revoke", shop, ["utility"])
    assert _code(await shop.request(notification(user.handle, "utility"))) == 400
    again = await relay.login(user)
    assert again.welcome.queued == 0
    assert not [f for f in await again.round_trip() if isinstance(f, Deliver)]


@pytest.mark.spec("7.4")
async def test_a_user_block_stops_everything_from_the_business(relay):
    """SPEC §7.4: block — "the pair is blocked; every undelivered envelope from the target
    to the signer is deleted; … every category becomes revoked"; unblock keeps consent."""
    shop = await relay.business()
    user = await relay.user(signed=True)
    await state(user, "grant", shop, ["utility"])
    await user.request(chat(shop.handle, b"open the window"))
    await shop.push(Deliver)
    await state(user, "block", shop)
    for build in (
        notification(user.handle),
        chat(user.handle),
        consent_request(user.handle, "marketing"),
    ):
        assert _code(await shop.request(build)) == 400
    assert _code(await shop.request(lambda i: BundleFetch(id=i, handle=user.handle))) == 400
    assert _code(await user.request(chat(shop.handle))) == 400
    await state(user, "unblock", shop)
    assert _code(await shop.request(notification(user.handle))) == 400  # still revoked


@pytest.mark.spec("7.4")
async def test_a_user_block_starts_a_cooldown_that_outlasts_the_unblock(relay):
    """SPEC §7.4: a user's block of a business makes "every category revoked(now +
    CONSENT_COOLDOWN_MS)": unblocked, a business that may ask (the user wrote to it) may
    still not ask for any category; the user may grant one again."""
    shop = await relay.business()
    user = await relay.user()
    await user_writes_first(user, shop)
    await state(user, "block", shop)
    await state(user, "unblock", shop)
    for category in limits.CATEGORIES:
        assert _code(await shop.request(consent_request(user.handle, category))) == 400
    await state(user, "grant", shop, ["utility"])
    assert isinstance(await shop.request(notification(user.handle, "utility")), Sent)


@pytest.mark.spec("7.4")
async def test_a_block_made_before_the_business_registered_starts_the_cooldown_too(relay):
    """SPEC §7.4 (threat model T57): a block of a handle nobody holds "takes effect if the
    handle is ever registered": on a business, as a block made when it registered, so
    once unblocked a business that may ask (the user wrote to it) may not ask for any
    category before the cooldown ends, as after a block of it made later; the user may
    grant one again. Neither the block nor its unblock reaches the business (§7.5)."""
    user = await relay.user()
    handle = new_handle("bus")
    assert isinstance(await submit(user, statement(user, "block", handle)), Ok)
    shop = await relay.connect()
    assert isinstance(await shop.register(Account(handle, "business")), Welcome)
    assert isinstance(await submit(user, statement(user, "unblock", handle)), Ok)
    await user_writes_first(user, shop)  # its first push: the chat, no statement
    for category in limits.CATEGORIES:
        assert _code(await shop.request(consent_request(user.handle, category))) == 400
    granted = await state(user, "grant", shop, ["utility"])
    assert (await shop.push(Deliver)).body == granted
    assert isinstance(await shop.request(notification(user.handle, "utility")), Sent)


@pytest.mark.spec("7.4")
async def test_a_business_block_of_a_user_leaves_the_users_consent_alone(relay):
    """SPEC §7.4: only "if the signer is a user and the target a business" does a block
    revoke every category: a business that blocks a user and unblocks it may notify it
    under the grant it had."""
    shop = await relay.business()
    user = await relay.user()
    await state(user, "grant", shop, ["utility"])
    await state(shop, "block", user)
    assert _code(await shop.request(notification(user.handle))) == 400
    await state(shop, "unblock", user)
    assert isinstance(await shop.request(notification(user.handle, "utility", b"back")), Sent)
    assert (await user.push(Deliver)).body == b"back"


@pytest.mark.spec("7.4")
async def test_a_user_block_clears_a_pending_request(relay):
    """SPEC §7.4: a user's block of a business — "a pending request is cleared". Unblocked,
    a business the user never wrote to, with nothing granted (all revoked) and nothing
    pending, may not fetch the user's bundle (§7.3); a request left pending would let it."""
    shop = await relay.business()
    user = await relay.user(signed=True)
    await state(user, "grant", shop, ["utility"])
    assert isinstance(await shop.request(consent_request(user.handle, "marketing")), Sent)
    await state(user, "block", shop)
    await state(user, "unblock", shop)
    assert _code(await shop.request(lambda i: BundleFetch(id=i, handle=user.handle))) == 400


@pytest.mark.spec("7.4")
async def test_a_revoke_leaves_a_pending_request_pending(relay):
    """SPEC §7.4: grant and deny clear a pending request, revoke does not: while its answer
    is outstanding the business may not ask again (§7.3 "asking allowed": no pending
    request), even for the category the request named; the answer clears it."""
    shop = await relay.business()
    user = await relay.user()
    await user_writes_first(user, shop)
    await state(user, "grant", shop, ["utility"])
    assert isinstance(await shop.request(consent_request(user.handle, "marketing")), Sent)
    await state(user, "revoke", shop, ["utility"])
    assert _code(await shop.request(consent_request(user.handle, "marketing"))) == 400
    await state(user, "grant", shop, ["marketing"])
    assert isinstance(await shop.request(notification(user.handle, "marketing")), Sent)


@pytest.mark.spec("7.4")
async def test_blocks_between_users_work_both_ways_and_are_not_forwarded(relay):
    """SPEC §7.3: "blocked be true if either account blocks the other"; §7.5 "Blocks of a
    user by anyone are not forwarded"."""
    carol = await relay.user()
    dave = await relay.user()
    eve = await relay.user()
    await state(carol, "block", dave)
    assert _code(await dave.request(chat(carol.handle))) == 400
    assert _code(await carol.request(chat(dave.handle))) == 400
    await eve.request(chat(dave.handle, b"sentinel"))
    first = await dave.push(Deliver)
    assert (first.sender, first.intent) == (eve.handle, "chat")
    await state(carol, "unblock", dave)
    assert isinstance(await dave.request(chat(carol.handle, b"back")), Sent)


@pytest.mark.spec("7.4")
@pytest.mark.spec("14")
@pytest.mark.parametrize(
    "case",
    [
        "bad_signature",
        "tampered_body",
        "signer_not_connection",
        "signer_key_not_current",
        "other_relay",
        "garbage",
        "business_grants",
        "revoke_never_granted",
        "grant_when_granted",
        "deny_while_denied",
        "deny_when_granted",
        "block_twice",
        "unblock_not_blocked",
    ],
)
async def test_invalid_statements_get_500(relay, case):
    """SPEC §7.4: "The relay MUST refuse with ERROR 500 INVALID_STATEMENT a statement whose
    signature does not verify, whose signer is not the connection's account, whose
    signer_key is not that account's current key, whose relay_key is not its own, whose
    fields are malformed, or whose action does not fit the signer's kind"; missing
    transitions — including every statement that would change nothing — are refused whole
    with 500."""
    shop = await relay.business()
    user = await relay.user()
    other_user = await relay.user()
    stranger = IdentityKeyPair.generate(rng)
    if case in ("deny_when_granted", "grant_when_granted"):
        await state(user, "grant", shop, ["utility"])
    if case == "deny_while_denied":
        await state(user, "deny", shop, ["utility"])
    if case == "block_twice":
        await state(user, "block", shop)
    submitter, data = user, None
    match case:
        case "bad_signature":
            good = statement(user, "grant", shop.handle, ["utility"])
            data = good[:-1] + bytes([good[-1] ^ 1])
        case "tampered_body":
            good = statement(user, "grant", shop.handle, ["utility"])
            index = good.index(b"utility")
            data = good[:index] + b"Utility" + good[index + 7 :]
        case "signer_not_connection":
            data = statement(other_user, "grant", shop.handle, ["utility"])
        case "signer_key_not_current":
            data = statement(
                user, "grant", shop.handle, ["utility"], signer_key=stranger.public, key=stranger
            )
        case "other_relay":
            data = statement(user, "grant", shop.handle, ["utility"], relay_key=bytes(32))
        case "garbage":
            data = b"\x82\xa4body\xc4\x01x\xa3sig\xc4\x40" + bytes(64)
        case "business_grants":
            submitter, data = shop, statement(shop, "grant", user.handle, ["utility"])
        case "revoke_never_granted":
            data = statement(user, "revoke", shop.handle, ["utility"])
        case "deny_when_granted":
            data = statement(user, "deny", shop.handle, ["utility"])
        case "grant_when_granted":  # changes nothing
            data = statement(user, "grant", shop.handle, ["utility"])
        case "deny_while_denied":  # changes nothing while the cooldown runs
            data = statement(user, "deny", shop.handle, ["utility"])
        case "block_twice":
            data = statement(user, "block", shop.handle)
        case "unblock_not_blocked":
            data = statement(user, "unblock", shop.handle)
    assert _code(await submit(submitter, data)) == 500


@pytest.mark.spec("7.4")
@pytest.mark.parametrize("offset", [-1, 1])
async def test_statements_outside_the_clock_skew_get_501(relay, offset):
    """SPEC §7.4: "It MUST refuse with ERROR 501 STALE_STATEMENT one whose issued_at is
    further than STATEMENT_SKEW_MS from its clock"."""
    shop = await relay.business()
    user = await relay.user()
    issued_at = user.relay_now() + offset * (limits.STATEMENT_SKEW_MS + 60_000)
    data = statement(user, "grant", shop.handle, ["utility"], issued_at=issued_at)
    assert _code(await submit(user, data)) == 501


@pytest.mark.spec("7.4")
async def test_statement_within_the_clock_skew_is_accepted(relay):
    """SPEC §7.4: the skew bound is a tolerance: a statement a few minutes off is fine."""
    shop = await relay.business()
    user = await relay.user()
    issued_at = user.relay_now() - limits.STATEMENT_SKEW_MS + 60_000
    data = statement(user, "grant", shop.handle, ["utility"], issued_at=issued_at)
    assert isinstance(await submit(user, data), Ok)


@pytest.mark.spec("7.4")
async def test_a_replayed_statement_gets_501(relay):
    """SPEC §7.4: 501 for a statement "whose (signer, nonce) it has seen before"."""
    shop = await relay.business()
    user = await relay.user()
    data = await state(user, "grant", shop, ["utility"])
    assert _code(await submit(user, data)) == 501


@pytest.mark.spec("7.4")
@pytest.mark.parametrize("action", ["grant", "deny", "revoke"])
async def test_a_consent_statement_to_a_user_or_nobody_gets_the_same_400(relay, action):
    """SPEC §7.4: "A grant, deny or revoke whose target is not a business — a user or a
    handle that does not exist — gets ERROR 400", the same bytes in both cases (§7.7)."""
    user = await relay.user()
    other_user = await relay.user()
    answers = []
    for target in (other_user.handle, new_handle("nobody")):
        await user.send(Statement(id=4444, statement=statement(user, action, target, ["utility"])))
        answers.append((await user.response_raw(4444)).raw)
    assert answers[0] == answers[1]
    assert decode(answers[0]) == Error(code=400, re=4444)


@pytest.mark.spec("7.4")
async def test_a_block_of_a_handle_nobody_holds_is_accepted_like_any_other(relay):
    """SPEC §7.4: "A block or unblock whose target does not exist is accepted and kept
    like any other", so a block tells nothing about existence."""
    user = await relay.user()
    other_user = await relay.user()
    for target in (other_user.handle, new_handle("nobody")):
        assert isinstance(await submit(user, statement(user, "block", target)), Ok)


@pytest.mark.spec("7.4")
async def test_no_consent_statement_while_the_signer_blocks_the_business(relay):
    """SPEC §7.4 (threat model T54): "A grant, deny or revoke by an account that blocks
    its target is refused with ERROR 500", whether the block was made before the business
    registered the handle (never forwarded to it, §7.5) or after (forwarded): a receipt
    the business could not act on would tell it of a block it was never told. Nothing is
    forwarded; once unblocked, the grant goes through and notifications with it."""
    user = await relay.user()
    early = new_handle("bus")
    assert isinstance(await submit(user, statement(user, "block", early)), Ok)
    shop = await relay.connect()
    assert isinstance(await shop.register(Account(early, "business")), Welcome)
    late = await relay.business()
    await state(user, "block", late)
    for target in (early, late.handle):
        for action in ("grant", "deny"):
            answer = await submit(user, statement(user, action, target, ["utility"]))
            assert _code(answer) == 500, (target, action, answer)
    # Nothing of the user reached the early business: the next receipt is another's.
    marker = await state(await relay.user(), "grant", shop, ["utility"])
    assert (await shop.push(Deliver)).body == marker
    assert isinstance(await submit(user, statement(user, "unblock", early)), Ok)
    granted = await state(user, "grant", shop, ["utility"])
    assert (await shop.push(Deliver)).body == granted
    assert isinstance(await shop.request(notification(user.handle)), Sent)


# --- §7.5 forwarding ------------------------------------------------------------


@pytest.mark.spec("7.5")
async def test_consent_statements_and_business_blocks_are_forwarded_byte_for_byte(relay):
    """SPEC §7.5: "The relay forwards every accepted grant, deny and revoke, and every
    block or unblock whose target is a business, to the target as a DELIVER with intent
    statement, sender = the signer, and body = the statement's signed object, byte for
    byte"; the business verifies it offline. Each is delivered before the next is made:
    a queued statement that a later one supersedes is withdrawn, never delivered (see
    the next test), and on a relay of several workers a forwarded statement can still
    be queued when the next one commits."""
    shop = await relay.business()
    user = await relay.user()
    sent, received = [], []
    for action, categories in [
        ("grant", ["utility"]),
        ("deny", ["marketing"]),
        ("revoke", ["utility"]),
        ("block", None),
        ("unblock", None),
    ]:
        sent.append(await state(user, action, shop, categories))
        received.append(await shop.push(Deliver))
    assert [(d.intent, d.sender, d.sender_kind) for d in received] == [
        ("statement", user.handle, "user")
    ] * len(sent)
    assert [d.body for d in received] == sent
    receipt = verify_statement(
        received[0].body, expected_key=user.account.public, relay_key=shop.hello.relay_key
    )
    assert (receipt.action, receipt.target, receipt.categories) == (
        "grant",
        shop.handle,
        ("utility",),
    )


@pytest.mark.spec("7.5")
async def test_a_receipt_superseded_before_delivery_is_not_delivered(relay):
    """SPEC §7.5: a queued forwarded statement "that is no longer in force for any family
    … is deleted from the queue in the same transaction, and from then on is not
    delivered"; forwarded statements are outside the queue cap."""
    shop = await relay.business()
    user = await relay.user()
    await shop.close()
    grant_both = await state(user, "grant", shop, ["utility", "marketing"])
    await state(user, "revoke", shop, ["utility"])
    regrant = await state(user, "grant", shop, ["utility"])
    block = await state(user, "block", shop)
    unblock = await state(user, "unblock", shop)
    again = await relay.login(shop)
    assert again.welcome.queued == 3
    received = await again.deliveries(3)
    assert [d.body for d in received] == [grant_both, regrant, unblock]
    assert block not in [d.body for d in received]


# --- §7.6 listing -----------------------------------------------------------------


@pytest.mark.spec("7.6")
async def test_listing_returns_the_statements_in_force_oldest_first(relay):
    """SPEC §7.6: STATEMENTS lists the statements "in force (the latest per signer, target
    and action family — consent per category, block), oldest first", to signer and target."""
    shop = await relay.business()
    user = await relay.user()
    bystander = await relay.user()
    grant_both = await state(user, "grant", shop, ["utility", "marketing"])
    revoke_marketing = await state(user, "revoke", shop, ["marketing"])

    async def listing(peer):
        page = await peer.request(lambda i: StatementsList(id=i, after=0))
        assert isinstance(page, Statements) and page.next is None
        return list(page.statements)

    assert await listing(user) == [grant_both, revoke_marketing]
    assert await listing(shop) == [grant_both, revoke_marketing]
    grant_marketing = await state(user, "grant", shop, ["marketing"])
    # grant_both is still in force for utility, so it is listed; the revoke is not.
    assert await listing(user) == [grant_both, grant_marketing]
    assert await listing(bystander) == []


@pytest.mark.spec("7.6")
async def test_a_block_is_listed_to_its_target_only_if_the_target_is_a_business(relay):
    """SPEC §7.6: "a block or unblock is listed to its target only if it is forwarded to
    it (§7.5), i.e. when the target is a business": a private person learns nothing about
    who blocked them."""
    shop = await relay.business()
    user = await relay.user()
    other = await relay.user()
    by_other = await state(other, "block", user)
    by_shop = await state(shop, "block", user)
    by_user = await state(user, "block", shop)

    async def listing(peer):
        page = await peer.request(lambda i: StatementsList(id=i, after=0))
        assert isinstance(page, Statements) and page.next is None
        return list(page.statements)

    assert await listing(user) == [by_user]
    assert await listing(other) == [by_other]
    assert await listing(shop) == [by_shop, by_user]


# --- §7.7 no oracles --------------------------------------------------------------


@pytest.mark.spec("7.7")
async def test_refused_notifications_are_byte_identical_whatever_the_reason(relay):
    """SPEC §7.7: a SEND refused because the recipient "does not exist, never consented,
    denied or revoked, or blocked the sender (or was blocked by it) MUST get the same
    ERROR 400 frame — the same bytes for the same request id"."""
    shop = await relay.business()
    never, denied, revoked, blocker, blocked = [await relay.user() for _ in range(5)]
    await state(denied, "deny", shop, ["utility"])
    await state(revoked, "grant", shop, ["utility"])
    await state(revoked, "revoke", shop, ["utility"])
    await state(blocker, "block", shop)
    await state(shop, "block", blocked)
    answers = []
    for handle in (
        new_handle("nobody"),
        never.handle,
        denied.handle,
        revoked.handle,
        blocker.handle,
        blocked.handle,
    ):
        frame = notification(handle)(4242)
        await shop.send(frame)
        answers.append((await shop.response_raw(4242)).raw)
    assert len(set(answers)) == 1
    assert decode(answers[0]) == Error(code=400, re=4242)
    assert answers[0] == await _error_400_bytes(shop, 4242)


async def _error_400_bytes(peer: Peer, request_id: int) -> bytes:
    """The reference refusal: a chat to an account that does not exist."""
    await peer.send(chat(new_handle("nobody"))(request_id))
    return (await peer.response_raw(request_id)).raw


@pytest.mark.spec("7.7")
async def test_refused_bundle_fetches_and_chats_are_byte_identical(relay):
    """SPEC §7.7: the same holds for BUNDLE_FETCH, and between users (unknown account vs
    blocked in either direction)."""
    shop = await relay.business()
    denied, blocker = await relay.user(signed=True), await relay.user(signed=True)
    await state(denied, "deny", shop, ["utility", "marketing"])
    await state(blocker, "block", shop)
    answers = []
    for handle in (new_handle("nobody"), denied.handle, blocker.handle):
        await shop.send(BundleFetch(id=9, handle=handle))
        answers.append((await shop.response_raw(9)).raw)
    carol, dave = await relay.user(), await relay.user()
    await state(carol, "block", dave)
    for sender, handle in ((dave, carol.handle), (carol, dave.handle), (dave, new_handle("x"))):
        await sender.send(chat(handle)(9))
        answers.append((await sender.response_raw(9)).raw)
    assert len(set(answers)) == 1
    assert decode(answers[0]) == Error(code=400, re=9)


# --- §14 signed objects are kept byte for byte ------------------------------------


def non_canonical_statement(peer: Peer, action: str, target: str, categories=None) -> bytes:
    """A valid statement of ``peer``'s whose body and outer map are not canonical."""
    body = msgpack.unpackb(
        codec.encode_object(
            make_statement(
                action, signer=peer.handle, signer_key=peer.account.public, target=target,
                relay_key=peer.hello.relay_key, now_ms=peer.relay_now(), rng=rng,
                categories=tuple(categories) if categories else None,
            )
        )
    )  # fmt: skip
    body_bytes = non_canonical(body)
    sig = peer.account.key.sign(ConsentStatement.CONTEXT + b"\x00" + body_bytes)
    data = non_canonical({"body": body_bytes, "sig": sig})
    assert codec.encode_object(SignedObject(body=body_bytes, sig=sig)) != data
    return data


@pytest.mark.spec("14")
async def test_a_non_canonical_statement_is_forwarded_and_listed_byte_for_byte(relay):
    """SPEC §14: "The relay MUST NOT re-encode a signed object: it forwards (§7.5), lists
    (§7.6) and serves … exactly the bytes it accepted, byte for byte — the outer map and
    body alike, canonical or not"."""
    shop = await relay.business()
    user = await relay.user()
    data = non_canonical_statement(user, "grant", shop.handle, ["utility"])
    assert isinstance(await submit(user, data), Ok)
    delivered = await shop.push(Deliver)
    assert (delivered.intent, delivered.body) == ("statement", data)
    for peer in (user, shop):
        page = await peer.request(lambda i: StatementsList(id=i, after=0))
        assert isinstance(page, Statements) and list(page.statements) == [data]
    receipt = verify_statement(
        data, expected_key=user.account.public, relay_key=shop.hello.relay_key
    )
    assert (receipt.action, receipt.categories) == ("grant", ("utility",))
