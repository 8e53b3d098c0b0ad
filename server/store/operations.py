"""Every operation a store back end runs for the relay, and its contract, in one table.

This is what a back end implements: :data:`CONTRACT` names each operation the relay calls
(``Store.call``/``call_many``/``submit`` in :mod:`blindrelay.server.store`) with its arguments,
its result, the errors it may raise, and what must commit together; :data:`READS`, in the same
shape, the reads handlers make before they decide what to call (``Store.read``). The SQLite back
end's implementation is ``sqlite/jobs.py`` (and ``SqliteStore.reads``); a test keeps its
operations, its reads and their argument names equal to these tables, and the conformance suite
(``tests/conformance``, wire only) is what shows two back ends equivalent.

Rules every operation follows, whatever the back end:

- **Values.** Arguments and results are plain msgpack values (str, bin, int,
  float, bool, nil, arrays, maps with str keys), so an operation can cross a
  process or network boundary without pickle. ``rules`` of ``send`` is a
  :class:`SendRules` (a tuple: it travels as an array).
- **Errors.** A refusal is a :class:`~blindrelay.protocol.errors.ProtocolError`
  and reaches the caller as the same class and detail; anything else reaches it
  as :class:`~blindrelay.server.store.StoreJobError` (type and place, no message).
  A failed operation changes nothing: everything it wrote is undone with it, and
  only it.
- **Durability.** ``done`` runs, and a future resolves, only after the
  operation's transaction has committed durably (SPEC §6.3: no SENT before the
  envelope is committed). Many operations may share one transaction (group
  commit); none is answered before that transaction commits.
- **Order.** Operations submitted to one store are applied, and answered, in
  submission order: a frame's effects are visible to every later frame's
  operation (per-pair order, SPEC §6.4; a statement acknowledged before a SEND is
  seen by it, §7.4). An operation sees every write committed before it started,
  also by other relay processes sharing the back end.
- **Merging.** Operations marked ``merged`` are called with ``call_many``: one
  argument, the list of items; the result is one value per item, in order. The
  caller may merge consecutive calls of the same operation into one.
- **Reads.** A read (:data:`READS`) writes nothing and is answered through
  ``done`` like an operation, but not necessarily after a commit: a back end may
  answer before ``read`` returns (SQLite reads its file on the event loop, so
  a read costs what a lookup costs), or later, in submission order with its
  operations (PostgreSQL: a read is one more statement of the ordered stream).
  A read sees every write answered before it was made, and every operation
  submitted before it when it is answered in the ordered stream; an answer at
  once sees what is committed, not operations still in flight. Either is
  enough because no read decides alone: every operation that depends on what
  was read checks it again (a rotated key, a prekey id taken meanwhile), so a
  read that misses an operation in flight can only refuse what that operation
  would have refused too. The caller keeps a connection's frames in order
  across a read that is not answered at once (``RelayContext.read``).
  Results are plain values or :mod:`.records` (built on the event loop, never
  carried across a process).
- **Same work.** Where SPEC §7.7 or §11.1 asks for the same work whatever the
  answer, the operation does the same reads (noted below): a refusal must not tell
  by its timing what it refuses to tell by its code.

The decisions inside operations (consent, queue room, statement transitions,
what is metered, budgets) are pure functions of the state an operation reads:
:mod:`.rules`, over :mod:`blindrelay.protocol.consent`. A back end reads that
state its own way (row by row, or set-based for a whole batch) and calls the
same functions, in the order :mod:`.rules` gives.

Not here: which handler calls what (``auth``, ``delivery``, ``directory``,
``statements``, ``business``), how an operation is run (the back ends).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple


class SendRules(NamedTuple):
    """The relay's *default* limits a ``send`` applies (SPEC §6.3, §7.3, §10); one array
    on the wire, made once per configuration (:func:`..delivery.send_rules`)."""

    queue_cap: int
    service_window_ms: int
    queue_share_per_sender: int
    queue_share_strangers: int
    message_request_max: int
    first_contacts_per_h: float
    first_contacts_burst: int


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation's contract: what the relay relies on, whichever back end runs it."""

    spec: str
    """The SPEC sections it implements."""
    args: Mapping[str, str]
    """Argument name → type and meaning, in call order; ``?`` marks an optional one."""
    result: str
    errors: str = "none but internal ones"
    atomic: str = ""
    """What commits together (beyond the operation being all or nothing)."""
    merged: bool = False
    """Called with ``call_many``: ``args`` describe one item."""


