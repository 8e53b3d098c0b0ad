"""Replacing our identity key so that a crash at any step leaves one identity (SPEC §3.4).

A rotation changes two records that no transaction spans: the key the relay holds
for our account and the key our profile holds. It goes in five steps:

1. :meth:`Rotation.begin` writes the new key's seed to the keystore before any
   request names the new key: from then on the profile holds both keys, so it holds
   whichever one the relay holds.
2. ROTATE_IDENTITY (:meth:`Rotation.request`) goes out; the relay's OK means it
   holds the new key.
3. :meth:`Rotation.finish` makes the new key our identity, signs a new prekey with
   it, signs a business's profile again with it (kept as not published) and forgets
   the seed, in one keystore transaction.
4. The caller publishes the new prekeys (the relay deleted the old key's).
5. A business publishes the re-signed profile (the relay deleted the old key's,
   which no one verifies with the old key any more): :meth:`Rotation.publish_profile`,
   also at every login while the keystore says the relay may not hold it, so a
   client that ended before step 5, or a refused PROFILE_PUT, catches up.

**Recovery.** While a seed is pending — the process died, or the connection
dropped, between steps 1 and 3 — the relay is asked which key it holds the one way it
answers: LOGIN, which it accepts only with the account's current key (SPEC §4.3).
:meth:`Rotation.login_key` offers the new key first (after step 1 the relay most
likely has committed the rotation: the wait for OK is the longest step), and the
current key on a new connection once the relay refused it (AUTH_FAILED closes the
connection, SPEC §4.4).

- WELCOME for the new key: the relay holds it; :meth:`Rotation.welcomed` finishes
  (step 3). The WELCOME reports no signed prekey, so the usual top-up is step 4.
- WELCOME for the current key: the rotation is sent again, with the same new key.
  It is completed rather than rolled back: the person asked for it (perhaps because
  the old key leaked), and a request of the interrupted run may still reach the
  relay. With the same new key, whichever request is committed first wins and the
  other is refused as signed by a key that is no longer current (SPEC §3.4, or as
  naming the current key, ERROR 100): then a new connection logs in with the new
  key. Any other refusal (a rate limit, a second such refusal in a row) leaves us
  logged in with the current key and the rotation pending for the next login.
- Both keys refused: AUTH_FAILED is raised, and both keys are kept.

Every step can be repeated after a crash in it: nothing is deleted before the relay
has shown which key it holds, and :meth:`Rotation.begin` reuses a pending key instead
of drawing another (another would orphan a key the relay may already hold).

:class:`Rotation` also sends the requests, on the connection it is given; when to
rotate, and logging in, are ``account``'s. Not here: the key maths
(``blindrelay.protocol.crypto``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from blindrelay.protocol import frames
from blindrelay.protocol.business import open_profile
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import (
    InvalidProfile,
    InvalidStatement,
    MalformedFrame,
    ProtocolError,
    StaleStatement,
)
from blindrelay.protocol.transcripts import rotate_transcript

from .connection import Connection
from .keystore import KeyStore
from .pacing import wait_out_rate_limits
from .sessions import Rng, SessionManager
from .transport import ConnectionLost

PROFILE_PUT_RETRIES = 3
PROFILE_PUT_PATIENCE_MS = 15_000
"""A re-signed profile's PROFILE_PUT waits out 402s this long in all: a token of the
relay's default bucket (SPEC §10, six a minute) with room; right after a relay restart
every bucket counts as emptied when the last connection ended."""

log = logging.getLogger("blindrelay.client")


class KeyNotCurrent(ConnectionLost):
    """The relay refused a key of ours as not current, and it may hold the other one.

    A :class:`ConnectionLost`: the connection is dropped, and the next one logs in
    with the other key (:meth:`Rotation.login_key`).
    """


class Rotation:
    """One account's identity rotation and its recovery (see the module docstring)."""

    def __init__(
        self, store: KeyStore, sessions: SessionManager, *, clock: Callable[[], int]
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._clock = clock
        self._refused: set[bytes] = set()
        """Public keys whose LOGIN the relay refused since its last WELCOME."""
        self._resend_refused = False
        """The last rotation sent again at login was refused as not current."""

    def pending(self) -> IdentityKeyPair | None:
        """The key a rotation in progress moves to, if any."""
        seed = self._store.rotating_identity_seed()
        return IdentityKeyPair.from_seed(seed) if seed is not None else None

    def begin(self, rng: Rng) -> IdentityKeyPair:
        """Step 1: the key to rotate to, kept in the keystore before it is sent."""
        pending = self.pending()
        if pending is not None and pending.public != self._sessions.keypair.public:
            return pending
        new = IdentityKeyPair.generate(rng)
        self._store.set_rotating_identity_seed(new.seed)
        return new

    def request(
        self, request_id: int, relay_key: bytes, issued_at: int, new: IdentityKeyPair
    ) -> frames.RotateIdentity:
        """Step 2: ROTATE_IDENTITY from our current key to ``new``, signed by both."""
        old = self._sessions.keypair
        handle = self._sessions.identity.handle
        transcript = rotate_transcript(relay_key, handle, old.public, new.public, issued_at)
        return frames.RotateIdentity(
            id=request_id,
            new_identity_key=new.public,
            issued_at=issued_at,
            old_signature=old.sign(transcript),
            new_signature=new.sign(transcript),
        )

    def finish(self, new: IdentityKeyPair) -> None:
        """Step 3, once the relay holds ``new``: adopt it, re-sign our profile with it and
        forget the seed, atomically."""
        old = self._sessions.keypair.public
        with self._store.atomic():
            self._sessions.replace_identity(new)
            self._resign_profile(old, new)
            self._store.set_rotating_identity_seed(None)
        self._refused.clear()
        self._resend_refused = False

    def _resign_profile(self, old: bytes, new: IdentityKeyPair) -> None:
        """A business's profile, signed by ``old``, signed by ``new`` and kept as not
        published: our away replies open it with our current key (``business``), and
        the relay dropped the old key's (SPEC §3.4)."""
        signed = self._store.business_profile()
        if signed is None:
            return
        handle = self._sessions.identity.handle
        try:
            profile = open_profile(signed, old, handle)
        except InvalidProfile:
            # Only after an older version crashed between replacing the key and
            # forgetting the seed (see :meth:`welcomed`): ``old`` is ``new`` already.
            log.warning("our profile is not signed by our previous key; publish it again")
            return
        self._store.set_business_profile(profile.sign(new.sign), published=False)

    def login_key(self) -> IdentityKeyPair:
        """The key to sign the next LOGIN with: the pending one first, then the current."""
        current = self._sessions.keypair
        pending = self.pending()
        if pending is not None and pending.public not in self._refused | {current.public}:
            return pending
        return current

    def login_refused(self, key: IdentityKeyPair, error: ProtocolError) -> None:
        """AUTH_FAILED for ``key``: raises :class:`KeyNotCurrent` if another key is left.

        Otherwise returns, and the caller raises ``error``; the next login starts over.
        """
        self._refused.add(key.public)
        if self.login_key().public not in self._refused:
            raise KeyNotCurrent("the relay refused one of our keys; trying the other") from error
        self._refused.clear()

    def welcomed(self, key: IdentityKeyPair) -> IdentityKeyPair | None:
        """WELCOME for ``key``: the key a pending rotation must still be sent to, or None.

        Finishes the rotation if ``key`` is its new key (also when our identity is that
        key already: an older version could crash between replacing it and forgetting
        the seed, before it signed a prekey with it).
        """
        self._refused.clear()
        pending = self.pending()
        if pending is not None and pending.public == key.public:
            self.finish(pending)
            return None
        return pending

    def resend_refused(self, error: ProtocolError) -> None:
        """The rotation sent again at login was refused as signed by a key no longer
        current: the first time, raises :class:`KeyNotCurrent` (the interrupted request
        may have been committed since); a second time in a row, returns, and the
        rotation stays pending for the next login."""
        if not self._resend_refused:
            self._resend_refused = True
            raise KeyNotCurrent("rotation refused; the relay may hold the new key") from error
        self._resend_refused = False

    # --- The requests, on one connection ------------------------------------------

    async def send(self, conn: Connection, new: IdentityKeyPair) -> None:
        """Steps 2 and 3 on ``conn``: ROTATE_IDENTITY to ``new``; at the relay's OK, adopt it."""
        # Dated by the relay's clock, as statements are: the relay checks the skew (§3.4).
        issued_at = self._clock() + conn.clock_offset
        await conn.request(self.request(conn.next_request_id(), conn.relay_key, issued_at, new))
        self.finish(new)

    async def publish_prekeys(self, conn: Connection) -> None:
        """Step 4: the relay deleted the old key's prekeys (SPEC §3.4): publish the new key's."""
        upload = self._sessions.prekeys_upload(
            conn.next_request_id(), relay_one_time=0, relay_has_signed=False
        )
        assert upload is not None
        await conn.request(upload)

    async def publish_profile(self, conn: Connection) -> None:
        """Step 5: PROFILE_PUT the profile :meth:`finish` signed again, if the relay may
        not hold it. A 402 is waited out (:data:`PROFILE_PUT_PATIENCE_MS` at most: the
        relay holds no profile of ours meanwhile, and customers see none); another
        refusal is logged and left to the next login."""
        signed = self._store.business_profile()
        if signed is None or self._store.business_profile_published():
            return
        try:
            await wait_out_rate_limits(
                lambda: conn.request(frames.ProfilePut(id=conn.next_request_id(), profile=signed)),
                retries=PROFILE_PUT_RETRIES,
                patience_ms=PROFILE_PUT_PATIENCE_MS,
            )
        except ProtocolError as exc:
            log.warning("profile not published after the rotation: the relay answered %s", exc)
            return
        if self._store.business_profile() == signed:  # not replaced meanwhile
            self._store.set_business_profile(signed)

    async def resume(self, conn: Connection, new: IdentityKeyPair) -> None:
        """Logged in on ``conn`` with our current key while a rotation to ``new`` is
        pending: send it again (module docstring, Recovery)."""
        try:
            await self.send(conn, new)
        except (InvalidStatement, StaleStatement, MalformedFrame) as exc:
            # SPEC §3.4: "both mean the same thing: the key it signed with is no longer
            # current"; 100 if the new key is current already.
            self.resend_refused(exc)
            log.warning("identity rotation still pending: the relay answered %s", exc)
            return
        except ProtocolError as exc:  # we are logged in; the next login tries again
            log.warning("identity rotation still pending: the relay answered %s", exc)
            return
        await self.publish_prekeys(conn)
        await self.publish_profile(conn)
