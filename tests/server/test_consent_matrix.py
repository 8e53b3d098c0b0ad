"""SPEC §7.3 over real sockets: every pair state × every business frame, verified or not.

Each cell gets a fresh user, drives the pair into its state with real frames
(statements, sends, clock moves), then probes one business frame. The
expected outcome comes from ``may_deliver`` on a model state that the test
moves with the protocol's own ``apply_statement``/``after_accept`` along the
same steps; the observed one is what the relay answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from blindrelay.protocol import limits
from blindrelay.protocol.consent import (
    INITIAL,
    PairState,
    Request,
    after_accept,
    apply_statement,
    may_deliver,
)
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Bundle, BundleFetch, Deliver, Error, Frame, Sent
from blindrelay.server.relay import RunningRelay

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient
from .consent_helpers import issue_badge_for, stated

BACKENDS = ALL_BACKENDS

VERIFIED, UNVERIFIED = "airline", "shop"
"""Two businesses: one with a badge in force (SPEC §8.1), one without (SPEC §7.3)."""

Step = tuple[str, ...]
"""("user", action, *categories) · ("business", action) · ("chat",) · ("request", *categories)
· ("advance", "cooldown" | "window")."""

WROTE: list[Step] = [("chat",), ("advance", "window")]
"""The user wrote once, long ago: so an unverified business may ask too (SPEC §7.3)."""

STATES: dict[str, list[Step]] = {
    "none": [],
    "requested": [*WROTE, ("request", "utility")],
    "granted utility": [("user", "grant", "utility")],
    "granted both": [("user", "grant", "utility", "marketing")],
    "denied in cooldown": [
        *WROTE, ("request", "utility", "marketing"), ("user", "deny", "utility", "marketing"),
    ],
    "denied after cooldown": [
        *WROTE, ("request", "utility", "marketing"), ("user", "deny", "utility", "marketing"),
        ("advance", "cooldown"),
    ],
    "denied unasked, after cooldown": [
        ("user", "deny", "utility", "marketing"), ("advance", "cooldown"),
    ],
    "revoked": [("user", "grant", "utility", "marketing"), ("user", "revoke", "utility", "marketing")],
    "blocked by user": [("user", "block")],
    "business blocked user": [("business", "block")],
    "window open": [("chat",)],
    "window expired": [("chat",), ("advance", "window")],
}  # fmt: skip

FRAMES: dict[str, tuple[str, Request, str | None, tuple[str, ...]]] = {
    "consent_request both, verified": (
        VERIFIED, Request.CONSENT_REQUEST, None, ("utility", "marketing")
    ),
    "consent_request both, unverified": (
        UNVERIFIED, Request.CONSENT_REQUEST, None, ("utility", "marketing")
    ),
    "consent_request marketing, verified": (
        VERIFIED, Request.CONSENT_REQUEST, None, ("marketing",)
    ),
    "consent_request marketing, unverified": (
        UNVERIFIED, Request.CONSENT_REQUEST, None, ("marketing",)
    ),
    "notification utility": (UNVERIFIED, Request.NOTIFICATION, "utility", ()),
    "notification marketing": (UNVERIFIED, Request.NOTIFICATION, "marketing", ()),
    "service reply": (UNVERIFIED, Request.CHAT, None, ()),
    "bundle fetch, verified": (VERIFIED, Request.BUNDLE_FETCH, None, ()),
    "bundle fetch, unverified": (UNVERIFIED, Request.BUNDLE_FETCH, None, ()),
}  # fmt: skip
"""The business that sends each frame; the others do not read the badge."""


@dataclass
class Model:
    """The pair state as the protocol functions say it should be."""

    user: str
    business: str
    state: PairState = INITIAL

    def statement(self, signer: str, action: str, categories: tuple[str, ...], now: int) -> None:
        self.state, _ = apply_statement(
            self.state, action=action, signer=signer, categories=frozenset(categories),
            signer_is_user_blocking_business=action == "block" and signer == self.user,
            now=now, cooldown_ms=limits.CONSENT_COOLDOWN_MS,
        )  # fmt: skip

    def send(self, sender_kind: str, request: Request, now: int, **kwargs: object) -> bool:
        user_sends = sender_kind == "user"
        decision = may_deliver(
            sender=self.user if user_sends else self.business,
            recipient=self.business if user_sends else self.user,
            sender_kind=sender_kind, recipient_kind="business" if user_sends else "user",
            request=request, state=self.state, now=now,
            sender_verified=self.business == VERIFIED and not user_sends,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        if decision.allowed:
            self.state = after_accept(self.state, decision, now, limits.SERVICE_WINDOW_MS)
        return decision.allowed


async def _send(
    client: RawClient, to: str, request: Request, category: str | None, cats: tuple[str, ...]
) -> Frame:
    fields: dict[str, object] = {"intent": request.value}
    if category is not None:
        fields["category"] = category
    if cats:
        fields["categories"] = cats
    return await client.send_message(to, os.urandom(40), **fields)


async def _reach(
    steps: list[Step], user: RawClient, business: RawClient, clock: FakeClock, model: Model
) -> None:
    for step in steps:
        kind, rest = step[0], step[1:]
        if kind == "user":
            cats = rest[1:] or None
            await stated(user, rest[0], business.handle, clock.now, cats)
            model.statement(user.handle, rest[0], rest[1:], clock.now)
        elif kind == "business":
            await stated(business, rest[0], user.handle, clock.now)
            model.statement(business.handle, rest[0], (), clock.now)
        elif kind == "chat":
            assert isinstance(await _send(user, business.handle, Request.CHAT, None, ()), Sent)
            assert model.send("user", Request.CHAT, clock.now)
        elif kind == "request":
            answer = await _send(business, user.handle, Request.CONSENT_REQUEST, None, rest)
            assert isinstance(answer, Sent), answer
            assert model.send("business", Request.CONSENT_REQUEST, clock.now,
                              categories=frozenset(rest))  # fmt: skip
        elif kind == "advance":
            clock.advance(
                (limits.CONSENT_COOLDOWN_MS if rest[0] == "cooldown" else limits.SERVICE_WINDOW_MS)
                + 1
            )


async def _delivered(user: RawClient, msg_id: bytes) -> Deliver:
    while True:
        deliver = await user.push(Deliver)
        if deliver.msg_id == msg_id:
            return deliver


async def test_every_pair_state_against_every_business_frame(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    businesses = {
        handle: await clients.registered(relay.url, handle, "business")
        for handle in (VERIFIED, UNVERIFIED)
    }
    mismatches: list[str] = []
    outcomes: dict[str, set[bool]] = {name: set() for name in FRAMES}
    cells = 0
    for s_index, (state_name, steps) in enumerate(STATES.items()):
        for f_index, (frame_name, (sender, request, category, cats)) in enumerate(FRAMES.items()):
            business = businesses[sender]
            user = await clients.registered(relay.url, f"user-{s_index}-{f_index}")
            await user.upload_prekeys(one_time=1)
            model = Model(user.handle, sender)
            await _reach(steps, user, business, clock, model)
            if sender == VERIFIED:  # in force now, whatever the steps did to the clock
                issue_badge_for(relay.config, VERIFIED, clock.now)
            expected = model.send(
                "business", request, clock.now, category=category, categories=frozenset(cats)
            )
            if request is Request.BUNDLE_FETCH:
                request_id = business.request_id()
                await business.send(BundleFetch(id=request_id, handle=user.handle))
                answer = await business.response(request_id)
                observed = isinstance(answer, Bundle)
            else:
                answer = await _send(business, user.handle, request, category, cats)
                observed = isinstance(answer, Sent)
                if observed:
                    assert isinstance(answer, Sent)
                    deliver = await _delivered(user, answer.msg_id)
                    assert (deliver.sender, deliver.intent) == (sender, request.value)
            if not observed:
                assert isinstance(answer, Error) and answer.code == ErrorCode.RECIPIENT_UNAVAILABLE
                assert answer.reason is None
            if observed != expected:
                mismatches.append(
                    f"{state_name} × {frame_name}: relay {observed}, table {expected}"
                )
            outcomes[frame_name].add(observed)
            cells += 1
            await user.close()
    print(f"consent matrix: {cells} cells")
    assert cells == len(STATES) * len(FRAMES) == 108
    assert mismatches == []
    # Not a degenerate matrix: every frame is both allowed and refused somewhere.
    assert all(seen == {True, False} for seen in outcomes.values()), outcomes
