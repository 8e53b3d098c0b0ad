"""Profile settings and what the front ends keep (client/keystore/settings.py).

Each test runs against both stores (the ``store`` fixture of tests/client/conftest.py).
"""

from __future__ import annotations

import pytest

from blindrelay.client.keystore import (
    HeardHead,
    KeyStore,
    LogFork,
)
from blindrelay.client.keystore.settings import MAX_CHAT_LINES

from .samples import (
    KEY_A,
    KEY_B,
)


def test_settings_hold_one_value_each_until_cleared(store: KeyStore) -> None:
    assert (store.relay_key(), store.is_registered(), store.rotating_identity_seed()) == (
        None, False, None,
    )  # fmt: skip
    assert store.business_profile() is None
    store.set_relay_key(KEY_A)
    store.set_registered()
    store.set_rotating_identity_seed(KEY_B)
    store.set_business_profile(b"signed profile")
    assert (store.relay_key(), store.is_registered(), store.rotating_identity_seed()) == (
        KEY_A, True, KEY_B,
    )  # fmt: skip
    assert store.business_profile() == b"signed profile"
    store.set_rotating_identity_seed(None)
    store.set_registered(False)
    store.set_business_profile(None)
    assert (store.rotating_identity_seed(), store.is_registered()) == (None, False)
    assert (store.business_profile(), store.relay_key()) == (None, KEY_A)
    with pytest.raises(ValueError):
        store.set_relay_key(b"short")


def test_contacts_heads_not_checked_yet_are_one_row_each_until_forgotten(
    store: KeyStore,
) -> None:
    """SPEC §15.6 rule 5: a contact's tree head the relay has not proven is kept (a
    newer one of the same contact in its place) until it is settled."""
    assert store.heard_heads() == []
    store.keep_heard_head(HeardHead("carol", b"head one", 5))
    store.keep_heard_head(HeardHead("dave", b"head one", 6, refusals=1))
    store.keep_heard_head(HeardHead("carol", b"head two", 5, refusals=3))
    assert sorted(store.heard_heads(), key=lambda held: held.contact) == [
        HeardHead("carol", b"head two", 5, refusals=3), HeardHead("dave", b"head one", 6, 1),
    ]  # fmt: skip
    store.forget_heard_head("carol")
    store.forget_heard_head("nobody")
    assert store.heard_heads() == [HeardHead("dave", b"head one", 6, refusals=1)]
    with pytest.raises((TypeError, ValueError)):
        HeardHead("carol", b"", 5)
    with pytest.raises(ValueError):
        HeardHead("carol", b"head", 5, refusals=-1)


def test_a_fork_seen_is_kept_one_per_relay_key(store: KeyStore) -> None:
    """SPEC §15.6 rule 5: the split-view alarm's evidence is kept for good, under the
    relay key that signed both heads; nothing forgets it."""
    assert store.log_forks() == []
    store.keep_log_fork(LogFork(KEY_A, b"first", b"second", "no proof joins them"))
    store.keep_log_fork(LogFork(KEY_B, b"third", b"fourth", ""))
    store.keep_log_fork(LogFork(KEY_A, b"fifth", b"sixth", "again"))
    assert sorted(store.log_forks(), key=lambda fork: fork.relay_key) == [
        LogFork(KEY_A, b"fifth", b"sixth", "again"), LogFork(KEY_B, b"third", b"fourth", ""),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        LogFork(b"short", b"first", b"second", "")
    with pytest.raises(TypeError):
        LogFork(KEY_A, b"", b"second", "")
    with pytest.raises(TypeError):
        LogFork(KEY_A, b"first", b"second", b"detail")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.keep_log_fork((KEY_A, b"first", b"second", ""))  # type: ignore[arg-type]


def test_away_replies_are_remembered_per_customer(store: KeyStore) -> None:
    assert store.away_reply_period("alice") is None
    store.set_away_reply_period("alice", 7)
    store.set_away_reply_period("bob", 8)
    store.set_away_reply_period("alice", 9)
    assert store.away_reply_periods() == {"alice": 9, "bob": 8}
    store.set_away_reply_period("bob", None)
    assert store.away_reply_periods() == {"alice": 9}


def test_chat_contacts_and_consent_requests_are_rows_per_account(store: KeyStore) -> None:
    store.set_chat_contact("alice", "")
    store.set_chat_contact("alice", "user")
    store.set_chat_contact("airline", "business")
    store.set_consent_request("airline", ("utility",))
    store.set_consent_request("travel", ("utility", "marketing"))
    assert store.chat_contacts() == {"alice": "user", "airline": "business"}
    assert store.consent_requests() == {
        "airline": ("utility",), "travel": ("utility", "marketing"),
    }  # fmt: skip
    store.set_chat_contact("alice", None)
    store.set_consent_request("airline", None)
    assert store.chat_contacts() == {"airline": "business"}
    assert store.consent_requests() == {"travel": ("utility", "marketing")}


def test_a_contact_s_chat_history_keeps_its_last_lines(store: KeyStore) -> None:
    """Threat model T40: every message a contact or a stranger sends is a line of the
    chat's history. Kept for ever, a stranger at the relay's send rate (50 a second, up
    to 32 KiB each) grew the profile by 1.6 MB a second (3,000 lines: 92 MB), and the
    chat read every line back to show the last three at each start."""
    for i in range(MAX_CHAT_LINES + 5):
        store.keep_chat_line("mallory", i, False, f"line {i}")
    store.keep_chat_line("alice", 7, True, "hello")
    kept = store.chat_lines("mallory", MAX_CHAT_LINES * 2)
    assert len(kept) == MAX_CHAT_LINES
    assert kept[0] == (5, False, "line 5") and kept[-1][2] == f"line {MAX_CHAT_LINES + 4}"
    assert store.chat_lines("mallory", 2) == [
        (MAX_CHAT_LINES + 3, False, f"line {MAX_CHAT_LINES + 3}"),
        (MAX_CHAT_LINES + 4, False, f"line {MAX_CHAT_LINES + 4}"),
    ]
    assert store.chat_lines("alice", 3) == [(7, True, "hello")]
    assert store.chat_lines("nobody", 3) == []
