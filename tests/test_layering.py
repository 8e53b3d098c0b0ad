"""The architecture rules, checked by reading imports (no module is executed).

- ``protocol`` is sans-I/O: it imports only the standard library (minus I/O
  modules), msgpack and nacl.
- ``server`` and ``client`` import ``protocol`` and never each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IO_MODULES = {
    "asyncio", "socket", "ssl", "selectors", "select", "sqlite3", "sqlite_utils",
    "websockets", "http", "urllib", "subprocess", "threading", "multiprocessing",
    "signal", "logging",
}
PROTOCOL_THIRD_PARTY = {"msgpack", "nacl"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("protocol"), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_module_does_no_io(path: Path) -> None:
    import sys

    stdlib = sys.stdlib_module_names
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in IO_MODULES, f"{path.name} imports I/O module {name}"
        if top == "blindrelay":
            assert name.startswith("blindrelay.protocol"), f"{path.name} imports {name}"
            continue
        assert top in stdlib or top in PROTOCOL_THIRD_PARTY, f"{path.name} imports {name}"


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("server", "blindrelay.client"), ("client", "blindrelay.server")]
)
def test_server_and_client_never_import_each_other(folder: str, forbidden: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files(folder)
        for name in imported_modules(path)
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert offenders == []


def test_layering_check_sees_an_offending_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom blindrelay.server import relay\n")
    assert imported_modules(bad) == {"asyncio", "blindrelay.server"}
