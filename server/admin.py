"""``blindrelay admin``: the operator's commands — badges, billing, invites (SPEC §8, §4.6.4).

- ``keygen --out PATH``: a new operator Ed25519 key, written as the labelled hex seed
  to a file only its owner can read (mode 0600), never over an existing file; prints,
  labelled, the public key that clients pin and where the secret went.
- ``verify-business HANDLE --name NAME --operator-key-file PATH [--days N]``: issues a
  badge for the business's *current* identity key with a fresh serial and
  stores it; the relay serves it with PROFILE from then on.
- ``revoke-badge HANDLE``: withdraws the handle's badges; a running relay
  reading the same database stops serving them at the next PROFILE_FETCH.
- ``usage``: metering counts per business and UTC month, with amounts computed
  in :class:`~decimal.Decimal` from ``--price CATEGORY=AMOUNT``, and each month's
  bill (SPEC §8.5) checked as its business checks it: open, or logged with its items
  hashing to the logged root under a signed head, in the metered number.
- ``invite --count N``: N fresh invite tokens, printed one per line in hex for the
  operator to hand out; the database keeps only their hashes. A relay started
  with ``--require-invites`` accepts each once (SPEC §4.6.4).

The operator key never enters the relay database (SPEC §11); these commands
are the only writers of the ``badges`` table.

Not here: the badge format (``blindrelay.protocol.business``), serving
(``business``), counting (``metering``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.business import issue_badge
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import ProtocolError, TransparencyError
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.transparency.bills import verify_bill

from .registration import invite_digest
from .store import AdminStore, MonthUsage, StoreError, open_admin_store
from .storeoptions import add_store_arguments, store_url

DAY_MS = 24 * 3600 * 1000
DEFAULT_BADGE_DAYS = 365
"""Well inside MAX_BADGE_VALIDITY_MS (400 days): yearly re-verification."""

MAX_INVITES_PER_COMMAND = 100_000
"""Invites one command prints: a mailing's worth, in one transaction of ~2 MB."""


class AdminError(Exception):
    """A refusal shown to the operator as one line, exit status 1."""


def register_admin(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "admin",
        help="operator commands: badge keys, verified businesses, usage, invites",
        description="Operator commands. The operator key is kept apart from the relay.",
    )
    commands = parser.add_subparsers(title="admin commands", metavar="ADMIN_COMMAND")
    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)

    keygen = commands.add_parser(
        "keygen", help="make an operator key pair (SPEC §8.1)",
        description="Make the operator's badge key: the secret goes to --out (mode 0600, "
        "never overwritten; keep it off the relay), the public key is printed for clients "
        "to pin (chat --operator-key, Client(operator_key=…)).",
    )  # fmt: skip
    keygen.add_argument("--out", type=Path, required=True, help="key file to create (0600)")
    keygen.set_defaults(func=_guarded(_keygen))

    verify = commands.add_parser(
        "verify-business", help="issue a badge for a business",
        description="Sign a badge binding the business's handle and current identity key to "
        "--name, valid --days, and store it with its log entry (SPEC §8.1, §15.1): clients "
        "that pin the operator key show the business under that name.",
    )  # fmt: skip
    verify.add_argument("handle")
    verify.add_argument(
        "--name", required=True, help="the name clients show as verified (SPEC §8.1)"
    )
    verify.add_argument(
        "--operator-key-file", type=Path, required=True, metavar="PATH",
        help="the operator's secret key file, made by 'blindrelay admin keygen' (clients get "
        "the public key it printed, never this file)",
    )  # fmt: skip
    verify.add_argument(
        "--days",
        type=int,
        default=DEFAULT_BADGE_DAYS,
        help=f"validity in days (default {DEFAULT_BADGE_DAYS})",
    )
    _db_argument(verify)
    verify.set_defaults(func=_guarded(_verify_business))

    revoke = commands.add_parser(
        "revoke-badge", help="withdraw a business's badges",
        description="Withdraw every badge of the business in force, logged (SPEC §15.1); a "
        "running relay stops serving them at its next PROFILE_FETCH.",
    )  # fmt: skip
    revoke.add_argument("handle")
    _db_argument(revoke)
    revoke.set_defaults(func=_guarded(_revoke_badge))

    usage = commands.add_parser(
        "usage", help="metered counts, amounts and bills (SPEC §8.4, §8.5)",
        description="Per business and UTC month: billable notifications per category, free "
        "service replies and user-initiated chats, amounts from --price, and the month's "
        "bill checked against the transparency log (open, logged and ok, or what is wrong).",
    )  # fmt: skip
    _db_argument(usage)
    usage.add_argument("--business", help="one business handle")
    usage.add_argument("--month", help="YYYY-MM (UTC)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="CATEGORY=AMOUNT",
        help="price per notification, e.g. utility=0.005 (repeatable; default 0)",
    )
    usage.set_defaults(func=_guarded(_usage))

    invite = commands.add_parser(
        "invite",
        help="issue invite tokens (SPEC §4.6.4)",
        description="Print fresh invite tokens (hex), one per line, for a relay run with "
        "--require-invites; each registers one account. The database keeps only their hashes.",
    )
    invite.add_argument("--count", type=int, default=1, help="how many (default 1)")
    _db_argument(invite)
    invite.set_defaults(func=_guarded(_invite))


