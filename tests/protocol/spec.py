"""SPEC.md read by tests: its text, a numbered section, the rows of a table.

Shared by the tests that keep the spec's tables and the code equal
(test_spec.py, test_consent.py, test_spec_fields.py).
"""

from __future__ import annotations

import re
from pathlib import Path

SPEC = (Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md").read_text()


def section(number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", SPEC, re.M | re.S)
    assert match, f"SPEC has no section {number}"
    return match.group(0)


def table_rows(text: str, first_column: str) -> list[list[str]]:
    """Rows of the markdown table whose header starts with ``first_column``."""
    rows: list[list[str]] = []
    in_table = False
    lines = text.splitlines()
    for n, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        header = n + 1 < len(lines) and lines[n + 1].startswith("|--")
        if line.startswith("|") and cells[0] == first_column and header and not in_table:
            in_table = True
            continue
        if in_table and line.startswith("|"):
            if set(cells[0]) <= {"-"}:
                continue
            rows.append(cells)
        elif in_table:
            break
    return rows
