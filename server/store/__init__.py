"""The store: everything the relay keeps, behind one interface that every back end implements.

The seam. Handlers never await: they call an operation by name with plain
msgpack values (``Store.call``), and answer the client in its ``done``
callback, which runs after the operation's transaction has committed. The
operations and their contracts — arguments, results, errors, what commits
together — are :data:`.operations.CONTRACT`; that table, the :class:`Store`
protocol below and the pure rules they share are all a back end implements
against. What the handlers read before they decide what to call (who an
account is, the even lookup LOGIN makes, whether a prekey upload is refused
already) are reads, :data:`.operations.READS`, asked with ``Store.read`` and
answered through a callback too: at once by a back end that can read on the
event loop (SQLite), later and in order with the operations by one whose reads
are a round trip (PostgreSQL) — the handlers do not know which
(``RelayContext.read`` keeps a connection's frames in order either way).

Back ends, one sub-package each, chosen by :func:`open_store` from a URL:

- ``sqlite/`` — the embedded default: one SQLite file, written by one writer
  process with group commit; ``sqlite:///ABSOLUTE/PATH``, ``sqlite:RELATIVE/PATH``
  or a plain path (``--db``);
- ``postgresql/`` — a PostgreSQL database shared by any number of relay workers
  (``postgresql://…`` or ``postgres://…``; asyncpg, the ``postgresql`` extra).

The operator's commands (``blindrelay admin``, ``inspect``) open the same back
ends through :func:`open_admin_store` and :func:`inspect_store`.

Not here: what a frame does (``auth``, ``delivery``, …); how a back end stores
anything (its sub-package). Nothing here imports a back end at module level:
importing the handlers loads no database driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .records import Account, MonthUsage, QueuedEnvelope, envelope_row

if TYPE_CHECKING:
    import asyncio

    from ..config import RelayConfig
    from ..routing import EnvelopeLinks, HintSeal

__all__ = [
    "Account", "AdminStore", "Done", "MonthUsage", "QueuedEnvelope", "Store", "StoreError",
    "StoreJobError", "StoreStartError", "UnsupportedStore", "check_store_url", "envelope_row",
    "inspect_store",
    "open_admin_store", "open_store", "settling",
]  # fmt: skip

Done = Callable[[bool, Any], None]
"""Called with (True, result) or (False, exception) after the operation's commit (a read's:
when it is answered)."""


def settling(future: asyncio.Future[Any]) -> Done:
    """The :data:`Done` that settles ``future``, unless its waiter cancelled it: how each
    back end's ``submit`` turns ``call`` into an awaitable."""

    def done(ok: bool, value: Any) -> None:
        if future.cancelled():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    return done


class StoreError(Exception):
    """A store that cannot be opened as asked; the message is one line for the operator."""


class UnsupportedStore(StoreError):
    """The URL names no back end this relay has."""


class StoreStartError(StoreError):
    """The back end could not open its data (a missing directory, no permission …)."""


class StoreJobError(Exception):
    """An operation failed with something that is not a ProtocolError.

    Carries the exception's type and the place it was raised, never its message
    (SPEC §9: internal errors carry no detail, and the log gets no data either).
    """

    def __init__(self, exc_type: str, exc_at: str) -> None:
        super().__init__(exc_type)
        self.exc_type = exc_type
        self.exc_at = exc_at


