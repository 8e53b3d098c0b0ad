"""Key custody + crypto orchestration (client/sessions.py), in memory, no relay.

A tiny directory stands in for the relay's prekey directory: it serves what a
PREKEYS_UPLOAD published as BUNDLE frames, one one-time prekey per fetch.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

import msgpack
import pytest

from blindrelay.client.incoming import Incoming
from blindrelay.client.keystore import IdentityStatus, IncomingMessage, MemoryKeyStore, OurIdentity
from blindrelay.client.sessions import ONE_TIME_PREKEY_TARGET, NoSession, SessionManager
from blindrelay.client.trust import IdentityState
from blindrelay.protocol import frames
from blindrelay.protocol.content import (
    CHAT,
    Content,
    Data,
    Labels,
    MalformedContent,
    Receipt,
    ReceiptType,
    Text,
    encode_content,
)
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import (
    BlindrelayError,
    DecryptionFailed,
    DuplicatedMessage,
    IdentityKeyReused,
    InvalidSignature,
    UntrustedIdentity,
)

from .session_pair import Clock, Directory, Pair, make_manager


@pytest.fixture
def pair() -> Pair:
    return Pair()


def test_first_upload_publishes_a_signed_prekey_and_a_full_batch() -> None:
    manager = make_manager("alice", 1)
    upload = manager.prekeys_upload(7, relay_one_time=0, relay_has_signed=False)
    assert upload is not None and upload.id == 7
    assert upload.signed_prekey is not None
    assert len(upload.one_time) == ONE_TIME_PREKEY_TARGET
    store = manager.store
    assert store.one_time_prekey_ids() == sorted(k.key_id for k in upload.one_time)
    current = store.current_signed_prekey()
    assert current is not None and current.public_key == upload.signed_prekey.public
    ids = [upload.signed_prekey.key_id, *(k.key_id for k in upload.one_time)]
    assert len(set(ids)) == len(ids)


def test_upload_tops_up_only_what_is_missing_and_reuses_the_signed_prekey() -> None:
    manager = make_manager("alice", 1)
    first = manager.prekeys_upload(1, relay_one_time=0, relay_has_signed=False)
    assert (
        manager.prekeys_upload(2, relay_one_time=ONE_TIME_PREKEY_TARGET, relay_has_signed=True)
        is None
    )
    top_up = manager.prekeys_upload(3, relay_one_time=15, relay_has_signed=True)
    assert top_up is not None and top_up.signed_prekey is None
    assert len(top_up.one_time) == ONE_TIME_PREKEY_TARGET - 15
    assert first is not None
    assert not {k.key_id for k in top_up.one_time} & {k.key_id for k in first.one_time}
    again = manager.prekeys_upload(4, relay_one_time=ONE_TIME_PREKEY_TARGET, relay_has_signed=False)
    assert again is not None and again.signed_prekey == first.signed_prekey and not again.one_time


def test_messages_flow_both_ways_with_tofu_states(pair: Pair) -> None:
    assert pair.alice.start_session(pair.directory.bundle("bob")) is IdentityStatus.NEW
    deliver = pair.envelope(pair.alice, "bob", Text("hi bob"))
    one_time_before = len(pair.bob.store.one_time_prekey_ids())

    incoming = pair.bob.receive(deliver)

    assert incoming is not None
    assert incoming.content.body == Text("hi bob") and incoming.sender == "alice"
    assert incoming.identity is IdentityState.NEW
    assert len(pair.bob.store.one_time_prekey_ids()) == one_time_before - 1
    [stored] = pair.bob.store.pending_messages()
    assert Incoming.from_record(stored) == incoming

    answer = pair.alice.receive(pair.envelope(pair.bob, "alice", Data(b"\x00hi alice")))
    assert answer is not None and answer.content.body == Data(b"\x00hi alice")
    assert answer.identity is IdentityState.TRUSTED
    second = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("again")))
    assert second is not None and second.identity is IdentityState.TRUSTED


def test_a_bundle_with_a_bad_signature_pins_nothing(pair: Pair) -> None:
    bundle = pair.directory.bundle("bob")
    forged = replace(
        bundle,
        signed_prekey=frames.SignedPreKeyRecord(
            bundle.signed_prekey.key_id, bytes(31) + b"\x09", bundle.signed_prekey.signature
        ),
    )
    with pytest.raises(InvalidSignature):
        pair.alice.start_session(forged)
    assert pair.alice.store.get_trusted_identity("bob") is None
    assert not pair.alice.has_session("bob")


def test_a_changed_key_in_a_bundle_blocks_sending_until_approved(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    pair.envelope(pair.alice, "bob", Text("before"))
    number_before = pair.alice.trust.safety_number("bob")
    impostor = make_manager("bob", 99)
    pair.directory.accounts.pop("bob")
    pair.directory.publish(impostor)

    with pytest.raises(UntrustedIdentity):
        pair.alice.start_session(pair.directory.bundle("bob"))
    # Surfaced before the next send, even on the old, still valid session.
    with pytest.raises(UntrustedIdentity):
        pair.alice.encrypt("bob", b"x")
    assert pair.alice.trust.safety_number("bob") != number_before  # the new key's number

    pair.alice.trust.approve("bob")
    with pytest.raises(NoSession):
        pair.alice.encrypt("bob", b"x")
    assert pair.alice.start_session(pair.directory.bundle("bob")) is IdentityStatus.TRUSTED
    incoming = impostor.receive(pair.envelope(pair.alice, "bob", Text("to the new key")))
    assert incoming is not None and incoming.content.body == Text("to the new key")


def test_a_changed_key_in_a_prekey_message_is_held_until_approved(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    assert pair.bob.receive(pair.envelope(pair.alice, "bob", Text("hello"))) is not None
    reinstalled = make_manager("alice", 42)
    reinstalled.start_session(pair.directory.bundle("bob"))
    deliver = pair.envelope(reinstalled, "bob", Text("new phone"))

    with pytest.raises(UntrustedIdentity):
        pair.bob.receive(deliver)
    assert not pair.bob.store.is_processed(deliver.sender, deliver.msg_id)
    with pytest.raises(UntrustedIdentity):
        pair.bob.encrypt("alice", b"reply")

    pair.bob.trust.approve("alice")
    incoming = pair.bob.receive(deliver)
    assert incoming is not None and incoming.content.body == Text("new phone")
    assert incoming.identity is IdentityState.TRUSTED
    assert pair.bob.encrypt("alice", b"reply")


def test_a_duplicate_delivery_is_dropped_without_decrypting(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    deliver = pair.envelope(pair.alice, "bob", Text("once"))
    assert pair.bob.receive(deliver) is not None
    assert pair.bob.receive(deliver) is None
    assert pair.bob.receive(replace(deliver, delivery_id=999)) is None
    assert len(pair.bob.store.pending_messages()) == 1


def test_a_replay_under_a_fresh_msg_id_fails_to_decrypt(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    pair.bob.receive(pair.envelope(pair.alice, "bob", Text("first")))
    pair.alice.receive(pair.envelope(pair.bob, "alice", Text("reply")))
    deliver = pair.envelope(pair.alice, "bob", Text("second"))
    assert pair.bob.receive(deliver) is not None
    with pytest.raises(DuplicatedMessage):
        pair.bob.receive(replace(deliver, msg_id=bytes(16)))


def test_out_of_order_deliveries_all_decrypt(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    delivers = [pair.envelope(pair.alice, "bob", Text(f"m{i}")) for i in range(8)]
    pair.bob.receive(delivers.pop(0))
    pair.alice.receive(pair.envelope(pair.bob, "alice", Text("ack")))
    delivers += [pair.envelope(pair.alice, "bob", Text(f"n{i}")) for i in range(8)]
    random.Random(7).shuffle(delivers)

    texts = []
    for deliver in delivers:
        incoming = pair.bob.receive(deliver)
        assert incoming is not None
        assert isinstance(incoming.content.body, Text)
        texts.append(incoming.content.body.text)
    assert sorted(texts) == sorted([f"m{i}" for i in range(1, 8)] + [f"n{i}" for i in range(8)])
    assert texts != sorted(texts)


class CrashingStore(MemoryKeyStore):
    """Dies at commit time: the process ends between decrypt and persistence."""

    crash = True

    def commit_incoming(self, message: IncomingMessage, session_blob: bytes, **kw: object) -> bool:
        if self.crash:
            raise KeyboardInterrupt
        return super().commit_incoming(message, session_blob, **kw)  # type: ignore[arg-type]


def test_a_crash_before_the_commit_keeps_the_one_time_prekey_for_the_redelivery() -> None:
    directory = Directory()
    store = CrashingStore()
    bob = SessionManager(store, rng=random.Random(2).randbytes, clock=Clock())
    bob.create_identity("bob", "user")
    alice = make_manager("alice", 1)
    directory.publish(bob)
    directory.publish(alice)
    alice.start_session(directory.bundle("bob"))
    pair = Pair.__new__(Pair)
    pair.msg_ids, pair.delivery_id = random.Random(5), 0
    deliver = pair.envelope(alice, "bob", Text("survives"))
    before = store.one_time_prekey_ids()

    with pytest.raises(KeyboardInterrupt):
        bob.receive(deliver)
    assert store.one_time_prekey_ids() == before
    assert store.load_session("alice") is None

    store.crash = False
    restarted = SessionManager(store, rng=random.Random(9).randbytes, clock=Clock())
    incoming = restarted.receive(deliver)
    assert incoming is not None and incoming.content.body == Text("survives")
    assert len(store.one_time_prekey_ids()) == len(before) - 1
    assert restarted.receive(deliver) is None


def test_content_that_does_not_parse_advances_the_session_and_shows_nothing(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    garbage = pair.alice.encrypt("bob", b"not msgpack content")
    deliver = frames.Deliver(
        delivery_id=1,
        sender="alice",
        sender_kind="user",
        msg_id=bytes(16),
        intent="chat",
        sent_at=1,
        body=garbage,
    )
    with pytest.raises(MalformedContent):
        pair.bob.receive(deliver)
    assert pair.bob.store.is_processed("alice", bytes(16))
    assert pair.bob.store.pending_messages() == []
    later = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("fine")))
    assert later is not None and later.content.body == Text("fine")


def test_content_relabelled_by_the_relay_is_refused(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    deliver = pair.envelope(pair.alice, "bob", Text("mine"))
    with pytest.raises(MalformedContent):
        pair.bob.receive(replace(deliver, msg_id=b"\x01" * 16))


NOTIFY_UTILITY = Labels("notification", "utility")
ASK_UTILITY = Labels("consent_request", None, ("utility",))


@pytest.mark.parametrize(
    ("sent", "delivered"),
    [
        (CHAT, ASK_UTILITY),
        (CHAT, NOTIFY_UTILITY),
        (NOTIFY_UTILITY, Labels("notification", "marketing")),
        (NOTIFY_UTILITY, CHAT),
        (ASK_UTILITY, Labels("consent_request", None, ("marketing",))),
        (ASK_UTILITY, Labels("consent_request", None, ("utility", "marketing"))),
        (ASK_UTILITY, NOTIFY_UTILITY),
    ],
    ids=str,
)
def test_labels_the_relay_rewrote_are_refused_and_nothing_is_shown(
    pair: Pair, sent: Labels, delivered: Labels
) -> None:
    """SPEC §13.11 rule 4: the DELIVER's intent, category and categories must be the ones
    inside the ciphertext; refused content is recorded, shows nothing, and the session
    goes on (rule 5)."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    honest = pair.envelope(pair.alice, "bob", Text("the real labels"), sent)
    incoming = pair.bob.receive(honest)
    assert incoming is not None and incoming.content.labels == sent
    assert (incoming.intent, incoming.category, incoming.categories) == (
        sent.intent, sent.category, sent.categories,
    )  # fmt: skip

    deliver = pair.envelope(pair.alice, "bob", Text("relabelled"), sent)
    relabelled = replace(
        deliver,
        intent=delivered.intent,
        category=delivered.category,
        categories=delivered.categories,
    )
    with pytest.raises(MalformedContent, match=re.escape(f"{sent} inside, {delivered} on the frame")):
        pair.bob.receive(relabelled)
    assert pair.bob.store.is_processed("alice", deliver.msg_id)
    assert [m.msg_id for m in pair.bob.store.pending_messages()] == [honest.msg_id]
    later = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("fine")))
    assert later is not None and later.content.body == Text("fine")


