"""Skipped message keys across a profile's sessions (client/skipped_keys.py, SPEC §13.4).

The Double Ratchet bounds what one session keeps (``MAX_SKIPPED_KEYS``); every stranger can
start a session, so strangers together could make a client keep any number: each sent one
message whose header claimed message number 1000, and the victim derived and stored 1000
message keys (~72 KB sealed on disk, ~250 KB once decoded) for each of them, for ever.

Unit tests first (session managers in memory, each message handed over as the relay would
deliver it), then the attack through a real relay.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.message_requests import MessageRequests
from blindrelay.client.sdk import Client
from blindrelay.client.sessions import SessionManager
from blindrelay.client.skipped_keys import (
    DAY_MS,
    MAX_SESSIONS_WITH_SKIPPED_KEYS,
    MAX_SKIPPED_KEYS_TOTAL,
    SKIPPED_KEYS_TTL_MS,
)
from blindrelay.protocol import frames
from blindrelay.protocol.content import CHAT, Content, Text, encode_content
from blindrelay.protocol.crypto import ratchet
from blindrelay.protocol.crypto.session import Session
from blindrelay.protocol.errors import DuplicatedMessage

from ..protocol.spec import SPEC
from ..relays import FakeClock, relay_at
from .harness import Inbox, online, within

_ids = itertools.count(1)


class Victim:
    """One user's session manager, its message requests (``accept`` makes a contact) and
    the bundle its prekeys make (no one-time prekey: any number of first messages start
    sessions on the signed prekey)."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        store = MemoryKeyStore()
        self.sessions = SessionManager(store, clock=self.clock)
        self.requests = MessageRequests(store)
        self.sessions.create_identity("victim", "user")
        upload = self.login()
        assert upload is not None and upload.signed_prekey is not None
        self.bundle = frames.Bundle(
            re=1, handle="victim", kind="user",
            identity_key=self.sessions.identity.identity_public,
            signed_prekey=upload.signed_prekey,
        )  # fmt: skip

    def login(self) -> frames.PrekeysUpload | None:
        """What the SDK does at each WELCOME (client/prekeys.py)."""
        return self.sessions.prekeys_upload(1, relay_one_time=0, relay_has_signed=False)

    def skipped(self, handle: str) -> int:
        """Skipped keys the stored session with ``handle`` holds."""
        blob = self.sessions.store.load_session(handle)
        return 0 if blob is None else len(Session.from_bytes(blob).ratchet.skipped)

    def total(self) -> int:
        """Skipped keys the budget counts."""
        return sum(holder.count for holder in self.sessions.store.skipped_key_holders())


def account(handle: str, victim: Victim) -> SessionManager:
    """An account with a session to the victim (its first message not sent yet): a
    stranger until the victim writes to it or accepts its request."""
    sessions = SessionManager(MemoryKeyStore())
    sessions.create_identity(handle, "user")
    sessions.start_session(victim.bundle)
    return sessions


def message(
    sender: SessionManager, text: str, *, skip: int = 0, kind: str = "user"
) -> frames.Deliver:
    """The DELIVER of ``text`` from ``sender`` (an account of ``kind``) to the victim,
    ``skip`` message keys after its previous one (spent here and never sent)."""
    for _ in range(skip):
        sender.encrypt("victim", b"")
    msg_id = next(_ids).to_bytes(16, "big")
    body = sender.encrypt("victim", encode_content(Content(msg_id, Text(text))))
    return frames.Deliver(
        delivery_id=next(_ids), sender=sender.identity.handle, sender_kind=kind,
        msg_id=msg_id, intent=CHAT.intent, sent_at=1, body=body,
    )  # fmt: skip