class Store(Protocol):
    """What the relay needs of a back end (one per relay process).

    Everything is called on the event loop, and only :meth:`start`, :meth:`close`
    and the futures of :meth:`submit` are awaited; operations and reads answer
    through callbacks, so nothing blocks the loop on a round trip.
    """

    @property
    def location(self) -> str:
        """Where the data is, for the log: a path, or a URL without its password."""

    @property
    def running(self) -> bool:
        """Started and not lost or closed: operations may be called."""

    @property
    def origin(self) -> str:
        """This relay process's worker id (``routing.new_worker_id()``, made when the store
        is opened): a shared store writes it into the hints it emits (``routing.Hint``),
        and the relay's router ignores hints that carry it."""

    on_lost: Callable[[str], None] | None
    """Called once, with one line saying what was lost, if the back end goes away while
    the relay still needs it for good; operations in flight have failed with an internal
    error."""

    @property
    def available(self) -> bool:
        """Operations can succeed now. A back end that reconnects by itself (a shared
        store) is unavailable during an outage: operations fail with 902
        STORE_UNAVAILABLE meanwhile (SPEC §6.3), and it is not lost."""

    on_available: Callable[[bool], None] | None
    """Called when :attr:`available` changes (never by a back end that cannot reconnect):
    after an outage, other relay processes' hints may have been missed."""

    on_batch: Callable[[int, float, float], None] | None
    """Called after each committed batch with its operations, its whole time and its
    COMMIT's (seconds): the group commit as ``/metrics`` shows it (issue 19)."""

    on_decided: Callable[[float, float, float], None] | None
    """Called for each ``decided`` value (:meth:`call`) with where its time went
    (seconds): from the call until the back end took it up, deciding it with the rest
    of its batch, and the decision's way back to the event loop. A back end that does
    not decide before its commit (PostgreSQL) never calls it."""

    links: EnvelopeLinks | None
    """Peer links to the other workers (the relay sets its router's; None: none). A shared
    store sends a new envelope for a recipient another worker serves over its link,
    after COMMIT, instead of in a hint (``routing_links``)."""

    hint_seal: HintSeal | None
    """What a shared store seals its hints with (``routing.HintSeal``): the relay sets it
    from its seed, so every worker of the store opens every other's, and nobody else."""

    async def start(self) -> None:
        """Open the data (creating or upgrading its schema); raise
        :class:`StoreStartError` if it cannot be opened."""

    async def close(self) -> None:
        """Commit and answer every operation called before, then release everything."""

    def call(
        self,
        operation: str,
        args: list[Any] | tuple[Any, ...],
        done: Done,
        decided: Callable[[Any], None] | None = None,
    ) -> None:
        """Run ``operation`` (:data:`.operations.CONTRACT`) with ``args``; ``done`` after
        its commit. Operations called in one loop turn may share one transaction.

        ``decided``: a back end that can (SQLite, for ``send``) calls it with the
        operation's value once its transaction has decided it and before the COMMIT;
        one that cannot (PostgreSQL) never calls it. Either way ``done`` follows, and
        only ``done`` says the value is durable (SPEC §6.3, §6.4)."""

    def call_many(self, operation: str, item: Any, done: Done) -> None:
        """Run a merged operation for one ``item``, joining the previous call if that was
        the same operation and nothing was called in between; ``done`` gets this item's
        result, or the whole operation's error."""

    def submit(self, operation: str, *args: Any) -> asyncio.Future[Any]:
        """:meth:`call` with a future, for callers that await (start-up, purges)."""

    def read(self, name: str, args: list[Any] | tuple[Any, ...], done: Done) -> None:
        """Read ``name`` (:data:`.operations.READS`) with ``args``; ``done`` with its value
        or its error, either before this returns (a back end that reads on the loop) or
        later, in submission order with the operations (one whose reads are a round
        trip). It writes nothing."""

    async def queued_total(self) -> int:
        """Envelopes in the queue, all recipients' (the ``envelopes_queued`` metric):
        counted where neither the event loop nor the operations wait for it."""

    def lease_send(self, sender: str, to: str, msg_id: bytes) -> list[int] | None:
        """A SEND's delivery-lease ticket (SPEC §6.4.6), passed as ``send``'s ``lease``:
        [delivery_id, mode, epoch, clock ms], ``mode`` :data:`.leases.PUSHED` when the
        DELIVER may leave now — the caller lowers it to :data:`.leases.LEASED` if it does
        not push. None from a back end without leases (one shared by several processes,
        whose delivery ids no process can number alone)."""


class AdminStore(Protocol):
    """What the operator's commands need (``blindrelay admin``): short-lived and
    synchronous, safe to use next to running relays."""

    def transaction(self) -> AbstractContextManager[object]:
        """Everything inside commits together, or not at all."""

    def account(self, handle: str) -> Account | None:
        """Inside :meth:`transaction`, the key read stays the account's until it ends: a
        badge is signed over it (``admin verify-business``), so a rotation by a running
        relay waits, or is waited for (PostgreSQL: a row lock; SQLite: BEGIN IMMEDIATE)."""

    def badge_serial_taken(self, serial: int) -> bool: ...

    def add_badge(
        self,
        *,
        serial: int,
        handle: str,
        key_fingerprint: bytes,
        display_name: str,
        issued_at: int,
        expires_at: int,
        signed: bytes,
    ) -> None: ...

    def revoke_badges(self, handle: str, now: int) -> int:
        """Withdraw every badge of ``handle`` in force; how many were withdrawn."""

    def add_invites(self, digests: Iterable[bytes], now: int) -> None: ...

    def usage(self, business: str | None, month: str | None) -> list[MonthUsage]:
        """Metering counts per (business, month), optionally of one business or month."""

    def relay_key(self) -> bytes | None:
        """The relay's public key (SPEC §4.1), or None before its first start."""

    def bill(self, business: str, month: str) -> list[Any] | None:
        """A closed bill whole, as ``bill_page`` gives a page: [entry, index, proof,
        signed head, salt, items]; None when none is closed or no signed head covers it."""

    def open_bill(self, business: str, month: str) -> int:
        """Notifications kept for a bill not closed yet (SPEC §8.5)."""

    def close(self) -> None: ...


# --- choosing a back end ----------------------------------------------------------

_POSTGRESQL = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class _Sqlite:
    path: Path


