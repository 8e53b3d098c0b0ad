"""Signed statements and operator badges for relay tests (SPEC §7.4, §8.1)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from blindrelay.protocol.business import issue_badge
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.frames import Frame, Ok, Statement
from blindrelay.protocol.signed import make_statement
from blindrelay.server.config import RelayConfig
from blindrelay.server.store import AdminStore, open_admin_store

from .conftest import RawClient

DAY_MS = 24 * 3600 * 1000


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


def _admin(where: Path | RelayConfig) -> AdminStore:
    return open_admin_store(where.store_url if isinstance(where, RelayConfig) else str(where))


def issue_badge_for(
    where: Path | RelayConfig, handle: str, now: int, *, validity_ms: int = DAY_MS
) -> None:
    """What ``blindrelay admin verify-business`` does: a badge for ``handle``'s current key,
    in force from ``now``, stored where the relay reads it (SPEC §8.1); ``where`` is a
    SQLite file or a relay's configuration (either store)."""
    operator = SigningKey.generate()
    store = _admin(where)
    try:
        account = store.account(handle)
        assert account is not None
        serial = secrets.randbelow(2**63)
        signed = issue_badge(
            lambda message: operator.sign(message).signature, handle=handle,
            identity_key=account.identity_key, display_name=handle.title(), serial=serial,
            now_ms=now, validity_ms=validity_ms,
        )  # fmt: skip
        store.add_badge(
            serial=serial, handle=handle, key_fingerprint=key_fingerprint(account.identity_key),
            display_name=handle.title(), issued_at=now, expires_at=now + validity_ms,
            signed=signed,
        )  # fmt: skip
    finally:
        store.close()


def revoke_badges_of(where: Path | RelayConfig, handle: str, now: int) -> None:
    """``blindrelay admin revoke-badge``: the relay must stop counting it at once."""
    store = _admin(where)
    try:
        assert store.revoke_badges(handle, now) >= 1
    finally:
        store.close()
