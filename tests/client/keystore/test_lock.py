"""One open store per key store file (client/keystore/lock.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    KeyStoreInUse,
)

from .files import open_sqlite


def test_a_store_file_is_owned_by_one_open_store_at_a_time(tmp_path: Path) -> None:
    """Rows are kept decrypted in memory: nothing else may write the file meanwhile."""
    import subprocess
    import sys

    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.store_session("bob", b"s1")
    with pytest.raises(KeyStoreInUse):
        open_sqlite(path)
    other = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from blindrelay.client.keystore import KeyStoreInUse, SqliteKeyStore\n"
         "try:\n    SqliteKeyStore.open(sys.argv[1], 'x')\n"
         "except KeyStoreInUse:\n    sys.exit(3)\n", str(path)],
        check=False,
    )  # fmt: skip
    assert other.returncode == 3
    assert store.load_session("bob") == b"s1"  # the refused opens changed nothing
    store.close()
    with open_sqlite(path) as again:
        assert again.load_session("bob") == b"s1"
