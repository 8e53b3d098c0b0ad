"""``blindrelay audit``: check a relay's whole transparency log from scratch (SPEC §15.3 rule 4).

An auditor needs no account (SPEC §15.6): it reads the newest signed tree head and
every entry it covers (page by page, keeping none), recomputes the tree, and checks with
:class:`blindrelay.protocol.transparency.audit.LogAudit` that the head signs the root
of the entries, that every entry is one of §15.1's encodings, and — given the
state a previous run left — that the log still holds what that run verified
(neither truncated nor rewritten). A violation is reported with the signed heads
that show it, which anyone can recheck with the relay key alone.

The state file (``--state``) is JSON: the relay key, and the newest head the last
clean run verified (``size``, ``root``, ``signed``, hex). It is written atomically
(a temporary file renamed over it) and only moves forward; a run that finds a
violation keeps the commitment the relay broke, so the next run reports it again.
A run that finds a fork — a head that cannot stand beside the one verified last, by
the entries it signs or by its own size, root and time — keeps both heads (``fork``:
``earlier``, ``later``) and the larger commitment: every later run reports the fork,
even once the relay shows the first history again (T73, T76). Only a person clears it:
``--acknowledge-fork FILE`` moves the two heads into a file of their own, never
overwritten (the evidence), before the run — the same as copying the state file and
removing its ``fork`` by hand.

Exit status: 0 clean, 1 a violation, 2 a usage error (the one-line message says
what to do), 3 the relay could not be read (down, refused, no head signed yet is
*not* an error: nothing to check). The relay's log fetches are rate limited (SPEC §10,
per source before a login): the reader waits out each ERROR 402 and keeps to the
relay's pace (``transparency``), so a long log takes its time — a million entries,
~33,000 fetches, about six minutes at the default 6,000 a minute — and a relay that
refuses one fetch past ``LOG_FETCH_RETRIES`` or ``LOG_FETCH_PATIENCE_MS`` is exit 3,
"the relay keeps answering RATE_LIMITED".

Not here: the checks themselves (the protocol package), reading the log (``transparency``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from blindrelay.protocol import limits
from blindrelay.protocol.errors import BlindrelayError, RateLimited
from blindrelay.protocol.transparency.audit import AuditReport, AuditState, LogAudit
from blindrelay.protocol.transparency.treehead import open_tree_head

from . import display
from .transparency import (
    LOG_FETCH_PATIENCE_MS,
    LOG_FETCH_RETRIES,
    LogReader,
    open_log_reader,
)
from .transport import ConnectionLost
from .trust import RelayKeyChanged

CLEAN, VIOLATION, USAGE, UNREACHABLE = 0, 1, 2, 3


class AuditUsageError(ValueError):
    """Bad input from the person running the audit: one line, exit 2."""


@dataclass(frozen=True, slots=True)
class SavedState:
    relay_key: bytes
    head: AuditState


def load_state(path: Path) -> SavedState | None:
    """The previous run's state, None if the file does not exist yet. Its ``size`` and
    ``root`` must be those of its ``signed`` head, which must verify with its relay key:
    otherwise the run would check the log against a commitment the relay never made
    (an earlier prefix, say: less of the log) and show another head as its evidence.
    A kept ``fork`` must be two heads that verify with that key too: it is reported
    as the relay's, in every run."""
    try:
        raw = json.loads(path.read_text())
        relay_key = bytes.fromhex(raw["relay_key"])
        fork = raw.get("fork")
        head = AuditState(
            int(raw["size"]), bytes.fromhex(raw["root"]), bytes.fromhex(raw["signed"]),
            None if fork is None
            else (bytes.fromhex(fork["earlier"]), bytes.fromhex(fork["later"])),
        )  # fmt: skip
        signed = open_tree_head(head.signed, relay_key)
        if (signed.size, signed.root) != (head.size, head.root):
            raise ValueError("its size and root are not those of the head it holds")
        for kept in head.fork or ():
            open_tree_head(kept, relay_key)
        return SavedState(relay_key, head)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, BlindrelayError) as exc:
        raise AuditUsageError(
            f"cannot read the state file {path}: {exc} — give the file an earlier run "
            "wrote, or a new path to start over"
        ) from None


