"""Opening a profile of an earlier schema (client/keystore/schema.py).

``fixtures/v1-profile.keys`` was written by the code of f61878b (the untyped
state bag) with ``fixtures/write_v1_profile.py``, one record of every kind;
``fixtures/v1-profile.json`` holds the same records as plain data. Each version 1
key and log replayed through its kind's typed method is checked on both stores
(the ``store`` fixture of tests/client/conftest.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from blindrelay.client.chat import Options, session
from blindrelay.client.keystore import (
    SCHEMA_VERSION,
    HeardHead,
    HeldCounts,
    IdentityStatus,
    IncomingMessage,
    KeyStore,
    KeyStoreCorrupted,
    KeyStoreTooNew,
    LogFork,
    OneTimePreKeyRecord,
    OurIdentity,
    OutboxEntry,
    SignedPreKeyRecord,
    SqliteKeyStore,
    TrustedIdentity,
)
from blindrelay.client.keystore.schema import replay_v1_log, replay_v1_state

from .files import FIXTURES, PASSPHRASE, copy_fixture, dump, file_keys, open_sqlite
from .samples import KEY_A, KEY_B, NOW, outgoing

PROFILE = "v1-profile.keys"


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"hex"}:
            return bytes.fromhex(value["hex"])
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


@pytest.fixture
def written() -> dict[str, Any]:
    """The records the fixture's writer put in the profile."""
    return from_json(json.loads((FIXTURES / "v1-profile.json").read_text()))


def version_of(path: Path) -> tuple[int, set[str]]:
    with sqlite3.connect(path) as conn:
        ((found,),) = conn.execute("PRAGMA user_version")
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    return found, tables


def test_the_fixture_is_a_version_1_profile(tmp_path: Path) -> None:
    assert version_of(FIXTURES / PROFILE)[0] == 0
    assert {"state", "logs"} <= version_of(FIXTURES / PROFILE)[1]


