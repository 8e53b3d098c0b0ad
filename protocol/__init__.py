"""blindrelay wire protocol, sans I/O.

This package is the single source of truth for what crosses the wire: frame
classes (:mod:`.frames`), their strict msgpack encoding (:mod:`.codec`), the
error tree with wire codes (:mod:`.errors`), every numeric limit
(:mod:`.limits`), the per-connection state machine (:mod:`.connection`), and the
cryptographic constructions (:mod:`.crypto`). The normative text is ``SPEC.md``
beside this file.

It imports only the standard library, msgpack and PyNaCl: no asyncio, sockets,
databases or websockets. Time and randomness are always parameters.
"""


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata when first asked for:
    importing ``importlib.metadata`` costs ~30 ms, which every process would pay at
    start (the relay's writer process among them: the test suite starts ~900)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blindrelay")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


PROTOCOL_VERSION = 2
"""Wire protocol major version (SPEC §12)."""

SUBPROTOCOL = "blindrelay.v2"
"""WebSocket subprotocol token negotiated at the handshake (SPEC §1.1)."""
