"""Hints between relay workers that share one store: what one worker committed that
another worker's connections must act on.

With one relay process everything below happens in that process: the handler
that committed a change acts on the local sessions directly (``delivery``,
``statements``, ``directory``, ``auth``). With N workers sharing a PostgreSQL
store, the recipient of a message, the old connection of an account that logs
in again, or the owner of a prekey pool may be connected to another worker. The
store therefore emits a :class:`Hint` **inside the transaction that commits the
change** (PostgreSQL: ``pg_notify``, delivered only on ``COMMIT``), so no worker
ever hears of a change before it is committed; every worker hears every hint
and ignores its own (``origin``), which it has already acted on locally.

Hints are hints: a lost one (a worker that was disconnected from the store)
costs latency, never a message, because the tables are the truth and a worker
that reconnects catches up from them (every outbox pages its queue again).

A hint carries what the relay has anyway — handles, delivery ids, counts, and for
ENVELOPE the queued envelope itself (ciphertext and its metadata, the row the
store holds), never plaintext or keys; its text form is compact and, sealed, under
PostgreSQL's 8000-byte payload limit (:data:`MAX_IDS` ids at most; more, or an
envelope too big, become a :attr:`HintKind.QUEUED` "page again", which is always
correct).

**Sealed** (:class:`HintSeal`): PostgreSQL checks no privilege for ``LISTEN`` or
``NOTIFY``, so any role that can connect to the database — one with no right on a
single table — could hear every hint (handles, envelopes) and send its own: a forged
ENVELOPE pushed a DELIVER that was never queued and moved the recipient's cursor
past every real one, a forged LOGIN closed any account's connection (found in review).
So every payload is ``origin`` and the hint's text in a secretbox (XSalsa20-Poly1305,
PyNaCl) under a key every worker derives from the relay's seed, which only whoever can
read the store's tables has; a payload that does not open is dropped, counted in the
log by its size. A sealed hint replayed by someone who heard it is an old true hint:
the tables are the truth and every kind is safe to act on twice.

A new envelope is hinted only to the worker serving its recipient (where that is,
``account_sessions``, is read under the recipient's lock, which a login takes too):
none when that is the committing worker (it pushes, or its outbox's first page reads
it) or nobody (the next login pages it). To another worker it goes by peer link
(:class:`EnvelopeLinks`, ``routing_links``: its DELIVER frame, after COMMIT) when one
is up, else as an ENVELOPE hint.

How hints travel is a :class:`Router`: :class:`InProcessRouter` for one
relay process (nothing travels: the handlers act on the local sessions, as
they always have), ``routing_postgresql.PostgresRouter`` for workers sharing
a PostgreSQL store (``LISTEN`` on a connection of its own, and peer links for new
envelopes). :func:`open_router` picks one from the store's URL.

Not here: how hints are emitted (``store/postgresql``), what a worker does with one
(``dispatch``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
from nacl.exceptions import CryptoError
from nacl.hashlib import blake2b
from nacl.secret import SecretBox

CHANNEL = "blindrelay_hints"
"""The PostgreSQL ``LISTEN``/``NOTIFY`` channel every worker of one store uses."""

MAX_IDS = 290
"""Delivery ids one WITHDRAWN hint carries: PostgreSQL refuses (and so fails the whole
transaction of) a payload of 8000 bytes or more; 290 ids of 19 digits with their
commas, the longest handle and the rest take 5,853 bytes of text, 7,893 sealed."""


class HintKind(enum.Enum):
    QUEUED = "q"
    """``handle``'s queue has new rows (or lost some the hint could not list): page it."""
    WITHDRAWN = "w"
    """``ids`` were deleted from ``handle``'s queue by a statement (SPEC §7.4): never push them."""
    LOGIN = "l"
    """``handle`` logged in on ``origin`` with login sequence ``value`` (SPEC §4.4): a
    connection of ``handle`` with a lower sequence is replaced (4000)."""
    ENVELOPE = "e"
    """A new envelope for ``handle``, carried whole (``envelope``: its queue row, msgpack)
    with ``value`` = the highest delivery id queued for ``handle`` before it: the
    recipient's worker pushes it as it pushes a local commit (no PAGE round trip), or
    pages if it has not seen ``value`` (SPEC §6.4: the cursor never passes an unseen id)."""
    PREKEYS_LOW = "p"
    """``handle`` has ``value`` one-time prekeys left, under the low-water mark (SPEC §5.4)."""
    DELIVER = "d"
    """A new envelope for ``handle`` as its DELIVER frame (``envelope``), delivery id
    ``ids[0]``, ``value`` as for ENVELOPE. Only ever by a peer link
    (:mod:`.routing_links`), sent after the COMMIT that queued it; never by NOTIFY."""


