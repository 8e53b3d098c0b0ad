"""blindrelay: the package root, so that ``python -m blindrelay`` runs the ``blindrelay``
command and ``blindrelay.__version__`` names the installed version.

It lives in ``server/root/`` (mapped to ``blindrelay`` in pyproject.toml) because the
top level of the tree is fixed (protocol/, server/, client/); it imports nothing, so
importing ``blindrelay.client`` or ``blindrelay.protocol`` brings in no server code.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blindrelay")
except PackageNotFoundError:  # pragma: no cover - a checkout that is not installed
    __version__ = "0.0.0"