ENVELOPE_ROW = (
    "[delivery_id, recipient, sender, sender_kind, msg_id, intent, category, "
    "categories | nil, sent_at, body] (records.envelope_row)"
)

CONTRACT: dict[str, Operation] = {
    "noop": Operation(
        spec="§6.3",
        args={},
        result="nil, once every operation submitted before it has committed (a barrier: "
        "shutdown waits on it so every SENT owed goes out)",
    ),
    "relay_seed": Operation(
        spec="§4.1",
        args={},
        result="bin 32: the relay's Ed25519 seed, or nil before the first start",
    ),
    "create_relay_seed": Operation(
        spec="§4.1",
        args={"seed": "bin 32", "public": "bin 32: its public key", "now": "int ms"},
        result="bin 32: the stored seed — ``seed``, unless one was stored meanwhile (two "
        "relays starting at once must end with one key)",
    ),
    "create_account": Operation(
        spec="§3.2, §4.2, §4.6.4",
        args={
            "handle": "str",
            "kind": "str: user | business",
            "identity_key": "bin 32",
            "now": "int ms",
            "invite?": "bin: the hash of the REGISTER's invite, when invites are required",
        },
        result="nil",
        errors="203 REGISTRATION_REFUSED: invite unknown or used; 201 HANDLE_TAKEN: the "
        "handle exists, or a leading run of its labels has the skeleton of a business",
        atomic="the invite consumed, the lookalike check, the account, a business's "
        "skeleton and its key binding appended to the log (§15.1): no two registrations can "
        "both pass a check, and a refusal keeps the invite",
    ),
    "take_budget": Operation(
        spec="§4.6.1, §10",
        args={
            "name": "str: rules.REGISTRATIONS (the budgets a relay takes outside other operations)",
            "key": "str: e.g. the source address",
            "rate_per_h": "float: refill",
            "burst": "int: and size",
            "now": "int ms",
        },
        result="int: 0 when a token was spent, else the ms until the next token (nothing written)",
        atomic="read and spend: two relay processes sharing the store never spend one token "
        "twice, so the budget is global, not one per worker",
    ),
    "login_counts": Operation(
        spec="§4.3",
        args={
            "handle": "str",
            "not_before": "int ms: envelopes older are expired",
            "identity_key?": "bin 32: the key the LOGIN was verified with",
        },
        result="[queued envelopes (unexpired, statements included), one-time prekeys stored, "
        "bool: signed prekey stored] for WELCOME, counting every earlier operation's writes; "
        "then int: this login's number, the account's previous one plus one (1 for its first)",
        errors="200 AUTH_FAILED: the account's key is no longer ``identity_key`` (a rotation "
        "committed after the LOGIN was verified, SPEC §4.3); nothing counted",
        atomic="the login counted with the counts read: of two logins of one account, by any "
        "relay processes, the one committed later has the higher number, and a shared store "
        "announces it to the other workers (a LOGIN hint) so an older connection is replaced "
        "wherever it is (SPEC §1.2.3)",
    ),
    "login_seqs": Operation(
        spec="§1.2.3",
        args={"handles": "[str, …]"},
        result="[int, …]: each account's login number as committed (``login_counts``), 0 "
        "for an unknown handle, in the order of ``handles``",
        atomic="none needed: a catch-up after hints were lost (a worker's LISTEN or store "
        "reconnected) compares them with the logins of its live connections",
    ),
    "open_session": Operation(
        spec="§4.4, §10",
        args={
            "handle": "str: an account that has just authenticated",
            "worker": "str: the relay process serving the connection",
            "session": "int: the connection's number in that process",
            "now": "int ms",
        },
        result="[worker of the account's previous connection | nil (none recorded), bool: "
        "it is still recorded live, int ms: when it ended | nil]; this connection is "
        "recorded as the account's live one",
        atomic="read and record: of two logins at once, one sees the other",
    ),
    "close_session": Operation(
        spec="§10",
        args={"handle": "str", "worker": "str", "session": "int", "now": "int ms"},
        result="nil; the connection is recorded as ended at ``now`` if it is still the "
        "account's recorded live one (a later login's record is left alone)",
    ),
    "rotate_identity": Operation(
        spec="§3.4, §15.1",
        args={
            "handle": "str",
            "old_key": "bin 32",
            "new_key": "bin 32",
            "now": "int ms",
            "login_seq?": "int: the login number of the rotating connection (0: registered)",
        },
        result="nil",
        errors="501 STALE_STATEMENT: the key is no longer ``old_key``, or the account logged "
        "in since ``login_seq`` (compare-and-swap of both: only its newest connection "
        "rotates, SPEC §3.4)",
        atomic="the new key, the deletion of every prekey and of the profile the old key "
        "signed, and for a business the key binding appended to the log",
    ),
    "upload_prekeys": Operation(
        spec="§5.2",
        args={
            "handle": "str",
            "identity_key": "bin 32: the key the signed prekey was verified with",
            "signed": "[key_id, public, signature] | nil, verified by the caller",
            "one_time": "[[key_id, public], …]",
            "cap": "int: one-time prekeys an account may have stored",
            "now": "int ms",
        },
        result="nil",
        errors="300 INVALID_PREKEYS: the identity key rotated meanwhile, a one-time id is "
        "already stored, or the upload would store more than ``cap``",
        atomic="all or nothing: the signed prekey replaced and every one-time prekey added",
    ),
    "take_bundle": Operation(
        spec="§5.3, §7.3, §7.7",
        args={
            "requester": "str",
            "requester_kind": "str",
            "owner": "str",
            "now": "int ms",
            "rate_per_h?": "float: the owner's one-time prekey budget refill",
            "burst?": "int: and its size",
        },
        result="[identity_key, kind, [key_id, public, signature], [key_id, public] | nil, "
        "one-time prekeys remaining, log_binding_proof's result]; nil one-time when none is "
        "left or the owner's budget is spent; the proof is read in the same transaction, so "
        "it is of the key served or nil (§15.6 rule 3)",
        errors="400 RECIPIENT_UNAVAILABLE: unknown owner, refused by consent or block (the "
        "pair state is read first, also for an unknown owner), or no signed prekey; "
        "202 FORBIDDEN where §7.3 says so",
        atomic="the consent decision, the one-time prekey consumed and the owner's budget "
        "spent: no one-time prekey is ever handed out twice, by any relay process",
    ),
    "send": Operation(
        spec="§6.1–6.3, §7.2–7.3, §7.7, §8.4",
        args={
            "handle": "str: the sender",
            "kind": "str: the sender's kind",
            "to": "str",
            "msg_id": "bin 16",
            "intent": "str",
            "category": "str | nil",
            "categories": "[str, …] | nil",
            "body": "bin: opaque ciphertext",
            "now": "int ms: the acceptance time",
            "rules": "SendRules",
            "lease?": "[delivery_id, mode, epoch, clock] | nil: Store.lease_send's (§6.4.6)",
        },
        result="[delivery_id, at, previous, lease granted?] for a new envelope (ids only grow, "
        "never reused; ``previous`` is the highest delivery id queued for ``to`` before this "
        "one, 0 if none: a pager that has not seen it must page instead of pushing this one, "
        "how an envelope committed by another relay process, or whose answer was lost in an "
        "outage, is never skipped; a lease: [epoch, until, count], §6.4.6); int at — the "
        "original acceptance time — for an idempotent resend",
        errors="400 RECIPIENT_UNAVAILABLE / 202 FORBIDDEN: the pair's state refuses (rules."
        "judge_send, on the state read before the recipient's existence is looked at); 401 "
        "QUEUE_FULL: the cap or a share of the recipient's queue (rules.queue_full); 403 "
        "MESSAGE_ID_REUSED: a remembered msg_id with other content; remembered ones go first",
        atomic="the decision, the envelope, the remembered (handle, msg_id) and its digest, "
        "the new pair state, the first-contact budget spent and the metering count: one "
        "transaction, so a refusal writes nothing and a resend counts once",
    ),
    "acknowledge": Operation(
        spec="§6.5",
        args={"handle": "str", "delivery_ids": "[int, …]"},
        result="int per item: rows deleted (ids not queued for ``handle`` are ignored)",
        merged=True,
    ),
    "page": Operation(
        spec="§6.4, §6.6",
        args={
            "handle": "str",
            "after": "int: a delivery id",
            "limit": "int",
            "not_before": "int ms: older envelopes are expired and skipped",
            "max_bytes?": "int: no row past the one whose body brings theirs to it",
        },
        result=f"[[envelope row, …], high]: rows with delivery id > ``after`` ascending, "
        f"at most ``limit``; a row is {ENVELOPE_ROW}. ``high`` >= ``after``: every envelope "
        "with a delivery id up to it that was queued and unexpired when the page was read "
        "is among the rows (when fewer than ``limit`` whose bodies stay under ``max_bytes``)"
        ", so an id up to it that is not was acknowledged or withdrawn (SPEC §7.4)",
    ),
    "apply_statement": Operation(
        spec="§7.4–7.6",
        args={
            "handle": "str: the signer (the connection's account)",
            "signed": "bin: the statement, signature verified by the caller",
            "now": "int ms",
            "cooldown_ms": "int: CONSENT_COOLDOWN_MS",
            "max_block_targets?": "int: MAX_BLOCK_TARGETS",
            "statement_budget?": "[rate per hour, burst] | nil: the signer's, one per store",
            "delivery_id?": "int | nil: the receipt's, numbered by SQLite's relay (§6.4.6)",
        },
        result="[purged delivery ids (the signer's queue), forwarded envelope row | nil "
        "(queued for a business target), superseded delivery ids (the target's queue)]; or, "
        "nothing written, an int: ms until the statement budget has a token (SPEC §10)",
        errors="500 INVALID_STATEMENT: identity key rotated, action unfit for the signer "
        "(rules.check_statement), no transition (rules.statement_effect), too many block "
        "targets (rules.check_block_targets); "
        "501 STALE_STATEMENT: (signer, nonce) seen before; 400 RECIPIENT_UNAVAILABLE: a "
        "consent statement whose target is not a business",
        atomic="the nonce remembered, the new pair state, the statement in force and the ones "
        "it supersedes deleted, the purge of undelivered envelopes, the superseded receipts "
        "withdrawn, the new receipt queued and the statement's commitment appended to the log",
    ),
    "statements_in_force": Operation(
        spec="§7.6",
        args={"handle": "str", "after": "int: a cursor", "limit": "int"},
        result="[[signed statement, …], next cursor | nil]: oldest first, those the account "
        "signed and, for a business, those it is the target of",
    ),
    "put_profile": Operation(
        spec="§8.2",
        args={
            "handle": "str",
            "identity_key": "bin 32: the key the profile was verified with",
            "profile": "bin: the signed profile",
            "now": "int ms",
        },
        result="nil",
        errors="600 INVALID_PROFILE: the identity key rotated meanwhile",
    ),
    "fetch_profile": Operation(
        spec="§8.1–8.2, §11.1",
        args={"owner": "str", "now": "int ms"},
        result="[identity_key, signed profile | nil, badge in force | nil]",
        errors="601 NOT_FOUND: a user or an unknown handle, after the same reads (account, "
        "badge, profile) as for a business",
    ),
    "usage_month": Operation(
        spec="§8.4",
        args={"handle": "str", "month": "str YYYY-MM (UTC)"},
        result="[{category: notifications}, service replies, user-initiated], every count "
        "committed before it",
        atomic="(in ``send``) each billed notification's bill row (§8.5) with its count",
    ),
    "purge": Operation(
        spec="§6.6, §7.4, §11",
        args={"before": "int ms: envelopes and msg ids older go", "now": "int ms"},
        result="[envelopes dropped, remembered msg ids dropped]; statement nonces that can no "
        "longer be replayed fresh and refilled budgets go too",
    ),
    "log_append": Operation(
        spec="§15.1",
        args={"entries": "[bin, …]: log entries, in order"},
        result="int: the index of the first (the log's size before)",
        atomic="the entries and every complete subtree they finish: the log is never seen "
        "half appended, and two appends (by any relay processes) never interleave",
    ),
    "log_state": Operation(
        spec="§15.3",
        args={},
        result="[size, root at that size, newest tree head as [size, root, timestamp, "
        "signed] | nil]: what the relay signs a new tree head from",
    ),
    "log_add_head": Operation(
        spec="§15.3",
        args={"size": "int", "root": "bin 32", "timestamp": "int ms", "signed": "bin"},
        result="bool: stored; false when a head at least as large is kept already (another "
        "relay process published first)",
        errors="900 INTERNAL_ERROR: a root that is not the log's at ``size``, a size beyond "
        "the log, a timestamp before the newest head's (transparency.accept_head)",
        atomic="the check and the head: the heads kept only grow, each consistent with "
        "every earlier one",
    ),
    "log_head": Operation(
        spec="§15.3",
        args={},
        result="[size, root, timestamp, signed] of the newest tree head | nil",
    ),
    "log_inclusion": Operation(
        spec="§15.2",
        args={"index": "int: a leaf", "size": "int: a tree size"},
        result="[bin 32, …]: PATH(index, D[size]) (RFC 9162 §2.1.3.1)",
        errors="601 NOT_FOUND: not 0 ≤ index < size ≤ the log's size",
    ),
    "log_consistency": Operation(
        spec="§15.2",
        args={"first": "int", "second": "int"},
        result="[bin 32, …]: PROOF(first, D[second]) (RFC 9162 §2.1.4.1)",
        errors="601 NOT_FOUND: not 0 < first ≤ second ≤ the log's size",
    ),
    "log_entries": Operation(
        spec="§15.1",
        args={"start": "int: an index", "limit": "int"},
        result="[bin, …]: the entries from ``start`` on, at most ``limit``, in order",
    ),
    "publish_key": Operation(
        spec="§15.6",
        args={"handle": "str: a user", "now": "int ms"},
        result="bool: its key binding appended now; false when published already (every "
        "business is)",
        atomic="the entry and the handle's published mark: from then on its rotations are "
        "logged too",
    ),
    "log_signed_consistency": Operation(
        spec="§15.6",
        args={"first": "int", "second": "int"},
        result="[bin 32, …]: PROOF(first, D[second])",
        errors="601 NOT_FOUND: not 0 < first ≤ second ≤ the newest signed head's size",
    ),
    "log_find": Operation(
        spec="§15.6",
        args={"entry": "bin: an entry's exact bytes", "size": "int"},
        result="[index, [bin 32, …]]: the first index below ``size`` holding exactly that "
        "entry (found by its ``at``) and PATH(index, D[size])",
        errors="601 NOT_FOUND: no such entry (or bytes that are no entry), or not 0 < size ≤ "
        "the newest signed head's size",
    ),
    "log_binding_proof": Operation(
        spec="§15.6",
        args={"handle": "str"},
        result="[entry, index, [bin 32, …], signed head] for the handle's newest key binding "
        "in the newest signed head | nil (not published, or bound after that head)",
    ),
    "close_bills": Operation(
        spec="§8.5, §15.1",
        args={
            "before": "str YYYY-MM: bills of earlier months close",
            "now": "int ms: the bill entries' ``at``",
        },
        result="[[[business, month, items, log index], …], more]: the bills this call "
        "finished; ``more`` while bills are left to close (call again). Each call makes at "
        "most ``transparency.BILL_CHUNK_ITEMS`` items. Log index nil for notifications "
        "metered after their month's bill closed, which are dropped",
        atomic="each chunk's items with the removal of the rows they replace and the bill's "
        "progress; the bill's entry with its last chunk: a bill is logged exactly when all "
        "its items are kept, and served only then",
    ),
    "bill_page": Operation(
        spec="§8.5",
        args={
            "handle": "str: a business",
            "month": "str YYYY-MM",
            "start": "int: the first item",
            "limit": "int",
        },
        result="[entry, index, [bin 32, …], signed head, salt, [item, …]]: the bill's log "
        "entry, PATH(index, D[head size]) under the newest signed head, and its items from "
        "``start`` on, at most ``limit``",
        errors="601 NOT_FOUND: no bill closed for that month, or its entry is newer than "
        "the newest signed head",
    ),
    "checkpoint": Operation(
        spec="§11.2",
        args={},
        result="nil, after what deleted rows left in the back end's logs is gone (SQLite: "
        "the WAL folded in and truncated once the batch has committed); nothing for a back "
        "end with no such step",
    ),
}
"""Operation name → its contract: the only operations a back end runs."""


