"""Frame type → handler, hint kind → action, and the life of a session around it
(SPEC §2.2, §4.5).

The connection machine has already refused frames that are malformed or not
allowed in the current state; what reaches a handler is well-formed and
permitted. A frame type the protocol defines but this relay does not serve
yet is refused with UNEXPECTED_FRAME, never dropped.

A hint (:mod:`.routing`) is what another worker sharing the store committed that a
session here must act on; :meth:`Dispatcher.hint_received` hands it to the module
that acts on the same change made here.

Not here: sockets (``relay``), how hints travel (``routing``), what each frame does
(``auth``, ``directory``, ``delivery``, ``statements``, ``business``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from blindrelay.protocol.connection import State
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    UnexpectedFrame,
)
from blindrelay.protocol.fastcodec import read_ack, read_send
from blindrelay.protocol.frames import Frame, FrameType

from . import auth, business, delivery, directory, statements, transparency
from .context import RelayContext, Session
from .logs import LOGGER, log_event
from .routing import Hint, HintKind

Handler = Callable[[RelayContext, Session, Any], None]

HANDLERS: dict[FrameType, Handler] = {
    FrameType.REGISTER: auth.register,
    FrameType.LOGIN: auth.login,
    FrameType.ROTATE_IDENTITY: auth.rotate_identity,
    FrameType.PREKEYS_UPLOAD: directory.upload,
    FrameType.BUNDLE_FETCH: directory.fetch,
    FrameType.SEND: delivery.send,
    FrameType.ACK: delivery.acknowledge,
    FrameType.STATEMENT: statements.receive_statement,
    FrameType.STATEMENTS_LIST: statements.list_statements,
    FrameType.PROFILE_PUT: business.put_profile,
    FrameType.PROFILE_FETCH: business.fetch_profile,
    FrameType.USAGE_FETCH: business.fetch_usage,
    FrameType.BILL_FETCH: business.fetch_bill,
    FrameType.LOG_HEAD_FETCH: transparency.fetch_head,
    FrameType.LOG_CONSISTENCY_FETCH: transparency.fetch_consistency,
    FrameType.LOG_INCLUSION_FETCH: transparency.fetch_inclusion,
    FrameType.LOG_ENTRIES_FETCH: transparency.fetch_entries,
    FrameType.DISCOVERABLE: transparency.publish,
}
"""Client frames this relay serves: every request of protocol v2."""


class Dispatcher:
    """Feeds a session's messages to its machine and its frames to handlers."""

    def __init__(self, ctx: RelayContext) -> None:
        self.ctx = ctx

    def data_received(self, session: Session, data: bytes) -> None:
        """One frame, as the channel opened it (a text message never gets here: it fails
        the channel, SPEC §1.1.3)."""
        if not session.open:
            return
        if self.ctx.stopping:
            session.shut_down()
            return
        conn = session.conn
        if conn.state is State.AUTHENTICATED:
            # A SEND and an ACK per message: the fast readers skip the generic decode
            # (protocol.fastcodec). Both are receivable here and change no state, so
            # this is exactly what conn.receive_data would yield.
            fast = read_ack(data) or read_send(data)
            if fast is not None:
                self.frame_received(session, fast, len(data))
                session.transport.flush()
                return
        errors_before = conn.protocol_errors
        conn.receive_data(data)
        if conn.protocol_errors != errors_before:
            session.refusals.log(
                logging.INFO, "refused", handle=session.handle, size=len(data),
                peer=session.peer, closed=conn.state is State.CLOSED,
            )  # fmt: skip
        for frame in conn.events_received():
            self.frame_received(session, frame, len(data))
        session.transport.flush()

    def frame_received(self, session: Session, frame: Frame, size: int) -> None:
        self.ctx.metrics.frame(frame.TYPE)
        if LOGGER.isEnabledFor(logging.DEBUG):
            log_event(
                logging.DEBUG, "frame", type=frame.TYPE.name, handle=session.handle, size=size
            )
        handler = HANDLERS.get(frame.TYPE)
        if handler is None:
            self.ctx.refuse(session, frame, UnexpectedFrame(f"{frame.TYPE.name} not served"))
            return
        try:
            handler(self.ctx, session, frame)
        except Exception as exc:
            self.ctx.refuse(session, frame, exc)

    def hint_received(self, hint: Hint) -> None:
        """Another worker's hint (never this one's: the router drops those)."""
        if LOGGER.isEnabledFor(logging.DEBUG):
            log_event(logging.DEBUG, "hint", kind=hint.kind.name, handle=hint.handle)
        kind = hint.kind
        if kind is HintKind.DELIVER:
            delivery.delivered_elsewhere(self.ctx, hint)
        elif kind is HintKind.ENVELOPE:
            delivery.committed_elsewhere(self.ctx, hint)
        elif kind is HintKind.QUEUED:
            delivery.queued_elsewhere(self.ctx, hint.handle)
        elif kind is HintKind.WITHDRAWN:
            delivery.withdrawn_elsewhere(self.ctx, hint.handle, hint.ids)
        elif kind is HintKind.LOGIN:
            auth.logged_in_elsewhere(self.ctx, hint.handle, hint.value)
        elif kind is HintKind.PREKEYS_LOW:
            directory.prekeys_low(self.ctx, hint.handle, hint.value)

    def catch_up(self) -> None:
        """Hints may have been lost while the router or the store was disconnected."""
        delivery.catch_up(self.ctx)
        auth.catch_up_logins(self.ctx)

    def auth_expired(self, session: Session) -> None:
        """SPEC §4.1: close a connection that did not authenticate within AUTH_TIMEOUT_S."""
        if session.open and session.conn.state is State.AWAITING_AUTH:
            self.ctx.refuse(session, None, AuthenticationFailed("authentication timeout"))

    def session_ended(self, session: Session) -> None:
        auth.close_session(self.ctx, session)
        session.ended = True
        if session.outbox is not None:
            session.outbox.close()
        session.outbox = None
        self.ctx.sessions.detach(session)
        log_event(
            logging.INFO, "disconnected", handle=session.handle, peer=session.peer,
            **session.refusals.take_suppressed(),
        )  # fmt: skip