@dataclass(frozen=True, slots=True)
class Hint:
    kind: HintKind
    handle: str
    origin: str
    """The worker that committed the change (:func:`new_worker_id`)."""
    value: int = 0
    ids: tuple[int, ...] = ()
    envelope: bytes = b""
    """ENVELOPE only: the queue row, msgpack-encoded (:func:`envelope_hint`)."""

    def encode(self) -> str:
        """``kind origin value handle [ids,… | base64 envelope]``, space-separated
        (handles have no spaces)."""
        text = f"{self.kind.value} {self.origin} {self.value} {self.handle}"
        if self.ids:
            text += " " + ",".join(map(str, self.ids))
        elif self.envelope:
            text += " " + base64.b64encode(self.envelope).decode()
        return text

    def row(self) -> list[Any]:
        """An ENVELOPE hint's queue row (:func:`..store.records.envelope_row`); ValueError
        if it is not one. Decoded strictly, never executed: plain msgpack values only."""
        try:
            row = msgpack.unpackb(self.envelope, raw=False, strict_map_key=True)
        except Exception as exc:
            raise ValueError("not an envelope row") from exc
        if (
            not isinstance(row, list) or len(row) != 10 or type(row[0]) is not int
            or row[1] != self.handle or not isinstance(row[9], bytes)
        ):  # fmt: skip
            raise ValueError("not an envelope row")
        return row


def decode(payload: str) -> Hint:
    """The hint of a notification payload; ValueError if it is not one."""
    parts = payload.split(" ")
    if len(parts) not in (4, 5):
        raise ValueError("not a hint")
    kind, origin, value, handle = parts[:4]
    if HintKind(kind) is HintKind.DELIVER:
        raise ValueError("a DELIVER hint travels by peer link only")
    if HintKind(kind) is HintKind.ENVELOPE:
        if len(parts) != 5:
            raise ValueError("an envelope hint without its envelope")
        envelope = base64.b64decode(parts[4], validate=True)
        return Hint(HintKind.ENVELOPE, handle, origin, int(value), envelope=envelope)
    ids = tuple(int(i) for i in parts[4].split(",")) if len(parts) == 5 else ()
    return Hint(HintKind(kind), handle, origin, int(value), ids)


def origin_of(payload: str) -> str:
    """The ``origin`` of a sealed notification payload ("" if it has none), the rest left
    unopened: a worker hears its own hints too and drops them on this alone — decoding
    them (an ENVELOPE's base64) was a sixth of a lone worker's CPU."""
    origin, space, _sealed = payload.partition(" ")
    return origin if space else ""


HINT_SEAL_DERIVATION = b"blindrelay/v1/hint-seal"
"""Context of the hint key's derivation from the relay's seed (as the Noise static key's,
``protocol.channel``): one seed, keys for different uses that reveal nothing of each other."""


def hint_key(seed: bytes) -> bytes:
    """The key every worker of one store seals its hints with: derived from the relay's
    seed, which every worker reads from the store at start (``relay_identity``)."""
    return blake2b(HINT_SEAL_DERIVATION, digest_size=SecretBox.KEY_SIZE, key=seed).digest()


class HintSeal:
    """Seals hints for ``NOTIFY`` and opens what ``LISTEN`` hears (module docstring)."""

    OVERHEAD = SecretBox.NONCE_SIZE + SecretBox.MACBYTES
    """What sealing adds to a hint's text before base64."""

    def __init__(self, key: bytes) -> None:
        self._box = SecretBox(key)

    @classmethod
    def random(cls) -> HintSeal:
        """A seal nobody else holds: a store's before the relay gives it its own, whose
        hints no other worker could act on."""
        return cls(os.urandom(SecretBox.KEY_SIZE))

    def seal(self, hint: Hint) -> str:
        """``origin`` in the clear (a worker drops its own hints by it), then the sealed
        text, base64."""
        sealed = self._box.encrypt(hint.encode().encode())
        return f"{hint.origin} {base64.b64encode(sealed).decode()}"

    def open(self, payload: str) -> Hint:
        """The hint a payload seals; ValueError if it was not sealed with this key, or
        names another origin outside than inside."""
        origin, _, sealed = payload.partition(" ")
        try:
            text = self._box.decrypt(base64.b64decode(sealed, validate=True))
        except (CryptoError, binascii.Error, ValueError) as exc:
            raise ValueError("not a hint sealed by a worker of this store") from exc
        hint = decode(text.decode())
        if hint.origin != origin:
            raise ValueError("the sealed hint names another origin")
        return hint


MAX_PAYLOAD = 7900
"""PostgreSQL refuses NOTIFY payloads of 8000 bytes or more."""


