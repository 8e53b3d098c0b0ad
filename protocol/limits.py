"""Every numeric limit of protocol v1, each with its trade-off (SPEC §10).

A limit lives here once; the codec, the relay, the clients, the spec's limits
table and the tests all read it from this module. Limits marked *default* are
relay configuration; the others are fixed by the protocol version.
"""

from __future__ import annotations

# --- Transport (SPEC §1) ---------------------------------------------------

MAX_FRAME_BYTES = 65_535 - 16
"""Largest frame either side accepts (65,519 bytes): sealed in the channel it is the
largest Noise message, 65,535 bytes with its 16-byte tag (SPEC §1.3). Bigger would
allow inline attachments but multiplies worst-case memory per connection and per
queued envelope; this holds the largest padded message with room for headers."""

REKEY_INTERVAL_MESSAGES = 65_536
"""Transport messages per direction between two Rekey() of the channel (SPEC §1.3.5).
A key in memory then opens at most this many past messages of a connection; smaller
costs one 32-byte ChaCha20 call per that many messages, which is nothing, but
every peer must count alike, so it is fixed by the protocol."""

MAX_NESTING_DEPTH = 3
"""Deepest container nesting a frame may have: what frames, records, signed objects and
content need (frame → list → map, profile → hours → map). It bounds the decoder's work
on hostile input: three levels hold at most ~3,900 maps (one Python call each, for the
duplicate keys), where four held 65,000 one-byte empty maps in a frame, ~30 ms to refuse
(threat model T42)."""

MAX_ARRAY_ITEMS = 256
"""Most values an array of any type may hold (the largest are ACK's ``delivery_ids``,
``MAX_ACK_IDS``, and a receipt's refs). The msgpack layer refuses a longer array from
its length header, before Python touches its items: a 64 KiB message of 65,000
one-byte ints cost ~6.5 ms to refuse when the nesting check walked them, a thousand
times a valid frame's decoding."""

PING_INTERVAL_S = 20.0
"""Keep-alive ping period. Short enough to keep NAT bindings open, long enough
to cost nothing on idle connections."""

PING_TIMEOUT_S = 20.0
"""A peer that does not answer a ping within this is considered gone."""

MAX_CLIENT_PINGS = 10
"""A client's own pings: a bucket of this many, refilled at this many per
``PING_INTERVAL_S``; one more aborts the connection (SPEC §1.2.1). A keep-alive needs
one per interval; without a bound a ping is the one frame a connection can send
forever for free, before any handshake — each answered with a pong, none counted by
the error budget."""

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

CONNECTIONS_PER_S_SOURCE = 20.0
"""*Default.* New connections per second from one source (SPEC §1.2.2), in a bucket of
``CONNECTIONS_BURST_SOURCE``. Each costs the relay about a millisecond of its event loop
(the upgrade, the Noise handshake, HELLO; measured 2026-12-06: 500 in 0.5 s of CPU), so
one address opening and closing connections in a loop could take the loop whole, the
bound on those open at once notwithstanding. People connect once per device and
session; a carrier's NAT of many people after a restart is what the burst is for."""

CONNECTIONS_BURST_SOURCE = 200
"""*Default.* New connections from one source at once, then ``CONNECTIONS_PER_S_SOURCE``."""

MAX_UNAUTHENTICATED_PER_SOURCE = 32
"""*Default.* Connections not logged in yet from one source (IPv4 address, IPv6 /64;
SPEC §1.2.2): one more is refused its upgrade (HTTP 503). A login takes a round trip
or two, so 32 at once from one address is hundreds of logins a second — a carrier's
NAT of many people — while one address alone can no longer hold the relay's descriptors
for an authentication timeout at a time."""

MAX_PROTOCOL_ERRORS = 16
"""Protocol errors a connection may cause before the relay closes it. High
enough to let a buggy client see and fix its mistakes, low enough that a
fuzzer cannot keep a connection busy forever."""

# --- Identities (SPEC §3) --------------------------------------------------

HANDLE_MIN_LEN = 3
HANDLE_MAX_LEN = 32
"""Handles are 3–32 characters from ``[a-z0-9._-]``: letters and digits joined by
single punctuation characters (SPEC §3.2). ASCII-only on purpose: no homoglyph
impostors ("аirline" with a Cyrillic a), and a handle is a key in every relay table."""

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

REGISTER_RATE_PER_H_ADDRESS = 20.0
REGISTER_BURST_ADDRESS = 20
"""*Default.* Registrations per source address (IPv4 address, IPv6 /64; SPEC §4.6).
A person registers once per device, so a household, an office or a small NAT never
notices; fifty throwaway accounts from one address no longer come for free. An
address shared by many people (a large carrier-grade NAT) may need more, and an
attacker with many addresses is slowed only by proof of work or invites."""

POW_BITS = 0
"""*Default.* Difficulty of the registration proof of work (SPEC §4.6.3); 0 is off.
Every honest registration pays it in time and battery, so it is for a relay under
attack from many addresses; 4 with the default Argon2id cost takes ~2 s on the
reference device and ~0.1 s on a laptop."""

