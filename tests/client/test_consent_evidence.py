"""A business proves a customer's consent to a third party (SPEC §15.5): the evidence
``Business.consent_evidence`` exports, checked offline by ``blindrelay verify-consent``
with the relay's public key alone; altered evidence, another relay's key, and a file
that is not evidence are refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blindrelay.client.business import Business
from blindrelay.protocol import frames
from blindrelay.protocol.errors import ErrorCode, InvalidProof, LogForked
from blindrelay.protocol.signed import make_statement
from blindrelay.protocol.transparency.evidence import (
    ConsentEvidence,
    evidence_from_json,
    evidence_to_json,
    statement_entry,
    verify_consent_evidence,
)

from ..relays import T0, relay_at
from .fake_relay import RELAY_KEY, URL, FakeLog, FakeRelay, RelayEnd, answer_plainly
from .harness import business_online, once_logged, online, run, within
from .log_relay import alices_statement, answering, filler


def verify(path: Path, relay_key: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blindrelay.server.cli", "verify-consent", str(path),
         "--relay-key", relay_key.hex(), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def evidence_once_logged(business, customer: str) -> ConsentEvidence:
    """The evidence, once a signed tree head covers the statement."""
    return await once_logged(lambda: business.consent_evidence(customer))


def test_a_business_proves_a_customers_consent_offline(tmp_path: Path) -> None:
    result: dict[str, object] = {}

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            airline = await business_online(relay.url, "airline")
            alice = await online(relay.url, "alice")
            await within(alice.grant("airline", ["utility"]))
            await airline.wait_for_consent("alice", "utility", timeout=30)
            evidence = await within(evidence_once_logged(airline, "alice"))
            result["evidence"] = evidence
            result["relay_key"] = alice.relay_key_pin.key
            result["alice_key"] = alice.sessions.keypair.public
            await alice.close()
            await airline.close()

    run(scenario())
    evidence, relay_key = result["evidence"], result["relay_key"]
    assert isinstance(evidence, ConsentEvidence) and isinstance(relay_key, bytes)
    assert evidence_from_json(evidence_to_json(evidence)) == evidence
    verified = verify_consent_evidence(evidence, relay_key, result["alice_key"])  # type: ignore[arg-type]
    assert (verified.statement.signer, verified.statement.target) == ("alice", "airline")

    good = tmp_path / "consent.json"
    good.write_text(evidence_to_json(evidence))
    done = verify(good, relay_key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("valid: alice grant to airline, categories utility")

    raw = json.loads(good.read_text())
    altered = tmp_path / "altered.json"
    raw["statement"] = raw["statement"][:-2] + ("00" if raw["statement"][-2:] != "00" else "01")
    altered.write_text(json.dumps(raw))
    not_json = tmp_path / "notes.txt"
    not_json.write_text("consent: yes")
    for path, key, status in [
        (altered, relay_key, 1),  # a signature that no longer verifies
        (good, bytes(32), 1),  # another relay's key
        (not_json, relay_key, 2),
        (tmp_path / "missing.json", relay_key, 2),
    ]:
        done = verify(path, key)
        assert done.returncode == status, (path.name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("lie", ["a proof that misses", "a head of another history"])
def test_evidence_the_relay_cannot_back_is_refused_before_it_is_exported(lie: str) -> None:
    """The attack (found in review): ``consent_evidence`` returned whatever head and path
    the relay sent, unchecked, so a business handed a court evidence that fails
    ``verify-consent``, or evidence under a head of a history no one else is shown (the
    head was never held against the business's own). Now the path is verified under the
    head, and the head held against the newest one the business verified."""
    statement = alices_statement()
    log = FakeLog()
    log.append(*filler(3), statement_entry(statement))
    ours = FakeLog()
    ours.append(*filler(3), *filler(6)[3:5])  # the history the business was shown

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.LogInclusionFetch) and lie == "a proof that misses":
            end.send(frames.LogInclusion(re=frame.id, index=3, proof=(bytes(32), bytes(32))))
        elif isinstance(frame, frames.LogConsistencyFetch):
            end.send(frames.Error(code=ErrorCode.NOT_FOUND, re=frame.id))
        elif not log.answer(end, frame):
            answer_plainly(end, frame)

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answer
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        shop.client.store.keep_statement("alice", statement)
        log.sign_head(T0)
        if lie == "a head of another history":
            shop.client.store.set_tree_head(ours.sign_head(T0))
        with pytest.raises((InvalidProof, LogForked)):
            await within(shop.consent_evidence("alice"))
        await shop.client.close()

    run(scenario())


def test_the_evidence_is_the_customers_newest_statement_not_the_business_s_own() -> None:
    """A business keeps its own statements about a customer (its block of them) beside
    the customer's: the evidence of the customer's consent is the newest statement the
    customer signed, never one the business made itself."""
    relay_key = RELAY_KEY.verify_key.encode()
    grant = alices_statement()
    log = FakeLog()

    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = answering(log)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        ours = shop.client.sessions
        block = make_statement(
            "block", signer="shop", signer_key=ours.keypair.public, target="alice",
            relay_key=relay_key, now_ms=T0 + 1, rng=os.urandom,
        ).sign(ours.sign)  # fmt: skip
        log.append(*filler(3), statement_entry(grant), statement_entry(block))
        log.sign_head(T0 + 2)
        shop.client.store.keep_statement("alice", grant)
        shop.client.store.keep_statement("alice", block)
        evidence = await within(shop.consent_evidence("alice"))
        assert evidence.statement == grant
        await shop.client.close()

    run(scenario())