READS: dict[str, Operation] = {
    "account": Operation(
        spec="§3",
        args={"handle": "str"},
        result="records.Account | nil: the handle, its kind and its current identity key "
        "as committed (a rotation is seen as soon as it is answered)",
    ),
    "account_for_login": Operation(
        spec="§4.3, §11.1",
        args={"handle": "str"},
        result="records.Account | nil, as ``account``",
        errors="none but internal ones; the same reads, and the same work to build the "
        "answer, whether ``handle`` exists or not: a LOGIN's answer and its timing must not "
        "tell who exists",
    ),
    "check_prekey_upload": Operation(
        spec="§5.2",
        args={
            "handle": "str",
            "key_ids": "[int, …]: the one-time prekey ids of an upload",
            "max_stored": "int: one-time prekeys an account may have stored",
        },
        result="nil when the upload is not refused already",
        errors="300 INVALID_PREKEYS: a one-time id is stored, or the upload would store more "
        "than ``max_stored`` (``upload_prekeys`` checks again, atomically with its writes)",
    ),
}
"""Read name → its contract: what handlers read before they decide (``Store.read``)."""


def argument_names(operation: Operation) -> list[str]:
    """The argument names in call order, optional ones without their ``?``."""
    return [name.rstrip("?") for name in operation.args]
