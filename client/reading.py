"""Reading the inbox: what :meth:`Client.messages` and :meth:`Client.receipts` yield,
and when each item is acknowledged — deleted from the keystore (SPEC §6.5).

**Two iterators, not one stream of a union.** ``messages()`` yields only
:class:`Message` (its ``body`` is always ``str`` or ``bytes``), ``receipts()``
only :class:`ReceiptEvent`. Most applications want the messages and nothing
else; with one ``events()`` stream every one of them would have to tell the
kinds apart, and one that did not would show a receipt as an empty message.
The two are cursors over the one persisted inbox, each acknowledging only its
own kind, so reading one never discards the other. What a separate stream
costs — receipts that nobody reads — is bounded: beyond
:data:`MAX_UNREAD_RECEIPTS` the oldest unread one is dropped.

**The contract**, the same for both kinds:

- Every item was persisted before its delivery was acknowledged to the relay
  (``inbox``); items are yielded oldest first, each once per process.
- The item last yielded is *in hand*. It is acknowledged at the application's
  next step on that kind: asking for the next item; leaving the loop (``break``,
  ``return`` or an exception drops the iterator of ``async for item in
  client.messages()`` and CPython acknowledges right there; an iterator the
  application keeps in a variable, or any runtime: ``await iterator.aclose()``);
  starting a new iterator; or :meth:`Client.close`. A consumer stopped before it
  could handle the item puts it back instead (:meth:`InboxReader.release`).
- After a crash (the process ends without :meth:`Client.close`), the item that
  was in hand comes back first, then the ones never yielded; nothing acknowledged
  comes back.
- One consumer per kind: a new iterator takes over from the previous one (whose
  item in hand is acknowledged); iterators of one kind share one queue.

Not here: decrypting, persisting, holding and acknowledging deliveries to the
relay (``inbox``); the keystore's rows (``keystore``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from blindrelay.protocol import frames
from blindrelay.protocol.content import Data, Receipt, ReceiptType, Text

from .incoming import Incoming
from .keystore import KeyStore
from .trust import IdentityState

log = logging.getLogger("blindrelay.client")

MAX_UNREAD_RECEIPTS = 1_000
"""Receipts kept for :meth:`Client.receipts` before the oldest unread one is dropped.
Receipts are tick marks on messages already sent; an application that never reads
them (a business, a bot) would otherwise grow its profile by one row per message it
sends. 1,000 covers a long offline spell of an app that does read them (a few
hundred bytes each); a larger bound keeps more of such a backlog on disk."""


@dataclass(frozen=True, slots=True)
class Message:
    """A decrypted incoming message as the application sees it (never a receipt).

    ``body`` is a str (kind text) or bytes (kind bytes). ``sent_at`` is the
    relay's acceptance time (SPEC §6.3); ``identity`` how far the sender's key is
    trusted.
    """

    msg_id: bytes
    sender: str
    sender_kind: str
    sent_at: int
    identity: IdentityState
    body: str | bytes
    intent: str = "chat"
    category: str | None = None
    """A notification's category (SPEC §7.1)."""
    categories: tuple[str, ...] | None = None
    """What a consent request asks for; answer with :meth:`Client.grant` or ``deny``."""
    is_request: bool = False
    """A message request (SPEC §7.3): from a user we (a user) have never written to.
    Show it apart; :meth:`Client.accept_request` (or any reply) accepts, ``block`` refuses."""

    @property
    def from_business(self) -> bool:
        """Sent by a business account (check its badge with :meth:`Client.business_info`)."""
        return self.sender_kind == frames.AccountKind.BUSINESS

    @property
    def from_user(self) -> bool:
        return self.sender_kind == frames.AccountKind.USER

    @property
    def is_consent_request(self) -> bool:
        """A business asks for consent to ``categories``; ``body`` is its explanation."""
        return self.intent == frames.Intent.CONSENT_REQUEST

    @classmethod
    def from_incoming(cls, incoming: Incoming, *, is_request: bool = False) -> Message:
        body = incoming.content.body
        if not isinstance(body, Text | Data):
            raise TypeError("a receipt is a ReceiptEvent, not a Message")
        return cls(
            msg_id=incoming.msg_id,
            sender=incoming.sender,
            sender_kind=incoming.sender_kind,
            sent_at=incoming.sent_at,
            identity=incoming.identity,
            body=body.text if isinstance(body, Text) else body.data,
            intent=incoming.intent,
            category=incoming.category,
            categories=incoming.categories,
            is_request=is_request,
        )


@dataclass(frozen=True, slots=True)
class ReceiptEvent:
    """``sender`` confirms our messages ``msg_ids``: delivered to their device or read
    by the person (SPEC §6.2). End-to-end encrypted like a message; the relay cannot
    tell it from one."""

    sender: str
    type: ReceiptType
    msg_ids: tuple[bytes, ...]
    """The msg_ids :meth:`Client.send` returned for the messages confirmed."""
    at: int
    """When the relay accepted the receipt (Unix ms, relay's clock, SPEC §6.3)."""

    @classmethod
    def from_incoming(cls, incoming: Incoming) -> ReceiptEvent:
        body = incoming.content.body
        if not isinstance(body, Receipt):
            raise TypeError("not a receipt")
        return cls(incoming.sender, body.type, body.refs, incoming.sent_at)


