"""Summarise a py-spy raw (collapsed stacks) profile: where the server's CPU goes.

Why: a flame graph is for exploring; the README and the optimisation work need a few
named costs with percentages. Each line of a raw profile is ``frame;frame;... count``
(outermost first; with ``--threads`` the first frame names the thread). Self time
goes to the innermost frame; inclusive time to every distinct function on the stack.
Functions are keyed by name and file, not line, so one function is one row.

    .venv/bin/python bench/profile.py PROFILE.txt [--top 20]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
PROJECT = re.compile(r"\((server|protocol|client)/")
"""Inclusive time is listed for the project's own functions: the event loop, runpy and
thread frames above them are on every stack and say nothing."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Sample counts: total, per thread, and per function (self and inclusive)."""

    total: int
    threads: Counter[str]
    self_samples: Counter[str]
    inclusive: Counter[str]

    def top(self, counter: Counter[str], n: int) -> list[tuple[str, float]]:
        """The ``n`` largest entries of ``counter`` as (function, percent of all samples)."""
        return [(name, round(100 * c / self.total, 1)) for name, c in counter.most_common(n)]


def function_key(frame: str) -> str:
    """``f (server/x.py:12)`` → ``f (server/x.py)``: one row per function, not per line."""
    return _LINE.sub(")", frame)


def summarize(lines: Iterable[str]) -> Summary:
    """Fold collapsed-stack lines into self and inclusive counts per function."""
    threads: Counter[str] = Counter()
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            threads[frames[0].partition(": ")[2] or frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        keys = [function_key(frame) for frame in frames]
        self_samples[keys[-1]] += count
        for key in set(keys):
            inclusive[key] += count
    return Summary(total, threads, self_samples, inclusive)


def render(summary: Summary, top: int) -> str:
    """Self and inclusive tables, plus the share of each thread."""
    if not summary.total:
        return "no samples"
    lines = [f"{summary.total} samples; threads: " + ", ".join(
        f"{name} {100 * c / summary.total:.0f}%" for name, c in summary.threads.most_common()
    )]  # fmt: skip
    own = Counter({k: c for k, c in summary.inclusive.items() if PROJECT.search(k)})
    for title, counter in (("self", summary.self_samples), ("inclusive (project)", own)):
        lines.append(f"top {top} by {title} time:")
        lines.extend(f"  {pct:5.1f}%  {name}" for name, pct in summary.top(counter, top))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    with args.profile.open() as lines:
        print(render(summarize(lines), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
