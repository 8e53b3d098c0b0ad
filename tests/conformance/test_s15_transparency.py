"""SPEC §15 Transparency log, over the wire: signed heads, proofs, entries, BUNDLE's
proof of a published key, DISCOVERABLE.

A head is signed at most every ``STH_INTERVAL`` (§15.3), so a test that needs a fact
covered by a head polls for it (bounded by ``COVERED_TIMEOUT_S``: the local relays run
with a short interval, an external relay's default is 10 s). The log is shared by
every test of a run, so tests never assume its size: they find their own entries.
"""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    Discoverable,
    Error,
    LogConsistency,
    LogConsistencyFetch,
    LogEntries,
    LogEntriesFetch,
    LogHead,
    LogHeadFetch,
    LogInclusion,
    LogInclusionFetch,
    Ok,
)
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, StatementLogged, decode_entry
from blindrelay.protocol.transparency.treehead import TreeHead, check_extends, open_tree_head

from .wire import Account, Peer, rng, rotation

COVERED_TIMEOUT_S = 25.0
POLL_S = 0.25


async def newest_head(peer: Peer) -> TreeHead | None:
    answer = await peer.request(lambda i: LogHeadFetch(id=i))
    assert isinstance(answer, LogHead), answer
    return None if answer.sth is None else open_tree_head(answer.sth, peer.hello.relay_key)


async def head_at_least(peer: Peer, size: int) -> TreeHead:
    """The newest head once it covers ``size`` entries."""
    deadline = time.monotonic() + COVERED_TIMEOUT_S
    while True:
        head = await newest_head(peer)
        if head is not None and head.size >= size:
            return head
        assert time.monotonic() < deadline, f"no signed head of {size} entries in time"
        await asyncio.sleep(POLL_S)


async def proven_bundle(peer: Peer, owner: str) -> Bundle:
    """BUNDLE for ``owner`` once it carries ``log`` (its binding covered by a head)."""
    deadline = time.monotonic() + COVERED_TIMEOUT_S
    while True:
        bundle = await peer.request(lambda i: BundleFetch(id=i, handle=owner))
        assert isinstance(bundle, Bundle), bundle
        if bundle.log is not None:
            return bundle
        assert time.monotonic() < deadline, f"{owner}'s bundle never carried its proof"
        await asyncio.sleep(POLL_S)


def check_bundle_proof(bundle: Bundle, relay_key: bytes) -> tuple[KeyBinding, TreeHead]:
    """Everything SPEC §15.6 rule 3 says a client MUST check before trusting the key."""
    assert bundle.log is not None
    head = open_tree_head(bundle.log.sth, relay_key)
    binding = decode_entry(bundle.log.entry)
    assert isinstance(binding, KeyBinding)
    assert (binding.handle, binding.kind, binding.identity_key) == (
        bundle.handle, bundle.kind, bundle.identity_key,
    )  # fmt: skip
    merkle.verify_inclusion(
        merkle.leaf_hash(bundle.log.entry), bundle.log.index, head.size, bundle.log.proof,
        head.root,
    )  # fmt: skip
    return binding, head


def code(frame: object) -> int | None:
    return frame.code if isinstance(frame, Error) else None


@pytest.mark.spec("15.6")
async def test_the_log_is_read_before_any_login_and_its_head_is_signed(relay):
    """§15.6: "the four fetches are accepted on any connection whose channel is open,
    before any REGISTER or LOGIN"; §15.3: the head verifies with the relay key."""
    await relay.business()  # the log is not empty
    auditor = await relay.connect()
    head = await head_at_least(auditor, 1)
    assert head.size >= 1 and len(head.root) == 32
    entries = await auditor.request(lambda i: LogEntriesFetch(id=i, start=0, count=1))
    assert isinstance(entries, LogEntries) and len(entries.entries) == 1
    decode_entry(entries.entries[0])  # §15.1: an entry the log may hold
    # Only the log is public: every other request still needs a login (§4.5).
    refused = await auditor.request(lambda i: Discoverable(id=i))
    assert code(refused) == 103


@pytest.mark.spec("15.6")
async def test_a_business_bundle_proves_its_key_and_rotation_is_proven_again(relay):
    """§15.6 rule 3: BUNDLE of a published account carries its binding, the inclusion
    proof and the head; §15.1: a rotation appends a new binding, which the next
    bundle proves, with the previous key named."""
    shop = await relay.business(signed=True)
    customer = await relay.user()
    binding, head = check_bundle_proof(
        await proven_bundle(customer, shop.handle), customer.hello.relay_key
    )
    assert binding.previous_key is None and binding.identity_key == shop.account.public
    new_key = IdentityKeyPair.generate(rng)
    assert isinstance(await shop.request(lambda i: rotation(shop, new_key, request_id=i)), Ok)
    shop.account = Account(shop.handle, "business", new_key)
    await relay.publish(shop)
    deadline = time.monotonic() + COVERED_TIMEOUT_S
    while True:  # until a head covers the rotation
        bundle = await proven_bundle(customer, shop.handle)
        if bundle.identity_key == new_key.public:
            break
        assert time.monotonic() < deadline, "the rotated key was never proven"
        await asyncio.sleep(POLL_S)
    rotated, newer = check_bundle_proof(bundle, customer.hello.relay_key)
    assert rotated.previous_key == binding.identity_key
    assert rotated.identity_key == new_key.public and newer.size > head.size