def test_a_strangers_delayed_message_reads_until_newer_gaps_push_its_key_out() -> None:
    """Between strangers (alice's messages are requests: the victim never wrote to her)
    the session that gained skipped keys least recently loses them first: ten other
    strangers' 1,000-key gaps push out the key of alice's delayed message."""
    victim = Victim()
    alice = account("alice", victim)
    delayed = message(alice, "sent first, arrives last")
    assert victim.sessions.receive(message(alice, "overtakes it")) is not None
    assert victim.skipped("alice") == 1

    jump = ratchet.MAX_FORWARD_JUMP
    fits = (MAX_SKIPPED_KEYS_TOTAL - 1) // jump  # strangers whose gaps leave alice's key
    strangers = [account(f"stranger{i}", victim) for i in range(fits + 1)]
    for stranger in strangers[:fits]:
        victim.sessions.receive(message(stranger, "hi", skip=jump))
    incoming = victim.sessions.receive(delayed)
    assert incoming is not None and incoming.content.body == Text("sent first, arrives last")

    delayed = message(alice, "delayed again")
    victim.sessions.receive(message(alice, "overtakes it again"))  # alice's key: the newest
    victim.sessions.receive(message(strangers[-1], "hi", skip=jump))
    assert [victim.skipped(f"stranger{i}") for i in (0, 1)] == [0, jump]  # the oldest went
    assert victim.sessions.receive(delayed) is not None

    delayed = message(alice, "delayed past the flood")
    victim.sessions.receive(message(alice, "overtakes it"))
    for stranger in strangers:  # each gains keys anew: alice's are the oldest now
        victim.sessions.receive(message(stranger, "again", skip=jump))
    assert victim.skipped("alice") == 0
    with pytest.raises(DuplicatedMessage):  # refused, as any message of a dropped key
        victim.sessions.receive(delayed)
    handles = [stranger.identity.handle for stranger in strangers]
    assert victim.total() == sum(victim.skipped(handle) for handle in handles)
    assert victim.total() <= MAX_SKIPPED_KEYS_TOTAL


def test_strangers_gaps_never_push_out_a_contacts_skipped_keys() -> None:
    """The attack on a contact: strangers' forged gaps, as many as they like, evicted the
    key of a contact's overtaken message (it read after 9 strangers' gaps and was dropped
    after the 10th). Contacts' keys go only once strangers hold none."""
    victim = Victim()
    alice = account("alice", victim)  # a user whose request the victim accepted
    airline = account("airline", victim)  # a business: it may write only with consent
    alice_delayed = message(alice, "sent first, arrives last")
    assert victim.sessions.receive(message(alice, "overtakes it")) is not None
    victim.requests.accept("alice")
    airline_delayed = message(airline, "gate B12", kind="business")
    assert victim.sessions.receive(message(airline, "boarding", kind="business")) is not None
    assert victim.skipped("alice") == victim.skipped("airline") == 1

    jump = ratchet.MAX_FORWARD_JUMP
    strangers = 2 * MAX_SKIPPED_KEYS_TOTAL // jump  # twice as many as fill the budget
    for i in range(strangers):
        victim.sessions.receive(message(account(f"stranger{i}", victim), "hi", skip=jump))
        assert victim.total() <= MAX_SKIPPED_KEYS_TOTAL
    assert victim.skipped("alice") == victim.skipped("airline") == 1
    assert victim.skipped("stranger0") == 0  # strangers push out each other's keys
    assert victim.skipped(f"stranger{strangers - 1}") == jump
    incoming = victim.sessions.receive(alice_delayed)
    assert incoming is not None and incoming.content.body == Text("sent first, arrives last")
    incoming = victim.sessions.receive(airline_delayed)
    assert incoming is not None and incoming.content.body == Text("gate B12")


def test_strangers_sessions_never_push_a_contact_out_of_the_bound_of_sessions() -> None:
    victim = Victim()
    alice = account("alice", victim)
    victim.requests.accept("alice")
    delayed = message(alice, "delayed")
    victim.sessions.receive(message(alice, "overtakes it"))
    for i in range(MAX_SESSIONS_WITH_SKIPPED_KEYS + 4):
        victim.sessions.receive(message(account(f"stranger{i}", victim), "hi", skip=1))
    holders = victim.sessions.store.skipped_key_holders()
    assert len(holders) == MAX_SESSIONS_WITH_SKIPPED_KEYS
    assert holders[0].handle == "alice"
    assert victim.sessions.receive(delayed) is not None


