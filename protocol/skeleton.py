"""Confusable skeletons of handles: when two handles look alike (SPEC §3.2).

Handles are ASCII (``[a-z0-9._-]``), so no Cyrillic ``а`` can pose as ``a``;
but ASCII has lookalikes of its own — ``air1ine``, ``ai.rline``, ``rnicrosoft``.
Unicode TR39 §4 answers "do these strings look alike?" with a *skeleton*: map
every character to a prototype of its confusable class and compare. This
module does the same, restricted to the handle alphabet:

- punctuation (``.``, ``-``, ``_``) is removed: ``air.line`` reads as ``airline``;
- each character of :data:`CONFUSABLES` is replaced by its prototype.

The map takes TR39's ``confusables.txt`` entries that stay inside lower-case
ASCII letters and digits (0 → o, 1 → l, m → rn) and adds pairs that are as
hard to tell apart in the sans-serif fonts handles are shown in (i → l, w → vv,
d → cl). A prototype never contains a character the map replaces, so mapping
is one pass, character by character, and a skeleton is its own skeleton. The
direction (``m`` → ``rn``, not ``rn`` → ``m``) follows TR39: expanding to the
longer form makes ``vw``, ``wv`` and ``vvv`` one skeleton, which a left-to-right
contraction of ``vv`` could not.

Deliberately left out, because they are told apart at a glance in lower case
or only in some fonts: 5/s, 2/z, 8/b, 6/b, 9/g, q/g, u/v, n/h. Every pair
added refuses more honest handles (only ones that look like a business's,
SPEC §3.2), every pair left out is a lookalike the badge must catch.

Not here: which skeletons are refused (the relay's registration, SPEC §3.2).
"""

from __future__ import annotations

import re

CONFUSABLES: dict[str, str] = {
    "0": "o",  # TR39: DIGIT ZERO → LATIN CAPITAL LETTER O (lower-cased)
    "1": "l",  # TR39: DIGIT ONE → LATIN SMALL LETTER L
    "i": "l",  # TR39 maps capital I → l; lower-case i differs only by its dot
    "m": "rn",  # TR39: LATIN SMALL LETTER M → r, n
    "w": "vv",  # "vvalmart": two v's kerned together
    "d": "cl",  # "clisney": c and l kerned together
}
"""Character → prototype (SPEC §3.2). Keys and values use only ``[a-z0-9]``."""

_TABLE = str.maketrans({**CONFUSABLES, ".": "", "-": "", "_": ""})
_PUNCTUATION = re.compile(r"[._-]")


def skeleton(handle: str) -> str:
    """The handle with punctuation removed and every confusable replaced (SPEC §3.2)."""
    return handle.translate(_TABLE)


def leading_skeletons(handle: str) -> tuple[str, ...]:
    """Skeletons of the runs of whole labels that start the handle, shortest first.

    Labels are what punctuation separates: ``air.france-help`` has the runs
    ``air``, ``air.france`` and ``air.france-help``. The last item is the skeleton
    of the whole handle. SPEC §3.2 refuses a handle when any of them is a
    business's skeleton, so ``airline.com`` and ``airline-support`` cannot stand
    next to the business ``airline``.
    """
    ends = [match.start() for match in _PUNCTUATION.finditer(handle)] + [len(handle)]
    return tuple(skeleton(handle[:end]) for end in ends)
