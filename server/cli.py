"""The ``blindrelay`` command: a dispatcher over registered subcommands, and the one
error boundary every command runs inside.

Subcommands are found through the ``blindrelay.commands`` entry-point group,
so the server and the client each register their own (``serve``, ``chat`` …)
without either importing the other. An entry point names a callable that takes
the argparse sub-parsers object and adds one parser whose ``func`` default runs
the command and returns an exit status.

The boundary (:func:`main`): a usage error — a bad flag, a bad ``BLINDRELAY_*``
variable, a value out of range — prints one line naming the flag or variable and
exits 2; an expected failure is the command's own one line and exit 1; anything
else prints one line saying where the full traceback was written (``--debug``
shows it instead) and exits 1. No traceback reaches the terminal otherwise.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import itertools
import logging
import os
import re
import signal
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

from blindrelay.protocol import PROTOCOL_VERSION, __version__

from .config import SYNCHRONOUS_MODES, RelayConfig
from .storeoptions import DB_HELP, ENV_PREFIX, STORE_HELP, add_store_arguments, store_url

COMMAND_GROUP = "blindrelay.commands"

USAGE_ERROR = 2
FAILURE = 1
INTERRUPTED = 130
BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell shows for a command whose reader went away (``… | head``)."""


class UsageError(Exception):
    """A flag or ``BLINDRELAY_*`` variable the command cannot use: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line: what is wrong and where help is."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blindrelay",
        description=(
            "End-to-end encrypted messaging relay for users and businesses. "
            "The relay carries only ciphertext; clients hold every key."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"blindrelay {__version__} (protocol v{PROTOCOL_VERSION})",
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="show the full traceback of an unexpected error instead of writing it to a file",
    )  # fmt: skip
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        ep.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command inside the error boundary (module docstring); its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        parser = build_parser()
        args = parser.parse_args(arguments)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return USAGE_ERROR
        status: int = func(args)
        return status
    except UsageError as exc:
        print(f"blindrelay: {exc}" if not str(exc).startswith("blindrelay") else exc,
              file=sys.stderr)  # fmt: skip
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("blindrelay: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`blindrelay inspect | head`): not an error to
        # report. stdout goes to /dev/null so that its flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    except Exception as exc:
        if debug:
            raise
        print(f"blindrelay: unexpected error: {one_line(exc)}; {_write_traceback()}",
              file=sys.stderr)  # fmt: skip
        return FAILURE


def one_line(exc: BaseException) -> str:
    """An exception as a person reads it: its text on one line, else its type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return text or type(exc).__name__


def _write_traceback() -> str:
    """Write the exception being handled to a private file; where it went, or how to see
    it when no file can be written."""
    try:
        fd, path = tempfile.mkstemp(prefix="blindrelay-error-", suffix=".txt")
        with os.fdopen(fd, "w") as out:  # mkstemp: readable by its owner only
            traceback.print_exc(file=out)
    except OSError:
        return "rerun with --debug to see the traceback"
    return f"the full traceback is in {path} (rerun with --debug to see it here)"


# --- serve ----------------------------------------------------------------------

_FLAG_NAMES = {"db_path": "db", "auth_timeout_s": "auth_timeout"}
"""Config fields whose flag (and environment variable) is spelled shorter."""

REUSE_PORT_HELP = (
    "listen with SO_REUSEPORT, so several workers sharing one PostgreSQL store can serve "
    "one port (each of them with --reuse-port; docs/operations.md, Two workers)"
)
_HELP = {"store": STORE_HELP, "db_path": DB_HELP, "reuse_port": REUSE_PORT_HELP}
"""Config fields whose help is written out here rather than taken from RelayConfig."""

_UNITS = (
    ("_per_h", "per hour"), ("_per_min", "per minute"), ("send_rate_", "per second"),
    ("burst", "at once, then the rate"),
)  # fmt: skip
"""Units by a part of the field's name; suffixes are in :data:`_SUFFIX_UNITS`."""
_SUFFIX_UNITS = (("_ms", "milliseconds"), ("_s", "seconds"), ("_bytes", "bytes"))