def test_only_contacts_holding_the_whole_budget_push_out_a_contacts_keys() -> None:
    """What is left to an attacker who IS a contact: its session keeps at most the
    ratchet's MAX_SKIPPED_KEYS (1,000) however many gaps it forges, one tenth of the
    budget, so it alone pushes out no other contact's keys; contacts' keys go (oldest
    first) only once contacts alone hold the whole budget: ten contacts' full gaps. A
    stranger's gap then costs the stranger its own keys, never a contact's."""
    victim = Victim()
    jump = ratchet.MAX_FORWARD_JUMP
    full = MAX_SKIPPED_KEYS_TOTAL // jump  # contacts at the cap that fill the budget
    contacts = [account(f"contact{i}", victim) for i in range(full + 1)]
    for sender in contacts:
        victim.requests.accept(sender.identity.handle)
    alice, mallory, others = contacts[0], contacts[1], contacts[2:]
    delayed = message(alice, "delayed")
    victim.sessions.receive(message(alice, "overtakes it"))
    for _ in range(5):  # mallory, a contact, forges gap after gap
        victim.sessions.receive(message(mallory, "gap", skip=jump))
        assert victim.skipped("contact1") == ratchet.MAX_SKIPPED_KEYS
    assert victim.skipped("contact0") == 1

    for sender in others[:-1]:  # 9,000 keys of contacts after alice's 1
        victim.sessions.receive(message(sender, "gap", skip=jump))
    assert victim.skipped("contact0") == 1
    victim.sessions.receive(message(others[-1], "gap", skip=jump))
    assert victim.skipped("contact0") == 0  # the budget held by contacts alone: oldest went
    assert victim.total() == MAX_SKIPPED_KEYS_TOTAL
    with pytest.raises(DuplicatedMessage):
        victim.sessions.receive(delayed)

    stranger = account("stranger", victim)
    assert victim.sessions.receive(message(stranger, "hi", skip=jump)) is not None
    assert victim.skipped("stranger") == 0  # its own keys went, no contact's
    assert [victim.skipped(sender.identity.handle) for sender in contacts[1:]] == [jump] * full
    assert victim.total() == MAX_SKIPPED_KEYS_TOTAL


