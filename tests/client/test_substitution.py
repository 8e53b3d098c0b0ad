"""An answer about another account than the one asked is refused before anything is
pinned (SPEC §5.3, §8.2, §9): a relay answering a fetch for one handle with another
account's real, validly signed record (T59's class, checked where the client asks).

- A BUNDLE for another handle than the BUNDLE_FETCH named (``Sender._fetch_bundle``):
  taken, it would start a session and pin a key the send did not ask for — and, for a
  contact whose pinned key awaits its log proof, record the other account's key as
  this contact's pending change.
- A PROFILE for another handle than the PROFILE_FETCH named (``profiles.business_info``):
  taken, the other business's key would be pinned as the asked one's on first use.

Over the in-memory relay (``fake_relay``): what the client decides, not what a relay does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import UnexpectedFrame

from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly
from .harness import bundle, online, run, within

CAROL_SEED = b"\xca" * 32


def answering(
    kind: type[frames.Frame], make: Callable[[int], frames.Frame]
) -> Callable[[RelayEnd, frames.Frame], None]:
    """A relay answering every request of ``kind`` with ``make(its id)``."""

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, kind):
            end.send(make(frame.id))  # type: ignore[attr-defined]
        else:
            answer_plainly(end, frame)

    return answer


def test_a_bundle_of_another_account_than_asked_is_refused() -> None:
    """Asked for bob's bundle, the relay serves carol's, real and signed by her key."""
    carols = bundle("carol", CAROL_SEED)

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answering(frames.BundleFetch, lambda rid: replace(carols, re=rid))
        alice = await online(URL, "alice", open_transport=relay.open)
        with pytest.raises(UnexpectedFrame, match="another bundle"):
            await within(alice.send("bob", "hello"))
        assert relay.ends[-1].received(frames.Send) == []
        assert alice.store.get_trusted_identity("carol") is None
        assert not alice.sessions.has_session("carol")
        await alice.close()

    run(scenario())


def test_a_profile_of_another_business_than_asked_is_refused() -> None:
    """Asked for shop's profile, the relay serves other-shop's: nothing is pinned for
    shop (its key would have been other-shop's), shop is not marked published."""
    other_key = IdentityKeyPair.from_seed(CAROL_SEED).public

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answering(
            frames.ProfileFetch,
            lambda rid: frames.Profile(re=rid, handle="other-shop", identity_key=other_key),
        )
        alice = await online(URL, "alice", open_transport=relay.open)
        with pytest.raises(UnexpectedFrame, match="another record"):
            await within(alice.business_info("shop"))
        assert alice.store.get_trusted_identity("shop") is None
        assert alice.store.identity_owner(other_key) is None
        assert not alice.store.is_published("shop")
        await alice.close()

    run(scenario())