def test_an_inbox_row_kept_before_content_version_2_still_reads(pair: Pair) -> None:
    """Rows of inbox versions 1 and 2 hold content of version 1, accepted (and acknowledged)
    before the upgrade: they read with the labels of their DELIVER, not dropped."""
    v1 = msgpack.packb(
        {"v": 1, "id": b"\x07" * 16, "kind": "text", "text": "kept"}, use_bin_type=True
    )
    rows = {
        1: [1, "business", "chat", 5, "trusted", v1],
        2: [2, "business", "notification", 5, "trusted", v1, "utility", None],
    }
    for version, fields in rows.items():
        row = IncomingMessage(b"\x07" * 16, "airline", 6, msgpack.packb(fields, use_bin_type=True))
        incoming = Incoming.from_record(row)
        assert incoming.content.body == Text("kept"), version
        frame_labels = Labels(incoming.intent, incoming.category, incoming.categories)
        assert incoming.content.labels == frame_labels, version
    current = IncomingMessage(
        b"\x07" * 16, "airline", 6, msgpack.packb([3, *rows[2][1:]], use_bin_type=True)
    )
    with pytest.raises(MalformedContent):  # a row of version 3 holds version 2 content
        Incoming.from_record(current)


def test_a_message_without_a_session_cannot_decrypt(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    pair.bob.receive(pair.envelope(pair.alice, "bob", Text("first")))
    reply = pair.envelope(pair.bob, "alice", Text("reply"))
    pair.alice.store.delete_session("bob")
    with pytest.raises(DecryptionFailed):
        pair.alice.receive(reply)


def test_safety_numbers_match_and_verification_shows_on_messages(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    pair.bob.receive(pair.envelope(pair.alice, "bob", Text("hi")))
    assert pair.alice.trust.safety_number("bob") == pair.bob.trust.safety_number("alice")
    assert len(pair.alice.trust.safety_number("bob")) == 60
    with pytest.raises(KeyError):
        pair.alice.trust.safety_number("carol")

    pair.bob.trust.approve("alice", verified=True)
    assert pair.bob.trust.state("alice") is IdentityState.VERIFIED
    incoming = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("verified?")))
    assert incoming is not None and incoming.identity is IdentityState.VERIFIED