def _field_docs() -> dict[str, str]:
    """RelayConfig's attribute docstrings (the string after each field), first sentence:
    the help of a flag is the documentation of its field, written once."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(RelayConfig)))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for field, after in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):  # fmt: skip
            text = " ".join(after.value.value.split())
            docs[field.target.id] = text.split(". ")[0].rstrip(".")
    return docs


def _flag_help(name: str, default: object, docs: dict[str, str]) -> str:
    """What the flag is, its unit and range, its variable and default."""
    if name in _HELP:
        return _HELP[name]
    unit = next((u for part, u in _UNITS if part in name), "") or next(
        (u for suffix, u in _SUFFIX_UNITS if name.endswith(suffix)), ""
    )
    what = (docs.get(name) or name.replace("_", " ")).replace("``", "")
    if name == "port":
        limits_text = "0-65535, 0 picks a free port"
    elif name == "pow_bits":
        limits_text = "0 (off) or more"
    elif isinstance(default, bool):
        limits_text = "on/off"
    elif isinstance(default, int | float) and name != "synchronous":
        limits_text = "> 0"
    else:
        limits_text = ""
    details = "; ".join(part for part in (unit, limits_text) if part)
    variable = ENV_PREFIX + _flag(name).upper()
    return f"{what} ({details + '; ' if details else ''}env {variable}; default: {default})"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _flag(field_name: str) -> str:
    return _FLAG_NAMES.get(field_name, field_name)


def _flags_named(message: str) -> str:
    """A configuration message with each field name as the operator writes it: its flag
    and its variable (``queue_cap must be positive`` → ``--queue-cap
    (BLINDRELAY_QUEUE_CAP) must be positive``)."""
    for field in sorted(fields(RelayConfig), key=lambda f: -len(f.name)):
        flag = _flag(field.name)
        message = re.sub(
            rf"(?<![-\w]){field.name}\b",
            f"--{flag.replace('_', '-')} ({ENV_PREFIX}{flag.upper()})",
            message,
        )
    return message


@dataclass(frozen=True, slots=True)
class _BadVariable:
    """A ``BLINDRELAY_*`` variable that is no value of its flag's type: kept as the flag's
    default and refused when ``serve`` runs, so that it never breaks another command
    (``blindrelay --version``, ``chat``) while the parser is built."""

    problem: str


def _env_default(field_name: str, default: object, convert: Callable[[str], Any]) -> Any:
    """The ``BLINDRELAY_*`` variable's value for a flag, else ``default``."""
    name = ENV_PREFIX + _flag(field_name).upper()
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return convert(raw)
    except ValueError:
        kind = "a whole number" if convert is int else "a number" if convert is float else (
            "a valid value"
        )
        return _BadVariable(f"{name}={raw!r} is not {kind}; fix or unset it")


def _parse_bool(raw: str) -> bool:
    """A BLINDRELAY_* variable for an on/off flag."""
    value = raw.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(f"not an on/off value: {raw!r}")
    return value in ("1", "true", "yes", "on")