POW_OPSLIMIT = 2
POW_MEMLIMIT_BYTES = 16 * 1024 * 1024
"""*Default.* Argon2id cost of one evaluation when proof of work is on: 16 MiB twice
over makes memory, not arithmetic, the price (what GPUs cannot cheapen), while the
relay's one evaluation to check a proof stays ~10 ms."""

POW_MAX_BITS = 32
POW_MAX_OPSLIMIT = 16
POW_MIN_MEMLIMIT_BYTES = 1024 * 1024
POW_MAX_MEMLIMIT_BYTES = 256 * 1024 * 1024
"""Bounds of an announced proof-of-work cost. Below 1 MiB Argon2id is not memory-hard
in any useful sense and per-call overhead would dominate the cost model; above 256 MiB
a phone may fail to allocate, and the relay spends that much per check."""

POW_REFERENCE_BYTES_PER_MS = 250_000
"""Argon2id speed of the reference slow device: 250 MB/s of memory passed, one core
(a low-end phone; a 2-core server VM does ~4 GB/s). Only for the bound below."""

POW_MAX_EXPECTED_SOLVE_MS = 10_000
"""Largest expected solve time on the reference device a relay may ask for; clients
refuse a HELLO asking more. Higher buys more cost per throwaway account and costs
every honest registration as much."""

POW_CHALLENGE_TTL_MS = 120_000
"""Challenge lifetime (and time before an unauthenticated connection is closed) when
proof of work is on: 12 times the largest expected solve time, so a slow device
misses it with probability e^-12; the price is unauthenticated connections held
longer, only while the operator has proof of work on."""

POW_NONCE_BYTES = 16
"""Proof-of-work nonce; 128 bits are never exhausted and can be drawn at random."""

INVITE_BYTES = 16
"""Operator-issued invite token (SPEC §4.6.4): 128 random bits cannot be guessed,
so the relay can store a plain hash of each."""

# --- Prekeys (SPEC §5) -----------------------------------------------------

MAX_PREKEYS_PER_UPLOAD = 100
"""One-time prekeys per upload frame; keeps the frame well under the size cap."""

MAX_STORED_ONE_TIME_PREKEYS = 1000
"""One-time prekeys the relay keeps per account; bounds storage per account
while covering many first contacts between two top-ups."""

PREKEY_LOW_WATER = 20
"""The relay notifies an owner whose one-time prekeys fall below this count."""

ONE_TIME_PREKEY_RATE_PER_H = 10.0
ONE_TIME_PREKEY_BURST = 20
"""*Default.* One-time prekeys the relay hands out per owner (token bucket); past it a
bundle goes out without one, the last-resort X3DH of SPEC §13.3. A limit per requester
alone let six throwaway accounts drain an offline user's 100 keys. A person rarely has
more than 20 first contacts at once or 10 an hour; a sybil flood drains the pool by at
most 10 an hour (an offline owner's 100 keys last 8 hours, 1,000 four days), and first
contact keeps working. Higher serves more first messages replay-proof; lower keeps the
pool longer under attack (a busy business's operator may raise it)."""

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
"""Client message ids are 128 bits, unique per sender without coordination, so a
resend can be recognised by id alone (SPEC §6.1.1)."""

MESSAGE_ID_CLOCK_BYTES = 6
"""*Recommended layout.* A message id SHOULD begin with the sender's clock, in ms
since the epoch, big-endian in this many bytes (good until the year 10889), and end
with ``MESSAGE_ID_BYTES - MESSAGE_ID_CLOCK_BYTES`` = 80 random bits (SPEC §6.1.1):
a relay's idempotence memory then grows at one end instead of at random places."""

MAX_CIPHERTEXT_BYTES = 40 * 1024
"""Largest envelope body. The largest padding bucket (SPEC §13.5) plus the
ratchet header and X3DH prefix fit with margin."""

QUEUE_CAP_PER_RECIPIENT = 10_000
"""*Default.* Undelivered envelopes held for one recipient. A cap bounds what a
flood can cost the relay; 10,000 covers weeks offline for a busy account."""

QUEUE_TTL_MS = 30 * 24 * 3600 * 1000
"""*Default.* Envelopes undelivered for 30 days are purged; the sender's
ratchet tolerates the gap (skipped keys) and nothing lives forever."""

QUEUE_SHARE_PER_SENDER = 1000
"""*Default.* Undelivered envelopes one sender may have in one recipient's queue (a tenth
of the cap): no single account — contact, business or stranger — can take the queue;
1,000 is still weeks of a busy conversation for an offline friend."""

QUEUE_SHARE_STRANGERS = 2000
"""*Default.* Undelivered envelopes a *user's* queue holds from strangers — senders it has
not written to and that hold none of its consent (SPEC §6.3). Fifty sybils filled a user's
whole queue in a second; now strangers together get a fifth of it and the rest stays for
contacts and consented businesses. Not applied to a business's queue, whose customers
are strangers by nature."""

DELIVERY_WINDOW = 256
"""Deliveries the relay has in flight (sent, not acknowledged) per connection: keeps
the pipe full; what a slow reader makes the relay hold is MAX_OUTGOING_BUFFER_BYTES's."""

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