def test_every_record_of_a_version_1_profile_moves_into_its_kinds_table(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    path = copy_fixture(PROFILE, tmp_path)
    with SqliteKeyStore.open(path, written["passphrase"]) as store:
        # Keys
        assert store.get_identity() == OurIdentity(**written["identity"])
        assert store.signed_prekeys() == [
            SignedPreKeyRecord(**spk) for spk in written["signed_prekeys"]
        ]
        assert store.current_signed_prekey() == SignedPreKeyRecord(**written["signed_prekeys"][1])
        assert store.one_time_prekey_ids() == [o["key_id"] for o in written["one_time_prekeys"]]
        otpk = written["one_time_prekeys"][1]
        assert store.load_one_time_prekey(otpk["key_id"]) == OneTimePreKeyRecord(**otpk)
        allocated = written["allocated_prekey_ids"]
        assert store.allocate_prekey_ids(1) == range(allocated + 1, allocated + 2)
        for handle, blob in written["sessions"].items():
            assert store.load_session(handle) == blob
        assert store.trusted_identities() == sorted(
            (TrustedIdentity(**t) for t in written["trusted"]), key=lambda t: t.handle
        )
        for trusted in written["trusted"]:
            assert store.identity_owner(trusted["identity_key"]) == trusted["handle"]
        assert store.pending_identity_changes() == written["identity_changes"]
        # Conversations
        for incoming in written["incoming"]:
            assert store.is_processed(incoming["sender"], incoming["msg_id"])
        assert store.pending_messages() == [
            IncomingMessage(**{k: v for k, v in m.items() if k != "consumed"})
            for m in written["incoming"]
            if not m["consumed"]
        ]
        assert store.outbox() == [
            OutboxEntry(**{**o, "categories": o["categories"] and tuple(o["categories"])})
            for o in written["outbox"]
        ]
        kept = {**written["statements"], **written["old_format_statements"]}
        for counterpart, signed in kept.items():
            assert store.kept_statements(counterpart) == signed
        assert store.statement_counts() == {c: len(signed) for c, signed in kept.items()}
        held = written["held"]["mallory"]
        assert store.held_messages("mallory") == held["messages"]
        assert store.held_counts() == {
            "mallory": HeldCounts(len(held["messages"]), held["dropped"])
        }
        assert store.all_owed_receipts() == written["owed_receipts"]
        assert store.wrote_to() == set(written["wrote_to"])
        # Settings and the front ends
        assert store.relay_key() == written["relay_key"]
        assert store.is_registered() is written["registered"]
        assert store.rotating_identity_seed() == written["rotating_identity_seed"]
        assert store.business_profile() == written["business_profile"]
        assert store.away_reply_periods() == written["away_replies"]
        assert store.chat_contacts() == written["chat_contacts"]
        assert store.consent_requests() == {
            b: tuple(cats) for b, cats in written["consent_requests"].items()
        }
        assert store.check_identity("alice", written["trusted"][0]["identity_key"]) is (
            IdentityStatus.TRUSTED
        )
    found, tables = version_of(path)
    assert found == SCHEMA_VERSION
    assert not {"state", "logs"} & tables  # dropped, their pages zeroed (secure_delete)


def test_reopening_an_upgraded_profile_changes_nothing(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    path = copy_fixture(PROFILE, tmp_path)
    SqliteKeyStore.open(path, written["passphrase"]).close()
    upgraded = dump(path)
    SqliteKeyStore.open(path, written["passphrase"]).close()
    assert dump(path) == upgraded


def test_a_schema_5_profile_gains_the_table_of_forks_seen(tmp_path: Path) -> None:
    """Schema 6 adds ``log_forks`` (the split-view alarm's evidence, SPEC §15.6): a
    schema 5 file is a schema 6 one without that table. Opening it adds the table, keeps
    every record, and the upgraded file keeps a fork across a reopen."""
    path = tmp_path / "alice.keys"
    with open_sqlite(path) as store:
        store.set_relay_key(KEY_A)
        store.set_tree_head(b"our head")
        store.keep_heard_head(HeardHead("carol", b"carol's head", NOW, refusals=2))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE log_forks")
        conn.execute("PRAGMA user_version = 5")
    conn.close()
    assert version_of(path)[0] == 5 and "log_forks" not in version_of(path)[1]
    with SqliteKeyStore.open(path, PASSPHRASE) as upgraded:
        assert (upgraded.relay_key(), upgraded.tree_head()) == (KEY_A, b"our head")
        assert upgraded.heard_heads() == [HeardHead("carol", b"carol's head", NOW, 2)]
        assert upgraded.log_forks() == []
        upgraded.keep_log_fork(LogFork(KEY_A, b"our head", b"carol's head", "no proof"))
    found, tables = version_of(path)
    assert found == SCHEMA_VERSION == 6 and "log_forks" in tables
    with SqliteKeyStore.open(path, PASSPHRASE) as again:
        assert again.log_forks() == [LogFork(KEY_A, b"our head", b"carol's head", "no proof")]


def test_a_profile_newer_than_the_code_is_refused_untouched(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    path = copy_fixture(PROFILE, tmp_path)
    SqliteKeyStore.open(path, written["passphrase"]).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = dump(path)
    with pytest.raises(KeyStoreTooNew, match="upgrade blindrelay") as raised:
        SqliteKeyStore.open(path, written["passphrase"])
    assert (raised.value.found, raised.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert dump(path) == before
    with pytest.raises(KeyStoreTooNew):
        SqliteKeyStore.open(path, written["passphrase"], create=True)
    assert dump(path) == before


def test_an_upgrade_that_fails_midway_leaves_version_1_to_retry(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    """A record of no known kind stops the upgrade (KeyStoreCorrupted, nothing lost):
    all of it was one transaction, so the file is version 1 as before."""
    path = copy_fixture(PROFILE, tmp_path)
    keys = file_keys(path, written["passphrase"])
    k = keys.lookup("state", b"zz/unknown")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO state (k, v) VALUES (?, ?)",
            [k, keys.seal("state", k, ["zz/unknown", b"value"])],
        )
    conn.close()
    before = dump(path)
    with pytest.raises(KeyStoreCorrupted, match="no known kind"):
        SqliteKeyStore.open(path, written["passphrase"])
    assert dump(path) == before
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM state WHERE k = ?", [k])
    conn.close()
    with SqliteKeyStore.open(path, written["passphrase"]) as store:
        assert store.held_messages("mallory") == written["held"]["mallory"]["messages"]
    assert version_of(path)[0] == SCHEMA_VERSION


def test_the_chat_says_in_one_line_that_a_newer_profile_needs_a_newer_blindrelay(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    path = copy_fixture(PROFILE, tmp_path)
    SqliteKeyStore.open(path, written["passphrase"]).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    out = io.StringIO()
    options = Options(
        relay="ws://127.0.0.1:9", profile=path, handle=None, kind="user",
        passphrase=written["passphrase"], operator_key=None,
    )  # fmt: skip
    assert asyncio.run(session(options, out)) == 1
    (line,) = out.getvalue().splitlines()
    assert line.startswith("blindrelay chat: ") and line.endswith("upgrade blindrelay to open it")


# --- Version 1's keys, replayed by the upgrade (client/keystore/schema.py) -----------------

u64 = lambda n: n.to_bytes(8, "big")  # noqa: E731


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def old_outbox_key(entry: OutboxEntry) -> str:
    return f"sdk/outbox/{entry.position:020d}.{entry.msg_id.hex()}"


OLD_KEYS: list[tuple[str, bytes, Callable[[KeyStore], object], object]] = [
    (old_outbox_key(outgoing(1, category="utility")),
     packed(["bob", b"envelope-1", "chat", "utility", None]),
     lambda s: s.outbox(), [outgoing(1, category="utility")]),
    (old_outbox_key(outgoing(2, categories=("utility",))),
     packed(["bob", b"envelope-2", "chat", None, ["utility"]]),
     lambda s: s.outgoing(bytes([2]) * 16), outgoing(2, categories=("utility",))),
    ("sdk/owed-receipts/dave", packed([b"r" * 16]), lambda s: s.owed_receipts("dave"),
     [b"r" * 16]),
    ("sdk/wrote-to/bob", b"", lambda s: s.wrote_to(), {"bob"}),
    ("sdk/relay-key", KEY_A, lambda s: s.relay_key(), KEY_A),
    ("sdk/registered", b"1", lambda s: s.is_registered(), True),
    ("sdk/rotating-identity-seed", KEY_B, lambda s: s.rotating_identity_seed(), KEY_B),
    ("identity-change/airline", KEY_B, lambda s: s.pending_identity_change("airline"), KEY_B),
    ("business/profile", b"signed", lambda s: s.business_profile(), b"signed"),
    ("business/away/alice", u64(12), lambda s: s.away_reply_period("alice"), 12),
    ("chat/contacts", json.dumps({"alice": "user", "bob": ""}, sort_keys=True).encode(),
     lambda s: s.chat_contacts(), {"alice": "user", "bob": ""}),
    ("chat/requests", json.dumps({"airline": ["utility"]}, sort_keys=True).encode(),
     lambda s: s.consent_requests(), {"airline": ("utility",)}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "typed", "expected"), OLD_KEYS, ids=[k[0] for k in OLD_KEYS]
)
def test_each_version_1_key_is_filed_in_its_kinds_table(
    store: KeyStore, key: str, value: bytes, typed: Callable[[KeyStore], object], expected: object
) -> None:
    assert typed(store) in (None, [], {}, set(), False)
    replay_v1_state(store, key, value)
    assert typed(store) == expected


def test_version_1_logs_are_counted_as_they_are_replayed(store: KeyStore) -> None:
    """The upgrade moves the logs first; the count rows written beside them then add
    only what no log row records: the messages dropped while a key change waited."""
    for signed in (b"s1", b"s2"):
        replay_v1_log(store, "statements/alice", signed)
    replay_v1_log(store, "held/mallory", b"d1")
    replay_v1_state(store, "sdk/statement-count/alice", u64(2))
    replay_v1_state(store, "sdk/held/mallory", u64(1) + u64(3))
    assert store.kept_statements("alice") == [b"s1", b"s2"]
    assert store.statement_counts() == {"alice": 2}
    assert store.held_messages("mallory") == [b"d1"]
    assert store.held_counts() == {"mallory": HeldCounts(1, 3)}


def test_a_statement_list_of_the_format_before_the_log_is_filed_after_the_log(
    store: KeyStore,
) -> None:
    replay_v1_log(store, "statements/alice", b"s0")
    replay_v1_state(store, "sdk/statements/alice", packed([b"s1", b"s2"]))
    assert store.kept_statements("alice") == [b"s0", b"s1", b"s2"]
    assert store.statement_counts() == {"alice": 3}


def test_a_version_1_record_of_no_known_kind_or_shape_is_refused(store: KeyStore) -> None:
    for key in ("consent:airline", "sdk/outbox/", "sdk/unknown/x"):
        with pytest.raises(ValueError, match="no record kind"):
            replay_v1_state(store, key, b"x")
    with pytest.raises(ValueError, match="no record kind"):
        replay_v1_log(store, "other/alice", b"x")
    for key, value in [
        ("sdk/held/mallory", u64(1)), ("business/away/alice", b"x"),
        ("chat/contacts", b"[]"), ("sdk/owed-receipts/dave", packed({"not": "a list"})),
    ]:  # fmt: skip
        with pytest.raises(ValueError):
            replay_v1_state(store, key, value)
    replay_v1_state(store, "sdk/outbox", packed([]))  # retired: dropped
    assert store.outbox() == [] and store.held_counts() == {} and store.away_reply_periods() == {}
