"""Businesses as a client may show them: profile and badge, checked offline (SPEC §8.1–8.2).

:func:`business_info` fetches a business's signed profile and the operator's
badge and checks both here, never trusting the relay: the profile against the
identity key pinned for the handle (trust on first use, ``trust``), the badge
against the operator key pinned in our configuration and our clock. Only the
badge's name is verified; the profile's is the business's own claim, and a
mismatch between them is flagged (:attr:`BusinessInfo.name_mismatch`).

Not here: publishing our own profile (``business``), the formats and checks
themselves (``protocol.business``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from blindrelay.protocol import frames
from blindrelay.protocol.business import (
    BadgeCheck,
    BadgeStatus,
    BusinessProfile,
    check_badge,
    open_profile,
)
from blindrelay.protocol.errors import UnexpectedFrame, UntrustedIdentity

from .link import RelayLink
from .logcheck import LogCheck
from .trust import IdentityTrust


@dataclass(frozen=True, slots=True)
class BusinessInfo:
    """A business as a client may show it (SPEC §8.1–8.2).

    ``profile`` verified against ``identity_key``; ``badge.verified`` only
    if the operator key pinned in our configuration signed it for this very
    handle and key and it is valid now.

    Show :attr:`verified_name` as the business's name. The profile is signed
    by the business itself, so its ``display_name`` (:attr:`claimed_name`) is
    what the business says it is called — anyone can say "British Airways"
    there. SPEC §8.1: only the badge's name may be shown as verified.
    """

    handle: str
    identity_key: bytes
    profile: BusinessProfile | None
    badge: BadgeCheck
    key_changed: bool
    """The relay serves another key than the one we pinned: show as unverified."""

    @property
    def verified(self) -> bool:
        return self.badge.verified and not self.key_changed

    @property
    def verified_name(self) -> str | None:
        """The operator-signed name (the badge's ``display_name``); None unless :attr:`verified`."""
        return self.badge.display_name if self.verified else None

    @property
    def claimed_name(self) -> str | None:
        """The profile's ``display_name``: the business's own, unverified claim."""
        return self.profile.display_name if self.profile is not None else None

    @property
    def name_mismatch(self) -> bool:
        """Verified, and the profile claims a name other than the badge's (:func:`same_name`).

        Flag it where the business is shown: a business verified as one name
        and calling itself another is impersonating, or its badge is stale.
        """
        verified, claimed = self.verified_name, self.claimed_name
        return verified is not None and claimed is not None and not same_name(verified, claimed)


def same_name(a: str, b: str) -> bool:
    """Whether two display names are the same name as a person reads it (SPEC §8.2).

    Compared after Unicode NFKC normalisation, case folding and collapsing
    runs of whitespace: "Bob's  BAKERY" is "Bob's Bakery", while anything a
    reader could tell apart — another word, another letter, punctuation —
    differs. Deliberately no confusable folding: "Bank" and "Βank" (Greek
    capital beta) differ and are flagged, which errs on the side of warning.
    """

    def key(name: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", name).casefold().split())

    return key(a) == key(b)


async def business_info(
    link: RelayLink,
    trust: IdentityTrust,
    handle: str,
    *,
    operator_key: bytes | None,
    clock: Callable[[], int],
    log_check: LogCheck,
) -> BusinessInfo:
    """Fetch ``handle``'s profile and badge and check both offline (:meth:`Client.business_info`).

    The key must be the one we pinned for ``handle`` (or is pinned now, on
    first use, as a published account's: unlogged until a bundle's log proof covers
    it); the profile must verify under it (InvalidProfile otherwise);
    the badge is checked with ``operator_key`` and ``clock`` — without an
    operator key nothing shows as verified — and, once it verifies, must be proven
    in the relay's transparency log (``NOT_LOGGED`` otherwise; ``LogForked`` if the
    head that proves it does not extend ours). After the split-view alarm no proof is
    asked for: ``LOG_FORKED``, the operator-signed badge kept in the status.
    """
    frame = await link.request(lambda rid: frames.ProfileFetch(id=rid, handle=handle))
    if not isinstance(frame, frames.Profile) or frame.handle != handle:
        raise UnexpectedFrame("relay answered PROFILE_FETCH with another record")
    # PROFILE is for businesses only (SPEC §8.2): the relay said "published", so the key
    # it served, pinned here, is used only once the log proves it (§15.6 rule 5), and a
    # relay that later calls the handle a user skips no check.
    trust.note_published(handle)
    try:
        trust.pin(handle, frame.identity_key)
        key_changed = False
    except UntrustedIdentity:
        key_changed = True
    profile = (
        open_profile(frame.profile, frame.identity_key, handle)
        if frame.profile is not None
        else None
    )
    if operator_key is None:
        badge = BadgeCheck(BadgeStatus.ABSENT)
    else:
        badge = check_badge(
            frame.badge,
            operator_key=operator_key,
            handle=handle,
            identity_key=frame.identity_key,
            now_ms=clock(),
        )
        logged = badge.badge
        if badge.verified and logged is not None and log_check.forked is not None:
            # The relay was caught equivocating: a proof that it logged the badge shows
            # only our side of its log (T75). The operator's signature still holds.
            badge = BadgeCheck(BadgeStatus.LOG_FORKED, logged)
        elif badge.verified and logged is not None and frame.badge is not None and not (
            await log_check.badge_logged(logged, frame.badge)
        ):
            badge = BadgeCheck(BadgeStatus.NOT_LOGGED, logged)
    return BusinessInfo(handle, frame.identity_key, profile, badge, key_changed)


__all__ = ["BusinessInfo", "business_info", "same_name"]