def test_receipts_are_content_like_any_other(pair: Pair) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    first = pair.envelope(pair.alice, "bob", Text("read me"))
    pair.bob.receive(first)
    receipt = pair.alice.receive(
        pair.envelope(pair.bob, "alice", Receipt(ReceiptType.READ, (first.msg_id,)))
    )
    assert receipt is not None
    assert receipt.content.body == Receipt(ReceiptType.READ, (first.msg_id,))
    assert receipt.intent == "chat"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_commit_incoming_deletes_the_used_one_time_prekey_with_the_commit(
    kind: str, tmp_path
) -> None:
    import nacl.pwhash.argon2id as argon2id

    from blindrelay.client.keystore import OneTimePreKeyRecord, SqliteKeyStore

    store = (
        MemoryKeyStore()
        if kind == "memory"
        else SqliteKeyStore.open(
            tmp_path / "ks.db",
            "pw",
            create=True,
            opslimit=argon2id.OPSLIMIT_MIN,
            memlimit=argon2id.MEMLIMIT_MIN,
        )
    )
    store.store_one_time_prekeys([OneTimePreKeyRecord(5, b"\x01" * 32, b"\x02" * 32)])
    assert store.load_one_time_prekey(5) is not None
    assert store.load_one_time_prekey(5) is not None  # reading does not consume
    message = IncomingMessage(b"\x03" * 16, "alice", 1, b"body")
    assert store.commit_incoming(message, b"session", used_one_time_prekey=5)
    assert store.load_one_time_prekey(5) is None
    assert store.load_session("alice") == b"session"
    store.close()


