"""The atheris side of every ``fuzz_<target>.py``: instrument the protocol, then fuzz.

Why one module: the harnesses differ only in the target's name. The protocol is
imported under ``atheris.instrument_imports`` so that libFuzzer sees its branches;
the targets themselves live in :mod:`.targets` (no atheris), which the corpus test
replays. Run from the repository root (docs/fuzzing.md), e.g.::

    .venv/bin/python tests/fuzz/fuzz_codec.py /tmp/work tests/fuzz/corpus/codec \
        -max_total_time=300

libFuzzer writes new inputs to the first folder: keep it out of the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]


def main(name: str) -> None:
    """Fuzz the target ``name`` with the command line's libFuzzer flags and folders."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["blindrelay.protocol", "tests.fuzz.targets"]):
        from tests.fuzz.targets import TARGETS
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()