def sealed_size(origin: str, text_bytes: int) -> int:
    """The length of :meth:`HintSeal.seal`'s payload for a hint text of ``text_bytes``."""
    return len(origin) + 1 + 4 * ((text_bytes + HintSeal.OVERHEAD + 2) // 3)


def envelope_hint(origin: str, previous: int, row: list[Any]) -> Hint:
    """An ENVELOPE hint carrying ``row`` for its recipient, or QUEUED (page it) if the
    sealed payload would not fit a notification."""
    envelope = msgpack.packb(row)
    # The length of encode()'s text, without making it (it is made once, to be sent).
    head = len(HintKind.ENVELOPE.value) + len(origin) + len(str(previous)) + len(row[1]) + 4
    if sealed_size(origin, head + 4 * ((len(envelope) + 2) // 3)) > MAX_PAYLOAD:
        return Hint(HintKind.QUEUED, row[1], origin)
    return Hint(HintKind.ENVELOPE, row[1], origin, previous, envelope=envelope)


def withdrawn(handle: str, origin: str, ids: list[int]) -> Hint:
    """A WITHDRAWN hint, or QUEUED (page again) if too many ids to list."""
    if len(ids) > MAX_IDS:
        return Hint(HintKind.QUEUED, handle, origin)
    return Hint(HintKind.WITHDRAWN, handle, origin, ids=tuple(ids))


def new_worker_id() -> str:
    """A random id for one relay process's life: 16 hex digits."""
    return os.urandom(8).hex()


OnHint = Callable[[Hint], None]
"""What a router calls, on the event loop, with every hint another worker committed."""


class EnvelopeLinks(Protocol):
    """Direct links to the other workers, for new envelopes (:mod:`.routing_links`).

    The store asks :meth:`linked` inside the transaction that queues an envelope for a
    recipient served by ``worker``: if True the envelope gets no NOTIFY, and once the
    COMMIT has returned the store hands it to :meth:`send`, which pushes its DELIVER
    to that worker — or, if the link broke meanwhile, sends a QUEUED hint instead, so
    a lost link costs latency, never a message.
    """

    def linked(self, worker: str) -> bool:
        """A link to ``worker`` is up now (if not, one is being made for later batches)."""

    def send(self, worker: str, envelopes: list[list[Any]]) -> None:
        """After COMMIT: ``[recipient, delivery id, previous, DELIVER bytes]`` each."""

    def fallback(self, handles: list[str]) -> None:
        """QUEUED hints for ``handles``, after COMMIT (what :meth:`send` does for a link
        that is down): whoever serves one pages its queue."""


class Router(Protocol):
    """How one relay process hears the hints of the other workers sharing its store.

    ``on_hint`` gets only other workers' hints (its own, ``origin`` equal to
    :attr:`worker_id`, it has acted on already). ``on_connected`` is called on
    every (re)connection, once hints flow again: hints committed while the router
    was not connected are lost, so the relay catches up from the tables (every
    local outbox pages its queue again).
    """

    @property
    def worker_id(self) -> str:
        """The ``origin`` this relay's store writes into its hints."""

    @property
    def connected(self) -> bool:
        """Hints are reaching this process now."""

    async def start(self, on_hint: OnHint, on_connected: Callable[[], None]) -> None:
        """Start hearing hints; raise ``store.StoreStartError`` if that cannot begin."""

    async def close(self) -> None:
        """Stop hearing hints and release what the router holds."""

    @property
    def envelope_links(self) -> EnvelopeLinks | None:
        """Links that carry new envelopes to their recipient's worker (None: by hint)."""


class InProcessRouter:
    """One relay process: no other worker, nothing to hear.

    The handlers act on the local sessions directly (``delivery.push_committed``,
    ``Sessions.attach`` …), which is all one process needs.
    """

    def __init__(self, worker_id: str) -> None:
        self._worker_id = worker_id

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def connected(self) -> bool:
        return True

    async def start(self, on_hint: OnHint, on_connected: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def envelope_links(self) -> EnvelopeLinks | None:
        return None


def is_postgresql(store_url: str) -> bool:
    """Whether ``store_url`` names a PostgreSQL store (shared by any number of workers)."""
    return store_url.startswith(("postgresql://", "postgres://"))


LINKS_OFF = "off"
"""``--peer-links off``: new envelopes ride their NOTIFY hints, as before links."""


def open_router(
    store_url: str,
    worker_id: str,
    serves: Callable[[str], bool] | None = None,
    peer_links: str = LINKS_OFF,
    seal: HintSeal | None = None,
) -> Router:
    """The router for the store at ``store_url``: ``LISTEN`` for PostgreSQL, else in-process.
    ``peer_links``: the host a PostgreSQL worker's peer link listens on (``off``: none);
    ``serves`` tells it which recipients are connected here; ``seal``: the store's
    (:func:`hint_key`), without which a PostgreSQL router hears nothing of other workers.

    The PostgreSQL router (and its driver) is imported only here, once a URL chose it.
    """
    if is_postgresql(store_url):
        from .routing_postgresql import PostgresRouter

        seal = seal or HintSeal.random()
        links = None
        if peer_links != LINKS_OFF:
            from .routing_links import PeerLinks

            links = PeerLinks(store_url, worker_id, peer_links, serves or _nobody, seal=seal)
        return PostgresRouter(store_url, worker_id, seal=seal, links=links)
    return InProcessRouter(worker_id)


def _nobody(_handle: str) -> bool:
    return False


def backoff(initial_s: float, cap_s: float) -> Iterator[float]:
    """Delays between reconnection attempts: ``initial_s``, doubling up to ``cap_s``.

    Capped so a worker notices a recovered database within ``cap_s``; exponential
    so N workers do not hammer a database that is still starting.
    """
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * 2, cap_s)