def test_sessions_kept_in_memory_always_follow_the_keystore(pair: Pair) -> None:
    """The decoded-session cache is only a cache: a rolled-back or replaced blob wins."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    pair.bob.receive(pair.envelope(pair.alice, "bob", Text("one")))
    store = pair.alice.store
    before = store.load_session("bob")
    with pytest.raises(RuntimeError), store.atomic():
        pair.alice.encrypt("bob", encode_content(Content(b"\x01" * 16, Text("undone"))))
        assert store.load_session("bob") != before
        raise RuntimeError("crash before the commit")
    assert store.load_session("bob") == before
    # The chain did not move: the next message reuses the undone one's key, as a restart would.
    again = pair.envelope(pair.alice, "bob", Text("two"))
    incoming = pair.bob.receive(again)
    assert incoming is not None and incoming.content.body == Text("two")

    older = store.load_session("bob")
    assert older is not None
    assert pair.bob.receive(pair.envelope(pair.alice, "bob", Text("three"))) is not None
    store.store_session("bob", older)  # replaced behind the manager's back
    reused = pair.envelope(pair.alice, "bob", Text("four"))  # from "three"'s chain position
    with pytest.raises(DuplicatedMessage):
        pair.bob.receive(reused)


# --- The sender's handle is bound end to end (SPEC §13.3, §13.8) -------------
#
# mallory captured alice's first (prekey) message to bob and sends the same
# envelope, with the same msg_id, as his own SEND to bob: the relay delivers it
# with sender "mallory". It must never be shown as mallory's, and alice's key
# must never be pinned under "mallory".


def resent_by(deliver: frames.Deliver, sender: str) -> frames.Deliver:
    """The DELIVER the relay makes of another account's SEND of the same envelope."""
    return replace(deliver, delivery_id=deliver.delivery_id + 1000, sender=sender)


