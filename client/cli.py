"""The client's ``blindrelay`` subcommands: ``demo``, ``chat``, ``audit`` and
``verify-consent``.

Registered through the ``blindrelay.commands`` entry-point group (see
``blindrelay.server.cli``), so the client never imports the server; each
command's module is imported only when it runs.

Not here: what the commands do (``demo``, ``chat``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register_demo(subparsers: SubParsers) -> None:
    """``blindrelay demo``: the story end to end on a temporary relay."""
    parser = subparsers.add_parser(
        "demo",
        help="play the airline story end to end and show what the relay sees",
        description=(
            "Start a relay on a temporary database, then play an airline and a customer: "
            "consent, a notification, a chat, an away reply, a block. Each scene shows "
            "what the clients see and what the relay sees. Coloured on a terminal "
            "(NO_COLOR turns it off)."
        ),
    )
    parser.add_argument("--step", action="store_true", help="pause between scenes (Enter)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(step=args.step)


def register_chat(subparsers: SubParsers) -> None:
    """``blindrelay chat``: an interactive end-to-end encrypted client."""
    parser = subparsers.add_parser(
        "chat",
        help="an interactive terminal client",
        description=(
            "Chat through any relay. The profile file holds your keys, sealed with a "
            "passphrase; the first run registers --handle, later runs log in. "
            "Type /help once connected."
        ),
    )
    parser.add_argument("--relay", required=True, help="relay URL, ws://HOST:PORT")
    parser.add_argument("--profile", type=Path, required=True, help="profile file (created)")
    parser.add_argument("--handle", help="handle to register (first run only)")
    parser.add_argument("--business", action="store_true", help="register a business account")
    parser.add_argument(
        "--invite", metavar="HEX", help="the operator's invite, if the relay requires one"
    )
    parser.add_argument(
        "--passphrase-env", metavar="VAR", help="read the passphrase from $VAR (for scripts)"
    )
    parser.add_argument(
        "--operator-key",
        default=os.environ.get("BLINDRELAY_OPERATOR_KEY"),
        metavar="HEX",
        help="the operator's public badge key, 64 hex digits ('blindrelay admin keygen' "
        "prints it as 'operator public key'); without it no business shows as verified "
        "(default: $BLINDRELAY_OPERATOR_KEY)",
    )
    parser.add_argument(
        "--accept-relay-key",
        metavar="HEX",
        help="pin this new relay key, after its operator confirmed it out of band (the "
        "profile refuses a relay presenting another key than the one it pinned)",
    )
    parser.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    """Everything the person gave is checked before the profile is opened or created, so
    a mistake leaves no file behind (issue 18)."""
    import sys

    from .chat import Options, read_passphrase, run
    from .chat.session import PassphraseError

    try:
        operator_key = _operator_key(args.operator_key)
        invite = _hex_option(args.invite, "--invite must be the hex token the operator gave you")
        relay_key = _hex_option(
            args.accept_relay_key,
            "--accept-relay-key must be 64 hex digits (a 32-byte key)",
            size=32,
        )
        _check_profile(args.profile, args.handle)
        passphrase = read_passphrase(args.passphrase_env)
    except (ValueError, PassphraseError) as exc:
        print(f"blindrelay chat: {exc}", file=sys.stderr)
        return 2
    return run(
        Options(
            relay=args.relay,
            profile=args.profile,
            handle=args.handle,
            kind="business" if args.business else "user",
            passphrase=passphrase,
            operator_key=operator_key,
            invite=invite,
            accept_relay_key=relay_key,
        )
    )


OPERATOR_SECRET_LABEL = "blindrelay operator secret key"  # noqa: S105 - a label, not a secret
"""The first words of a key file ``admin keygen`` writes (``server.admin``, which the
client does not import): what ``--operator-key`` refuses."""


def _operator_key(value: str | None) -> bytes | None:
    """The operator's *public* key, 64 hex digits; the secret key file's content, or its
    path, is refused with what to give instead."""
    if not value:
        return None
    if OPERATOR_SECRET_LABEL in value or Path(value).is_file():
        raise ValueError(
            "--operator-key takes the operator's public key (64 hex digits, printed by "
            "'blindrelay admin keygen' as 'operator public key'), never its key file"
        )
    return _hex_option(value, "--operator-key must be the operator's public key, 64 hex "
                       "digits ('blindrelay admin keygen' prints it)", size=32)  # fmt: skip


def _check_profile(profile: Path, handle: str | None) -> None:
    """ValueError (one line) for a profile that cannot be opened or made as asked."""
    from blindrelay.protocol.errors import ProtocolError
    from blindrelay.protocol.frames import check_handle

    if profile.is_dir():
        raise ValueError(f"--profile {profile} is a folder: give a file name")
    if not profile.exists():
        if not profile.parent.is_dir():
            raise ValueError(f"--profile {profile}: the folder {profile.parent} does not "
                             "exist; create it or choose another path")  # fmt: skip
        if handle is None:
            raise ValueError(f"{profile} is a new profile: give --handle NAME to register "
                             "it (later runs log in without --handle)")  # fmt: skip
    if handle is not None:
        try:
            check_handle(handle)
        except ProtocolError as exc:
            raise ValueError(
                f"--handle {handle!r} is not a handle ({exc.detail}): 3 to 32 of a-z, 0-9, "
                "'.', '_', '-', starting and ending with a letter or digit"
            ) from None


def register_audit(subparsers: SubParsers) -> None:
    """``blindrelay audit``: check a relay's transparency log from scratch."""
    parser = subparsers.add_parser(
        "audit",
        help="check a relay's transparency log: every entry, the signed head, the last run",
        description=(
            "Read a relay's transparency log with no account (SPEC §15.6), recompute its "
            "tree from every entry and check the newest signed tree head against it; with "
            "--state, also that the log still holds what the previous run verified. Prints "
            "entries by type, the head and each violation with its evidence. Exit status: "
            "0 clean, 1 a violation, 2 a usage error, 3 the relay could not be read."
        ),
    )
    parser.add_argument("--relay", required=True, help="relay URL, ws://HOST:PORT")
    parser.add_argument(
        "--state", type=Path, metavar="FILE",
        help="JSON state kept between runs (created; only moves forward)",
    )  # fmt: skip
    parser.add_argument(
        "--relay-key", metavar="HEX",
        help="the relay key to expect (64 hex digits); default: the state file's, else the "
        "first one presented (trust on first use)",
    )  # fmt: skip
    parser.add_argument(
        "--acknowledge-fork", type=Path, metavar="FILE",
        help="first move the fork the --state file keeps (two signed heads, the evidence) "
        "into FILE, a new file, so later runs no longer report it",
    )  # fmt: skip
    parser.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from .audit import USAGE, AuditUsageError, run_audit

    try:
        relay_key = _hex_option(
            args.relay_key, "--relay-key must be 64 hex digits (a 32-byte key)", size=32
        )
        audit = run_audit(
            args.relay, sys.stdout, state_path=args.state, relay_key=relay_key,
            acknowledge=args.acknowledge_fork,
        )  # fmt: skip
        return asyncio.run(audit)
    except (ValueError, AuditUsageError) as exc:
        print(f"blindrelay audit: {exc}", file=sys.stderr)
        return USAGE


