"""The hint vocabulary between workers and the in-process router (server/routing.py).

The PostgreSQL router is tested against the real server in tests/postgres/test_routing.py.
"""

from __future__ import annotations

import itertools
import string

import msgpack
import pytest

from blindrelay.server import routing
from blindrelay.server.routing import (
    MAX_IDS,
    MAX_PAYLOAD,
    Hint,
    HintKind,
    InProcessRouter,
    backoff,
    decode,
    envelope_hint,
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


@pytest.mark.parametrize(
    ("payload", "origin"),
    [(Hint(HintKind.QUEUED, "alice", ORIGIN).encode(), ORIGIN),
     (Hint(HintKind.ENVELOPE, "bob", ORIGIN, 3, envelope=b"\x93" * 900).encode(), ORIGIN),
     (f"e {ORIGIN} 3 bob not-base64", ORIGIN), ("", ""), ("q", ""), ("x y", "y")],
)  # fmt: skip
def test_a_payloads_origin_is_read_without_decoding_the_rest(payload: str, origin: str) -> None:
    assert origin_of(payload) == origin


def test_an_envelope_rides_its_hint_exactly_while_the_text_fits_a_notification() -> None:
    """envelope_hint reckons the text's length without making it; around the limit its
    choice is the one the text itself would dictate."""
    kinds = set()
    for size in range(5800, 5900):
        row = [2**40, "bob", "alice", "user", b"m" * 16, "chat", None, None, 5, b"\x00" * size]
        hint = envelope_hint(ORIGIN, 2**40 - 1, row)
        full = Hint(HintKind.ENVELOPE, "bob", ORIGIN, 2**40 - 1, envelope=msgpack.packb(row))
        fits = len(full.encode()) <= MAX_PAYLOAD
        assert hint == (full if fits else Hint(HintKind.QUEUED, "bob", ORIGIN)), size
        kinds.add(hint.kind)
    assert kinds == {HintKind.ENVELOPE, HintKind.QUEUED}


def test_the_longest_withdrawal_fits_a_notification() -> None:
    """PostgreSQL refuses a NOTIFY payload of 8000 bytes or more."""
    handle = "a" * 32  # HANDLE_MAX_LEN
    hint = withdrawn(handle, ORIGIN, [2**63 - 1 - i for i in range(MAX_IDS)])
    assert hint.kind is HintKind.WITHDRAWN
    assert len(hint.encode().encode()) < 8000


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
