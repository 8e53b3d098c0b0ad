"""Every numeric limit of protocol v1, each with its trade-off (SPEC §10).

A limit lives here once; the codec, the relay, the clients, the spec's limits
table and the tests all read it from this module. Limits marked *default* are
relay configuration; the others are fixed by the protocol version.
"""

from __future__ import annotations

# --- Transport (SPEC §1) ---------------------------------------------------

MAX_FRAME_BYTES = 64 * 1024
"""Largest WebSocket message either side accepts. Bigger would allow inline
attachments but multiplies worst-case memory per connection and per queued
envelope; 64 KiB holds the largest padded message with room for headers."""

MAX_NESTING_DEPTH = 4
"""Deepest container nesting a frame may have (frame → list → map is 3).
Shallow nesting bounds decoder recursion on hostile input."""

PING_INTERVAL_S = 20.0
"""Keep-alive ping period. Short enough to keep NAT bindings open, long enough
to cost nothing on idle connections."""

PING_TIMEOUT_S = 20.0
"""A peer that does not answer a ping within this is considered gone."""

MAX_OUTGOING_BUFFER_BYTES = 1024 * 1024
"""*Default.* Outgoing data the relay holds for one connection before it stops
handling that connection's frames (it resumes at a quarter of this). Larger keeps
the pipe full through bursts (a page of deliveries, a listing) without pausing;
smaller bounds what a client that never reads makes the relay hold: 1 MiB is
sixteen maximal frames, and a thousand stuck connections hold about 1 GiB until
the write timeout closes them."""

WRITE_TIMEOUT_S = 20.0
"""*Default.* A connection whose peer takes (almost) no data for this long while
data waits for it is closed — aborted, as no close frame can pass a full buffer.
Its keep-alive ping would wait behind that data, so the ping timeout never fires;
as long as a ping timeout, since such a peer is as gone as a silent one."""

AUTH_TIMEOUT_S = 10.0
"""An unauthenticated connection is closed after this; bounds the cost of
half-open connections that never log in."""

MAX_PROTOCOL_ERRORS = 16
"""Protocol errors a connection may cause before the relay closes it. High
enough to let a buggy client see and fix its mistakes, low enough that a
fuzzer cannot keep a connection busy forever."""

# --- Identities (SPEC §3) --------------------------------------------------

HANDLE_MIN_LEN = 3
HANDLE_MAX_LEN = 32
"""Handles are 3–32 characters from ``[a-z0-9._-]``, starting with a letter or
digit. ASCII-only on purpose: no homoglyph impostors ("аirline" with a
Cyrillic a), and a handle is a key in every relay table."""

DISPLAY_NAME_MAX_LEN = 64
"""Longest display name in a badge or profile, in characters."""

ROTATE_IDENTITY_RATE_PER_H = 6.0
ROTATE_IDENTITY_BURST = 3
"""*Default.* Identity rotations per account. A rotation is rare (a new device, a
key thought compromised); each costs two signature checks and deletes the
account's prekeys, and every contact sees a key change."""

# --- Authentication (SPEC §4) ----------------------------------------------

CHALLENGE_BYTES = 32
"""Relay challenge size; 256 bits make a collision across all connections
ever made negligible."""

CHALLENGE_TTL_MS = 30_000
"""A challenge must be answered within this. Long enough for a slow phone,
short enough that a captured challenge is useless soon after."""

# --- Prekeys (SPEC §5) -----------------------------------------------------

MAX_PREKEYS_PER_UPLOAD = 100
"""One-time prekeys per upload frame; keeps the frame well under the size cap."""

MAX_STORED_ONE_TIME_PREKEYS = 1000
"""One-time prekeys the relay keeps per account; bounds storage per account
while covering many first contacts between two top-ups."""

PREKEY_LOW_WATER = 20
"""The relay notifies an owner whose one-time prekeys fall below this count."""

BUNDLE_FETCH_RATE_PER_MIN = 60.0
BUNDLE_FETCH_BURST = 20
"""*Default.* Bundle fetches per requester; stops one account from draining
another's one-time prekeys (which would force X3DH without one, see SPEC §13.2)."""

PREKEYS_UPLOAD_RATE_PER_MIN = 6.0
PREKEYS_UPLOAD_BURST = 20
"""*Default.* Prekey uploads per account. A client uploads at registration, when
told its supply is low and after a rotation — a few a day; the burst fills a whole
supply (``MAX_STORED_ONE_TIME_PREKEYS`` / ``MAX_PREKEYS_PER_UPLOAD`` = 10 uploads)
twice over. Each upload costs a signature check and up to 100 row writes."""