def _parse(url: str) -> _Sqlite | str:
    """A SQLite location, or the URL of another back end (refused if unknown).

    ``sqlite:///var/lib/blindrelay.db`` is ``/var/lib/blindrelay.db`` (an empty
    authority, as in a ``file:`` URL), ``sqlite:blindrelay.db`` is relative, and
    anything else without ``://`` is a file path (what ``--db`` gives).
    """
    if url.startswith(_POSTGRESQL):
        _check_postgresql_url(url)
        return url
    if url.startswith("sqlite:"):
        rest = url.removeprefix("sqlite:")
        if rest.startswith("//"):
            authority, slash, path = rest[2:].partition("/")
            if authority or not slash:
                raise UnsupportedStore(
                    f"store {url!r}: a sqlite URL has no host; write sqlite:///ABSOLUTE/PATH "
                    "or sqlite:RELATIVE/PATH"
                )
            rest = "/" + path
        if rest in ("", "/"):
            raise UnsupportedStore(f"store {url!r}: no database file named")
        return _Sqlite(Path(rest))
    if "://" in url:
        scheme = url.partition("://")[0]
        raise UnsupportedStore(
            f"store {url!r}: unknown kind {scheme!r}; use sqlite:///PATH or a file path"
        )
    if not url:
        raise UnsupportedStore("no store given")
    return _Sqlite(Path(url))


def _check_postgresql_url(url: str) -> None:
    """Refuse a PostgreSQL URL that does not parse (an unclosed ``[``, a port that is no
    number or out of range) before a back end is chosen: asyncpg and :func:`redact` would
    raise on it later, outside any message an operator reads (SPEC §11: nor may the
    message hold its password, so it names what is wrong, not the URL)."""
    from urllib.parse import urlsplit  # not for the rules' importers

    try:
        urlsplit(url).port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise UnsupportedStore(
            f"store: not a usable PostgreSQL URL ({exc}); write "
            "postgresql://USER@HOST:PORT/DATABASE, an IPv6 host in brackets"
        ) from None


def _sqlite(url: str) -> _Sqlite | None:
    """The SQLite location ``url`` names, or None for a PostgreSQL URL (asyncpg checked)."""
    location = _parse(url)
    if isinstance(location, _Sqlite):
        return location
    try:
        import asyncpg  # noqa: F401 - only whether it can be imported
    except ImportError:
        raise UnsupportedStore(
            "the PostgreSQL store needs asyncpg, which is not installed: "
            "pip install 'blindrelay[postgresql]'"
        ) from None
    return None


SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
"""Query parameters of a PostgreSQL URL that libpq and asyncpg take as secrets."""


def redact(url: str) -> str:
    """``url`` without its secrets, for logs and messages: the password of its user
    part, and any ``password=`` or ``sslpassword=`` among its query parameters, which
    asyncpg and libpq read as well."""
    from urllib.parse import (  # not for the rules' importers
        parse_qsl,
        urlencode,
        urlsplit,
        urlunsplit,
    )

    parts = urlsplit(url)
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() in SECRET_PARAMETERS for name, _ in query):
            hidden = [(n, "***" if n.lower() in SECRET_PARAMETERS else v) for n, v in query]
            parts = parts._replace(query=urlencode(hidden, safe="*"))
    return urlunsplit(parts)


def check_store_url(url: str) -> None:
    """Raise :class:`UnsupportedStore` unless this relay has a back end for ``url``:
    for refusing a bad ``--store`` before anything starts."""
    _sqlite(url)


def open_store(url: str, config: RelayConfig) -> Store:
    """The back end ``url`` names, not started yet (``await store.start()``)."""
    location = _sqlite(url)
    if location is None:
        from .postgresql.store import PostgresStore

        return PostgresStore(url, config.pool_size)
    from .sqlite.store import SqliteStore  # only the chosen back end is imported

    return SqliteStore(location.path, config.synchronous, config.gc_threshold)


def open_admin_store(url: str) -> AdminStore:
    """The back end ``url`` names, for the operator's commands; :class:`StoreError`
    (one line) if there is no store there or it cannot be opened."""
    location = _sqlite(url)
    if location is None:
        from .postgresql.admin import PostgresAdminStore

        return PostgresAdminStore.open(url)
    from .sqlite.database import check_relay_file
    from .sqlite.store import SqliteAdminStore

    check_relay_file(location.path)
    return SqliteAdminStore.open(location.path)


def inspect_store(url: str, limit: int) -> Iterator[str]:
    """``blindrelay inspect``: lines describing everything the store holds (SPEC §11),
    read-only; :class:`StoreError` if there is no store there."""
    location = _sqlite(url)
    if location is None:
        from .postgresql.inspection import inspect_database as inspect_postgresql

        return inspect_postgresql(url, limit)
    from .sqlite.database import check_relay_file
    from .sqlite.inspection import inspect_database

    check_relay_file(location.path)
    return inspect_database(location.path, limit)
