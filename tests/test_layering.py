"""The architecture rules, checked by reading imports (no module is executed).

- ``protocol`` is sans-I/O: it imports only the standard library (minus I/O
  modules), msgpack and nacl.
- ``server`` and ``client`` import ``protocol`` and never each other.
- The relay's handlers and I/O do not know which store back end they talk to:
  nothing they import when loaded — directly or through other server modules —
  is SQLite (``sqlite3``, ``sqlite_utils``) or a back end's package
  (``server/store/<back end>/``). Back ends are loaded only by the factory
  (``store.open_store``), inside the function, once a URL has chosen one.
- A back end's package imports no other back end's.
- No module of the tests imports a test module (``test_*.py``): what tests share
  lives in helper modules and conftests.
- Outside ``protocol``, frames are imported from ``protocol.frames`` and the connection's
  rules from ``protocol.connection``, never from the modules those are split into.
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


class _Imports(ast.NodeVisitor):
    """Absolute names of the modules a file imports (relative imports resolved against
    ``package``); with ``functions`` False, only those imported when it is loaded —
    not what function bodies import, run later if ever (the factory's choice of back
    end lives there); with ``typing`` False, not those under ``if TYPE_CHECKING:``."""

    def __init__(self, package: str, *, functions: bool = False, typing: bool = True) -> None:
        self.package = package
        self.functions = functions
        self.typing = typing
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if not self.typing and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if self.functions:
            self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        if self.functions:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            base = node.module or ""
        else:
            parts = self.package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        self.found.add(base)
        # ``from . import auth`` imports a module; ``from .x import name`` may too.
        self.found.update(f"{base}.{alias.name}" for alias in node.names)


SERVER_PACKAGE = "blindrelay.server"


def server_module_file(name: str) -> Path | None:
    """The file of a ``blindrelay.server`` module or package, if it is one."""
    if name != SERVER_PACKAGE and not name.startswith(SERVER_PACKAGE + "."):
        return None
    relative = name.removeprefix(SERVER_PACKAGE).strip(".").replace(".", "/")
    folder = ROOT / "server" / relative
    for candidate in (folder.with_suffix(".py"), folder / "__init__.py"):
        if relative and candidate.is_file():
            return candidate
    return ROOT / "server" / "__init__.py" if not relative else None


def loaded_with(module: str, *, typing: bool = True) -> set[str]:
    """Every module name loading ``module`` imports, following server modules (and
    the packages around them, which Python loads first); with ``typing``, also those
    imported for type checking only."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = server_module_file(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        visitor = _Imports(package, typing=typing)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        parents = [name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)]
        todo.extend(visitor.found | set(parents))
    return seen


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


STORE_BLIND = ["auth", "delivery", "directory", "statements", "business", "dispatch",
               "context", "relay"]  # fmt: skip
"""The relay's handlers, their context and its I/O: they talk to a ``store.Store``."""

BACK_ENDS = sorted(
    path.name for path in (ROOT / "server" / "store").iterdir() if (path / "__init__.py").is_file()
)


def _backend_specific(name: str) -> bool:
    top = name.split(".")[0]
    backend = any(name.startswith(f"{SERVER_PACKAGE}.store.{b}") for b in BACK_ENDS)
    return top in ("sqlite3", "sqlite_utils") or backend


@pytest.mark.parametrize("module", STORE_BLIND)
def test_handlers_load_no_store_back_end(module: str) -> None:
    loaded = loaded_with(f"{SERVER_PACKAGE}.{module}")
    assert f"{SERVER_PACKAGE}.store" in loaded or module == "dispatch"
    assert sorted(name for name in loaded if _backend_specific(name)) == []


@pytest.mark.parametrize("backend", BACK_ENDS)
def test_a_back_end_imports_no_other_back_end(backend: str) -> None:
    others = [b for b in BACK_ENDS if b != backend]
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "server" / "store" / backend).rglob("*.py")
        for name in _all_imports(path, f"{SERVER_PACKAGE}.store.{backend}")
        if any(name.startswith(f"{SERVER_PACKAGE}.store.{other}") for other in others)
    ]
    assert offenders == []


def _all_imports(path: Path, package: str) -> set[str]:
    visitor = _Imports(package, functions=True)
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    return visitor.found


def test_the_store_blindness_check_sees_a_back_end_import() -> None:
    """The check above can fail: a handler importing the SQLite back end, directly or
    through a server module, is caught; the factory's import inside a function is not."""
    visitor = _Imports(SERVER_PACKAGE)
    visitor.visit(ast.parse(
        "from .store.sqlite.tables import Tables\n"
        "def f():\n    from .store.sqlite import store\n"
    ))  # fmt: skip
    assert f"{SERVER_PACKAGE}.store.sqlite.tables" in visitor.found
    assert not any(name.endswith(".store.sqlite.store") for name in visitor.found)
    assert _backend_specific(f"{SERVER_PACKAGE}.store.sqlite.tables")
    assert "sqlite_utils" in loaded_with(f"{SERVER_PACKAGE}.store.sqlite.tables")
    assert not any(_backend_specific(n) for n in loaded_with(f"{SERVER_PACKAGE}.store"))


@pytest.mark.parametrize("module", ["store.rules", "store.records", "store.operations"])
def test_the_rules_and_records_a_back_end_shares_are_pure(module: str) -> None:
    """What every back end reuses does no I/O and loads no back end: state in, values out."""
    assert sorted(n for n in loaded_with(f"{SERVER_PACKAGE}.{module}") if _backend_specific(n)) == []
    loaded = loaded_with(f"{SERVER_PACKAGE}.{module}", typing=False)
    assert sorted(name for name in loaded if name.split(".")[0] in IO_MODULES) == []


