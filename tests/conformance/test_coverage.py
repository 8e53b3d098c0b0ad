"""Every SPEC section with a MUST has a conformance test that cites it — or a reason.

The SPEC is parsed for numbered sections (``## n.`` and ``### n.m``); a section's
text runs to the next heading. Tests cite sections with ``@pytest.mark.spec("6.3")``
(or finer, ``"6.4.1"``, which counts for 6.4); the markers are read from the test
files' source, so the check holds however the suite is filtered. This test needs
no relay.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import blindrelay.protocol

SPEC = Path(blindrelay.protocol.__file__).parent / "SPEC.md"
HERE = Path(__file__).parent

CLIENT_SIDE = "client-side obligation of the end-to-end layer; the relay never sees it"

ALLOW_LIST: dict[str, str] = {
    "3.3": "client obligation (pin keys on first use, surface key changes); not on the wire",
    "8.1": "client obligation (when to show a badge as verified); badges are issued by the "
    "operator out of band, so a black-box client cannot obtain one to serve",
    "13.1": CLIENT_SIDE + "; covered by tests/protocol/crypto",
    "13.3": CLIENT_SIDE + "; covered by tests/protocol/crypto",
    "13.4": CLIENT_SIDE + "; covered by tests/protocol/crypto",
    "13.5": CLIENT_SIDE + "; covered by tests/protocol/crypto",
    "13.6": CLIENT_SIDE + "; covered by tests/protocol/crypto",
    "13.7": CLIENT_SIDE + "; covered by tests/client",
    "13.8": CLIENT_SIDE + "; covered by tests/client",
    "13.11": CLIENT_SIDE + "; covered by tests/protocol/test_content.py and tests/client",
    "15.2": "the verifiers' rules (RFC 9162 checks, 32-byte hashes): a client obligation; "
    "the relay's proofs are verified by the §15.6 tests, hashing by tests/protocol/transparency "
    "(with published data) and the stores' proofs by tests/server/test_transparency_log.py",
    "15.3": "signing rules (at most every STH_INTERVAL, only when grown): need clock control; "
    "the §15.6 tests check every head's signature and consistency, and "
    "tests/protocol/transparency/test_treehead.py and tests/server/test_tree_heads.py the rules",
    "11.2": "the relay's files on its own disk (modes, overwritten rows, WAL checkpoints); "
    "not on the wire; covered by tests/server/test_at_rest.py and tests/test_canaries.py",
}
"""MUST sections no black-box test can reach, each with its reason."""

CLOCK = "needs clock control; covered by tests/server"
NOT_TESTED_CLAUSES: dict[str, str] = {
    "1.2.2": "close after AUTH_TIMEOUT_S (10 s) without authentication: " + CLOCK,
    "1.2.4": "the bound is on the relay's own memory, which the wire does not show; "
    "covered by tests/server/test_slow_readers.py (the relay's accounting)",
    "1.2.5": "abort after WRITE_TIMEOUT_S (20 s) without progress: " + CLOCK,
    "4.3": "an unknown handle's LOGIN costs the same work (timing): not measurable reliably "
    "over a network; measured in process by tests/server/test_auth_timing.py",
    "4.4.1": "a proof after the challenge's expires_at (30 s): " + CLOCK,
    "4.6.1": "registrations per source address: every test connects from one address, so "
    "the local relay runs with the limit raised (an external relay must too); covered by "
    "tests/server/test_registration.py",
    "6.3.1": "SENT only after the commit survives a crash: needs crash injection; covered by "
    "tests/server/test_crash.py",
    "6.3.2": "msg_id remembered for QUEUE_TTL_MS (30 days): " + CLOCK,
    "6.3.5": "queue room: reaching QUEUE_SHARE_PER_SENDER (1,000) takes over 1,000 SENDs, "
    "seconds of rate-limited sending; covered by tests/server/test_queue_shares.py",
    "6.4.4": "an envelope unacknowledged after QUEUE_TTL_MS is deleted: " + CLOCK,
    "7.2": "cooldowns (CONSENT_COOLDOWN_MS) and the service window (SERVICE_WINDOW_MS) "
    "ending: " + CLOCK,
    "7.7": "the relay does the same work (timing) for every refusal: not measurable "
    "reliably over a network; the bytes are compared",
    "8.2": "the same lookups for a user and an unknown handle's PROFILE_FETCH: covered by "
    "tests/server/test_business.py (the SQL run, traced)",
    "8.4": "counts committed in the envelope's transaction (no loss or double count after a "
    "crash): needs crash injection",
    "9": "close code 1001 after 901 SHUTTING_DOWN: needs stopping the relay under test; "
    "covered by tests/server/test_relay.py",
}
"""MUST clauses inside covered sections that this suite does not check, and why.

Client-side MUST clauses inside relay sections (answer pings §1.2.1, close on
another version §4.1, resend without SENT §6.3.1, deduplicate §6.4.3, persist
before ACK §6.5, treat unknown codes as 900 §12.3, treat a rotation as an
identity change §3.4) are out of scope like §13 and not listed one by one."""

_HEADING = re.compile(r"^(?:##|###) (\d+(?:\.\d+)?)\.? ")


def spec_sections() -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in SPEC.read_text().splitlines():
        if match := _HEADING.match(line):
            current = sections.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return {number: "\n".join(lines) for number, lines in sections.items()}


def cited_sections() -> dict[str, list[str]]:
    """Marker → names of the tests carrying it, read from the test files' syntax trees."""
    cited: dict[str, list[str]] = {}
    for path in sorted(HERE.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                if (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "spec"
                    and decorator.args
                    and isinstance(decorator.args[0], ast.Constant)
                ):
                    cited.setdefault(str(decorator.args[0].value), []).append(
                        f"{path.stem}::{node.name}"
                    )
    return cited


def _covers(marker: str, section: str) -> bool:
    return marker == section or marker.startswith(section + ".")


SECTIONS = spec_sections()
MUST_SECTIONS = sorted(
    (n for n, text in SECTIONS.items() if "MUST" in text),
    key=lambda n: tuple(int(p) for p in n.split(".")),
)


def test_spec_has_numbered_sections_with_musts():
    """The parser sees the SPEC (a broken parse would make the next test vacuous)."""
    assert {"1.1", "2.3", "4.4", "6.3", "7.4"} <= set(MUST_SECTIONS)


@pytest.mark.parametrize("section", MUST_SECTIONS)
def test_every_must_section_has_a_conformance_test_or_a_reason(section):
    """Every numbered section whose text says MUST is cited by a test or allow-listed."""
    cited = [m for m in cited_sections() if _covers(m, section)]
    if section in ALLOW_LIST:
        assert not cited, f"§{section} is allow-listed but tested by {cited}: drop the entry"
    else:
        assert cited, f"§{section} has a MUST and no test marked spec({section!r})"


def test_every_marker_and_list_entry_names_a_spec_section():
    """A typo in a marker would silently cover nothing."""
    names = [*cited_sections(), *ALLOW_LIST, *NOT_TESTED_CLAUSES]
    unknown = [m for m in names if not any(_covers(m, s) for s in SECTIONS)]
    assert unknown == []
    assert set(ALLOW_LIST) <= set(MUST_SECTIONS)