def _db_argument(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)


Command = Callable[[argparse.Namespace], int]


def _guarded(command: Command) -> Command:
    """Run ``command``; an :class:`AdminError`, or a store failing on the way (a lost
    database connection), becomes one line on stderr and status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (AdminError, StoreError) as exc:
            print(f"blindrelay admin: {exc}", file=sys.stderr)
            return 1

    return run


def _open_store(args: argparse.Namespace) -> AdminStore:
    """The store ``--store``/``--db`` name, through the relay's own choice of back end."""
    try:
        return open_admin_store(store_url(args))
    except (StoreError, ValueError) as exc:
        raise AdminError(str(exc)) from None


# --- keys and badges ----------------------------------------------------------


OPERATOR_SECRET_LABEL = "blindrelay operator secret key"  # noqa: S105 - a label, not a secret
"""How a key file begins: a seed cannot be mistaken for the public key (both are 64 hex
digits), and ``chat --operator-key`` refuses the file's content by it."""


def _keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AdminError(f"{args.out} exists; not overwriting a key") from None
    except OSError as exc:
        raise AdminError(f"cannot create the key file {args.out}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(f"{OPERATOR_SECRET_LABEL} {bytes(key).hex()}\n")
    print(f"operator public key: {bytes(key.verify_key).hex()}")
    print(f"operator key file: {args.out} (secret, mode 0600: keep it off the relay; "
          "verify-business --operator-key-file reads it)")  # fmt: skip
    return 0


def public_key_of(keygen_output: str) -> bytes:
    """The public key ``admin keygen`` printed (for scripts and tests)."""
    found = re.search(r"operator public key: ([0-9a-f]{64})", keygen_output)
    if found is None:
        raise ValueError("no 'operator public key' line")
    return bytes.fromhex(found.group(1))


def load_operator_key(path: Path) -> SigningKey:
    try:
        text = path.read_text().strip().removeprefix(OPERATOR_SECRET_LABEL).strip()
        seed = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read operator key {path}: {exc}") from None
    if len(seed) != 32:
        raise AdminError(f"{path}: not an operator key file (from 'blindrelay admin keygen')")
    if path.stat().st_mode & 0o077:
        raise AdminError(f"{path}: readable by others; chmod 600 it")
    return SigningKey(seed)


def _verify_business(args: argparse.Namespace) -> int:
    operator = load_operator_key(args.operator_key_file)
    validity_ms = args.days * DAY_MS
    if not 0 < validity_ms <= limits.MAX_BADGE_VALIDITY_MS:
        raise AdminError(f"--days must be 1…{limits.MAX_BADGE_VALIDITY_MS // DAY_MS}")
    store = _open_store(args)
    try:
        with store.transaction():
            account = store.account(args.handle)
            if account is None or account.kind != AccountKind.BUSINESS:
                raise AdminError(f"{args.handle}: no such business account")
            serial = secrets.randbelow(2**63)
            while store.badge_serial_taken(serial):
                serial = secrets.randbelow(2**63)
            now = time.time_ns() // 1_000_000
            try:
                signed = issue_badge(
                    lambda message: operator.sign(message).signature,
                    handle=account.handle,
                    identity_key=account.identity_key,
                    display_name=args.name,
                    serial=serial,
                    now_ms=now,
                    validity_ms=validity_ms,
                )
            except ProtocolError as exc:  # e.g. a display name too long
                raise AdminError(f"cannot issue badge: {exc}") from None
            fingerprint = key_fingerprint(account.identity_key)
            store.add_badge(
                serial=serial, handle=account.handle, key_fingerprint=fingerprint,
                display_name=args.name, issued_at=now, expires_at=now + validity_ms,
                signed=signed,
            )  # fmt: skip
    finally:
        store.close()
    print(
        f"badge {serial} for {args.handle} ({args.name!r}, key {fingerprint.hex()[:16]}…)"
        f" valid for {args.days} days"
    )
    return 0


def _revoke_badge(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        with store.transaction():
            revoked = store.revoke_badges(args.handle, time.time_ns() // 1_000_000)
    finally:
        store.close()
    if not revoked:
        raise AdminError(f"{args.handle}: no badge in force")
    print(f"revoked {revoked} badge(s) of {args.handle}")
    return 0


# --- invites --------------------------------------------------------------------


def _invite(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= MAX_INVITES_PER_COMMAND:
        raise AdminError(f"--count must be 1…{MAX_INVITES_PER_COMMAND}")
    tokens = [secrets.token_bytes(limits.INVITE_BYTES) for _ in range(args.count)]
    store = _open_store(args)
    try:
        with store.transaction():
            now = time.time_ns() // 1_000_000
            store.add_invites((invite_digest(token) for token in tokens), now)
    finally:
        store.close()
    for token in tokens:  # printed only once they are stored
        print(token.hex())
    return 0


# --- usage ----------------------------------------------------------------------


def parse_prices(items: Sequence[str]) -> dict[str, Decimal]:
    prices = {category: Decimal(0) for category in limits.CATEGORIES}
    for item in items:
        category, _, amount = item.partition("=")
        if category not in limits.CATEGORIES:
            raise AdminError(f"--price {item}: category must be one of {limits.CATEGORIES}")
        try:
            price = Decimal(amount)
        except InvalidOperation:
            raise AdminError(f"--price {item}: not a decimal amount") from None
        if not price.is_finite() or price < 0:
            raise AdminError(f"--price {item}: must be a non-negative amount")
        prices[category] = price
    return prices


def usage_rows(months: list[MonthUsage], prices: dict[str, Decimal]) -> list[dict[str, object]]:
    """One row per business and month: counts, amount per category, total (Decimal)."""
    rows: list[dict[str, object]] = []
    for usage in months:
        counts = {c: usage.notifications.get(c, 0) for c in limits.CATEGORIES}
        amounts = {c: counts[c] * prices[c] for c in limits.CATEGORIES}
        rows.append(
            {
                "business": usage.business,
                "month": usage.month,
                "notifications": counts,
                "service_replies": usage.service_replies,
                "user_initiated": usage.user_initiated,
                "amounts": amounts,
                "total": sum(amounts.values(), Decimal(0)),
            }
        )
    return rows


def bill_state(store: AdminStore, usage: MonthUsage) -> str:
    """The month's bill as the operator can check it (SPEC §8.5): ``open (N kept)``
    until it closes; then ``logged #INDEX (N items) ok`` when its items hash to the
    logged root under a signed head that verifies with the relay key and their count in
    each category is the metered one (the amounts are priced from it) — else what is
    wrong; ``none`` for a month with no notification."""
    billed = sum(usage.notifications.values())
    found = store.bill(usage.business, usage.month)
    if found is None:
        kept = store.open_bill(usage.business, usage.month)
        if kept:
            return f"open ({kept} kept)"
        return "none" if billed == 0 else "closed, not yet under a signed head"
    entry, index, proof, head, salt, items = found
    relay_key = store.relay_key()
    if relay_key is None:  # a relay made its key before closing any bill: an edited store
        return "INVALID: no relay key in the store to verify it with"
    try:
        bill = verify_bill(
            relay_key, usage.business, usage.month, entry, index, proof, head, salt, items
        )
    except TransparencyError as exc:
        return f"INVALID: {exc}"
    if bill.entry.count != billed:
        return f"logged #{index} ({bill.entry.count} items) MISMATCH: {billed} metered"
    # Amounts are priced per category from the meter: the total alone would pass a count
    # moved from one category to a dearer one.
    logged = Counter(item.category for item in bill.items)
    differ = [
        f"{c} {usage.notifications.get(c, 0)} metered, {logged[c]} billed"
        for c in limits.CATEGORIES
        if usage.notifications.get(c, 0) != logged[c]
    ]
    if differ:
        return f"logged #{index} ({bill.entry.count} items) MISMATCH: {'; '.join(differ)}"
    return f"logged #{index} ({bill.entry.count} items) ok"


def _flat(row: dict[str, object]) -> list[str]:
    counts = row["notifications"]
    amounts = row["amounts"]
    assert isinstance(counts, dict) and isinstance(amounts, dict)
    return [
        str(row["business"]), str(row["month"]),
        *(str(counts[c]) for c in limits.CATEGORIES),
        str(row["service_replies"]), str(row["user_initiated"]),
        *(str(amounts[c]) for c in limits.CATEGORIES), str(row["total"]),
        str(row.get("bill", "")),
    ]  # fmt: skip


HEADER = [
    "business", "month", *limits.CATEGORIES, "service_replies", "user_initiated",
    *(f"{c}_amount" for c in limits.CATEGORIES), "total", "bill",
]  # fmt: skip


def _usage(args: argparse.Namespace) -> int:
    prices = parse_prices(args.price)
    if args.month is not None and not _is_month(args.month):
        raise AdminError("--month must be YYYY-MM")
    store = _open_store(args)
    try:
        months = store.usage(args.business, args.month)
        rows = usage_rows(months, prices)
        for row, usage in zip(rows, months, strict=True):
            row["bill"] = bill_state(store, usage)
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps(rows, default=str, indent=2))
    elif args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(_flat(row) for row in rows)
        print(out.getvalue(), end="")
    else:
        table = [HEADER, *(_flat(row) for row in rows)]
        widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
        for line in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


def _is_month(value: str) -> bool:
    year, _, month = value.partition("-")
    return len(year) == 4 and year.isdigit() and month.isdigit() and len(month) == 2 \
        and 1 <= int(month) <= 12  # fmt: skip