def nothing_known_of(manager: SessionManager, handle: str) -> bool:
    store = manager.store
    return (
        store.get_trusted_identity(handle) is None
        and manager.trust.pending_change(handle) is None
        and store.load_session(handle) is None
        and all(m.sender != handle for m in store.pending_messages())
    )


def test_a_first_message_resent_by_another_account_before_the_original_does_not_decrypt(
    pair: Pair,
) -> None:
    pair.alice.start_session(pair.directory.bundle("bob"))
    original = pair.envelope(pair.alice, "bob", Text("from alice"))
    one_time_before = pair.bob.store.one_time_prekey_ids()

    with pytest.raises(DecryptionFailed):  # the AD names alice and bob, not mallory and bob
        pair.bob.receive(resent_by(original, "mallory"))
    assert nothing_known_of(pair.bob, "mallory")
    assert pair.bob.store.get_trusted_identity("alice") is None
    assert pair.bob.store.one_time_prekey_ids() == one_time_before  # nothing used up

    incoming = pair.bob.receive(original)  # alice's own copy still starts the session
    assert incoming is not None and incoming.sender == "alice"
    assert incoming.content.body == Text("from alice") and incoming.identity is IdentityState.NEW


@pytest.mark.parametrize("one_time", [True, False], ids=["one-time-prekey", "drained"])
def test_a_first_message_resent_by_another_account_after_the_original_is_refused(
    pair: Pair, one_time: bool
) -> None:
    bundle = pair.directory.bundle("bob")
    if not one_time:  # the relay ran out of bob's one-time prekeys (SPEC §13.3)
        bundle = replace(bundle, one_time=None)
    pair.alice.start_session(bundle)
    original = pair.envelope(pair.alice, "bob", Text("from alice"))
    first = pair.bob.receive(original)
    assert first is not None and first.sender == "alice"

    with pytest.raises(IdentityKeyReused):  # alice's key is pinned for "alice"
        pair.bob.receive(resent_by(original, "mallory"))
    assert nothing_known_of(pair.bob, "mallory")
    assert [m.sender for m in pair.bob.store.pending_messages()] == ["alice"]
    assert pair.bob.store.identity_owner(pair.alice.identity.identity_public) == "alice"


