"""The client's ``blindrelay`` subcommands: ``demo`` and ``chat``.

Registered through the ``blindrelay.commands`` entry-point group (see
``blindrelay.server.cli``), so the client never imports the server; each
command's module is imported only when it runs.

Not here: what the commands do (``demo``, ``chat``).
"""

from __future__ import annotations

import argparse
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
