"""Evidence that the relay cannot read (SPEC §11, docs/threat-model.md).

A full scenario over real sockets against ``blindrelay serve`` as a subprocess:
an airline asks a user for consent, notifies her, answers her and sends its
away reply; two users chat and send receipts; the user blocks the airline and
a last notification is refused. Every secret of it is a unique random
canary — message texts in both directions, the consent explanation, the away
message, notifications, receipt plaintexts — and so is every private key the
three clients ever held: identity seeds, signed and one-time prekey privates,
session records and the root, chain, ratchet and skipped message keys inside
them.

The relay runs with umask 0, and its database, WAL and SHM must still be 0600
(SPEC §11.2), as must the operator key. Afterwards the relay's database file,
WAL and SHM (raw bytes, while it runs and after it stopped), its complete log output (DEBUG) and every frame each client
sent and received are searched for every canary, raw and as hex, base64 and
base64url. There must be no hit. Positive controls show that the search finds
what the relay legitimately holds (handles, public identity keys) and a canary
planted in a copy of the database, so a broken scanner cannot pass.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import secrets
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from blindrelay.client.business import Business
from blindrelay.client.keystore import (
    MemoryKeyStore,
    OneTimePreKeyRecord,
    OurIdentity,
    SignedPreKeyRecord,
)
from blindrelay.client.sdk import Client, Message
from blindrelay.client.transport import wire_tap
from blindrelay.protocol.content import Content, Receipt, ReceiptType, encode_content
from blindrelay.protocol.crypto.session import Session
from blindrelay.server.cli import main as relay_cli

TIMEOUT_S = 10.0


def canary(label: str) -> str:
    return f"canary-{label}-{secrets.token_hex(12)}"


class RecordingKeyStore(MemoryKeyStore):
    """A client keystore that remembers every secret it was ever given.

    One-time prekeys are deleted when used and sessions overwritten at every
    message, so the secrets are collected as they are stored, not at the end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[bytes] = set()

    def set_identity(self, identity: OurIdentity) -> None:
        self.secrets.add(identity.identity_seed)
        super().set_identity(identity)

    def store_signed_prekey(self, record: SignedPreKeyRecord) -> None:
        self.secrets.add(record.private_key)
        super().store_signed_prekey(record)

    def store_one_time_prekeys(self, records: Iterable[OneTimePreKeyRecord]) -> None:
        records = list(records)
        self.secrets.update(r.private_key for r in records)
        super().store_one_time_prekeys(records)

    def store_session(self, handle: str, blob: bytes) -> None:
        self.secrets.add(blob)
        state = Session.from_bytes(blob).ratchet
        self.secrets.update(
            key
            for key in (
                state.root_key, state.our_ratchet.private,
                state.sending_chain_key, state.receiving_chain_key, *state.skipped.values(),
            )
            if key is not None
        )  # fmt: skip
        super().store_session(handle, blob)


@dataclass
class Wire:
    """Every WebSocket message each client sent or received (the relay's whole I/O)."""

    messages: list[bytes] = field(default_factory=list)

    def tap(self, _direction: str, data: bytes) -> None:
        self.messages.append(data)


class Inbox:
    """A client's decrypted messages, awaited one by one."""

    def __init__(self, client: Client) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.receipts: list[Receipt] = []
        self.task = asyncio.create_task(self._read(client))

    async def _read(self, client: Client) -> None:
        async for message in client.messages():
            await self.queue.put(message)

    async def next(self) -> Message:
        """The next message that is not a receipt; receipts are kept in ``receipts``."""
        while True:
            message = await asyncio.wait_for(self.queue.get(), TIMEOUT_S)
            if message.receipt is None:
                return message
            self.receipts.append(message.receipt)


@dataclass
class Scenario:
    texts: list[str] = field(default_factory=list)
    receipts: list[bytes] = field(default_factory=list)
    stores: list[RecordingKeyStore] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    identity_keys: list[bytes] = field(default_factory=list)
    live_files: dict[str, bytes] = field(default_factory=dict)
    live_modes: dict[str, int] = field(default_factory=dict)

    def text(self, label: str) -> str:
        value = canary(label)
        self.texts.append(value)
        return value


async def within(awaitable):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(awaitable, TIMEOUT_S)


