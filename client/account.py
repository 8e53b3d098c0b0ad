"""Our account on the relay: register it, log in (again after every drop), rotate its key.

A connection becomes *online* here (SPEC §4.2–4.4). :meth:`Account.register`
sends REGISTER; :meth:`Account.log_in` sends LOGIN signed with the key the relay
should hold — after an interrupted rotation, one of two
(:meth:`.rotation.Rotation.login_key`). At the answering WELCOME,
:meth:`Account.authenticated` catches up before the link calls the connection
online: it finishes an interrupted rotation (or notes it, to send again once
logged in), tops up our prekeys (``prekeys``) and sends the outbox again
(``outbox``). The link calls :meth:`Account.log_in` by itself on every new
connection once the account was authenticated, and :meth:`Account.online` when
a connection is online.

Not here: the connection and its reconnections (``link``), the steps of a
rotation and their recovery (``rotation``), the keys (``sessions``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Protocol

from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import AuthenticationFailed, LogForked, LogUnchecked

from .connection import Connection
from .keystore import AccountKind, KeyStore
from .link import RelayLink
from .message_requests import MessageRequests
from .outbox import Outbox
from .prekeys import PrekeyPublisher
from .rotation import KeyNotCurrent, Rotation
from .sessions import Clock, Rng, SessionManager
from .transport import ConnectionLost


class Hooks(Protocol):
    """The application's callbacks (:class:`~.sdk.Client` attributes), read at each call."""

    on_connected: Callable[[frames.Welcome], None] | None
    on_identity_change: Callable[[str], None] | None
    on_log_forked: Callable[[LogForked], None] | None
    on_log_unchecked: Callable[[LogUnchecked], None] | None


class Account:
    """Register, log in, catch up at each WELCOME, rotate (module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        sessions: SessionManager,
        link: RelayLink,
        *,
        prekeys: PrekeyPublisher,
        outbox: Outbox,
        requests: MessageRequests,
        rng: Rng,
        clock: Clock,
        hooks: Hooks,
    ) -> None:
        """``prekeys`` and ``outbox`` are brought up to date after each WELCOME."""
        self._store = store
        self._sessions = sessions
        self._link = link
        self._prekeys = prekeys
        self._outbox = outbox
        self._requests = requests
        self._rng = rng
        self._rotation = Rotation(store, sessions, clock=clock)
        self._hooks = hooks
        self._login_key: IdentityKeyPair | None = None
        """The key of the LOGIN in flight (None for a REGISTER): :meth:`authenticated`."""
        self._unfinished_rotation: IdentityKeyPair | None = None
        """A rotation to send again once the login in flight is online (:meth:`log_in`)."""
        self.welcome: frames.Welcome | None = None
        """The relay's WELCOME on the current or last connection."""
        self.connection_count = 0
        """Authenticated connections so far (reconnects included)."""

    async def register(self, handle: str, kind: AccountKind, invite: bytes | None) -> None:
        """:meth:`Client.register`: our identity key is persisted before REGISTER leaves."""
        if self._store.is_registered():
            raise RuntimeError("this profile is registered already; use login()")
        identity = self._store.get_identity()
        if identity is None:
            identity = self._sessions.create_identity(handle, kind, self._link.url or "")
        elif (identity.handle, identity.account_kind) != (handle, kind):
            identity = dataclasses.replace(identity, handle=handle, account_kind=kind)
            self._store.set_identity(identity)
        self._requests.account_changed()
        conn = await self._link.wait_ready()
        public = identity.identity_public
        nonce = await asyncio.to_thread(conn.machine.registration_proof, handle, kind, public)
        request_id = conn.machine.register(
            handle, kind, public, self._sessions.sign, pow_nonce=nonce, invite=invite
        )
        self._login_key = None
        await self._link.authenticate(conn, request_id)
        self._store.set_registered()

    async def login(self) -> None:
        """:meth:`Client.login`: on a connection the relay refuses our key on as not
        current, the next connection logs in with our other key."""
        while True:
            conn = await self._link.wait_ready()
            try:
                return await self.log_in(conn)
            except KeyNotCurrent:
                self._link.drop(conn)
                if self._link.logs_in_again:  # welcomed: the reconnection logs in by itself
                    await self._link.wait_online()
                    return

    async def rotate(self) -> None:
        """:meth:`Client.rotate_identity` (the steps: ``rotation``)."""
        conn = await self._link.wait_online()
        await self._rotation.send(conn, self._rotation.begin(self._rng))
        await self._rotation.publish_prekeys(conn)
        await self._rotation.publish_profile(conn)

    # --- What the link reports -----------------------------------------------------

    async def log_in(self, conn: Connection) -> None:
        """LOGIN with the key the relay should hold (:meth:`.Rotation.login_key`)."""
        key = self._login_key = self._rotation.login_key()
        identity = self._sessions.identity  # its WELCOME must name this account (T56)
        request_id = conn.machine.login(identity.handle, key.sign, kind=identity.account_kind)
        try:
            await self._link.authenticate(conn, request_id)
        except AuthenticationFailed as exc:
            self._rotation.login_refused(key, exc)  # KeyNotCurrent: try the other key
            raise
        unfinished, self._unfinished_rotation = self._unfinished_rotation, None
        if unfinished is not None:  # logged in with our current key: send it again
            await self._rotation.resume(conn, unfinished)

    async def authenticated(self, conn: Connection, welcome: frames.Welcome) -> None:
        """SPEC §4.4: top up prekeys (SPEC §5.4), then resend the outbox (SPEC §6.3);
        a login finishes an interrupted rotation (``rotation``) or notes it to resume,
        and publishes a profile a finished rotation signed again (SPEC §3.4)."""
        key, self._login_key = self._login_key, None
        if key is not None:  # before the top-up: a finished rotation publishes new prekeys
            self._unfinished_rotation = self._rotation.welcomed(key)
        await self._prekeys.welcomed(conn, welcome)
        await self._rotation.publish_profile(conn)
        if conn.lost:
            raise ConnectionLost("connection lost during login")
        self._outbox.transmit_all(conn)

    def online(self, welcome: frames.Welcome) -> None:
        """A connection is online: count it and tell the application (``on_connected``)."""
        self.welcome = welcome
        self.connection_count += 1
        if self._hooks.on_connected is not None:
            self._hooks.on_connected(welcome)


__all__ = ["Account"]
