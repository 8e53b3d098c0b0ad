"""Keeping our prekeys published (SPEC §5.4): at each login, and when the relay runs low.

The keys themselves are made and stored by ``sessions`` before the upload
exists (the relay never publishes a key we cannot use); this part only decides
when to send them: after every WELCOME, topped up to what it reports, and on
PREKEYS_LOW, one upload at a time. The login is also when ``sessions`` rotates
our signed prekey (SPEC §13.3); the relay's OK to an upload carrying one is
reported back (:meth:`SessionManager.signed_prekey_published`), which starts
the grace period of the one it replaced.

The relay paces uploads (SPEC §10, six a minute), and right after a relay restart an
account's buckets count as emptied when its last connection ended: the top-up a
WELCOME calls for then meets 402. The login goes on without it, and the upload is
sent again after ``retry_after`` in the background (:data:`UPLOAD_RETRIES` times at
most), as a PREKEYS_LOW top-up is; a RateLimited out of the login had stopped the
link for good.

Not here: the keys and their custody (``sessions``, ``keystore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable

from blindrelay.protocol import frames
from blindrelay.protocol.errors import RateLimited

from .connection import Connection
from .pacing import wait_out_rate_limits
from .sessions import SessionManager

log = logging.getLogger("blindrelay.client")

UPLOAD_RETRIES = 5
"""402s one upload waits out before it is left to the next PREKEYS_LOW or login."""
UPLOAD_PATIENCE_MS = 120_000
"""The most one upload waits in all: a relay naming longer waits is not waited for."""


class PrekeyPublisher:
    """Uploads prekeys when the relay holds too few (module docstring)."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._uploading: asyncio.Task[None] | None = None
        """The upload under way in the background, one at a time."""

    async def welcomed(self, conn: Connection, welcome: frames.Welcome) -> None:
        """Top the relay up to what its WELCOME says it lacks; return once it took them,
        or once it answered 402 (sent again in the background: module docstring)."""
        self._stop_uploading()  # of an earlier connection: this WELCOME's count is newer
        upload = self._sessions.prekeys_upload(
            conn.next_request_id(),
            relay_one_time=welcome.one_time_prekeys,
            relay_has_signed=welcome.has_signed_prekey,
        )
        if upload is None:
            return
        answer = conn.request(upload)
        try:
            await answer
        except RateLimited as exc:
            log.info(
                "prekey upload at login paced by the relay; again in %d ms", exc.retry_after_ms
            )
            self._start(conn, upload, answer)
            return
        self._took(upload)

    def running_low(self, conn: Connection, remaining: int) -> None:
        """PREKEYS_LOW: upload in the background, unless an upload is under way."""
        if self._uploading is not None and not self._uploading.done():
            return
        upload = self._sessions.prekeys_upload(
            conn.next_request_id(), relay_one_time=remaining, relay_has_signed=True
        )
        if upload is not None:
            self._start(conn, upload, conn.request(upload))

    async def settled(self) -> None:
        """Once no upload is under way in the background (for tests and tools)."""
        if self._uploading is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self._uploading)

    def close(self) -> None:
        """The client closes: an upload waiting out a 402 is not sent."""
        self._stop_uploading()

    def _stop_uploading(self) -> None:
        if self._uploading is not None:
            self._uploading.cancel()
            self._uploading = None

    def _start(
        self, conn: Connection, upload: frames.PrekeysUpload, answer: Awaitable[frames.Frame]
    ) -> None:
        task = asyncio.get_running_loop().create_task(self._upload(conn, upload, answer))
        task.add_done_callback(_log_failure)
        self._uploading = task

    async def _upload(
        self, conn: Connection, upload: frames.PrekeysUpload, answer: Awaitable[frames.Frame]
    ) -> None:
        """Wait for ``answer`` to ``upload``; a 402 sends it again on ``conn`` after its
        ``retry_after``, within :data:`UPLOAD_RETRIES` (SPEC §10). A lost connection ends
        it: the next WELCOME's top-up counts what the relay holds."""
        try:
            await answer
        except RateLimited as exc:
            await asyncio.sleep(max(exc.retry_after_ms, 1) / 1000)

            async def ask() -> frames.Frame:  # each time under an id of its own
                return await conn.request(dataclasses.replace(upload, id=conn.next_request_id()))

            await wait_out_rate_limits(
                ask, retries=UPLOAD_RETRIES - 1, patience_ms=UPLOAD_PATIENCE_MS
            )
        self._took(upload)

    def _took(self, upload: frames.PrekeysUpload) -> None:
        """The relay answered OK to ``upload``: it serves the signed prekey in it."""
        if upload.signed_prekey is not None:
            self._sessions.signed_prekey_published(upload.signed_prekey.key_id)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background upload has nobody awaiting it: the next PREKEYS_LOW or login tries again."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("prekey top-up failed: %r", task.exception())


__all__ = ["PrekeyPublisher"]