async def play(url: str, db: Path, operator_key: bytes, wire: Wire, story: Scenario) -> None:
    """The story; fills ``story`` with every canary it used."""
    clients: list[Client] = []

    async def online(handle: str, kind: str = "user") -> Client:
        store = RecordingKeyStore()
        client = Client(store, operator_key=operator_key)
        token = wire_tap.set(wire.tap)
        try:
            await within(client.connect(url))
        finally:
            wire_tap.reset(token)
        await within(client.register(handle, kind))  # type: ignore[arg-type]
        story.stores.append(store)
        story.handles.append(handle)
        story.identity_keys.append(client.sessions.identity.identity_public)
        clients.append(client)
        return client

    airline_messages: asyncio.Queue[Message] = asyncio.Queue()
    away = story.text("away")
    airline = Business(await online("airline", "business"), away_message=away,
                       on_message=airline_messages.put)  # fmt: skip
    # No opening hours: the desk is always closed, so every customer chat gets the away reply.
    await within(airline.publish_profile(display_name="Canary Air", timezone="Europe/Berlin",
                                         hours=[]))  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert relay_cli(["admin", "verify-business", "airline", "--name", "Canary Air",
                          "--operator-key", str(db.parent / "operator.key"),
                          "--db", str(db)]) == 0  # fmt: skip
    user = await online("alice")
    friend = await online("bob")
    airline.start()
    user_inbox, friend_inbox = Inbox(user), Inbox(friend)
    try:
        explanation = story.text("explanation")
        await within(airline.request_consent("alice", ["utility"], explanation))
        assert (await user_inbox.next()).body == explanation
        assert (await within(user.business_info("airline"))).verified
        await within(user.grant("airline", ["utility"]))

        notification = story.text("notification")
        sent = await within(airline.notify("utility", notification, to=["alice"]))
        assert sent.sent == ["alice"]
        assert (await user_inbox.next()).body == notification

        question = story.text("question")
        await within(user.send("airline", question))
        assert (await within(airline_messages.get())).body == question
        assert (await user_inbox.next()).body == away
        answer = story.text("service-reply")
        await within(airline.reply("alice", answer))
        assert (await user_inbox.next()).body == answer

        for _ in range(3):  # both directions, several ratchet steps
            hello = story.text("user-to-user")
            await within(user.send("bob", hello))
            got = await friend_inbox.next()
            assert got.body == hello
            read = Content(await within(friend.send_read_receipt("alice", [got.msg_id])),
                           Receipt(ReceiptType.READ, (got.msg_id,)))  # fmt: skip
            story.receipts.append(encode_content(read))
            reply = story.text("user-to-user")
            await within(friend.send("alice", reply))
            assert (await user_inbox.next()).body == reply
        # Bob's read receipts came before his replies (one session, in order).
        assert {r.type for r in user_inbox.receipts} == {ReceiptType.READ, ReceiptType.DELIVERED}

        await within(user.block("airline"))
        refused = await within(airline.notify("utility", story.text("refused"), to=["alice"]))
        assert refused.refused == ["alice"]

        # The database as it is while the relay runs: WAL and SHM hold recent writes.
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{db}{suffix}")
            if path.exists():
                story.live_files["db" + (suffix or "")] = path.read_bytes()
                story.live_modes["db" + (suffix or "")] = stat.S_IMODE(path.stat().st_mode)
    finally:
        for inbox in (user_inbox, friend_inbox):
            inbox.task.cancel()
        await airline.close()
        for client in clients[1:]:
            await client.close()


def forms(value: bytes) -> list[bytes]:
    """The ways a value could leak: raw, hex, base64, base64url (without padding)."""
    return [
        value,
        value.hex().encode(),
        base64.b64encode(value).rstrip(b"="),
        base64.urlsafe_b64encode(value).rstrip(b"="),
    ]


def hits(sources: dict[str, bytes], values: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """(source, value) for each value found in a source, in any of its forms."""
    found = []
    lowered = {name: data.lower() for name, data in sources.items()}  # hex in either case
    for value in values:
        patterns = forms(value)
        for name, data in sources.items():
            if any(p in data for p in patterns) or patterns[1] in lowered[name]:
                found.append((name, value))
    return found


@pytest.mark.slow
def test_no_canary_reaches_the_relay_database_logs_or_wire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "relay.db"
    log_path = tmp_path / "relay.log"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert relay_cli(["admin", "keygen", "--out", str(tmp_path / "operator.key")]) == 0
    operator_key = bytes.fromhex(out.getvalue().strip())
    wire, story = Wire(), Scenario()
    with log_path.open("wb") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "blindrelay.server.cli", "serve", "--port", "0",
             "--db", str(db), "--log-level", "DEBUG"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            umask=0,  # the most permissive an operator could run it with
        )  # fmt: skip
        try:
            assert relay.stdout is not None
            line = relay.stdout.readline().decode().strip()
            assert line.startswith("listening "), line
            asyncio.run(play(line.removeprefix("listening "), db, operator_key, wire, story))
        finally:
            relay.terminate()
            relay.wait(timeout=10)
            if relay.stdout is not None:
                relay.stdout.close()
    assert relay.returncode == 0
    # SPEC §11.2: every file the relay and ``blindrelay admin`` write is the owner's only.
    assert story.live_modes == {"db": 0o600, "db-wal": 0o600, "db-shm": 0o600}
    assert stat.S_IMODE((tmp_path / "operator.key").stat().st_mode) == 0o600

    sources = {f"{name} (live)": data for name, data in story.live_files.items()}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            sources["db" + suffix + " (stopped)"] = path.read_bytes()
    # Then every page folded into the main file, as a backup of it would hold them.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sources["db (checkpointed)"] = db.read_bytes()
    sources["logs"] = log_path.read_bytes()
    sources["frames"] = b"".join(wire.messages)

    texts = [t.encode() for t in story.texts]
    keys = set().union(*(store.secrets for store in story.stores))
    canaries = [*texts, *story.receipts, *keys]
    assert len(story.texts) >= 12 and len(story.receipts) == 3 and len(keys) > 300

    found = hits(sources, canaries)
    sizes = ", ".join(f"{name} {len(data)} B" for name, data in sources.items())
    with capsys.disabled():
        print(
            f"\ncanaries: {len(canaries)} values ({len(texts)} texts, {len(story.receipts)}"
            f" receipts, {len(keys)} keys and key records); scanned {sizes}; hits {len(found)}"
        )
    assert found == [], found

    # Positive controls: the scanner finds what the relay legitimately holds …
    public = [h.encode() for h in story.handles] + story.identity_keys
    for name in ("db-wal (live)", "db (checkpointed)", "logs", "frames"):
        assert {v for _, v in hits({name: sources[name]}, public)} >= {b"alice", b"bob"}, name
    assert len(hits({"db": sources["db (checkpointed)"]}, story.identity_keys)) == 3
    # … and each canary form planted in a copy of the database.
    planted = texts[0]
    for form in forms(planted):
        copy = {"db": sources["db (checkpointed)"] + form}
        assert hits(copy, [planted]) == [("db", planted)]
    key = next(iter(keys))
    assert hits({"logs": sources["logs"] + key.hex().upper().encode()}, [key]) == [("logs", key)]
