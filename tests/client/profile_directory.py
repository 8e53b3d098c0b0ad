"""An in-memory relay that answers PROFILE_FETCH for ``airline`` and the log's fetches,
with the business's key, profile and operator badge the test chooses: what the badge
tests of ``test_profiles`` and ``test_badge_logged`` share (a test module is never
imported by another, ``tests/test_layering.py``)."""

from __future__ import annotations

from blindrelay.client.logcheck import BADGE_LOG_MARGIN_MS
from blindrelay.client.sdk import Client
from blindrelay.protocol import frames
from blindrelay.protocol.business import BusinessProfile, issue_badge
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.transparency.evidence import badge_entry

from ..relays import T0, FakeClock
from .fake_relay import URL, FakeLog, FakeRelay, RelayEnd, answer_plainly
from .harness import online

DAY_MS = 24 * 3600 * 1000


AIRLINE = IdentityKeyPair.from_seed(b"\x81" * 32)
OPERATOR = IdentityKeyPair.from_seed(b"\x82" * 32)


def signed_profile(display_name: str, key: IdentityKeyPair = AIRLINE) -> bytes:
    return BusinessProfile(
        v=1, handle="airline", display_name=display_name, description="", timezone="UTC",
        hours=(), exceptions=(), issued_at=T0,
    ).sign(key.sign)  # fmt: skip


def badge(name: str, key: bytes = AIRLINE.public, operator: IdentityKeyPair = OPERATOR) -> bytes:
    return issue_badge(
        operator.sign, handle="airline", identity_key=key, display_name=name, serial=1,
        now_ms=T0, validity_ms=DAY_MS,
    )  # fmt: skip


class Directory(FakeRelay):
    """Answers PROFILE_FETCH for ``airline`` with what the test puts in :attr:`record`,
    and the log's fetches from :attr:`log`, which holds the badge unless ``logged`` is
    False (its one head is then signed long after the badge: SPEC §15.6 rule 6)."""

    def __init__(self, profile: bytes | None, badge: bytes | None, logged: bool = True) -> None:
        super().__init__()
        self.record = (AIRLINE.public, profile, badge)
        self.answer = self.profiles
        self.log = FakeLog()
        self.log.append(b"blindrelay/v1/log/statement\x00" + bytes(40))  # not an entry: filler
        if badge is not None and logged:
            self.log.append(badge_entry(badge))
        self.log.sign_head(T0 if logged else T0 + BADGE_LOG_MARGIN_MS)

    def profiles(self, end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.ProfileFetch):
            key, profile, badge = self.record
            end.send(
                frames.Profile(
                    re=frame.id, handle=frame.handle, identity_key=key, profile=profile,
                    badge=badge,
                )
            )  # fmt: skip
        elif not self.log.answer(end, frame):
            answer_plainly(end, frame)


async def alice_of(relay: FakeRelay, operator_key: bytes | None, now: int = T0) -> Client:
    return await online(
        URL, "alice", open_transport=relay.open, operator_key=operator_key, clock=FakeClock(now)
    )
