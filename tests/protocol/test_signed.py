"""SPEC §14 and §7.4: signed statements verify, and every tampering is refused."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.errors import InvalidStatement, MalformedFrame, StaleStatement
from blindrelay.protocol.signed import (
    Action,
    ConsentStatement,
    make_statement,
    open_signed,
    unverified_body,
    verify_statement,
)

NOW = 1_800_000_000_000
USER = SigningKey(b"\x11" * 32)
RELAY = SigningKey(b"\x22" * 32).verify_key.encode()
OTHER_RELAY = SigningKey(b"\x33" * 32).verify_key.encode()
counter = itertools.count()


def rng(n: int) -> bytes:
    return bytes([next(counter) % 256]) * n


def statement(action: str = "grant", *, categories: tuple[str, ...] | None = ("utility",), relay: bytes = RELAY, now: int = NOW, key: SigningKey = USER) -> bytes:
    made = make_statement(action, signer="alice", signer_key=key.verify_key.encode(), target="skyways", relay_key=relay, now_ms=now, rng=rng, categories=categories)
    return made.sign(lambda m: key.sign(m).signature)


def verify(data: bytes, *, now: int | None = NOW, key: bytes = USER.verify_key.encode()) -> ConsentStatement:
    return verify_statement(data, expected_key=key, relay_key=RELAY, now_ms=now)


def test_a_signed_grant_verifies_and_round_trips() -> None:
    result = verify(statement())
    assert result.action == "grant" and result.categories == ("utility",) and result.signer == "alice"


def test_signature_covers_the_context_string() -> None:
    made = make_statement("block", signer="alice", signer_key=USER.verify_key.encode(), target="skyways", relay_key=RELAY, now_ms=NOW, rng=rng)
    data = made.sign(lambda m: USER.sign(b"blindrelay/v1/profile\x00" + m.split(b"\x00", 1)[1]).signature)
    with pytest.raises(InvalidStatement):
        verify(data)


def test_any_altered_byte_is_refused() -> None:
    data = statement()
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x01
        with pytest.raises((InvalidStatement, MalformedFrame, StaleStatement)):
            verify(bytes(altered))


def test_statement_signed_by_another_key_is_refused() -> None:
    with pytest.raises(InvalidStatement):
        verify(statement(key=SigningKey(b"\x44" * 32)))


def test_statement_for_another_relay_is_refused() -> None:
    with pytest.raises(InvalidStatement):
        verify(statement(relay=OTHER_RELAY))


@pytest.mark.parametrize("skew", [limits.STATEMENT_SKEW_MS + 1, -(limits.STATEMENT_SKEW_MS + 1)])
def test_statement_outside_the_clock_skew_is_stale(skew: int) -> None:
    with pytest.raises(StaleStatement):
        verify(statement(now=NOW + skew))


def test_archived_receipt_verifies_without_a_clock() -> None:
    assert verify(statement(now=NOW - 10 * limits.STATEMENT_SKEW_MS), now=None).action == "grant"


def test_unverified_body_tells_who_claims_to_sign() -> None:
    assert unverified_body(ConsentStatement, statement()).signer == "alice"


@pytest.mark.parametrize(("action", "categories"), [("grant", None), ("block", ("utility",)), ("revoke", ("utility", "utility")), ("deny", ("spam",))])
def test_malformed_statements_cannot_even_be_made(action: str, categories: tuple[str, ...] | None) -> None:
    with pytest.raises(MalformedFrame):
        statement(action, categories=categories)


def test_body_with_an_unknown_key_is_refused_even_when_signed() -> None:
    body = msgpack.packb({"v": 1, "action": "block", "signer": "alice", "signer_key": USER.verify_key.encode(), "target": "skyways", "issued_at": NOW, "nonce": b"n" * 16, "relay_key": RELAY, "extra": 1}, use_bin_type=True)
    sig = USER.sign(ConsentStatement.CONTEXT + b"\x00" + body).signature
    with pytest.raises(MalformedFrame):
        open_signed(ConsentStatement, msgpack.packb({"body": body, "sig": sig}, use_bin_type=True), USER.verify_key.encode())


def test_actions_are_the_specs() -> None:
    assert {a.value for a in Action} == {"grant", "deny", "revoke", "block", "unblock"}
