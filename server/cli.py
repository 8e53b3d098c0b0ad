"""The ``blindrelay`` command: a dispatcher over registered subcommands.

Subcommands are found through the ``blindrelay.commands`` entry-point group,
so the server and the client each register their own (``serve``, ``chat`` …)
without either importing the other. An entry point names a callable that takes
the argparse sub-parsers object and adds one parser whose ``func`` default runs
the command and returns an exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from blindrelay.protocol import PROTOCOL_VERSION, __version__

COMMAND_GROUP = "blindrelay.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        ep.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    status: int = func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