def test_a_strangers_keys_refused_for_contacts_are_not_kept_decoded_in_memory() -> None:
    """A stranger's session stored, then rewritten without its keys because only contacts'
    could have made room: its decoded copy with the keys must not stay in memory."""
    victim = Victim()
    jump = ratchet.MAX_FORWARD_JUMP
    for i in range(MAX_SKIPPED_KEYS_TOTAL // jump):
        victim.requests.accept(f"contact{i}")
        victim.sessions.receive(message(account(f"contact{i}", victim), "gap", skip=jump))
    assert victim.total() == MAX_SKIPPED_KEYS_TOTAL
    strangers = [account(f"stranger{i}", victim) for i in range(12)]
    deliveries = [message(stranger, "gap", skip=jump) for stranger in strangers]
    tracemalloc.start()
    try:
        for deliver in deliveries:
            assert victim.sessions.receive(deliver) is not None
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [victim.skipped(stranger.identity.handle) for stranger in strangers] == [0] * 12
    assert held < len(strangers) * jump * 100  # ~250 bytes a decoded key: 3 MB if kept


def test_no_more_than_the_bound_of_sessions_hold_skipped_keys() -> None:
    victim = Victim()
    handles = [f"stranger{i}" for i in range(MAX_SESSIONS_WITH_SKIPPED_KEYS + 4)]
    for handle in handles:
        victim.sessions.receive(message(account(handle, victim), "hi", skip=1))
    held = [victim.skipped(handle) for handle in handles]
    assert held == [0] * 4 + [1] * MAX_SESSIONS_WITH_SKIPPED_KEYS
    holders = victim.sessions.store.skipped_key_holders()
    assert [holder.handle for holder in holders] == handles[4:]


def test_skipped_keys_go_at_the_login_after_a_month_without_new_ones() -> None:
    victim = Victim()
    alice = account("alice", victim)
    delayed = [message(alice, f"delayed {i}") for i in range(2)]
    victim.sessions.receive(message(alice, "overtakes them"))
    victim.clock.advance(SKIPPED_KEYS_TTL_MS - 1)
    victim.login()
    assert victim.sessions.receive(delayed[0]) is not None  # using one renews nothing
    assert victim.total() == 1
    victim.clock.advance(1)
    victim.login()
    assert victim.skipped("alice") == 0 and victim.total() == 0
    with pytest.raises(DuplicatedMessage):
        victim.sessions.receive(delayed[1])
    assert victim.sessions.receive(message(alice, "and on it goes")) is not None


def test_decoded_sessions_in_memory_hold_no_more_than_the_stored_ones() -> None:
    """A session replaced by a new first message (holding no skipped key) must not stay
    decoded in memory as it was: each stranger could leave its 1,000 keys there."""
    victim = Victim()
    jump = ratchet.MAX_FORWARD_JUMP
    strangers = 12
    deliveries = []
    for i in range(strangers):
        stranger = account(f"stranger{i}", victim)
        deliveries += [message(stranger, "gap", skip=jump), message(stranger, "loads it")]
        stranger.start_session(victim.bundle)  # another first message: another session
        deliveries.append(message(stranger, "anew"))
    tracemalloc.start()
    try:
        for deliver in deliveries:
            assert victim.sessions.receive(deliver) is not None
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert victim.total() == 0
    assert held < strangers * jump * 100  # ~250 bytes a decoded key: 3 MB if they stayed


def test_the_spec_states_the_bounds_this_client_keeps() -> None:
    assert f"| `MAX_SKIPPED_KEYS_TOTAL` | {MAX_SKIPPED_KEYS_TOTAL:,} |" in SPEC
    assert f"| `MAX_SESSIONS_WITH_SKIPPED_KEYS` | {MAX_SESSIONS_WITH_SKIPPED_KEYS} |" in SPEC
    assert f"| `SKIPPED_KEYS_TTL_MS` | {SKIPPED_KEYS_TTL_MS // DAY_MS} days |" in SPEC


def test_strangers_whose_keys_the_budget_dropped_are_not_kept_decoded_in_memory() -> None:
    """Strangers' gaps push out each other's keys: each session that loses them is
    rewritten and its decoded copy forgotten, so memory holds the budget's keys, not every
    stranger's (measured 2.7 MB for 40 strangers' 1,000-key gaps; ~10 MB if kept)."""
    victim = Victim()
    jump = ratchet.MAX_FORWARD_JUMP
    strangers = [account(f"stranger{i}", victim) for i in range(40)]
    deliveries = [message(stranger, "gap", skip=jump) for stranger in strangers]
    tracemalloc.start()
    try:
        for deliver in deliveries:
            assert victim.sessions.receive(deliver) is not None
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert victim.total() == MAX_SKIPPED_KEYS_TOTAL
    assert held < MAX_SKIPPED_KEYS_TOTAL * 500  # ~250 bytes a decoded key: twice the budget


def test_a_session_whose_last_skipped_key_is_used_leaves_the_list() -> None:
    """A holder of no key would take one of the list's places (and count towards its
    bound) for nothing."""
    victim = Victim()
    alice = account("alice", victim)
    delayed = message(alice, "sent first, arrives last")
    victim.sessions.receive(message(alice, "overtakes it"))
    assert [holder.handle for holder in victim.sessions.store.skipped_key_holders()] == ["alice"]

    assert victim.sessions.receive(delayed) is not None

    assert victim.sessions.store.skipped_key_holders() == []


def test_a_holder_past_the_ttl_loses_its_keys_when_the_list_next_changes() -> None:
    """The TTL is applied whenever the list changes, not only at a login: exactly
    ``SKIPPED_KEYS_TTL_MS`` after it last gained keys, a session loses them at the next
    change, a millisecond earlier it keeps them."""
    victim = Victim()
    alice = account("alice", victim)
    victim.sessions.receive(message(alice, "overtakes a lost one", skip=1))
    victim.clock.advance(SKIPPED_KEYS_TTL_MS - 1)
    victim.sessions.receive(message(account("bob", victim), "hi", skip=1))
    assert victim.skipped("alice") == 1
    victim.clock.advance(1)

    victim.sessions.receive(message(account("carol", victim), "hi", skip=1))

    assert victim.skipped("alice") == 0
    holders = victim.sessions.store.skipped_key_holders()
    assert [holder.handle for holder in holders] == ["bob", "carol"]


def test_a_session_at_the_ratchets_cap_that_gains_keys_is_renewed() -> None:
    """A session at ``MAX_SKIPPED_KEYS`` that skips more keeps as many keys (the ratchet
    trims its oldest) but holds new ones: it gained keys now, so its TTL starts again."""
    victim = Victim()
    alice = account("alice", victim)
    victim.sessions.receive(message(alice, "gap", skip=ratchet.MAX_FORWARD_JUMP))
    assert victim.skipped("alice") == ratchet.MAX_SKIPPED_KEYS
    victim.clock.advance(SKIPPED_KEYS_TTL_MS - DAY_MS)
    victim.sessions.receive(message(alice, "another gap", skip=5))
    assert victim.skipped("alice") == ratchet.MAX_SKIPPED_KEYS
    victim.clock.advance(DAY_MS)

    victim.login()

    assert victim.skipped("alice") == ratchet.MAX_SKIPPED_KEYS


def test_keys_of_a_session_the_list_does_not_name_join_it_at_its_next_message() -> None:
    """A profile from before the budget holds sessions with skipped keys and no list: such
    a session is noted at its next message that changes its keys, so from then on its keys
    count and expire like any other's."""
    victim = Victim()
    alice = account("alice", victim)
    delayed = [message(alice, f"delayed {i}") for i in range(2)]
    victim.sessions.receive(message(alice, "overtakes them"))
    victim.sessions.store.set_skipped_key_holders([])  # as before the budget

    assert victim.sessions.receive(delayed[0]) is not None

    [holder] = victim.sessions.store.skipped_key_holders()
    assert (holder.handle, holder.count) == ("alice", 1)
    victim.clock.advance(SKIPPED_KEYS_TTL_MS)
    victim.login()
    assert victim.skipped("alice") == 0


# --- Through a real relay ------------------------------------------------------------


def skipping(client: Client, count: int) -> Callable[[str, bytes], bytes]:
    """``client``'s encrypt, made to spend ``count`` message keys first: the next message's
    header claims ``count`` more messages than its recipient has seen (a forgery costs
    the sender nothing more, it knows every key of its own chain)."""
    encrypt = client.sessions.encrypt

    def spend_then_encrypt(handle: str, plaintext: bytes) -> bytes:
        for _ in range(count):
            encrypt(handle, b"")
        return encrypt(handle, plaintext)

    return spend_then_encrypt


def skipped_keys(client: Client, handles: list[str]) -> list[int]:
    """How many skipped keys ``client``'s stored session with each of ``handles`` holds."""
    counts = []
    for handle in handles:
        blob = client.store.load_session(handle)
        counts.append(0 if blob is None else len(Session.from_bytes(blob).ratchet.skipped))
    return counts


async def strangers_forge_gaps(
    url: str, handles: list[str], inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of ``handles`` registers and sends "victim" one first message whose header
    claims the largest gap accepted; each arrives as a message request."""
    for handle in handles:
        stranger = await online(url, handle)
        monkeypatch.setattr(
            stranger.sessions, "encrypt", skipping(stranger, ratchet.MAX_FORWARD_JUMP)
        )
        await within(stranger.send("victim", f"hello from {handle}"))
        message = await inbox.next()
        assert message.sender == handle and message.is_request
        await stranger.close()


async def test_strangers_cannot_make_a_client_keep_more_than_the_total_of_skipped_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strangers = MAX_SKIPPED_KEYS_TOTAL // ratchet.MAX_FORWARD_JUMP + 3
    async with relay_at(tmp_path) as relay:
        victim = await online(relay.url, "victim")
        inbox = Inbox(victim)
        handles = [f"stranger{i}" for i in range(strangers)]
        await strangers_forge_gaps(relay.url, handles, inbox, monkeypatch)

        counts = skipped_keys(victim, handles)
        assert sum(counts) <= MAX_SKIPPED_KEYS_TOTAL
        # the newest stranger's keys are the ones kept; the oldest strangers' went first
        assert counts[-1] == ratchet.MAX_FORWARD_JUMP
        assert counts[0] == 0
        await inbox.close()
        await victim.close()


async def test_strangers_through_a_relay_leave_a_contacts_skipped_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's wiring: whom the client wrote to is a contact of its budget."""
    strangers = MAX_SKIPPED_KEYS_TOTAL // ratchet.MAX_FORWARD_JUMP + 3
    async with relay_at(tmp_path) as relay:
        victim = await online(relay.url, "victim")
        inbox = Inbox(victim)
        alice = await online(relay.url, "alice")
        alice_inbox = Inbox(alice)
        await within(victim.send("alice", "hello alice"))  # alice is a contact now
        assert (await alice_inbox.next()).body == "hello alice"
        monkeypatch.setattr(alice.sessions, "encrypt", skipping(alice, 1))
        await within(alice.send("victim", "the one before this is late"))
        message = await inbox.next()
        assert message.sender == "alice" and not message.is_request
        assert skipped_keys(victim, ["alice"]) == [1]

        handles = [f"stranger{i}" for i in range(strangers)]
        await strangers_forge_gaps(relay.url, handles, inbox, monkeypatch)

        assert skipped_keys(victim, ["alice"]) == [1]
        assert sum(skipped_keys(victim, handles)) <= MAX_SKIPPED_KEYS_TOTAL - 1
        for reader in (inbox, alice_inbox):
            await reader.close()
        await alice.close()
        await victim.close()