MESSAGE_REQUEST_MAX = 20
"""*Default.* Chats a user may send another user who has never written to them, until
they write back (a *message request*, SPEC §7.3). The sender's SDK sends prekey messages
until a reply and a person introduces themselves in a few lines; 20 covers that with
room, while a spammer gets 20 envelopes per victim instead of the whole queue."""

FIRST_CONTACTS_PER_H = 10.0
FIRST_CONTACTS_BURST = 20
"""*Default.* New strangers a user may open message requests to (token bucket per
sender). People start a handful of conversations with strangers a day; a spammer's
reach per account becomes 20 at once and 10 an hour, so a flood needs accounts, which
the registration policy prices."""

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

STATEMENT_RATE_PER_H = 60.0
STATEMENT_BURST = 60
"""*Default.* Statements (grant, deny, revoke, block, unblock; SPEC §7.4) per account, on
top of the SEND token each costs. Every accepted statement appends an entry to the
transparency log (§15), ~206 bytes with its time index and tree nodes, kept forever and
read by every auditor; the SEND bucket alone let one account alternate block and unblock
at 50 a second, 4.3 million entries (~890 MB) a day. People grant, revoke and block a
handful of times a day; a user onboarding may grant several businesses at once, and one
cleaning up may block a dozen spammers: 60 at once covers both with room. Refilled at 60
an hour, an account logs at most ~1,500 statements a day (~0.3 MB), 3,000 times less;
the refused one costs the relay nothing beyond reading it (§10)."""

STATEMENT_SKEW_MS = 5 * 60 * 1000
"""A signed consent/block statement must be issued within this of the relay's
clock; together with the nonce it makes a captured statement unreplayable."""

STATEMENT_NONCE_BYTES = 16

MAX_STATEMENT_BYTES = 1024
"""Encoded signed statement; a statement is a few fixed-size fields."""

MAX_BLOCK_TARGETS = 10_000
"""Accounts one account may have a block or unblock on record for. A block of a handle
nobody holds is kept (so that blocking tells nothing about who exists, SPEC §7.4); this
bounds what blocking random handles can store. Nobody blocks ten thousand accounts."""

MAX_LISTED_STATEMENTS = 60
"""Statements returned by one listing frame: 60 of the largest (``MAX_STATEMENT_BYTES``)
fit one frame (``MAX_FRAME_BYTES``) with room for the frame's own fields, so a page is
never too large to send. Ordinary statements are about a third of the maximum, so
pages could hold more, but a bound that depends on sizes would be one more rule for
every implementation; a long listing takes more pages instead."""

STATEMENTS_LIST_RATE_PER_MIN = 600.0
STATEMENTS_LIST_BURST = 20
"""*Default.* Statement listings per account. A page of up to
``MAX_LISTED_STATEMENTS`` statements answers a 20-byte request with thousands of
times its size: a device restoring a large business's statements still pages at
10 a second, while one connection cannot make the relay read more than 20 pages
for it at once."""

# --- Transparency log (SPEC §15) --------------------------------------------

MAX_LOG_ENTRY_BYTES = 2048
"""An entry's exact bytes (§15.1): room for the largest, a badge (``MAX_BADGE_BYTES``)
with its context and fields."""

MAX_TREE_HEAD_BYTES = 256
"""A signed tree head is ~160 bytes; the bound leaves room for the non-canonical
encodings a verifier must still accept (§14)."""

MAX_PROOF_HASHES = 128
"""Hashes in one inclusion or consistency proof: at most 63 and 126 for a log of up to
2^63 entries (RFC 9162), so no honest proof is refused."""

MAX_LOG_ENTRIES = 30
"""Entries returned by one LOG_ENTRIES: 30 of the largest (``MAX_LOG_ENTRY_BYTES``) fit
one frame (``MAX_FRAME_BYTES``), as for ``MAX_LISTED_STATEMENTS``; an auditor pages."""

MAX_BILL_ITEM_BYTES = 192
"""A bill item's exact bytes (§15.1): at most 128 (the longest category, the largest
time); the bound is what a business's decoder accepts."""

BILL_CLOSE_DELAY_MS = 5 * 60 * 1000
"""A month's bills close this long after it ends (§8.5): a SEND accepted in its last
millisecond is committed by then, on every relay process of a deployment whose clocks
agree to within it."""

MAX_BILL_ITEMS = 256
"""Bill items in one BILL (§8.5): 256 of the largest, with the bill's entry, a proof of
``MAX_PROOF_HASHES`` and a tree head, fit one frame (``MAX_FRAME_BYTES``); a business
pages through a month's bill."""

LOG_FETCH_RATE_PER_MIN = 6000.0
LOG_FETCH_BURST = 200
"""*Default.* Log fetches (§15.6) per account once logged in (every connection of it, one
after another), and per source for the connections of a source that have not logged in
(one bucket for all of them): an auditor reading a million entries pages ~33,000 times,
so the rate lets it finish in minutes, while the burst bounds what one account or source
makes the store look up at once. Every
answer is a few indexed lookups (§15.2 rule 3)."""

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