def test_one_identity_key_is_never_pinned_for_two_handles(pair: Pair) -> None:
    """Even a prekey message that decrypts (made by the key's holder under a second
    handle) is refused, before any cryptography, and a bundle likewise."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    assert pair.bob.receive(pair.envelope(pair.alice, "bob", Text("hi"))) is not None
    ours = pair.alice.identity
    twin = SessionManager(MemoryKeyStore(), rng=random.Random(8).randbytes, clock=Clock())
    twin.store.set_identity(
        OurIdentity("alice2", "user", "", ours.identity_seed, ours.identity_public)
    )
    pair.directory.publish(twin)
    twin.start_session(pair.directory.bundle("bob"))
    one_time_before = pair.bob.store.one_time_prekey_ids()

    with pytest.raises(IdentityKeyReused):
        pair.bob.receive(pair.envelope(twin, "bob", Text("same key, second handle")))
    assert nothing_known_of(pair.bob, "alice2")
    assert pair.bob.store.one_time_prekey_ids() == one_time_before

    with pytest.raises(IdentityKeyReused):
        pair.bob.start_session(pair.directory.bundle("alice2"))
    assert nothing_known_of(pair.bob, "alice2")
    with pytest.raises(IdentityKeyReused):
        pair.bob.trust.pin("alice2", ours.identity_public)
    assert nothing_known_of(pair.bob, "alice2")


def test_a_session_stored_before_envelope_version_2_is_replaced(pair: Pair) -> None:
    """SPEC §13.7: a version-1 session record counts as no session on either side."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    assert pair.bob.receive(pair.envelope(pair.alice, "bob", Text("before"))) is not None
    for manager, peer in ((pair.alice, "bob"), (pair.bob, "alice")):
        record = msgpack.unpackb(manager.store.load_session(peer))
        record[0] = 1  # as an earlier version stored it
        manager.store.store_session(peer, msgpack.packb(record, use_bin_type=True))

    assert not pair.alice.has_session("bob")
    with pytest.raises(NoSession):
        pair.alice.encrypt("bob", b"x")
    assert pair.alice.start_session(pair.directory.bundle("bob")) is IdentityStatus.TRUSTED
    incoming = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("after the upgrade")))
    assert incoming is not None and incoming.content.body == Text("after the upgrade")
    assert incoming.identity is IdentityState.TRUSTED


# --- A prekey message refused as content starts no session (SPEC §13.3) ----------------


def test_a_replayed_first_message_refused_as_content_leaves_the_live_session(pair: Pair) -> None:
    """A first message sent without a one-time prekey rests on the signed prekey alone:
    the relay can replay it under a fresh msg_id. It decrypts, its content is refused, and
    the session it would start must not replace the live one (found in review: it did,
    and the conversation broke with DecryptionFailed)."""
    pair.alice.start_session(replace(pair.directory.bundle("bob"), one_time=None))
    first = pair.envelope(pair.alice, "bob", Text("hi bob"))
    assert pair.bob.receive(first) is not None
    pair.alice.receive(pair.envelope(pair.bob, "alice", Text("hi alice")))
    pair.alice.start_session(pair.directory.bundle("bob"))  # later, a session of its own
    pair.bob.receive(pair.envelope(pair.alice, "bob", Text("new session")))
    pair.alice.receive(pair.envelope(pair.bob, "alice", Text("ok")))
    live = pair.bob.store.load_session("alice")

    replayed = replace(first, msg_id=b"\x07" * 16, delivery_id=999)
    with pytest.raises(MalformedContent):
        pair.bob.receive(replayed)

    assert pair.bob.store.load_session("alice") == live
    assert pair.bob.store.is_processed("alice", replayed.msg_id)  # consumed: acked, not back
    assert all(m.msg_id != replayed.msg_id for m in pair.bob.store.pending_messages())
    later = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("are you there?")))
    assert later is not None and later.content.body == Text("are you there?")
    back = pair.alice.receive(pair.envelope(pair.bob, "alice", Text("yes")))
    assert back is not None and back.content.body == Text("yes")