def register_verify_consent(subparsers: SubParsers) -> None:
    """``blindrelay verify-consent``: check a consent evidence file offline."""
    parser = subparsers.add_parser(
        "verify-consent",
        help="check, offline, that a consent statement was signed and logged by a relay",
        description=(
            "Check an evidence file (Business.consent_evidence, SPEC §15.5) with nothing "
            "but the relay's public key: the statement's signature, the log entry that "
            "commits to it, the signed tree head and the inclusion proof. Prints who "
            "stated what to whom, and by when the relay had logged it. Exit status: 0 "
            "valid, 1 invalid (one line saying why), 2 a usage error."
        ),
    )
    parser.add_argument("file", type=Path, help="the evidence file (JSON)")
    parser.add_argument(
        "--relay-key", required=True, metavar="HEX", help="the relay's public key, 64 hex digits"
    )
    parser.add_argument(
        "--signer-key", metavar="HEX",
        help="the key you know for the signer (default: the one the statement names, which "
        "then proves only that whoever held it signed)",
    )  # fmt: skip
    parser.set_defaults(func=_verify_consent)


def _verify_consent(args: argparse.Namespace) -> int:
    import sys
    from datetime import UTC, datetime

    from blindrelay.protocol.errors import BlindrelayError
    from blindrelay.protocol.transparency.evidence import (
        evidence_from_json,
        verify_consent_evidence,
    )

    def when(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    try:
        relay_key = _hex_option(args.relay_key, "--relay-key must be 64 hex digits", size=32)
        signer_key = _hex_option(args.signer_key, "--signer-key must be 64 hex digits", size=32)
        evidence = evidence_from_json(args.file.read_text())
    except (OSError, ValueError) as exc:
        print(f"blindrelay verify-consent: {exc}", file=sys.stderr)
        return 2
    assert relay_key is not None
    try:
        verified = verify_consent_evidence(evidence, relay_key, signer_key)
    except (BlindrelayError, ValueError) as exc:
        print(f"blindrelay verify-consent: invalid: {exc}", file=sys.stderr)
        return 1
    statement, head = verified.statement, verified.tree_head
    categories = ", ".join(statement.categories) if statement.categories else "-"
    print(f"valid: {statement.signer} {statement.action} to {statement.target}, "
          f"categories {categories}, issued {when(statement.issued_at)}")  # fmt: skip
    print(f"logged: entry {evidence.index} of the relay's log, in its signed tree head of "
          f"{head.size} entries at {when(head.timestamp)}")  # fmt: skip
    return 0


def _hex_option(value: str | None, problem: str, size: int | None = None) -> bytes | None:
    """An option given in hex as bytes (None when absent); ValueError(``problem``) if it
    is not hex, or not ``size`` bytes long."""
    if not value:
        return None
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(problem) from None
    if size is not None and len(data) != size:
        raise ValueError(problem)
    return data