def test_only_the_factory_imports_a_back_end() -> None:
    """Outside a back end's own package, only ``store.open_store`` and its siblings (in
    ``store/__init__.py``, inside the functions) import it: admin, inspect and the CLI
    go through the factory too."""
    factory = ROOT / "server" / "store" / "__init__.py"
    offenders = []
    for path in python_files("server"):
        relative = path.relative_to(ROOT / "server")
        if path == factory or (relative.parts[0] == "store" and relative.parts[1] in BACK_ENDS):
            continue
        package = ".".join([SERVER_PACKAGE, *relative.parent.parts])
        offenders += [
            f"{relative}: {name}"
            for name in _all_imports(path, package)
            if any(name.startswith(f"{SERVER_PACKAGE}.store.{b}") for b in BACK_ENDS)
        ]
    assert offenders == []


PACKAGES = {"protocol": "blindrelay.protocol", "server": "blindrelay.server",
            "client": "blindrelay.client"}  # fmt: skip


def module_files() -> dict[str, Path]:
    """Every module of the three packages, by its absolute name."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in python_files(folder):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]  # fmt: skip
            modules[".".join([package, *parts])] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project modules it imports when loaded, type-checking imports
    included (a cycle only the type checker sees still ties two modules together)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        visitor = _Imports(package)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = {m for m in visitor.found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_form_a_cycle() -> None:
    assert cycles(import_graph(module_files())) == []


def test_the_cycle_check_sees_a_typing_only_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from .b import B\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
    )
    modules = {"blindrelay.x.a": tmp_path / "a.py", "blindrelay.x.b": tmp_path / "b.py"}
    assert cycles(import_graph(modules)) == [["blindrelay.x.a", "blindrelay.x.b"]]


def test_the_operator_commands_do_not_import_the_relays_command_line() -> None:
    """``admin`` and ``cli`` are two entry points; what both need lives beside them."""
    graph = import_graph(module_files())
    assert f"{SERVER_PACKAGE}.cli" not in graph[f"{SERVER_PACKAGE}.admin"]


TESTS_PACKAGE = "tests"


def is_test_module(name: str) -> bool:
    """Whether ``name`` is a module of the tests that pytest collects (``test_*.py``)."""
    if not name.startswith(TESTS_PACKAGE + "."):
        return False
    path = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    return path.is_file() and path.name.startswith("test_")


def imported_test_modules(path: Path, package: str) -> set[str]:
    """The test modules ``path`` (of ``package``) imports, function bodies included."""
    visitor = _Imports(package, functions=True)
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    return {name for name in visitor.found if is_test_module(name)}


def test_no_test_module_is_imported_by_another_module_of_the_tests() -> None:
    """What tests share lives in helper modules and conftests (tests/relays.py,
    tests/client/harness.py, tests/protocol/pair.py …): a test module imported by
    another one ties unrelated tests together and hides where a helper lives."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files(TESTS_PACKAGE)
        for name in sorted(
            imported_test_modules(path, ".".join(path.relative_to(ROOT).parent.parts))
        )
    ]
    assert offenders == []


def test_the_test_import_check_sees_every_way_of_importing_a_test_module(tmp_path: Path) -> None:
    bad = tmp_path / "helper.py"
    bad.write_text(
        "from .test_sdk import relay_at\n"
        "from . import test_statements\n"
        "import tests.server.test_auth\n"
        "def later():\n    from ..protocol.test_pow import TINY\n"
        "from .harness import online\nfrom ..relays import FakeClock\nfrom . import conftest\n"
    )
    assert imported_test_modules(bad, "tests.client") == {
        "tests.client.test_sdk", "tests.client.test_statements", "tests.server.test_auth",
        "tests.protocol.test_pow",
    }  # fmt: skip


def protocol_internals() -> set[str]:
    """Modules ``frames`` and ``connection`` are split into (by frame family; the rules
    as data): read through those two, the import places, so that a split can move a
    name again without touching the code that uses it."""
    return {
        name
        for name in module_files()
        if name.startswith("blindrelay.protocol.frames_")
        or name == "blindrelay.protocol.connection_rules"
    }


def internal_imports(path: Path, package: str, internals: set[str]) -> set[str]:
    visitor = _Imports(package, functions=True)
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    return visitor.found & internals


def test_frames_and_connection_are_the_import_places_outside_protocol() -> None:
    internals = protocol_internals()
    assert {"blindrelay.protocol.frames_base", "blindrelay.protocol.connection_rules"} <= internals
    outside = {f: p for f, p in PACKAGES.items() if f != "protocol"} | {
        "tests": "tests",
        "bench": "bench",
    }
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for folder, package in outside.items()
        for path in python_files(folder)
        for name in sorted(
            internal_imports(
                path, ".".join([package, *path.relative_to(ROOT / folder).parent.parts]), internals
            )
        )
    ]
    assert offenders == []


def test_the_import_place_check_sees_both_ways_of_importing_an_internal(tmp_path: Path) -> None:
    bad = tmp_path / "user.py"
    bad.write_text(
        "from blindrelay.protocol.frames_auth import Login\n"
        "def later():\n    from blindrelay.protocol import connection_rules\n"
        "from blindrelay.protocol.frames import Login as Fine\n"
    )
    assert internal_imports(bad, "blindrelay.server", protocol_internals()) == {
        "blindrelay.protocol.frames_auth",
        "blindrelay.protocol.connection_rules",
    }
