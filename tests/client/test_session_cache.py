"""The decoded sessions kept in memory (client/session_cache.py): only the decoding of the
blob a handle has stored now, and at most the cache's size of them. The cache never looks
inside a session, so stand-ins do here."""

from __future__ import annotations

from typing import cast

from blindrelay.client.session_cache import SessionCache
from blindrelay.protocol.crypto.session import Session


def decoded(name: str) -> Session:
    return cast(Session, name)


def test_a_cached_session_is_used_only_for_the_blob_it_was_decoded_from() -> None:
    cache = SessionCache()
    cache.put("alice", b"blob-1", decoded("session-1"))
    assert cache.get("alice", b"blob-1") == "session-1"
    assert cache.get("alice", b"blob-2") is None  # stored anew since: decode that one
    assert cache.get("bob", b"blob-1") is None
    cache.forget("alice")
    assert cache.get("alice", b"blob-1") is None
    cache.forget("alice")  # forgetting what is not there is fine


def test_the_oldest_entry_goes_first_past_the_size() -> None:
    cache = SessionCache(size=2)
    for handle in ("alice", "bob", "carol"):
        cache.put(handle, handle.encode(), decoded(handle))
    assert cache.get("alice", b"alice") is None
    assert (cache.get("bob", b"bob"), cache.get("carol", b"carol")) == ("bob", "carol")
