"""blindrelay: the package root, so that ``python -m blindrelay`` runs the ``blindrelay``
command and ``blindrelay.__version__`` names the installed version.

It lives in ``server/root/`` (mapped to ``blindrelay`` in pyproject.toml) because the
top level of the tree is fixed (protocol/, server/, client/); it imports nothing, so
importing ``blindrelay.client`` or ``blindrelay.protocol`` brings in no server code.
"""


def __getattr__(name: str) -> str:
    """``__version__`` is the protocol package's, looked up only when asked for."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from blindrelay.protocol import __version__

    return __version__