def save_state(path: Path, relay_key: bytes, state: AuditState) -> None:
    saved: dict[str, object] = {
        "relay_key": relay_key.hex(), "size": state.size, "root": state.root.hex(),
        "signed": state.signed.hex(),
    }  # fmt: skip
    if state.fork is not None:
        saved["fork"] = {"earlier": state.fork[0].hex(), "later": state.fork[1].hex()}
    data = json.dumps(saved, indent=2)
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".audit-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(data + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_new(path: Path, data: str) -> None:
    """Write ``path`` whole and durably, refusing to replace a file already there: the
    link of a complete temporary file succeeds only if the name is free."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".audit-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def acknowledge_fork(state_path: Path, evidence: Path, out: TextIO) -> None:
    """Move the fork ``state_path`` keeps into ``evidence`` (a new file), so the runs go
    on from the state's head. A person's act (T73): why a file and not a deletion — the
    two signed heads prove what the relay key signed, to anyone, for good; the evidence
    is written and synced before the state forgets it, and never over another file."""
    saved = load_state(state_path)
    if saved is None or saved.head.fork is None:
        raise AuditUsageError(
            f"the state file {state_path} keeps no fork: nothing to acknowledge — run "
            "without --acknowledge-fork"
        )
    earlier, later = saved.head.fork
    record = {
        "relay_key": saved.relay_key.hex(), "earlier": earlier.hex(), "later": later.hex(),
        "state": {"size": saved.head.size, "root": saved.head.root.hex(),
                  "signed": saved.head.signed.hex()},
    }  # fmt: skip
    try:
        _write_new(evidence, json.dumps(record, indent=2) + "\n")
    except FileExistsError:
        raise AuditUsageError(
            f"{evidence} exists — give a new file for the fork's evidence (one is never "
            "written over)"
        ) from None
    except OSError as exc:
        raise AuditUsageError(
            f"cannot write the fork's evidence to {evidence}: {exc.strerror} — give a "
            "writable path"
        ) from None
    save_state(state_path, saved.relay_key, replace(saved.head, fork=None))
    print(f"fork acknowledged: its two signed heads are in {evidence}, and {state_path} "
          "no longer keeps it", file=out)  # fmt: skip


async def read_into(reader: LogReader, run: LogAudit) -> None:
    """Hand ``run`` the entries its checks use, page by page, keeping none: the first
    ``run.needed`` (fewer if the relay serves fewer). Entries past every head are no
    evidence yet (SPEC §15.6 rule 2), and a relay that served them without end ran the
    auditor out of memory (found in review: it read until an empty page, up to ten
    million entries, whatever the head signed)."""
    added, needed = 0, run.needed
    while added < needed:
        page = await reader.entries(added, min(limits.MAX_LOG_ENTRIES, needed - added))
        if not page:
            return
        for data in page[: needed - added]:
            run.add(data)
            added += 1


async def run_audit(
    url: str,
    out: TextIO,
    *,
    state_path: Path | None = None,
    relay_key: bytes | None = None,
    err: TextIO = sys.stderr,
    acknowledge: Path | None = None,
) -> int:
    """Audit the relay at ``url``, print the report to ``out`` (a failure to read it to
    ``err``, one line); the exit status. ``acknowledge``: first move the state's kept
    fork into that file (:func:`acknowledge_fork`)."""
    if acknowledge is not None:
        if state_path is None:
            raise AuditUsageError("--acknowledge-fork needs the --state file that keeps the fork")
        acknowledge_fork(state_path, acknowledge, out)
    saved = load_state(state_path) if state_path is not None else None
    if saved is not None:
        if relay_key is not None and relay_key != saved.relay_key:
            raise AuditUsageError(
                "--relay-key differs from the key in the state file — a state file "
                "belongs to one relay: give another --state"
            )
        relay_key = saved.relay_key
    try:
        async with open_log_reader(url, relay_key) as reader:
            newest = await reader.signed_head()
            key = reader.relay_key
            assert key is not None
            heads = [] if newest is None else [newest[1]]
            run = LogAudit(heads, key, saved.head if saved is not None else None)
            await read_into(reader, run)
    except RelayKeyChanged as exc:
        print(f"VIOLATION relay key: the relay presents {exc.presented.hex()}, "
              f"not {exc.pinned.hex()}", file=out)  # fmt: skip
        return VIOLATION
    except RateLimited:
        print(f"blindrelay audit: cannot read the log at {url}: the relay keeps answering "
              f"RATE_LIMITED (402) past what one fetch waits out ({LOG_FETCH_RETRIES} tries, "
              f"{LOG_FETCH_PATIENCE_MS // 1000} s) — try again later", file=err)  # fmt: skip
        return UNREACHABLE
    except (ConnectionLost, OSError, BlindrelayError) as exc:
        # The endpoint words ``exc`` (a close reason, a refusal): shown, never obeyed.
        print(f"blindrelay audit: cannot read the log at {url}: {display.one_line(str(exc))} "
              "— is the relay running, and is the URL right?", file=err)  # fmt: skip
        return UNREACHABLE
    report = run.finish()
    _print(report, key, out)
    if state_path is not None and report.state is not None:
        save_state(state_path, key, report.state)
        if report.state.fork is not None:
            # What a person must know to act: why every run says it again, and the way on.
            print(f"the fork is kept in {state_path} (its \"fork\"), and every run reports "
                  "it until a person acknowledges it: --acknowledge-fork FILE moves its "
                  "heads, the evidence, into FILE (docs/transparency.md)", file=out)  # fmt: skip
    return CLEAN if report.clean else VIOLATION


def _print(report: AuditReport, relay_key: bytes, out: TextIO) -> None:
    print(f"relay key {relay_key.hex()}", file=out)
    print(f"entries   {report.size}", file=out)
    for kind, count in report.entries_by_type.items():
        print(f"  {kind:<16} {count}", file=out)
    if report.newest is not None:
        head = report.newest
        print(f"head      size {head.size}, root {head.root.hex()}, at {head.timestamp}", file=out)
    else:
        print("head      none verified (the relay has signed no tree head yet)", file=out)
    for violation in report.violations:
        print(f"VIOLATION {violation.kind}: {violation.detail}", file=out)
        for name, value in violation.evidence.items():
            print(f"  {name} {value}", file=out)
    print("clean" if report.clean else f"{len(report.violations)} violation(s)", file=out)


__all__ = ["AuditUsageError", "load_state", "run_audit", "save_state"]
