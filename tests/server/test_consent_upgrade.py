"""A relay upgraded from before threat model T54's fix (8cb82ae) on both stores: the
consent statements it accepted while their signer blocked the business (SPEC §7.4).

The database is built at the schema those relays left (SQLite 14, PostgreSQL 13: the fix
changed no table) by today's relay, with what only the old rule let in written the way
the old relay wrote it: the signer's block is taken out of the pair's state while the
relay accepts the statement, then put back — what the relay stored, forwarded and
changed is then what a relay before the fix did with the signer's block in force.
"""

from __future__ import annotations

import sqlite3

from nacl.signing import SigningKey

from blindrelay.protocol.frames import Ok, Sent, Statement, Statements, StatementsList
from blindrelay.server.config import RelayConfig

from .. import pg
from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, db_rows, error_code, relay_with
from .consent_helpers import stated, statement_bytes

BACKENDS = ALL_BACKENDS

BEFORE = {"sqlite": 14, "postgresql": 13}
"""The schema version of a relay from before the upgrade, per store."""

HOUR_MS = 3_600_000
"""Between two relays: an account's buckets, emptied when another relay process served
it (SPEC §10), are full again."""


def _write(config: RelayConfig, *sql: str) -> None:
    """Change the database of a relay that is not running."""
    if config.store.startswith("postgresql://"):
        for statement in sql:
            pg.rows(config.store, statement)
        return
    conn = sqlite3.connect(config.db_path)
    try:
        for statement in sql:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _back_to_the_old_schema(config: RelayConfig) -> None:
    if config.store.startswith("postgresql://"):
        _write(config, f"DELETE FROM schema_version WHERE version > {BEFORE['postgresql']}")
    else:
        _write(config, f"PRAGMA user_version={BEFORE['sqlite']}")


def _blockers(config: RelayConfig, pairs: list[tuple[str, str]], blockers: str) -> None:
    _write(
        config,
        *(f"UPDATE pairs SET blockers = '{blockers}' WHERE low = '{a}' AND high = '{b}'"
          for a, b in pairs),
    )  # fmt: skip


async def _listed(client: RawClient) -> list[bytes]:
    page = await client.request(lambda i: StatementsList(id=i, after=0))
    assert isinstance(page, Statements)
    return list(page.statements)


def _from(config: RelayConfig, recipient: str) -> list[str]:
    """Who the statements queued for ``recipient`` are from, oldest first."""
    rows = db_rows(
        config,
        "SELECT sender FROM queue WHERE recipient = ? AND intent = 'statement'"
        " ORDER BY delivery_id",
        (recipient,),
    )
    return [str(row[0]) for row in rows]


async def test_an_upgrade_clears_the_consent_statements_made_while_their_signer_blocked(
    config: RelayConfig, clients: Clients, clock: FakeClock, backend: str
) -> None:
    """Threat model T54 (upgrades), SPEC §7.4: a relay before the fix accepted bob's grant
    and deny to ``early``, whose handle he had blocked before it registered, and his grant
    to ``late``, blocked since it registered; it kept them in force, forwarded them (still
    queued, the businesses offline) and lists them, so a business that comes back after
    the upgrade would learn of the block the fix hides, and once bob unblocked it might
    notify him under a grant the rules refuse today (reproduced on both stores: the three
    receipts still queued and listed, and ``late``'s notification SENT after bob's
    unblock; ``early``'s is refused since T57's revocation). The upgrade clears them as if
    refused — no longer in force, not queued, the pair's categories as the block left
    them — and leaves alone what was said before the block (dave's grant) or without one
    (carol's)."""
    keys: dict[str, SigningKey] = {}
    async with relay_with(config, clock) as relay:
        bob, carol, dave = [
            await clients.registered(relay.url, h) for h in ("bob", "carol", "dave")
        ]
        await stated(bob, "block", "early", clock.now)
        early = await clients.registered(relay.url, "early", "business")
        late = await clients.registered(relay.url, "late", "business")
        await stated(carol, "grant", "early", clock.now, ("utility",))
        await stated(dave, "grant", "late", clock.now, ("utility",))
        await stated(dave, "block", "late", clock.now)
        await stated(bob, "block", "late", clock.now)
        keys = {c.handle: c.key for c in (bob, carol, dave, early, late)}
    # What only the old rule let in: bob's consent statements while he blocked both.
    blocked_pairs = [("bob", "early"), ("bob", "late")]
    _blockers(config, blocked_pairs, "")
    clock.advance(HOUR_MS)
    said = []
    async with relay_with(config, clock) as relay:
        bob, _ = await clients.logged_in(relay.url, "bob", keys["bob"])
        for action, target, categories in (
            ("grant", "early", ("utility",)), ("deny", "early", ("marketing",)),
            ("grant", "late", ("utility", "marketing")),
        ):  # fmt: skip
            data = statement_bytes(bob, action, target, clock.now, categories)
            assert isinstance(await bob.request(lambda i, d=data: Statement(id=i, statement=d)), Ok)
            said.append(data)
    _blockers(config, blocked_pairs, "bob")
    _back_to_the_old_schema(config)
    # The old relay's state: in force, listed to the business, its receipts queued.
    in_force = "SELECT COUNT(*) FROM statements_in_force WHERE signer = 'bob' AND family <> 'block'"
    assert db_rows(config, in_force) == [(4,)]
    assert _from(config, "early") == ["carol", "bob", "bob"]

    clock.advance(HOUR_MS)
    async with relay_with(config, clock) as relay:
        assert db_rows(config, in_force) == [(0,)]
        assert _from(config, "early") == ["carol"]
        assert _from(config, "late") == ["dave", "dave", "bob"]  # the grant and the blocks
        logged = {h: (await clients.logged_in(relay.url, h, keys[h]))[0] for h in keys}
        assert not set(said) & set(await _listed(logged["bob"]))
        assert len(await _listed(logged["bob"])) == 2  # his blocks
        assert len(await _listed(logged["early"])) == 1  # carol's grant
        assert len(await _listed(logged["late"])) == 3  # dave's grant and block, bob's block
        assert len(await _listed(logged["dave"])) == 2  # said before the block: kept
        for business in ("early", "late"):
            await stated(logged["bob"], "unblock", business, clock.now)
            note = await logged[business].send_message(
                "bob", b"sale", intent="notification", category="utility"
            )
            assert error_code(note) == 400, (backend, business)
        notified = await logged["early"].send_message(
            "carol", b"sale", intent="notification", category="utility"
        )
        assert isinstance(notified, Sent)
