"""Sending: encrypt content for a contact and enqueue it in the outbox (SPEC §6.1–6.3).

A message from :meth:`Client.send` to the wire: :meth:`Sender.send_content`
starts a session first if there is none (a bundle fetch, one per contact
however many sends wait for it, in order), then :meth:`Sender.queue_content`
encrypts and writes the advanced session and the outbox entry in one keystore
transaction — a crash keeps both (the envelope is resent) or neither (the
chain never moved) — and the outbox transmits it. :meth:`Sender.send_many`
does the same for one body and many recipients, a chunk per transaction.

- Fields no SEND may carry are refused before anything is encrypted or stored.
- The SEND's labels (intent, category, categories) and its content's are made from
  one :class:`Labels` (SPEC §13.11): the recipient refuses content whose labels
  differ from the DELIVER's, so the relay cannot relabel a message.
- A contact whose identity key change awaits the user is refused
  (UntrustedIdentity, SPEC §3.3) before anything is written.
- A published account's key (a business's) is proven in the relay's log before
  anything is encrypted to it (SPEC §15.6 rule 5): a bundle fetched to start a
  session is checked (``logcheck``), and so is a key that came in the account's own
  prekey message — its first message or a key change — which the first send to it
  checks by fetching the bundle's proof, on the contact's lock (:meth:`Sender.
  send_content`). A bulk send leaves such a recipient to that path.
- A contact whose tree head (heard in its message) the relay has not proven consistent
  with ours past the bounds of SPEC §15.6 rule 5 is refused (:class:`LogUnchecked`)
  unless one more try, made by the send, proves it (``gossip``).
- A chat records, in the same transaction, that we wrote to its recipient
  (``message_requests``).

Not here: what happens after the envelope is queued (``outbox``), sessions and
their cryptography (``sessions``), trust decisions (``trust``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from blindrelay.protocol import frames, limits
from blindrelay.protocol.content import (
    CHAT,
    Content,
    Data,
    Labels,
    Receipt,
    Text,
    content_encoder,
    encode_content,
)
from blindrelay.protocol.errors import (
    BlindrelayError,
    KeyNotLogged,
    UnexpectedFrame,
    UntrustedIdentity,
)

from .keystore import KeyStore
from .link import RelayLink
from .logcheck import LogCheck
from .message_requests import MessageRequests
from .outbox import Bulk, Outbox, Outcome, Outgoing
from .pacing import wait_out_rate_limits
from .sessions import NoSession, Rng, SessionManager

FetchBundle = Callable[[], Awaitable[frames.Bundle]]
"""A contact's bundle, fetched (again) with the send's patience for 402s."""

SEND_MANY_WINDOW = 256
"""SENDs :meth:`Client.send_many` keeps in flight: enough to hide the round trip
to the relay behind encryption; more only queues frames in our socket buffer
and grows the outbox."""


def as_content(body: str | bytes) -> Text | Data:
    """An application's body as content: text stays text, bytes stay bytes."""
    return Text(body) if isinstance(body, str) else Data(bytes(body))


class _HandleLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class HandleLocks:
    """Per-contact locks that exist only while someone holds or awaits them.

    A send that must fetch a bundle first holds its contact's lock, so that
    concurrent sends to a new contact start one session and keep their order;
    a send to a contact with a session and no lock taken needs none (encrypt
    and enqueue are one synchronous step). Kept in a dict for ever, a lock per
    contact ever written to would grow a business's memory with every customer.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _HandleLock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def busy(self, handle: str) -> bool:
        """Someone holds or awaits ``handle``'s lock: a send must queue behind them."""
        return handle in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, handle: str) -> AsyncIterator[None]:
        entry = self._locks.get(handle)
        if entry is None:
            entry = self._locks[handle] = _HandleLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[handle]


