"""Keeping our prekeys published (SPEC §5.4): at each login, and when the relay runs low.

The keys themselves are made and stored by ``sessions`` before the upload
exists (the relay never publishes a key we cannot use); this part only decides
when to send them: after every WELCOME, topped up to what it reports, and on
PREKEYS_LOW, one upload at a time. The login is also when ``sessions`` rotates
our signed prekey (SPEC §13.3); the relay's OK to an upload carrying one is
reported back (:meth:`SessionManager.signed_prekey_published`), which starts
the grace period of the one it replaced.

Not here: the keys and their custody (``sessions``, ``keystore``).
"""

from __future__ import annotations

import asyncio
import logging

from blindrelay.protocol import frames

from .connection import Connection
from .sessions import SessionManager

log = logging.getLogger("blindrelay.client")


class PrekeyPublisher:
    """Uploads prekeys when the relay holds too few (module docstring)."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._topping_up = False

    async def welcomed(self, conn: Connection, welcome: frames.Welcome) -> None:
        """Top the relay up to what its WELCOME says it lacks; return once it took them."""
        upload = self._sessions.prekeys_upload(
            conn.next_request_id(),
            relay_one_time=welcome.one_time_prekeys,
            relay_has_signed=welcome.has_signed_prekey,
        )
        if upload is not None:
            await conn.request(upload)
            self._took(upload)

    def running_low(self, conn: Connection, remaining: int) -> None:
        """PREKEYS_LOW: upload in the background, unless an upload is under way."""
        if self._topping_up:
            return
        upload = self._sessions.prekeys_upload(
            conn.next_request_id(), relay_one_time=remaining, relay_has_signed=True
        )
        if upload is None:
            return
        self._topping_up = True

        def done(future: asyncio.Future[frames.Frame]) -> None:
            self._topping_up = False
            if future.cancelled():
                return
            if future.exception() is not None:
                log.warning("prekey top-up failed: %r", future.exception())
            else:
                self._took(upload)

        conn.request(upload).add_done_callback(done)

    def _took(self, upload: frames.PrekeysUpload) -> None:
        """The relay answered OK to ``upload``: it serves the signed prekey in it."""
        if upload.signed_prekey is not None:
            self._sessions.signed_prekey_published(upload.signed_prekey.key_id)


__all__ = ["PrekeyPublisher"]