def register_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``blindrelay serve``: run a relay; every flag has a BLINDRELAY_* variable."""
    parser = subparsers.add_parser(
        "serve",
        help="run a relay",
        description=(
            "Run a blindrelay relay. It prints 'listening ws://HOST:PORT' on stdout once "
            "it accepts connections, logs JSON lines on stderr, and stops cleanly on "
            "SIGINT/SIGTERM. Every flag can also be set as BLINDRELAY_<FLAG> "
            "(e.g. BLINDRELAY_PORT, BLINDRELAY_QUEUE_CAP). What each limit trades off: "
            "protocol/SPEC.md §10 and docs/operations.md."
        ),
    )
    defaults = RelayConfig()
    docs = _field_docs()
    for field in fields(RelayConfig):
        default = getattr(defaults, field.name)
        convert: Callable[[str], Any] = {
            "int": int, "float": float, "str": str, "Path": Path, "bool": bool,
        }[field.type if isinstance(field.type, str) else field.type.__name__]  # fmt: skip
        kwargs: dict[str, Any] = {"type": convert, "metavar": _flag(field.name).upper()}
        if field.name == "synchronous":
            kwargs["choices"] = SYNCHRONOUS_MODES
            kwargs["type"] = convert = str.upper
        if convert is bool:  # --require-invites / --no-require-invites
            kwargs = {"action": argparse.BooleanOptionalAction}
            convert = _parse_bool
        parser.add_argument(
            "--" + _flag(field.name).replace("_", "-"),
            dest=field.name,
            default=_env_default(field.name, default, convert),
            help=_flag_help(field.name, default, docs),
            **kwargs,
        )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO").upper(),
        choices=LOG_LEVELS,
        type=str.upper,
        help=f"how much the JSON log on stderr says; env {ENV_PREFIX}LOG_LEVEL (default: INFO)",
    )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from .logs import configure_logging
    from .store import StoreStartError, UnsupportedStore, check_store_url

    for value in vars(args).values():
        if isinstance(value, _BadVariable):
            raise UsageError(f"blindrelay serve: {value.problem}")
    if args.log_level not in LOG_LEVELS:
        raise UsageError(
            f"blindrelay serve: log level {args.log_level!r} (--log-level or "
            f"{ENV_PREFIX}LOG_LEVEL) must be one of {', '.join(LOG_LEVELS)}"
        )
    try:
        config = RelayConfig(**{f.name: getattr(args, f.name) for f in fields(RelayConfig)})
        check_store_url(config.store_url)
    except (ValueError, UnsupportedStore) as exc:
        raise UsageError(f"blindrelay serve: {_flags_named(str(exc))}") from None
    configure_logging(args.log_level)
    try:
        return asyncio.run(_run_until_signalled(config))
    except OSError as exc:
        print(f"blindrelay serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except StoreStartError as exc:
        print(f"blindrelay serve: cannot open the database: {exc}", file=sys.stderr)
        return 1


async def _run_until_signalled(config: RelayConfig) -> int:
    from . import gcpolicy
    from .logs import log_event
    from .relay import serve

    relay = await serve(config)
    # Everything imported and the relay listening: what is alive now lives as long
    # as the process (gcpolicy). The SQLite writer process applies the same policy itself.
    frozen = gcpolicy.apply(config.gc_threshold)
    log_event(logging.INFO, "gc_policy", role="relay", threshold=config.gc_threshold, frozen=frozen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening {relay.url}", flush=True)
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(relay.failed.wait())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()
    await relay.close()
    if relay.failed.is_set():
        print(f"blindrelay serve: {relay.failure}; stopping", file=sys.stderr)
        return 1
    return 0


# --- inspect --------------------------------------------------------------------


def register_inspect(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``blindrelay inspect``: print what a relay's store holds (no plaintext to see)."""
    parser = subparsers.add_parser(
        "inspect",
        help="show what a relay database holds",
        description=(
            "Print every table of a relay database with its row count, the accounts, "
            "and queued envelopes as metadata plus a short hex prefix of their "
            "ciphertext."
        ),
    )
    add_store_arguments(parser)
    parser.add_argument("--limit", type=int, default=50, help="rows listed per table")
    parser.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from .store import StoreError, inspect_store

    try:
        for line in inspect_store(store_url(args), args.limit):
            print(line)
    except (StoreError, ValueError) as exc:
        print(f"blindrelay inspect: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    # The commands' entry points import this module by its name: run that copy, so the
    # error boundary and the commands share one UsageError (not __main__'s twin).
    from blindrelay.server.cli import main as installed_main

    sys.exit(installed_main())
