"""Profile settings and what the front ends keep (client/keystore/settings.py).

Each test runs against both stores (the ``store`` fixture of tests/client/conftest.py).
"""

from __future__ import annotations

import pytest

from blindrelay.client.keystore import (
    KeyStore,
)

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
