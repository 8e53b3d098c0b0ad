"""What a built wheel holds: every package of the source tree (issue 14 found
``blindrelay.server.store.postgresql`` missing from the list, so ``pip install
blindrelay[postgresql]`` gave a relay that could not open its PostgreSQL store).

setuptools cannot discover packages under a ``package-dir`` mapping of three separate
folders, so pyproject.toml lists them; this keeps the list equal to the folders.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def listed() -> tuple[set[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(config["packages"]), config["package-dir"]


DATA_ROOT = "vectors"
"""The test vectors' folders (``protocol/vectors/…``): data, listed as packages too, since
setuptools warns about a data folder whose name could be imported and is not listed."""


def on_disk(package_dir: dict[str, str], tree: Path = ROOT) -> set[str]:
    """Every folder with an ``__init__.py`` under a mapped root, and every folder of the
    test vectors, as a package name."""
    found = set()
    roots = {(tree / folder).resolve() for folder in package_dir.values()}
    for package, folder in package_dir.items():
        root = tree / folder
        for init in root.rglob("__init__.py"):
            if init.parent.resolve() in roots and init.parent != root:
                continue  # another package's own root (server/root is ``blindrelay``)
            parts = init.parent.relative_to(root).parts
            found.add(".".join([package, *parts]))
        data = root / DATA_ROOT
        if package == "blindrelay.protocol" and data.is_dir():
            for sub in [data, *(p for p in data.rglob("*") if p.is_dir())]:
                if "__pycache__" not in sub.parts:
                    found.add(".".join([package, *sub.relative_to(root).parts]))
    return found


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    packages, package_dir = listed()
    assert sorted(on_disk(package_dir) - packages) == []  # would be left out of the wheel
    assert sorted(packages - on_disk(package_dir)) == []  # would fail the build


def test_the_check_sees_a_nested_package(tmp_path: Path) -> None:
    for folder in ("server", "server/store", "server/store/new", "server/data"):
        (tmp_path / folder).mkdir()
        if folder != "server/data":
            (tmp_path / folder / "__init__.py").write_text("")
    assert on_disk({"x.server": "server"}, tmp_path) == {
        "x.server", "x.server.store", "x.server.store.new"
    }


def test_python_dash_m_blindrelay_is_the_command_and_the_version_is_the_installed_one(
    tmp_path: Path,
) -> None:
    """Issue 18: ``python -m blindrelay`` works from any directory; ``blindrelay.__version__``
    is the distribution's version, and importing the client brings in no server module."""
    import subprocess
    import sys
    from importlib.metadata import version

    import blindrelay

    assert blindrelay.__version__ == version("blindrelay")
    done = subprocess.run(
        [sys.executable, "-m", "blindrelay", "--version"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith(f"blindrelay {blindrelay.__version__}")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, blindrelay.client.sdk; "
         "print(sorted(m for m in sys.modules if m.startswith('blindrelay.server')))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]"


def test_a_hung_test_fails_alone_within_the_per_test_limit(pytestconfig: pytest.Config) -> None:
    """CI has a hard limit for the whole run; a test that loops for ever must fail by
    itself, with its stack, long before it (pyproject's ``timeout``)."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    limit = float(pytestconfig.getini("timeout"))
    assert 60 < limit <= 300
