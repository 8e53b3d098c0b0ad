"""What ``LogCheck.badge_logged`` refuses (SPEC §15.6 rule 6), against a relay that lies
about its log: a badge is shown as verified only with a path that reaches a head the
relay signed, that head is held against ours, and a badge too fresh for the newest head
is waited for rather than refused. Unit tests over the in-memory relay of
:mod:`.profile_directory`."""

from __future__ import annotations

from blindrelay.client.logcheck import BADGE_LOG_MARGIN_MS
from blindrelay.protocol import frames
from blindrelay.protocol.business import BadgeStatus
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.evidence import badge_entry

from ..relays import T0
from .fake_relay import RelayEnd
from .harness import within
from .profile_directory import OPERATOR, Directory, alice_of, badge, signed_profile


class ForgedPath(Directory):
    """The log does not hold the badge; asked for it, the relay names the index of its
    last entry and a path of the right length that does not reach the root."""

    def __init__(self) -> None:
        super().__init__(signed_profile("Example Air"), badge("Example Air"), logged=False)
        self.log.append(b"blindrelay/v1/log/statement\x00" + bytes(41))
        self.log.sign_head(T0 + BADGE_LOG_MARGIN_MS)

    def profiles(self, end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.LogInclusionFetch):
            forged = (merkle.leaf_hash(self.log.entries[0]),)
            end.send(frames.LogInclusion(re=frame.id, index=1, proof=forged))
        else:
            super().profiles(end, frame)


async def test_a_badge_whose_path_misses_the_head_is_not_verified() -> None:
    relay = ForgedPath()
    alice = await alice_of(relay, OPERATOR.public)
    info = await within(alice.business_info("airline"))
    assert info.badge.status is BadgeStatus.NOT_LOGGED and not info.verified
    await alice.close()


async def test_the_head_that_proves_a_badge_is_held_against_ours() -> None:
    """The head the badge was proven under is observed like every other (kept when it
    is the first, held against the kept one otherwise): a relay showing badges under a
    head of another history is caught."""
    relay = Directory(signed_profile("Example Air"), badge("Example Air"))
    alice = await alice_of(relay, OPERATOR.public)
    assert alice.store.tree_head() is None
    assert (await within(alice.business_info("airline"))).verified
    assert alice.store.tree_head() == relay.log.heads[-1]
    await alice.close()


class LoggedLater(Directory):
    """The newest head predates the badge's entry (issued within BADGE_LOG_MARGIN_MS);
    the relay appends the entry and signs a larger head once it is asked for it."""

    def __init__(self) -> None:
        issued = badge("Example Air")
        super().__init__(signed_profile("Example Air"), issued, logged=False)
        self.log.heads = [self.log.sign_head(T0)]
        self.entry = badge_entry(issued)

    def profiles(self, end: RelayEnd, frame: frames.Frame) -> None:
        super().profiles(end, frame)
        if isinstance(frame, frames.LogInclusionFetch) and self.entry not in self.log.entries:
            self.log.append(self.entry)
            self.log.sign_head(T0 + 1)


async def test_a_badge_fresher_than_the_newest_head_is_waited_for() -> None:
    relay = LoggedLater()
    alice = await alice_of(relay, OPERATOR.public)
    info = await within(alice.business_info("airline"))
    assert info.badge.status is BadgeStatus.VERIFIED and info.verified
    await alice.close()