@pytest.mark.spec("15.6")
async def test_inclusion_of_an_entry_and_consistency_between_two_heads(relay):
    """§15.6: LOG_INCLUSION_FETCH finds an entry by its bytes in a signed tree, and
    LOG_CONSISTENCY_FETCH joins an older head to a newer one (§15.2, RFC 9162)."""
    shop = await relay.business(signed=True)
    customer = await relay.user()
    bundle = await proven_bundle(customer, shop.handle)
    _, older = check_bundle_proof(bundle, customer.hello.relay_key)
    await relay.business()  # the log grows
    auditor = await relay.connect()
    newer = await head_at_least(auditor, older.size + 1)
    leaf = merkle.leaf_hash(bundle.log.entry)
    found = await auditor.request(
        lambda i: LogInclusionFetch(id=i, entry=bundle.log.entry, size=newer.size)
    )
    assert isinstance(found, LogInclusion) and found.index == bundle.log.index
    merkle.verify_inclusion(leaf, found.index, newer.size, found.proof, newer.root)
    proof = await auditor.request(
        lambda i: LogConsistencyFetch(id=i, first=older.size, second=newer.size)
    )
    assert isinstance(proof, LogConsistency)
    check_extends(older, newer, proof.proof)
    same = await auditor.request(
        lambda i: LogConsistencyFetch(id=i, first=newer.size, second=newer.size)
    )
    assert isinstance(same, LogConsistency) and same.proof == ()


@pytest.mark.spec("15.6")
async def test_the_entries_recompute_the_signed_root(relay):
    """§15.6 rule 2: LOG_ENTRIES returns the stored bytes, pages of at most
    MAX_LOG_ENTRIES; an auditor recomputes the head's root from them (§15.3 rule 4)."""
    await relay.business()
    auditor = await relay.connect()
    head = await head_at_least(auditor, 1)
    leaves: list[bytes] = []
    while len(leaves) < head.size:
        page = await auditor.request(
            lambda i: LogEntriesFetch(id=i, start=len(leaves), count=limits.MAX_LOG_ENTRIES)
        )
        assert isinstance(page, LogEntries) and page.start == len(leaves)
        assert 0 < len(page.entries) <= limits.MAX_LOG_ENTRIES
        for entry in page.entries:
            decode_entry(entry)
            leaves.append(merkle.leaf_hash(entry))
    assert merkle.root_of(leaves[: head.size]) == head.root
    past = await auditor.request(lambda i: LogEntriesFetch(id=i, start=2**62, count=5))
    assert isinstance(past, LogEntries) and past.entries == ()


@pytest.mark.spec("15.6")
async def test_proofs_only_for_signed_trees_and_known_leaves(relay):
    """§15.6 rule 1: a size past the newest signed head, a ``first`` past ``second``, an
    entry the log does not hold and bytes that are no entry get 601; a proof from size 0, or a count over MAX_LOG_ENTRIES, is
    malformed (100). The connection stays usable. Two businesses, so the signed log holds
    two entries at least and ``first`` past ``second`` is a case on a fresh relay too (with
    one, first = second = 1 is a valid request)."""
    await relay.business()
    await relay.business()
    auditor = await relay.connect()
    head = await head_at_least(auditor, 2)
    beyond = head.size + 10**9
    unlogged = StatementLogged(v=1, commitment=bytes(32), at=0).to_bytes()
    cases = [
        (lambda i: LogInclusionFetch(id=i, entry=unlogged, size=head.size), 601),
        (lambda i: LogInclusionFetch(id=i, entry=b"no entry", size=head.size), 601),
        (lambda i: LogInclusionFetch(id=i, entry=unlogged, size=beyond), 601),
        (lambda i: LogConsistencyFetch(id=i, first=1, second=beyond), 601),
        (lambda i: LogConsistencyFetch(id=i, first=head.size, second=head.size - 1), 601),
    ]
    for build, expected in cases:
        answer = await auditor.request(build)
        assert code(answer) == expected, answer
    for raw in (
        {"t": 52, "id": 90, "first": 0, "second": 1},
        {"t": 56, "id": 91, "start": 0, "count": limits.MAX_LOG_ENTRIES + 1},
    ):
        await auditor.send_raw(msgpack.packb(raw), expect_re=raw["id"])
        assert code(await auditor.response(raw["id"])) == 100
    assert isinstance(await newest_head(auditor), TreeHead)


@pytest.mark.spec("15.6")
async def test_discoverable_publishes_a_users_key(relay):
    """§15.6 rule 4: a user's key is logged only after DISCOVERABLE, then BUNDLE proves
    it; a second DISCOVERABLE, and a business's, are answered OK."""
    alice = await relay.user(signed=True)
    bob = await relay.user()
    shop = await relay.business(signed=True)
    await proven_bundle(bob, shop.handle)  # a head now covers everything before the shop
    unproven = await bob.request(lambda i: BundleFetch(id=i, handle=alice.handle))
    assert isinstance(unproven, Bundle) and unproven.log is None
    assert isinstance(await alice.request(lambda i: Discoverable(id=i)), Ok)
    binding, _ = check_bundle_proof(
        await proven_bundle(bob, alice.handle), bob.hello.relay_key
    )
    assert (binding.kind, binding.identity_key) == ("user", alice.account.public)
    assert isinstance(await alice.request(lambda i: Discoverable(id=i)), Ok)
    assert isinstance(await shop.request(lambda i: Discoverable(id=i)), Ok)
