"""The hint vocabulary between workers and the in-process router (server/routing.py).

The PostgreSQL router is tested against the real server in tests/postgres/test_routing.py.
"""

from __future__ import annotations

import itertools
import string

import msgpack
import pytest

from blindrelay.protocol.channel import relay_static_key
from blindrelay.server import routing
from blindrelay.server.routing import (
    MAX_IDS,
    MAX_PAYLOAD,
    Hint,
    HintKind,
    HintSeal,
    InProcessRouter,
    backoff,
    decode,
    envelope_hint,
    hint_key,
    new_worker_id,
    open_router,
    origin_of,
    withdrawn,
)

ORIGIN = "0123456789abcdef"


@pytest.mark.parametrize(
    "hint",
    [
        Hint(HintKind.QUEUED, "alice", ORIGIN),
        Hint(HintKind.WITHDRAWN, "bob.example", ORIGIN, ids=(1, 7, 2**62)),
        Hint(HintKind.LOGIN, "carol", ORIGIN, value=41),
        Hint(HintKind.PREKEYS_LOW, "shop.example", ORIGIN, value=0),
    ],
    ids=lambda hint: hint.kind.name,
)
def test_a_hint_survives_its_text_form(hint: Hint) -> None:
    assert decode(hint.encode()) == hint


def test_the_text_form_is_compact_and_spaced() -> None:
    assert Hint(HintKind.WITHDRAWN, "bob", ORIGIN, ids=(3, 4)).encode() == f"w {ORIGIN} 0 bob 3,4"
    assert Hint(HintKind.LOGIN, "bob", ORIGIN, value=9).encode() == f"l {ORIGIN} 9 bob"


@pytest.mark.parametrize(
    "payload",
    ["", "q", f"q {ORIGIN} 0", f"x {ORIGIN} 0 bob", f"q {ORIGIN} zero bob",
     f"w {ORIGIN} 0 bob 1,,2", f"w {ORIGIN} 0 bob ", f"w {ORIGIN} 0 bob 1 2"],
)  # fmt: skip
def test_anything_else_on_the_channel_is_no_hint(payload: str) -> None:
    with pytest.raises(ValueError):
        decode(payload)


SEAL = HintSeal(hint_key(b"\x01" * 32))


@pytest.mark.parametrize(
    ("payload", "origin"),
    [(SEAL.seal(Hint(HintKind.QUEUED, "alice", ORIGIN)), ORIGIN),
     (SEAL.seal(Hint(HintKind.ENVELOPE, "bob", ORIGIN, 3, envelope=b"\x93" * 900)), ORIGIN),
     (f"{ORIGIN} not-base64", ORIGIN), ("", ""), ("q", ""), ("x y", "x")],
)  # fmt: skip
def test_a_payloads_origin_is_read_without_opening_the_rest(payload: str, origin: str) -> None:
    assert origin_of(payload) == origin


@pytest.mark.parametrize(
    "hint",
    [Hint(HintKind.QUEUED, "alice", ORIGIN), Hint(HintKind.LOGIN, "carol", ORIGIN, value=41),
     Hint(HintKind.ENVELOPE, "bob", ORIGIN, 3, envelope=b"\x93" * 900)],
    ids=lambda hint: hint.kind.name,
)  # fmt: skip
def test_a_sealed_hint_opens_with_the_stores_key_and_shows_nothing_else(hint: Hint) -> None:
    """Only the origin is in the clear: no kind, handle, id or envelope (anyone who can
    connect to the database may LISTEN, routing's docstring)."""
    payload = SEAL.seal(hint)
    assert SEAL.open(payload) == hint
    clear, sealed = payload.split(" ")
    assert clear == ORIGIN
    assert hint.handle not in sealed and hint.encode() not in payload
    assert SEAL.seal(hint) != payload  # a fresh nonce each time