class Sender:
    """Encrypt and enqueue: one message, or one body for many (module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        sessions: SessionManager,
        outbox: Outbox,
        link: RelayLink,
        requests: MessageRequests,
        log_check: LogCheck,
        *,
        rng: Rng,
        identity_changed: Callable[[str], None],
    ) -> None:
        self._store = store
        self._log_check = log_check
        self._sessions = sessions
        self._outbox = outbox
        self._link = link
        self._requests = requests
        self._rng = rng
        self._identity_changed = identity_changed
        self.locks = HandleLocks()
        """Held while a contact's session is started; gone once nobody waits."""
        self.encrypt_seconds = 0.0
        """Time spent encrypting and enqueueing outgoing messages (for benchmarks)."""
        self._checked: set[Labels] = set()

    async def send_content(
        self,
        handle: str,
        body: Text | Data | Receipt,
        labels: Labels = CHAT,
        rate_limit_retries: int = 0,
    ) -> bytes:
        """Encrypt ``body`` for ``handle``, enqueue it, return its msg_id at SENT.
        Raises the split-view alarm (:class:`LogForked`) once it has gone off, and
        :class:`LogUnchecked` while the relay withholds the proof for ``handle``'s tree
        head past the bounds (one more try first, ``gossip``)."""
        self._link.raise_if_fatal()
        self._log_check.raise_if_forked()
        if self._log_check.overdue(handle):
            await self._log_check.require_checked(handle)
        trust = self._sessions.trust
        if (
            self.locks.busy(handle)
            or not self._sessions.has_session(handle)
            or trust.unlogged_key(handle) is not None
        ):
            async with self.locks.hold(handle):  # one bundle fetch, sends kept in order
                trust.refuse_pending(handle)
                fetch = functools.partial(self._fetch_bundle, handle, rate_limit_retries)
                if not self._sessions.has_session(handle):
                    await self._start_session(handle, fetch)
                elif trust.unlogged_key(handle) is not None:
                    await self._prove_pinned(handle, fetch)
                msg_id, sent = self.queue_content(handle, body, labels, rate_limit_retries)
        else:  # encrypt and enqueue in one synchronous step: nothing to wait for
            msg_id, sent = self.queue_content(handle, body, labels, rate_limit_retries)
        await sent
        return msg_id

    async def _start_session(self, handle: str, fetch: FetchBundle) -> None:
        # SPEC §15.6: a published key (every business's) only with proof it is logged.
        bundle = await self._log_check.bundle(await fetch(), fetch)
        try:
            self._sessions.start_session(bundle)
        except UntrustedIdentity:
            self._identity_changed(handle)
            raise

    async def _prove_pinned(self, handle: str, fetch: FetchBundle) -> None:
        """SPEC §15.6: the key a published account's message pinned, with no bundle, is
        proven by the bundle's log proof before the first message to it. A proof of
        another key is of the account's real one: it becomes the pending change the user
        is asked about, and the pinned key is refused (KeyNotLogged)."""
        pinned = self._sessions.trust.unlogged_key(handle)
        bundle = await self._log_check.bundle(await fetch(), fetch)
        if pinned is None or bundle.identity_key == pinned:
            return
        try:
            self._sessions.trust.check(handle, bundle.identity_key)  # records the change
        except UntrustedIdentity:
            self._identity_changed(handle)
        raise KeyNotLogged(handle, "the log holds another key for it, now a pending change")

    async def _fetch_bundle(self, handle: str, rate_limit_retries: int) -> frames.Bundle:
        """The relay paces bundle fetches as it paces SENDs (SPEC §5.3, §10): a send told
        to wait out ``rate_limit_retries`` 402s waits them out here too. Right after a
        relay restart an account's buckets count as emptied when its connection ended, so
        a message written while the relay was away met its 402 here, not at the SEND."""
        bundle = await wait_out_rate_limits(
            lambda: self._link.request(lambda rid: frames.BundleFetch(id=rid, handle=handle)),
            retries=rate_limit_retries,
        )
        if not isinstance(bundle, frames.Bundle) or bundle.handle != handle:
            raise UnexpectedFrame("relay answered a bundle fetch with another bundle")
        return bundle

    def queue_content(
        self,
        handle: str,
        body: Text | Data | Receipt,
        labels: Labels = CHAT,
        rate_limit_retries: int = 0,
    ) -> tuple[bytes, asyncio.Future[int]]:
        """Encrypt, persist in the outbox, transmit if online; the future resolves at SENT
        (a RATE_LIMITED refusal is retried after its ``retry_after``, ``rate_limit_retries`` times).

        The advanced session and the outbox entry are one keystore write: a
        crash between them would otherwise lose an envelope whose message key
        is already spent. Raises UntrustedIdentity (pending key change),
        NoSession, MalformedFrame for fields no SEND may carry.
        """
        started = time.perf_counter()
        self.check_labels(labels)
        frames.check_handle(handle, "to")
        msg_id = self._new_msg_id()
        with self._store.atomic():
            content = Content(msg_id, body, self._log_check.gossip(handle), labels)
            envelope = self._sessions.encrypt(handle, encode_content(content))
            outgoing = self._outbox.persist(msg_id, handle, envelope, labels)
            wrote = labels.intent == frames.Intent.CHAT and self._requests.note_chat(handle)
        if wrote:
            self._requests.noted((handle,))
        self.encrypt_seconds += time.perf_counter() - started
        return msg_id, self._outbox.add(outgoing, rate_limit_retries)

    def _new_msg_id(self) -> bytes:
        """SPEC §6.1.1: the clock, then 80 random bits. The relay's clock as this link
        estimates it, not this machine's, so the id shows nothing of this machine's
        clock; it does show when the message was written (before ``sent_at`` if offline)."""
        return frames.message_id(self._link.relay_now(), self._rng(frames.MESSAGE_ID_RANDOM_BYTES))

    def check_labels(self, labels: Labels) -> None:
        """Refuse, before anything is encrypted or stored, fields no SEND may carry.

        Checked by building a SEND once per combination: the frame's own rules,
        not a copy. With the handle checked per recipient and envelopes and ids
        of valid sizes by construction, every outbox entry makes a valid SEND.
        """
        if labels not in self._checked:
            frames.Send(
                id=1, to="abc", msg_id=bytes(limits.MESSAGE_ID_BYTES), intent=labels.intent,
                body=b"\x00", category=labels.category, categories=labels.categories,
            )  # fmt: skip
            self._checked.add(labels)

    # --- One body, many recipients (SPEC §8.3) --------------------------------------

    async def send_many(
        self,
        handles: Iterable[str],
        content: Text | Data,
        labels: Labels,
        *,
        rate_limit_retries: int,
        window: int,
    ) -> list[tuple[str, Outcome]]:
        """:meth:`Client.send_many`: up to ``window`` SENDs in flight, a chunk of
        recipients encrypted and enqueued per keystore transaction, and a recipient
        without a session sent on the path of :meth:`send_content` on its own."""
        if window < 1:
            raise ValueError("window must be at least 1")
        self._log_check.raise_if_forked()
        self.check_labels(labels)
        plaintext_for = content_encoder(content, None, labels)  # no tree head: ``gossip``
        todo = list(handles)
        bulk = Bulk(len(todo), rate_limit_retries)
        refill = max(1, window // 4)
        """Wake to queue more once this many slots are free, not at every SENT."""
        slow: set[asyncio.Task[bytes]] = set()
        position = 0
        try:
            while position < len(todo):
                self._link.raise_if_fatal()
                await bulk.drained(window - refill if position else window)
                chunk = todo[position : position + window - bulk.in_flight]
                for offset, handle in self._queue_many(
                    bulk, position, chunk, plaintext_for, labels
                ):
                    task = asyncio.create_task(
                        self.send_content(handle, content, labels, rate_limit_retries)
                    )
                    bulk.in_flight += 1
                    slow.add(task)
                    task.add_done_callback(slow.discard)
                    task.add_done_callback(functools.partial(bulk.slow_done, position + offset))
                position += len(chunk)
            await bulk.drained(0)
        finally:
            for task in slow:
                task.cancel()
            self._outbox.forget_bulk(bulk)  # stopped early: they stay in the outbox
        results: list[tuple[str, Outcome]] = []
        for handle, outcome in zip(todo, bulk.outcomes, strict=True):
            assert outcome is not None  # every recipient was settled before drained(0)
            results.append((handle, outcome))
        return results

    def _queue_many(
        self,
        bulk: Bulk,
        first: int,
        chunk: list[str],
        plaintext_for: Callable[[bytes], bytes],
        labels: Labels,
    ) -> list[tuple[int, str]]:
        """Encrypt and enqueue ``chunk`` in one keystore transaction, then transmit it.

        Returns the (offset, handle) of recipients that need the path of
        :meth:`send_content`: no session yet, a key the log has not proven yet, a tree
        head of theirs the relay withholds the proof for, or a send to them is already
        waiting on one. A recipient whose encryption is refused
        (UntrustedIdentity) gets that outcome; ``SessionManager.encrypt``
        refuses before it writes anything, so the rest of the chunk stands.
        """
        started = time.perf_counter()
        size = frames.MESSAGE_ID_RANDOM_BYTES
        now, randoms = self._link.relay_now(), self._rng(size * len(chunk))
        self.check_labels(labels)
        queued: list[tuple[int, Outgoing]] = []
        deferred: list[tuple[int, str]] = []
        wrote: list[str] = []
        chat = labels.intent == frames.Intent.CHAT
        with self._store.atomic():
            for offset, handle in enumerate(chunk):
                if self.locks.busy(handle) or self._log_check.overdue(handle):
                    deferred.append((offset, handle))
                    continue
                msg_id = frames.message_id(now, randoms[offset * size : (offset + 1) * size])
                try:
                    frames.check_handle(handle, "to")
                    envelope = self._sessions.encrypt(handle, plaintext_for(msg_id))
                except (NoSession, KeyNotLogged):  # the path that starts or proves one
                    deferred.append((offset, handle))
                    continue
                except BlindrelayError as exc:
                    bulk.outcomes[first + offset] = exc
                    continue
                outgoing = self._outbox.persist(msg_id, handle, envelope, labels)
                queued.append((first + offset, outgoing))
                if chat and self._requests.note_chat(handle):
                    wrote.append(handle)
        self._requests.noted(wrote)
        self.encrypt_seconds += time.perf_counter() - started
        self._outbox.add_bulk(bulk, queued)
        return deferred


__all__ = ["CHAT", "SEND_MANY_WINDOW", "HandleLocks", "Labels", "Sender", "as_content"]
