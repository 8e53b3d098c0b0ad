"""The examples of docs/sdk.md, run against an in-process relay so they cannot go stale.

Every ```python block of the document runs, in order, section by section (a
section is what follows a ``## `` heading). Blocks of one section share a
namespace, so one can import what the next uses; a block that defines a new
``async def main(...)`` has it awaited at once, with the arguments its
parameters name (:data:`OFFERED`): the relay's URL, a directory for profiles,
and, only when asked for, a second relay or the relay's database. One fresh
relay per section, so every section may register "alice" again.

A block that raises, or whose ``main`` raises, fails its section's test with
the original error; its traceback points at the line of docs/sdk.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blindrelay.server.relay import RunningRelay

from ..relays import relay_at

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
EXAMPLE_TIMEOUT_S = 30.0
"""For one ``main``: a few clients and dozens of round trips on loopback, plus an
Argon2 derivation or two at the document's (default) costs, on a shared machine."""

OFFERED = {
    "url": "the relay's URL (ws://127.0.0.1:<port>)",
    "data_dir": "an empty directory for profile files",
    "relay_db": "the relay's SQLite database, for the operator's commands",
    "other_url": "a second relay with a key of its own",
}
"""What a ``main`` may ask for, by parameter name (docs/sdk.md, "How to read the examples")."""


@dataclass(frozen=True, slots=True)
class Example:
    """One ```python block: its code, and the line of the document where the code starts."""

    line: int
    source: str


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    examples: tuple[Example, ...]


_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")


def sections(markdown: str) -> list[Section]:
    """The document's sections, each with its ```python blocks in order.

    Text before the first ``## `` heading is a section too; a ``## `` inside a
    fence is code, not a heading.
    """
    found: list[Section] = []
    title, examples = "(before the first heading)", list[Example]()
    fence: tuple[str, int, list[str]] | None = None  # language, first code line, lines
    for number, line in enumerate(markdown.splitlines(), start=1):
        if fence is not None:
            if line.strip() == "```":
                language, first, lines = fence
                if language == "python":
                    examples.append(Example(first, textwrap.dedent("\n".join(lines))))
                fence = None
            else:
                fence[2].append(line)
            continue
        opening = _FENCE.match(line)
        if opening is not None:
            fence = (opening.group(2), number + 1, [])
        elif line.startswith("## "):
            found.append(Section(title, tuple(examples)))
            title, examples = line[3:].strip(), []
    if fence is not None:
        raise ValueError(f"a code fence opened at line {fence[1] - 1} is never closed")
    found.append(Section(title, tuple(examples)))
    return found


Provide = Callable[[str], Awaitable[Any]]
"""The value of an offered argument, by name, made when first asked for."""


async def run_section(section: Section, provide: Provide, filename: str = str(DOC)) -> None:
    """Run ``section``'s blocks in one namespace, awaiting each new ``main``.

    An error keeps its type and gains a note naming the block; compiled with
    ``filename`` and the block's line, its traceback shows the document's lines.
    """
    namespace: dict[str, Any] = {"__name__": "sdk_md"}
    for example in section.examples:
        try:
            # Padded so that line numbers in tracebacks are the document's own.
            code = compile("\n" * (example.line - 1) + example.source, filename, "exec")
            before = namespace.get("main")
            exec(code, namespace)  # the project's own document, never anything from the wire
            main = namespace.get("main")
            if main is not None and main is not before:
                if not inspect.iscoroutinefunction(main):
                    raise TypeError("main must be an async def")
                arguments = {
                    name: await provide(name) for name in inspect.signature(main).parameters
                }
                await asyncio.wait_for(main(**arguments), EXAMPLE_TIMEOUT_S)
        except BaseException as exc:
            exc.add_note(f"in the example at {filename}:{example.line} ({section.title})")
            raise


