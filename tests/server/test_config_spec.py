"""SPEC §10 marks *default* exactly the limits a relay's configuration sets."""

from __future__ import annotations

import ast
import inspect

from blindrelay.server.config import RelayConfig

from ..protocol.spec import section, table_rows


def configured_limits() -> set[str]:
    """The ``limits.NAME`` that a :class:`RelayConfig` field takes as its default."""
    tree = ast.parse(inspect.getsource(RelayConfig))
    return {
        node.value.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "limits"
    }


def test_the_limits_marked_default_are_those_the_relay_configuration_sets() -> None:
    """A limit the operator can change is not "fixed by the protocol version": a
    client or another relay must not rely on its value."""
    rows = table_rows(section(10), "name")
    marked = {row[0] for row in rows if "*default*" in row[2]}
    assert marked == configured_limits()
