"""The deterministic RNG of SPEC §13.10 for tests: SHAKE-256(label || u64 BE counter).

Same construction as protocol/vectors/crypto/generate.py uses for the frozen
transcripts, so a test can replay any of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable


def stream(label: bytes) -> Callable[[int], bytes]:
    counter = 0

    def rng(size: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(label + counter.to_bytes(8, "big")).digest(size)

    return rng