def is_receipt(incoming: Incoming) -> bool:
    """Which of the two kinds (module docstring) ``incoming`` is read as."""
    return isinstance(incoming.content.body, Receipt)


T = TypeVar("T")


class InboxStream(Generic[T]):
    """One kind of inbox item: the queue in arrival order and the item in hand.

    The queue mirrors the kind's keystore rows (loaded once at start, then fed by
    :meth:`put` as deliveries are persisted), so reading costs no keystore scan;
    the keystore row goes when the item is acknowledged (:meth:`settle`).
    """

    def __init__(
        self,
        store: KeyStore,
        build: Callable[[Incoming], T],
        *,
        raise_if_stopped: Callable[[], None],
        unread_limit: int | None = None,
    ) -> None:
        """``build`` makes what the application gets, when it is yielded;
        ``raise_if_stopped`` raises why the client stopped; ``unread_limit``
        bounds the queue by dropping the oldest (None: unbounded)."""
        self._store = store
        self._build = build
        self._raise_if_stopped = raise_if_stopped
        self._unread_limit = unread_limit
        self._queue: deque[Incoming] = deque()
        self._in_hand: tuple[Incoming, int] | None = None
        """The item last yielded, and the serial of the reader that yielded it."""
        self._serials = itertools.count(1)
        self._arrived = asyncio.Event()
        self._closed = False

    def put(self, incoming: Incoming) -> None:
        """A persisted item of this kind, newest last."""
        self._queue.append(incoming)
        if self._unread_limit is not None and len(self._queue) > self._unread_limit:
            oldest = self._queue.popleft()
            self._store.consume(oldest.sender, oldest.msg_id)
            log.info("dropped an unread item from %s: over %d", oldest.sender, self._unread_limit)
        self._arrived.set()

    def reader(self) -> InboxReader[T]:
        """A new iterator; the previous one's item in hand is done with."""
        self.settle()
        return InboxReader(self, next(self._serials))

    def settle(self, serial: int | None = None) -> None:
        """Acknowledge the item in hand (only if reader ``serial`` holds it, when given)."""
        in_hand = self._in_hand
        if in_hand is None or self._closed or (serial is not None and in_hand[1] != serial):
            return
        self._in_hand = None
        incoming = in_hand[0]
        self._store.consume(incoming.sender, incoming.msg_id)

    def release(self, serial: int) -> None:
        """Put the item reader ``serial`` holds back, unacknowledged: the next reader
        (or the next run) gets it first."""
        in_hand = self._in_hand
        if in_hand is None or self._closed or in_hand[1] != serial:
            return
        self._in_hand = None
        self._queue.appendleft(in_hand[0])
        self._arrived.set()

    async def next(self, serial: int) -> T:
        """Acknowledge the item in hand, then wait for the next one and hand it out."""
        self.settle()
        while True:
            self._raise_if_stopped()
            if self._queue:
                break
            self._arrived.clear()
            await self._arrived.wait()
        incoming = self._queue.popleft()
        self._in_hand = (incoming, serial)
        return self._build(incoming)

    def wake(self) -> None:
        """Wake a waiting reader (to raise why the client stopped)."""
        self._arrived.set()

    def close(self) -> None:
        """The client closes: the item in hand is done with; the keystore is left alone."""
        self.settle()
        self._closed = True
        self.wake()


class InboxReader(Generic[T]):
    """The async iterator :meth:`Client.messages` and :meth:`Client.receipts` return
    (the contract is in the module docstring)."""

    def __init__(self, stream: InboxStream[T], serial: int) -> None:
        self._stream = stream
        self._serial = serial
        self._thread = threading.get_ident()

    def __aiter__(self) -> InboxReader[T]:
        return self

    async def __anext__(self) -> T:
        return await self._stream.next(self._serial)

    async def aclose(self) -> None:
        """Done reading: acknowledge the item this iterator has in hand."""
        self._stream.settle(self._serial)

    def release(self) -> None:
        """Not done with the item in hand after all: it stays unacknowledged and comes
        first to the next iterator, or after a restart. For a consumer stopped before it
        could handle the item (``Business`` closing while an away reply waits)."""
        self._stream.release(self._serial)

    def __del__(self) -> None:
        # The application left its loop (break, return, exception) and dropped us.
        # The keystore belongs to the thread that made us; collected elsewhere (a
        # reference cycle), the item stays in hand until the next step settles it.
        if threading.get_ident() == self._thread:
            self._stream.settle(self._serial)


__all__ = [
    "MAX_UNREAD_RECEIPTS",
    "InboxReader",
    "InboxStream",
    "Message",
    "ReceiptEvent",
    "is_receipt",
]