def test_a_first_message_refused_as_content_without_a_one_time_prekey_starts_nothing(
    pair: Pair,
) -> None:
    """Without a one-time prekey nothing tells a first message from its replay, so a refused
    one starts no session even when there is none; the sender's next prekey message does."""
    pair.alice.start_session(replace(pair.directory.bundle("bob"), one_time=None))
    deliver = pair.envelope(pair.alice, "bob", Text("relabelled"))
    with pytest.raises(MalformedContent):
        pair.bob.receive(replace(deliver, msg_id=b"\x01" * 16))
    assert pair.bob.store.load_session("alice") is None
    assert pair.bob.store.is_processed("alice", b"\x01" * 16)
    later = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("next")))
    assert later is not None and later.content.body == Text("next")


def test_a_first_message_refused_as_content_with_a_one_time_prekey_spends_it(
    pair: Pair,
) -> None:
    """A one-time prekey proves the message fresh (it is deleted at the first commit): its
    session is kept, as on any refused content, and the key is spent so it is read once."""
    bundle = pair.directory.bundle("bob")
    assert bundle.one_time is not None
    pair.alice.start_session(bundle)
    deliver = pair.envelope(pair.alice, "bob", Text("relabelled"))
    with pytest.raises(MalformedContent):
        pair.bob.receive(replace(deliver, msg_id=b"\x01" * 16))
    assert bundle.one_time.key_id not in pair.bob.store.one_time_prekey_ids()
    assert pair.bob.store.is_processed("alice", b"\x01" * 16)
    with pytest.raises(DuplicatedMessage):  # not read twice
        pair.bob.receive(deliver)
    later = pair.bob.receive(pair.envelope(pair.alice, "bob", Text("next")))
    assert later is not None and later.content.body == Text("next")


# --- An identity rotation takes the old key's prekeys with it (SPEC §3.4, §13.3) --------


def test_an_identity_rotation_deletes_every_prekey_private_key_of_the_old_key(pair: Pair) -> None:
    """The relay deletes the old key's prekeys at the rotation, so no first message is
    started on them any more, and one queued before cannot be read under the new key
    anyway (IK_B is in DH2 and the AD): their private keys go at once, for forward
    secrecy (found in review: every one was kept)."""
    pair.alice.start_session(pair.directory.bundle("bob"))
    queued = pair.envelope(pair.alice, "bob", Text("sent before the rotation"))
    old_signed = pair.bob.store.current_signed_prekey()
    assert old_signed is not None and pair.bob.store.one_time_prekey_ids()

    new = IdentityKeyPair.generate(random.Random(11).randbytes)
    pair.bob.replace_identity(new)

    (signed,) = pair.bob.store.signed_prekeys()
    assert signed.key_id != old_signed.key_id
    assert pair.bob.store.current_signed_prekey() == signed
    assert pair.bob.store.one_time_prekey_ids() == []
    with pytest.raises(BlindrelayError):  # unreadable, kept keys or not
        pair.bob.receive(queued)
    upload = pair.bob.prekeys_upload(5, relay_one_time=0, relay_has_signed=False)
    assert upload is not None and upload.signed_prekey is not None
    assert upload.signed_prekey.key_id == signed.key_id
    assert len(upload.one_time) == ONE_TIME_PREKEY_TARGET  # the relay's supply is refilled
