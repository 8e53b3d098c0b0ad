"""The options that name a relay's store, shared by ``serve``/``inspect`` (``cli``) and
the operator's ``admin`` commands, so neither entry point imports the other.

Not owned here: opening the store (``store.open_store``, ``store.open_admin_store``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .config import DEFAULT_DB

ENV_PREFIX = "BLINDRELAY_"
"""Every flag of ``blindrelay`` has a variable: this prefix and the flag's name."""

STORE_HELP = (
    "where the relay keeps its data: sqlite:///ABSOLUTE/PATH, sqlite:RELATIVE/PATH or a "
    "file path (the embedded SQLite store); default: the --db file"
)
DB_HELP = f"SQLite database file, shorthand for --store sqlite:PATH (default: {DEFAULT_DB})"


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--store`` and ``--db`` (and their BLINDRELAY_* variables), as ``serve`` has them,
    for the operator's commands."""
    parser.add_argument(
        "--store", default=os.environ.get(ENV_PREFIX + "STORE", ""), help=STORE_HELP
    )
    parser.add_argument(
        "--db", type=Path, default=Path(os.environ.get(ENV_PREFIX + "DB", str(DEFAULT_DB))),
        help=DB_HELP,
    )  # fmt: skip


def store_url(args: argparse.Namespace) -> str:
    """The store :func:`add_store_arguments` named; ValueError when given both."""
    if args.store and args.db != DEFAULT_DB:
        raise ValueError("give --store or --db, not both (--db PATH is the SQLite shorthand)")
    return str(args.store or args.db)