# --- Messaging (SPEC §6) ---------------------------------------------------

MESSAGE_ID_BYTES = 16
"""Client message ids are 128-bit random values: collision-free without
coordination, so a resend can be recognised by id alone."""

MAX_CIPHERTEXT_BYTES = 40 * 1024
"""Largest envelope body. The largest padding bucket (SPEC §13.5) plus the
ratchet header and X3DH prefix fit with margin."""

QUEUE_CAP_PER_RECIPIENT = 10_000
"""*Default.* Undelivered envelopes held for one recipient. A cap bounds what a
flood can cost the relay; 10,000 covers weeks offline for a busy account."""

QUEUE_TTL_MS = 30 * 24 * 3600 * 1000
"""*Default.* Envelopes undelivered for 30 days are purged; the sender's
ratchet tolerates the gap (skipped keys) and nothing lives forever."""

DELIVERY_WINDOW = 256
"""Deliveries the relay has in flight (sent, not acknowledged) per connection.
Bounds relay memory per slow reader while keeping the pipe full."""

MAX_ACK_IDS = 256
"""Delivery ids in one acknowledgement frame."""

SEND_RATE_PER_S_USER = 50.0
SEND_BURST_USER = 200
"""*Default.* Token bucket for sends by a user account."""

SEND_RATE_PER_S_BUSINESS = 5000.0
SEND_BURST_BUSINESS = 20_000
"""*Default.* Token bucket for sends by a business account; bulk notifications
to thousands of consenting customers are its normal case."""

SEND_RATE_PER_S_PAIR = 100.0
SEND_BURST_PAIR = 500
"""*Default.* Token bucket per sender→recipient pair; stops one sender from
flooding one recipient even within its account budget."""

# --- Consent and blocking (SPEC §7) ----------------------------------------

CATEGORIES = ("utility", "marketing")
"""Categories of business-initiated notifications (SPEC §7.1)."""

MAX_CATEGORIES = len(CATEGORIES)

SERVICE_WINDOW_MS = 24 * 3600 * 1000
"""*Default.* Customer-service window opened by a user's message to a business."""

CONSENT_COOLDOWN_MS = 30 * 24 * 3600 * 1000
"""*Default.* After a user denies a request, the business may not ask again for
this long; long enough that asking is not a way to nag."""

CONSENT_REQUEST_RATE_PER_H = 10_000.0
CONSENT_REQUEST_BURST = 1000
"""*Default.* Consent requests per business."""

STATEMENT_SKEW_MS = 5 * 60 * 1000
"""A signed consent/block statement must be issued within this of the relay's
clock; together with the nonce it makes a captured statement unreplayable."""

STATEMENT_NONCE_BYTES = 16

MAX_STATEMENT_BYTES = 1024
"""Encoded signed statement; a statement is a few fixed-size fields."""

MAX_LISTED_STATEMENTS = 500
"""Statements returned by one listing frame."""

STATEMENTS_LIST_RATE_PER_MIN = 600.0
STATEMENTS_LIST_BURST = 20
"""*Default.* Statement listings per account. A page of up to
``MAX_LISTED_STATEMENTS`` statements answers a 20-byte request with thousands of
times its size: a device restoring a large business's statements still pages at
10 a second, while one connection cannot make the relay read more than 20 pages
for it at once."""

# --- Business accounts (SPEC §8) -------------------------------------------

MAX_PROFILE_BYTES = 8 * 1024
"""Encoded, signed business profile; plenty for a week of hours, exceptions and
an away message."""

MAX_BADGE_BYTES = 1024

MAX_BADGE_VALIDITY_MS = 400 * 24 * 3600 * 1000
"""Longest badge lifetime; forces periodic re-verification of a business."""

PROFILE_PUT_RATE_PER_MIN = 6.0
PROFILE_PUT_BURST = 10
"""*Default.* Profile updates per business: opening hours and away messages change
a few times a day; each update costs a signature check and an 8 KiB write."""

PROFILE_FETCH_RATE_PER_MIN = 60.0
PROFILE_FETCH_BURST = 20
"""*Default.* Profile fetches per account. A client fetches a profile when it meets
a business and to refresh it, far below this; without a limit one account could
ask ~2,000 handles a second which of them are businesses (SPEC §7.7)."""

USAGE_FETCH_RATE_PER_MIN = 60.0
USAGE_FETCH_BURST = 20
"""*Default.* Usage reads per account: a billing dashboard reads a few months at a
time; each read sums a month of metering rows in the writer."""
