"""Every seed and reproducer of tests/fuzz/corpus/ through its target, without atheris.

Why: a finding's reproducer stays a failing test if its fix is ever undone, and the
seeds keep each target working. Fast and deterministic (docs/fuzzing.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .targets import TARGETS, corpus_files

FILES = list(corpus_files())


@pytest.mark.parametrize(("target", "path"), FILES, ids=[f"{t}/{p.name}" for t, p in FILES])
def test_corpus_file(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_every_target_has_seeds() -> None:
    assert {target for target, _ in FILES} == set(TARGETS)