def test_a_hint_not_sealed_with_the_stores_key_is_refused() -> None:
    """A role that can connect but read no table may NOTIFY on the channel: what it sends
    — a hint in the old clear form, one sealed under another key, one whose clear origin
    differs from the sealed one, garbage — opens to nothing (found in review: a forged
    ENVELOPE was pushed as a DELIVER, a forged LOGIN closed a connection)."""
    hint = Hint(HintKind.LOGIN, "carol", ORIGIN, value=2**40)
    forged = [
        hint.encode(),
        HintSeal(hint_key(b"\x02" * 32)).seal(hint),
        "fedcba9876543210 " + SEAL.seal(hint).split(" ")[1],
        f"{ORIGIN} !!!",
        f"{ORIGIN} " + SEAL.seal(hint).split(" ")[1][:-8] + "AAAAAAA=",
        "",
    ]
    for payload in forged:
        with pytest.raises(ValueError):
            SEAL.open(payload)


def test_each_relay_seed_gives_its_own_hint_key_and_not_its_other_keys() -> None:
    seed = b"\x03" * 32
    assert hint_key(seed) == hint_key(seed) and len(hint_key(seed)) == 32
    assert hint_key(seed) != hint_key(b"\x04" * 32)
    assert hint_key(seed) not in (seed, relay_static_key(seed).private)


def test_an_envelope_rides_its_hint_exactly_while_the_sealed_payload_fits_a_notification() -> None:
    """envelope_hint reckons the sealed payload's length without making it; around the
    limit its choice is the one the payload itself would dictate."""
    kinds = set()
    for size in range(4250, 4400):
        row = [2**40, "bob", "alice", "user", b"m" * 16, "chat", None, None, 5, b"\x00" * size]
        hint = envelope_hint(ORIGIN, 2**40 - 1, row)
        full = Hint(HintKind.ENVELOPE, "bob", ORIGIN, 2**40 - 1, envelope=msgpack.packb(row))
        fits = len(SEAL.seal(full)) <= MAX_PAYLOAD
        assert hint == (full if fits else Hint(HintKind.QUEUED, "bob", ORIGIN)), size
        kinds.add(hint.kind)
    assert kinds == {HintKind.ENVELOPE, HintKind.QUEUED}


def test_the_longest_withdrawal_fits_a_notification_sealed() -> None:
    """PostgreSQL refuses a NOTIFY payload of 8000 bytes or more."""
    handle = "a" * 32  # HANDLE_MAX_LEN
    hint = withdrawn(handle, ORIGIN, [2**63 - 1 - i for i in range(MAX_IDS)])
    assert hint.kind is HintKind.WITHDRAWN
    assert len(SEAL.seal(hint).encode()) < 8000


def test_too_many_withdrawn_ids_become_page_again() -> None:
    hint = withdrawn("bob", ORIGIN, list(range(1, MAX_IDS + 2)))
    assert hint == Hint(HintKind.QUEUED, "bob", ORIGIN)


def test_worker_ids_are_random_hex_without_spaces() -> None:
    ids = {new_worker_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 and set(i) <= set(string.hexdigits.lower()) for i in ids)


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = list(itertools.islice(backoff(0.05, 1.0), 8))
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


async def test_the_in_process_router_is_always_connected_and_hears_nothing() -> None:
    heard: list[Hint] = []
    connected: list[bool] = []
    router = open_router("sqlite:///tmp/x.db", "w1")
    assert isinstance(router, InProcessRouter)
    await router.start(heard.append, lambda: connected.append(True))
    assert router.worker_id == "w1"
    assert router.connected
    await router.close()
    assert heard == [] and connected == []


def test_a_postgresql_store_gets_the_listening_router() -> None:
    from blindrelay.server.routing_postgresql import PostgresRouter

    for url in ("postgresql://127.0.0.1/db", "postgres://h/db"):
        router = open_router(url, "w2")
        assert isinstance(router, PostgresRouter)
        assert router.worker_id == "w2"
        assert not router.connected  # not started
    assert routing.is_postgresql("postgres://x/y")
    assert not routing.is_postgresql("relay.db")
