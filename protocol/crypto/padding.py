"""Plaintext padding to size buckets, so the relay cannot read lengths (SPEC §13.5).

Before encryption a plaintext is padded ISO/IEC 7816-4 style: one 0x80 byte,
then zero bytes up to the smallest bucket that fits. Removal is unambiguous:
strip trailing zeros, then exactly one 0x80 must remain at the end. A padded
plaintext is never empty and always a bucket size, so the AEAD ciphertext length
reveals only the bucket.

Buckets are powers of two from 256 bytes to 32 KiB: one bucket covers nearly
every chat message, and each larger bucket wastes at most half its size. The
largest bucket plus the envelope overhead (SPEC §13.6) stays under
``MAX_CIPHERTEXT_BYTES``; a test checks it.

Not owned here: compression (never: it would leak content through length).
"""

from __future__ import annotations

from blindrelay.protocol.errors import DecryptionFailed, PlaintextTooLarge

BUCKETS: tuple[int, ...] = tuple(256 << i for i in range(8))
"""Padded sizes: 256, 512, 1024, 2048, 4096, 8192, 16384, 32768 bytes."""

MAX_PLAINTEXT_BYTES = BUCKETS[-1] - 1
"""Largest plaintext: the largest bucket minus the mandatory 0x80 byte."""

_BUCKET_SET = frozenset(BUCKETS)
_ZEROS = bytes(BUCKETS[-1])


def padded_size(length: int) -> int:
    """The bucket a plaintext of ``length`` bytes is padded to."""
    for bucket in BUCKETS:
        if length < bucket:
            return bucket
    raise PlaintextTooLarge(f"plaintext of {length} bytes exceeds {MAX_PLAINTEXT_BYTES}")


def pad(plaintext: bytes) -> bytes:
    """Append 0x80 and zeros up to the bucket size (ISO/IEC 7816-4)."""
    size = padded_size(len(plaintext))
    return plaintext + b"\x80" + bytes(size - len(plaintext) - 1)


def unpad(padded: bytes) -> bytes:
    """Remove padding; a malformed pad (a peer bug or forgery) is DecryptionFailed.

    Only bucket sizes are accepted, so a peer cannot smuggle length information
    past the buckets either. Same rule as "strip trailing zeros, then exactly one
    0x80 must remain at the end", found from the right with ``rfind`` (memrchr)
    and one comparison instead of a byte-by-byte strip.
    """
    size = len(padded)
    if size not in _BUCKET_SET:
        raise DecryptionFailed(f"padded plaintext of {size} bytes is not a bucket size")
    marker = padded.rfind(b"\x80")
    if marker < 0 or padded[marker + 1 :] != _ZEROS[: size - marker - 1]:
        raise DecryptionFailed("padding marker missing")
    return padded[:marker]