@contextlib.asynccontextmanager
async def offered(tmp_path: Path) -> AsyncIterator[Provide]:
    """:data:`OFFERED`, each made on first use and closed when the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        made: dict[str, Any] = {}
        relays: dict[str, RunningRelay] = {}

        async def relay(name: str) -> RunningRelay:
            if name not in relays:
                (tmp_path / name).mkdir()
                relays[name] = await stack.enter_async_context(relay_at(tmp_path / name))
            return relays[name]

        async def make(name: str) -> Any:
            if name == "url":
                return (await relay("relay")).url
            if name == "relay_db":
                return (await relay("relay")).config.db_path
            if name == "other_url":
                return (await relay("other")).url
            assert name == "data_dir"
            (tmp_path / "data").mkdir()
            return tmp_path / "data"

        async def provide(name: str) -> Any:
            if name not in OFFERED:
                raise TypeError(f"an example asks for {name!r}; offered are {', '.join(OFFERED)}")
            if name not in made:
                made[name] = await make(name)
            return made[name]

        yield provide


# --- the document ----------------------------------------------------------------------


def documented() -> list[Section]:
    return [section for section in sections(DOC.read_text()) if section.examples]


@pytest.mark.parametrize("section", documented(), ids=lambda section: section.title)
async def test_every_example_in_the_section_runs(section: Section, tmp_path: Path) -> None:
    async with offered(tmp_path) as provide:
        await run_section(section, provide)


def test_every_python_block_of_the_document_is_run() -> None:
    text = DOC.read_text()
    opened = sum(1 for line in text.splitlines() if re.match(r"\s*```python\s*$", line))
    assert opened > 0
    assert sum(len(section.examples) for section in documented()) == opened


# --- the harness itself ----------------------------------------------------------------


async def nothing_offered(name: str) -> Any:
    raise TypeError(f"nothing is offered here ({name!r})")


BROKEN = """\
# Broken

## Fine

```python
async def main() -> None:
    pass
```

## Raises in main

```python
async def main() -> None:
    1 / 0
```

## Raises at the top

```python
import a_module_that_does_not_exist
```
"""


async def test_a_block_that_raises_fails_its_section_at_the_document_s_line() -> None:
    fine, in_main, at_top = sections(BROKEN)[1:]
    await run_section(fine, nothing_offered, "broken.md")
    with pytest.raises(ZeroDivisionError) as raised:
        await run_section(in_main, nothing_offered, "broken.md")
    assert "in the example at broken.md:13 (Raises in main)" in raised.value.__notes__
    assert raised.traceback[-1].lineno + 1 == 14  # the line "1 / 0" of the document
    with pytest.raises(ModuleNotFoundError) as raised_at_top:
        await run_section(at_top, nothing_offered, "broken.md")
    assert "in the example at broken.md:20 (Raises at the top)" in raised_at_top.value.__notes__


async def test_blocks_share_names_within_a_section_and_not_across_sections() -> None:
    markdown = (
        "## One\n\n```python\nvalue = 41\n```\n\ntext\n\n```python\n"
        "async def main() -> None:\n    assert value + 1 == 42\n```\n\n"
        "## Two\n\n```python\nasync def main() -> None:\n    print(value)\n```\n"
    )
    one, two = sections(markdown)[1:]
    await run_section(one, nothing_offered)
    with pytest.raises(NameError):
        await run_section(two, nothing_offered)


async def test_main_gets_the_arguments_it_names_and_nothing_else(tmp_path: Path) -> None:
    markdown = (
        "## Asks\n\n```python\nfrom pathlib import Path\n\n"
        "async def main(data_dir: Path) -> None:\n    (data_dir / 'made').write_text('x')\n```\n\n"
        "## Asks for more\n\n```python\nasync def main(password: str) -> None:\n    pass\n```\n"
    )
    asks, asks_for_more = sections(markdown)[1:]
    async with offered(tmp_path) as provide:
        await run_section(asks, provide)
        assert (tmp_path / "data" / "made").exists()
        with pytest.raises(TypeError, match="'password'; offered are url, data_dir"):
            await run_section(asks_for_more, provide)


def test_a_heading_inside_a_fence_is_code_and_an_unclosed_fence_is_refused() -> None:
    markdown = "## Shell\n\n```sh\n## not a heading\n```\n\n```python\nx = 1\n```\n"
    [_before, shell] = sections(markdown)
    assert (shell.title, shell.examples) == ("Shell", (Example(8, "x = 1"),))
    with pytest.raises(ValueError, match="line 3"):
        sections("## A\n\n```python\nx = 1\n")
