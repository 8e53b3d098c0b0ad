"""Relay configuration: every knob an operator may turn (SPEC §10 *default* limits).

The defaults are the protocol's limits table (:mod:`blindrelay.protocol.limits`);
fixed protocol limits (frame size, handle length …) are not configurable and
are read from there directly. Not here: parsing flags and environment
variables (``cli``), and what the values do (``ratelimit``, ``delivery``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from blindrelay.protocol import limits
from blindrelay.protocol.errors import ProtocolError
from blindrelay.protocol.frames import ProofOfWork

from . import gcpolicy
from .metrics import parse_listen

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_DB = Path("blindrelay.db")

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
"""SQLite ``synchronous`` settings the relay accepts (WAL journal in both).

FULL (the default) fsyncs the WAL on every commit, so a SENT survives power
loss and OS crashes, which is what SPEC §6.3's "committed to disk" promises.
NORMAL fsyncs only at checkpoints: it survives a killed relay process but may
lose the last commits on power loss. Group commit (one fsync per batch, see
``store/sqlite/tables.py``) is what keeps FULL fast; NORMAL is for operators who accept
that trade for throughput on slow disks.

Measured here (20 pairs × 300 × 1 KiB, window 10, clients in the same process,
2-core VM): FULL 1.4–1.5k msg/s, NORMAL 1.5–1.6k msg/s, ~170 envelopes per
commit in both — the event loop, not fsync, is the bottleneck, so FULL costs
under 10 % and stays the default."""


TRANSPORT_WRITE_LIMIT_BYTES = 32 * 1024
"""Bytes asyncio's transport buffers for a connection before the relay stops
writing into it and queues frames itself (websockets' ``write_limit``, its
default): the relay then learns of the peer's progress each time the transport
drains to a quarter of this."""

MIN_OUTGOING_BUFFER_BYTES = 4 * TRANSPORT_WRITE_LIMIT_BYTES
"""Smallest ``max_outgoing_buffer_bytes``: reading resumes at a quarter of the
bound, which must not be below what the transport holds without telling the
relay, or a paused connection could wait for a notice that never comes."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything ``serve`` needs; immutable once the relay runs."""

    host: str = DEFAULT_HOST
    """The address the relay listens on (loopback by default; 0.0.0.0 for every interface)."""
    port: int = DEFAULT_PORT
    """The TCP port the relay listens on."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``, so several relay processes (workers sharing one
    PostgreSQL store) can listen on one port and the kernel spreads connections
    across them. Every process on the port must set it (and run as the same user)."""
    db_path: Path = DEFAULT_DB
    """The SQLite database file: shorthand for ``store = "sqlite:///PATH"``."""
    store: str = ""
    """Where the relay keeps its data, as a URL (:func:`.store.open_store`); empty: the
    SQLite file ``db_path``."""
    synchronous: str = "FULL"
    """SQLite's durability: FULL fsyncs every commit (SPEC §6.3), NORMAL only at
    checkpoints (:data:`SYNCHRONOUS_MODES`)."""
    pool_size: int = 4
    """Connections a relay worker opens to a PostgreSQL store (``--store postgresql://…``;
    unused by SQLite). Its operations run as one ordered stream of group-committed
    batches on one connection at a time; the others stand by to replace a broken one
    at once and serve the few reads made outside that stream."""
    peer_links: str = "127.0.0.1"
    """The host a worker sharing a PostgreSQL store listens on for its peers' links,
    which carry new envelopes straight to their recipient's worker (``routing_links``;
    any free port, advertised in the store); ``off``: envelopes ride their NOTIFY hints.
    Workers on several hosts need an address the others reach, on a private network."""
    queue_cap: int = limits.QUEUE_CAP_PER_RECIPIENT
    """Envelopes queued for one recipient at most (SPEC §6.3); more are refused with
    QUEUE_FULL."""
    queue_ttl_ms: int = limits.QUEUE_TTL_MS
    """How long an undelivered envelope is kept before it is purged (SPEC §6.6)."""
    delivery_window: int = limits.DELIVERY_WINDOW
    """Deliveries in flight to one connection before the relay waits for ACKs (SPEC §6.4)."""
    send_rate_user: float = limits.SEND_RATE_PER_S_USER
    """SENDs a user may make (SPEC §10)."""
    send_burst_user: int = limits.SEND_BURST_USER
    """SENDs a user may make at once (SPEC §10)."""
    send_rate_business: float = limits.SEND_RATE_PER_S_BUSINESS
    """SENDs a business may make (SPEC §10)."""
    send_burst_business: int = limits.SEND_BURST_BUSINESS
    """SENDs a business may make at once (SPEC §10)."""
    send_rate_pair: float = limits.SEND_RATE_PER_S_PAIR
    """SENDs from one account to one recipient (SPEC §10)."""
    send_burst_pair: int = limits.SEND_BURST_PAIR
    """SENDs from one account to one recipient at once (SPEC §10)."""
    one_time_prekey_rate_per_h: float = limits.ONE_TIME_PREKEY_RATE_PER_H
    """One-time prekeys a fetcher may take from one owner (SPEC §5.3)."""
    one_time_prekey_burst: int = limits.ONE_TIME_PREKEY_BURST
    """One-time prekeys a fetcher may take from one owner at once (SPEC §5.3)."""
    queue_share_per_sender: int = limits.QUEUE_SHARE_PER_SENDER
    """Of a recipient's queue, what one sender may fill (SPEC §6.3)."""
    queue_share_strangers: int = limits.QUEUE_SHARE_STRANGERS
    """Of a recipient's queue, what senders it never wrote to may fill together (SPEC §6.3)."""
    message_request_max: int = limits.MESSAGE_REQUEST_MAX
    """Message requests a stranger may send before the recipient answers (SPEC §7.3)."""
    first_contacts_per_h: float = limits.FIRST_CONTACTS_PER_H
    """New conversations a user may open with strangers (SPEC §7.3)."""
    first_contacts_burst: int = limits.FIRST_CONTACTS_BURST
    """New conversations a user may open with strangers at once (SPEC §7.3)."""
    bundle_rate_per_min: float = limits.BUNDLE_FETCH_RATE_PER_MIN
    """Prekey bundles an account may fetch (SPEC §5.3)."""
    bundle_burst: int = limits.BUNDLE_FETCH_BURST
    """Prekey bundles an account may fetch at once."""
    prekeys_upload_rate_per_min: float = limits.PREKEYS_UPLOAD_RATE_PER_MIN
    """Prekey uploads per account (SPEC §5.2)."""
    prekeys_upload_burst: int = limits.PREKEYS_UPLOAD_BURST
    """Prekey uploads per account at once."""
    rotate_identity_rate_per_h: float = limits.ROTATE_IDENTITY_RATE_PER_H
    """Identity key rotations per account (SPEC §3.4)."""
    rotate_identity_burst: int = limits.ROTATE_IDENTITY_BURST
    """Identity key rotations per account at once."""
    statement_rate_per_h: float = limits.STATEMENT_RATE_PER_H
    """Consent and block statements per account (SPEC §7.4), besides their SEND token:
    each is logged for ever (SPEC §15)."""
    statement_burst: int = limits.STATEMENT_BURST
    """Statements per account at once. A user onboarding may grant several businesses."""
    statements_list_rate_per_min: float = limits.STATEMENTS_LIST_RATE_PER_MIN
    """Statement listings per account (SPEC §7.6)."""
    statements_list_burst: int = limits.STATEMENTS_LIST_BURST
    """Statement listings per account at once."""
    profile_put_rate_per_min: float = limits.PROFILE_PUT_RATE_PER_MIN
    """Profile updates (and DISCOVERABLE) per business (SPEC §8.2)."""
    profile_put_burst: int = limits.PROFILE_PUT_BURST
    """Profile updates per business at once."""
    profile_fetch_rate_per_min: float = limits.PROFILE_FETCH_RATE_PER_MIN
    """Profile fetches per account (SPEC §8.2)."""
    profile_fetch_burst: int = limits.PROFILE_FETCH_BURST
    """Profile fetches per account at once."""
    usage_fetch_rate_per_min: float = limits.USAGE_FETCH_RATE_PER_MIN
    """Usage reads per business (SPEC §8.4)."""
    usage_fetch_burst: int = limits.USAGE_FETCH_BURST
    """Usage reads per business at once."""
    log_fetch_rate_per_min: float = limits.LOG_FETCH_RATE_PER_MIN
    log_fetch_burst: int = limits.LOG_FETCH_BURST
    """Log fetches per authenticated connection, and per source before a login (SPEC
    §15.6): the log is read before any login."""
    register_rate_per_h: float = limits.REGISTER_RATE_PER_H_ADDRESS
    register_burst: int = limits.REGISTER_BURST_ADDRESS
    """Registrations per source address (SPEC §4.6.1); tests and benchmarks that
    register many accounts from 127.0.0.1 raise them explicitly."""
    pow_bits: int = limits.POW_BITS
    """Registration proof-of-work difficulty (SPEC §4.6.3); 0 is off."""
    pow_opslimit: int = limits.POW_OPSLIMIT
    """Argon2id passes of one proof-of-work evaluation (SPEC §4.6.3)."""
    pow_memlimit: int = limits.POW_MEMLIMIT_BYTES
    """Argon2id cost of one evaluation, in passes and bytes, when ``pow_bits`` > 0."""
    require_invites: bool = False
    """Only REGISTERs with an invite from ``blindrelay admin invite`` (SPEC §4.6.4)."""
    max_stored_one_time_prekeys: int = limits.MAX_STORED_ONE_TIME_PREKEYS
    """One-time prekeys an account may have stored (SPEC §5.2)."""
    service_window_ms: int = limits.SERVICE_WINDOW_MS
    """How long a user's message lets a business reply freely (SPEC §7.3)."""
    consent_cooldown_ms: int = limits.CONSENT_COOLDOWN_MS
    """How long after a deny or revoke a business may not ask again (SPEC §7.3)."""
    consent_request_rate_per_h: float = limits.CONSENT_REQUEST_RATE_PER_H
    """Consent requests per business (SPEC §7.3)."""
    consent_request_burst: int = limits.CONSENT_REQUEST_BURST
    """Consent requests per business at once."""
    auth_timeout_s: float = limits.AUTH_TIMEOUT_S
    """How long a connection may stay unauthenticated (SPEC §4.1)."""
    connections_per_s_source: float = limits.CONNECTIONS_PER_S_SOURCE
    """New connections per second from one source address (IPv6: /64); one more is
    refused with HTTP 429 and Retry-After (SPEC §1.2.2)."""
    connections_burst_source: int = limits.CONNECTIONS_BURST_SOURCE
    """New connections from one source address at once."""
    max_unauthenticated_per_source: int = limits.MAX_UNAUTHENTICATED_PER_SOURCE
    """Connections not logged in yet from one source address (IPv6: /64); one more is
    refused with HTTP 503 (SPEC §1.2.2)."""
    ping_interval_s: float = limits.PING_INTERVAL_S
    """How often the relay pings an idle connection."""
    ping_timeout_s: float = limits.PING_TIMEOUT_S
    """How long a ping may go unanswered before the connection is closed."""
    max_outgoing_buffer_bytes: int = limits.MAX_OUTGOING_BUFFER_BYTES
    """Frames queued for one slow reader before it is closed (SPEC §1.2.4)."""
    write_timeout_s: float = limits.WRITE_TIMEOUT_S
    """How long a connection may make no progress reading before it is closed (SPEC §1.2.5)."""
    purge_interval_s: float = 60.0
    """How often expired envelopes and remembered message ids are purged."""
    checkpoint_interval_s: float = 60.0
    """How often the writer folds the WAL into the database and truncates it: the
    longest a deleted envelope stays readable in the WAL (SPEC §11.2). Each one
    stalls the writer for the copy (milliseconds for a WAL of a few MiB)."""
    sth_interval_s: float = 10.0
    """SPEC §15.3 ``STH_INTERVAL``: how often the relay signs a tree head of the
    transparency log when it grew — the longest a logged change waits for a head.
    Shorter: clients see changes sooner, and ``log_heads`` grows faster (one row per
    interval in which anything was logged, at most 8,640 a day at 10 s)."""
    metrics_listen: str = ""
    """Where /healthz, /readyz and /metrics (Prometheus) are served: PORT or HOST:PORT on a
    listener of their own, loopback when no host is given; empty or off: not served."""
    gc_threshold: int = gcpolicy.DEFAULT_THRESHOLD
    """Young-generation threshold of the relay's and the writer's garbage collector
    (:mod:`.gcpolicy`): higher costs less CPU and fewer pauses, lower frees cyclic
    garbage sooner. 700 is CPython's default."""

    def __post_init__(self) -> None:
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
        if self.store and self.db_path != DEFAULT_DB:
            raise ValueError("give --store or --db, not both (--db PATH is the SQLite shorthand)")
        positive = {
            "pool_size": self.pool_size,
            "queue_cap": self.queue_cap,
            "queue_ttl_ms": self.queue_ttl_ms,
            "delivery_window": self.delivery_window,
            "send_rate_user": self.send_rate_user,
            "send_burst_user": self.send_burst_user,
            "send_rate_business": self.send_rate_business,
            "send_burst_business": self.send_burst_business,
            "send_rate_pair": self.send_rate_pair,
            "send_burst_pair": self.send_burst_pair,
            "one_time_prekey_rate_per_h": self.one_time_prekey_rate_per_h,
            "one_time_prekey_burst": self.one_time_prekey_burst,
            "queue_share_per_sender": self.queue_share_per_sender,
            "queue_share_strangers": self.queue_share_strangers,
            "message_request_max": self.message_request_max,
            "first_contacts_per_h": self.first_contacts_per_h,
            "first_contacts_burst": self.first_contacts_burst,
            "bundle_rate_per_min": self.bundle_rate_per_min,
            "bundle_burst": self.bundle_burst,
            "prekeys_upload_rate_per_min": self.prekeys_upload_rate_per_min,
            "prekeys_upload_burst": self.prekeys_upload_burst,
            "rotate_identity_rate_per_h": self.rotate_identity_rate_per_h,
            "rotate_identity_burst": self.rotate_identity_burst,
            "statement_rate_per_h": self.statement_rate_per_h,
            "statement_burst": self.statement_burst,
            "statements_list_rate_per_min": self.statements_list_rate_per_min,
            "statements_list_burst": self.statements_list_burst,
            "profile_put_rate_per_min": self.profile_put_rate_per_min,
            "profile_put_burst": self.profile_put_burst,
            "profile_fetch_rate_per_min": self.profile_fetch_rate_per_min,
            "profile_fetch_burst": self.profile_fetch_burst,
            "usage_fetch_rate_per_min": self.usage_fetch_rate_per_min,
            "usage_fetch_burst": self.usage_fetch_burst,
            "log_fetch_rate_per_min": self.log_fetch_rate_per_min,
            "log_fetch_burst": self.log_fetch_burst,
            "register_rate_per_h": self.register_rate_per_h,
            "register_burst": self.register_burst,
            "max_stored_one_time_prekeys": self.max_stored_one_time_prekeys,
            "service_window_ms": self.service_window_ms,
            "consent_cooldown_ms": self.consent_cooldown_ms,
            "consent_request_rate_per_h": self.consent_request_rate_per_h,
            "consent_request_burst": self.consent_request_burst,
            "auth_timeout_s": self.auth_timeout_s,
            "max_unauthenticated_per_source": self.max_unauthenticated_per_source,
            "connections_per_s_source": self.connections_per_s_source,
            "connections_burst_source": self.connections_burst_source,
            "write_timeout_s": self.write_timeout_s,
            "purge_interval_s": self.purge_interval_s,
            "checkpoint_interval_s": self.checkpoint_interval_s,
            "sth_interval_s": self.sth_interval_s,
            "gc_threshold": self.gc_threshold,
        }
        for name, value in positive.items():
            if not value > 0:  # NaN too: a NaN rate refills every bucket at once (no limit)
                raise ValueError(f"{name} must be positive")
        if self.max_outgoing_buffer_bytes < MIN_OUTGOING_BUFFER_BYTES:
            raise ValueError(
                f"max_outgoing_buffer_bytes must be at least {MIN_OUTGOING_BUFFER_BYTES}"
            )
        if not self.host.strip():
            # asyncio reads "" as every interface: an unset-looking BLINDRELAY_HOST= would
            # open a relay meant for loopback to the network.
            raise ValueError("host is empty; give 0.0.0.0 (or ::) for every interface")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        parse_listen(self.metrics_listen)  # ValueError naming metrics_listen
        if self.pow_bits < 0:
            raise ValueError("pow_bits must be 0 (off) or positive")
        self.proof_of_work  # noqa: B018 - validates the cost against SPEC §4.6.3's bound

    @property
    def store_url(self) -> str:
        """The store to open: ``store``, else the database file."""
        return self.store or str(self.db_path)

    @property
    def proof_of_work(self) -> ProofOfWork | None:
        """The cost HELLO announces, or None when proof of work is off."""
        if self.pow_bits == 0:
            return None
        try:
            return ProofOfWork(self.pow_bits, self.pow_opslimit, self.pow_memlimit)
        except ProtocolError as exc:
            raise ValueError(f"proof of work: {exc.detail}") from None
