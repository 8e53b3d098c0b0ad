"""Signed statements for relay tests (SPEC §7.4): made with the client's own key."""

from __future__ import annotations

import os
from typing import Any

from blindrelay.protocol.frames import Frame, Ok, Statement
from blindrelay.protocol.signed import make_statement

from .conftest import RawClient


def statement_bytes(
    client: RawClient,
    action: str,
    target: str,
    now: int,
    categories: tuple[str, ...] | None = None,
    **changes: Any,
) -> bytes:
    """A statement signed by ``client``; ``changes`` override fields before signing."""
    fields: dict[str, Any] = {
        "signer": client.handle,
        "signer_key": bytes(client.key.verify_key),
        "target": target,
        "relay_key": client.relay_key,
        "now_ms": now,
        "rng": os.urandom,
        "categories": categories,
    }
    fields.update(changes)
    statement = make_statement(action, **fields)
    return statement.sign(lambda m: client.key.sign(m).signature)


async def state(
    client: RawClient,
    action: str,
    target: str,
    now: int,
    categories: tuple[str, ...] | None = None,
    **changes: Any,
) -> Frame:
    """Send a STATEMENT and return the relay's answer."""
    data = statement_bytes(client, action, target, now, categories, **changes)
    return await client.request(lambda i: Statement(id=i, statement=data))


async def stated(
    client: RawClient, action: str, target: str, now: int, categories: tuple[str, ...] | None = None
) -> None:
    """Send a STATEMENT that must be accepted."""
    answer = await state(client, action, target, now, categories)
    assert isinstance(answer, Ok), answer
