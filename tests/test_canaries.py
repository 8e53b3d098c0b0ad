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

The clients reach the relay over plain ``ws://`` through a TCP proxy that records
every byte both ways (:class:`SocketCapture`): what a network observer sees. It
must hold none of the canaries and, since every frame travels inside the Noise
channel (SPEC §1.3, §11.0), no handle and no identity key either — while the frames
the clients tapped inside the channel hold both, and the capture holds the
WebSocket upgrade (the scanner does read it).

The same story runs on the PostgreSQL store (threat model T26): there every table's
rows, the WAL the server wrote during the story and every hint published for other
workers are searched, with their own positive controls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import secrets
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from blindrelay.client.business import Business
from blindrelay.client.keystore import (
    MemoryKeyStore,
    OneTimePreKeyRecord,
    OurIdentity,
    SignedPreKeyRecord,
)
from blindrelay.client.sdk import Client, Message, ReceiptEvent
from blindrelay.client.transport import tapped
from blindrelay.protocol.content import Content, Receipt, ReceiptType, encode_content
from blindrelay.protocol.crypto.session import Session
from blindrelay.server.admin import public_key_of
from blindrelay.server.cli import main as relay_cli
from blindrelay.server.routing import CHANNEL as HINT_CHANNEL
from blindrelay.server.routing import HintKind, HintSeal, hint_key
from blindrelay.server.routing_links import split_address

from .pg import PostgresDatabase

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
    """Every frame each client sent or received inside its channel (the relay's whole
    I/O, as the relay reads it), and every byte on the sockets (``socket``)."""

    messages: list[bytes] = field(default_factory=list)
    socket: bytearray = field(default_factory=bytearray)

    def tap(self, _direction: str, data: bytes) -> None:
        self.messages.append(data)


class SocketCapture:
    """A TCP proxy on 127.0.0.1 in front of the relay that records every byte both ways,
    as a network observer on a plain ``ws://`` path would (SPEC §11.0)."""

    def __init__(self, relay_url: str, record: bytearray) -> None:
        host, port = relay_url.removeprefix("ws://").rsplit(":", 1)
        self.relay = (host, int(port))
        self.record = record
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> SocketCapture:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay_reader, relay_writer = await asyncio.open_connection(*self.relay)
        await asyncio.gather(
            self._pipe(reader, relay_writer), self._pipe(relay_reader, writer),
            return_exceptions=True,
        )  # fmt: skip

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.record += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


class Inbox:
    """A client's decrypted messages, awaited one by one."""

    def __init__(self, client: Client) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.receipts: list[ReceiptEvent] = []
        self.task = asyncio.create_task(self._read(client))
        self.receipts_task = asyncio.create_task(self._read_receipts(client))

    async def _read(self, client: Client) -> None:
        async for message in client.messages():
            await self.queue.put(message)

    async def _read_receipts(self, client: Client) -> None:
        async for receipt in client.receipts():
            self.receipts.append(receipt)

    async def next(self) -> Message:
        """The next message; receipts are read apart, into ``receipts``."""
        return await asyncio.wait_for(self.queue.get(), TIMEOUT_S)


@dataclass
class Scenario:
    texts: list[str] = field(default_factory=list)
    receipts: list[bytes] = field(default_factory=list)
    stores: list[RecordingKeyStore] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    identity_keys: list[bytes] = field(default_factory=list)
    live_files: dict[str, bytes] = field(default_factory=dict)
    scrapes: list[bytes] = field(default_factory=list)
    """Every answer of the relays' /metrics, /healthz and /readyz, taken while the story
    ran and once more at its end (issue 19: they are scanned like the rest)."""
    live_modes: dict[str, int] = field(default_factory=dict)

    def text(self, label: str) -> str:
        value = canary(label)
        self.texts.append(value)
        return value


async def within(awaitable):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(awaitable, TIMEOUT_S)


async def play(
    urls: list[str],
    store_args: list[str],
    operator_key: bytes,
    operator_key_path: Path,
    wire: Wire,
    story: Scenario,
    snapshot: Callable[[], None],
) -> None:
    """The story; fills ``story`` with every canary it used. Clients connect to ``urls``
    in turn (with two workers: the airline and bob on the first, alice on the second, so
    every conversation crosses). ``store_args`` name the relay's store for ``blindrelay
    admin``; ``snapshot`` reads the store while the relay still runs, after the last
    message."""
    clients: list[Client] = []

    async def online(handle: str, kind: str = "user") -> Client:
        store = RecordingKeyStore()
        client = Client(store, operator_key=operator_key, open_transport=tapped(wire.tap))
        await within(client.connect(urls[len(clients) % len(urls)]))
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
                          "--operator-key-file", str(operator_key_path),
                          *store_args]) == 0  # fmt: skip
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
        await within(airline.wait_for_consent("alice", "utility", timeout=TIMEOUT_S))

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
        assert refused.skipped == ["alice"]  # not sent, or refused by the relay

        snapshot()
    finally:
        for inbox in (user_inbox, friend_inbox):
            inbox.task.cancel()
            inbox.receipts_task.cancel()
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


def keygen(directory: Path) -> tuple[bytes, Path]:
    """An operator key pair: the public half, and the path of the file with the seed."""
    path = directory / "operator.key"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert relay_cli(["admin", "keygen", "--out", str(path)]) == 0
    return public_key_of(out.getvalue()), path


def run_story(
    store_args: list[str],
    tmp_path: Path,
    snapshot: Callable[[Scenario], None],
    workers: int = 1,
    started: Callable[[], None] = lambda: None,
) -> tuple[Wire, Scenario, bytes]:
    """``workers`` × ``blindrelay serve`` on the named store (subprocesses, DEBUG logs,
    umask 0) while the story plays, ``started`` called once they all listen; returns the
    wire, the story and the relays' complete log output."""
    operator_key, operator_key_path = keygen(tmp_path)
    wire, story = Wire(), Scenario()
    logs = [tmp_path / f"relay{n}.log" for n in range(workers)]
    relays: list[subprocess.Popen[bytes]] = []
    metrics = [f"http://127.0.0.1:{free_port()}" for _ in logs]

    def scrape() -> None:
        for base in metrics:
            for path in ("/metrics", "/healthz", "/readyz"):
                with urllib.request.urlopen(base + path, timeout=10) as answer:
                    story.scrapes.append(answer.read())

    try:
        urls = []
        for log_path, base in zip(logs, metrics, strict=True):
            with log_path.open("wb") as log:
                relay = subprocess.Popen(
                    [sys.executable, "-m", "blindrelay.server.cli", "serve", "--port", "0",
                     *store_args, "--log-level", "DEBUG", "--metrics-listen",
                     base.removeprefix("http://"),
                     "--sth-interval-s", "0.2"],  # a fresh badge is shown once logged
                    stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                    umask=0,  # the most permissive an operator could run it with
                )  # fmt: skip
            relays.append(relay)
            assert relay.stdout is not None
            line = relay.stdout.readline().decode().strip()
            assert line.startswith("listening "), line
            urls.append(line.removeprefix("listening "))
        started()

        async def captured() -> None:
            async with contextlib.AsyncExitStack() as stack:
                proxied = [
                    (await stack.enter_async_context(SocketCapture(url, wire.socket))).url
                    for url in urls
                ]
                await play(proxied, store_args, operator_key, operator_key_path, wire, story,
                           lambda: (scrape(), snapshot(story)))  # fmt: skip

        asyncio.run(captured())
        scrape()  # after the story: every counter and histogram it moved
    finally:
        for relay in relays:
            relay.terminate()
            relay.wait(timeout=10)
            if relay.stdout is not None:
                relay.stdout.close()
    assert [relay.returncode for relay in relays] == [0] * workers
    # SPEC §11.2: every file ``blindrelay admin`` writes is the owner's only.
    assert stat.S_IMODE(operator_key_path.stat().st_mode) == 0o600
    return wire, story, b"".join(log.read_bytes() for log in logs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_were_scraped(story: Scenario) -> bytes:
    """The scraped answers, after checking they are what they claim: the story's frames
    counted, the relays ready (a positive control for the scan of them)."""
    scraped = b"".join(story.scrapes)
    assert b'blindrelay_frames_received_total{type="SEND"}' in scraped
    assert b"ready\n" in scraped and b"ok\n" in scraped
    return scraped


def network_sees_nothing_but_sizes(sources: dict[str, bytes], story: Scenario) -> None:
    """SPEC §11.0: the bytes on a plain ``ws://`` socket hold no handle and no identity
    key, where the frames inside the channel hold them; the capture is not empty (it
    holds the WebSocket upgrade, and more bytes than the frames with their tags)."""
    socket, frames = sources["socket"], sources["frames"]
    public = [h.encode() for h in story.handles] + story.identity_keys
    assert hits({"socket": socket}, public) == []
    assert {v for _, v in hits({"frames": frames}, public)} >= {b"alice", b"bob", b"airline"}
    assert b"Sec-WebSocket-Protocol: blindrelay.v2" in socket
    assert len(socket) > len(frames)


def canaries_of(story: Scenario) -> tuple[list[bytes], set[bytes]]:
    """Every canary of the story (texts, receipts, keys), and the keys alone."""
    texts = [t.encode() for t in story.texts]
    keys = set().union(*(store.secrets for store in story.stores))
    assert len(story.texts) >= 12 and len(story.receipts) == 3 and len(keys) > 300
    return [*texts, *story.receipts, *keys], keys


def report(
    capsys: pytest.CaptureFixture[str],
    story: Scenario,
    canaries: list[bytes],
    keys: set[bytes],
    sources: dict[str, bytes],
    found: list[tuple[str, bytes]],
) -> None:
    sizes = ", ".join(f"{name} {len(data)} B" for name, data in sources.items())
    with capsys.disabled():
        print(
            f"\ncanaries: {len(canaries)} values ({len(story.texts)} texts,"
            f" {len(story.receipts)} receipts, {len(keys)} keys and key records);"
            f" scanned {sizes}; hits {len(found)}"
        )


@pytest.mark.slow
def test_no_canary_reaches_the_relay_database_logs_or_wire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "relay.db"

    def snapshot(story: Scenario) -> None:
        """The database as it is while the relay runs: WAL and SHM hold recent writes."""
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{db}{suffix}")
            if path.exists():
                story.live_files["db" + (suffix or "")] = path.read_bytes()
                story.live_modes["db" + (suffix or "")] = stat.S_IMODE(path.stat().st_mode)

    wire, story, logs = run_story(["--db", str(db)], tmp_path, snapshot)
    # SPEC §11.2: every file the relay writes is the owner's only.
    assert story.live_modes == {"db": 0o600, "db-wal": 0o600, "db-shm": 0o600}

    sources = {f"{name} (live)": data for name, data in story.live_files.items()}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            sources["db" + suffix + " (stopped)"] = path.read_bytes()
    # Then every page folded into the main file, as a backup of it would hold them.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sources["db rows"] = sqlite_rows(conn)
    sources["db (checkpointed)"] = db.read_bytes()
    sources["logs"] = logs
    sources["frames"] = b"".join(wire.messages)
    sources["socket"] = bytes(wire.socket)
    sources["metrics"] = metrics_were_scraped(story)

    canaries, keys = canaries_of(story)
    found = hits(sources, canaries)
    report(capsys, story, canaries, keys, sources, found)
    assert found == [], found
    network_sees_nothing_but_sizes(sources, story)
    public = [h.encode() for h in story.handles] + story.identity_keys
    assert hits({"metrics": sources["metrics"]}, public) == []  # not even who

    # Positive controls: the scanner finds what the relay legitimately holds …
    public = [h.encode() for h in story.handles] + story.identity_keys
    for name in ("db-wal (live)", "db (checkpointed)", "db rows", "logs", "frames"):
        assert {v for _, v in hits({name: sources[name]}, public)} >= {b"alice", b"bob"}, name
    assert len(hits({"db": sources["db (checkpointed)"]}, story.identity_keys)) == 3
    assert len(hits({"db rows": sources["db rows"]}, story.identity_keys)) == 3
    # … and each canary form planted in a copy of the database.
    planted = story.texts[0].encode()
    for form in forms(planted):
        copy = {"db": sources["db (checkpointed)"] + form}
        assert hits(copy, [planted]) == [("db", planted)]
    key = next(iter(keys))
    assert hits({"logs": logs + key.hex().upper().encode()}, [key]) == [("logs", key)]


# --- the PostgreSQL store ----------------------------------------------------------


def lsn(text: str) -> int:
    """A WAL position ``X/Y`` as a byte offset."""
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


def sqlite_rows(conn: sqlite3.Connection) -> bytes:
    """Every value of every row, read through SQLite: a value longer than its page goes
    on in overflow pages, each starting with the next one's number, so in the file's raw
    bytes a canary in it may be split (as in PostgreSQL's WAL, :func:`wal_record_bytes`)."""
    values: list[bytes] = []
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    for (table,) in tables:
        for row in conn.execute(f'SELECT * FROM "{table}"'):  # the file's own table names
            values += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    return b"\n".join(values)


XLP_LONG_HEADER = 0x0002
"""``xlp_info`` bit of a WAL page that starts a segment: its header is the long one."""
SHORT_PAGE_HEADER, LONG_PAGE_HEADER = 24, 40
"""``SizeOfXLogShortPHD`` and ``SizeOfXLogLongPHD`` (PostgreSQL's xlog_internal.h,
MAXALIGNed on 64-bit machines)."""


def wal_record_bytes(raw: bytes, base: int, start: int, end: int, block: int) -> bytes:
    """The bytes of the WAL's records from LSN ``start`` to ``end``, out of ``raw``: the
    segment files from LSN ``base`` (a segment's start) on, without the header of each
    ``block``-byte page. A record that does not fit on a page goes on after the next
    page's header, so a value it holds may sit on both sides of one: found in raw
    bytes only when it happens to miss every page boundary. (An identity key written
    once lay across one: the positive control below failed one run in a few hundred;
    and a canary so placed would be missed.)"""
    records = bytearray()
    first = (start - base) // block * block
    for page in range(first, end - base, block):
        info = int.from_bytes(raw[page + 2 : page + 4], sys.byteorder)
        header = LONG_PAGE_HEADER if info & XLP_LONG_HEADER else SHORT_PAGE_HEADER
        records += raw[max(page + header, start - base) : min(page + block, end - base)]
    return bytes(records)


def test_a_value_across_a_wal_page_boundary_is_found() -> None:
    """The WAL scanner reads records, not pages: a canary split by a page header shows."""
    block = 64  # PostgreSQL's are 8 KiB; the layout is the same
    value = b"canary-across-a-page-boundary"

    def page(info: int, header: int, body: bytes) -> bytes:
        head = bytes(2) + info.to_bytes(2, sys.byteorder) + bytes(header - 4)
        return head + body.ljust(block - header, b"\x00")

    raw = (
        page(XLP_LONG_HEADER, LONG_PAGE_HEADER, b"x" * 14 + value[:10])
        + page(0, SHORT_PAGE_HEADER, value[10:])
        + page(0, SHORT_PAGE_HEADER, b"")
    )
    base = 1 << 24
    assert value not in raw  # what the raw window showed
    assert hits({"wal": wal_record_bytes(raw, base, base + 3, base + 3 * block, block)},
                [value]) == [("wal", value)]  # fmt: skip


class WalWindow:
    """The WAL's record bytes the server writes between :meth:`open` and :meth:`read`
    (page headers left out: :func:`wal_record_bytes`).

    A physical replication slot, reserved at the start, keeps every segment of the window
    on disk even if a checkpoint runs meanwhile. Reading the segment files needs the same
    host and file access to the data directory (CI and these machines: root, local
    server); the scan is only meaningful with ``wal_compression=off``, checked here.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.slot = f"canaries_{secrets.token_hex(6)}"
        self.start = 0

    async def open(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            assert await conn.fetchval("SHOW wal_compression") == "off"
            await conn.execute("SELECT pg_create_physical_replication_slot($1, true)", self.slot)
            self.start = lsn(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
        except BaseException:
            await conn.close()
            raise
        await conn.close()

    async def read(self) -> bytes:
        conn = await asyncpg.connect(self.url)
        try:
            # Up to what has been written to the files (synchronous_commit=on: every commit).
            end = lsn(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
            size = int(await conn.fetchval(
                "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"
            ))  # fmt: skip
            block = int(await conn.fetchval("SHOW wal_block_size"))
            wal_dir = Path(await conn.fetchval("SHOW data_directory")) / "pg_wal"
            timeline = await conn.fetchval("SELECT timeline_id FROM pg_control_checkpoint()")
            per_id = 0x100000000 // size  # segments per "log id" in a WAL file's name
            names = [
                f"{timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"
                for segment in range(self.start // size, (end - 1) // size + 1)
            ]
        finally:
            await conn.close()
        base = self.start - self.start % size
        data = b"".join((wal_dir / name).read_bytes() for name in names)  # the slot holds them
        return wal_record_bytes(data, base, self.start, end, block)

    async def close(self) -> None:
        """Drop the slot, always: a forgotten one would keep every later WAL segment."""
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = $1",
                self.slot,
            )
        finally:
            await conn.close()


async def dump_tables(url: str) -> dict[str, bytes]:
    """Every row of every table in the relay's database, raw (``COPY … binary``)."""
    conn = await asyncpg.connect(url)
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )]  # fmt: skip
        dumps = {}
        for table in tables:
            out = io.BytesIO()
            await conn.copy_from_table(table, output=out, format="binary")
            dumps[table] = out.getvalue()
        return dumps
    finally:
        await conn.close()


class HintTap:
    """Every hint the relay publishes for other workers (``NOTIFY``), as a listening
    worker would receive it; they never reach the WAL, so they are searched apart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.payloads: list[bytes] = []
        self.conn: asyncpg.Connection | None = None

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload.encode())

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.url)
        await self.conn.add_listener(HINT_CHANNEL, self._heard)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def hint_seal_of(url: str) -> HintSeal:
    """The seal the relay's workers share: derived from its seed, as each of them does."""
    conn = await asyncpg.connect(url)
    try:
        return HintSeal(hint_key(bytes(await conn.fetchval("SELECT seed FROM relay_identity"))))
    finally:
        await conn.close()


class LinkTap:
    """Every byte the workers' peer links carry (``server/routing_links.py``): each
    worker's advertised address is pointed at a forwarder of the test's, which records
    both directions and passes them on untouched (the handshake too)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.data: list[bytes] = []
        self.servers: list[asyncio.Server] = []

    async def open(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            for worker, address in await conn.fetch("SELECT worker, address FROM workers"):
                host, port = split_address(address)
                server = await asyncio.start_server(
                    lambda r, w, h=host, p=port: self._forward(h, p, r, w), "127.0.0.1", 0
                )
                self.servers.append(server)
                tapped_at = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
                await conn.execute(
                    "UPDATE workers SET address = $2 WHERE worker = $1", worker, tapped_at
                )
        finally:
            await conn.close()

    async def _forward(
        self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream = await asyncio.open_connection(host, port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    self.data.append(data)
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer),
                             return_exceptions=True)  # fmt: skip

    async def close(self) -> None:
        for server in self.servers:
            server.close()


async def plant(url: str, value: bytes) -> None:
    """A positive control for the WAL scan: a value written in the window by SQL."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS canary_control (value bytea)")
        await conn.execute("INSERT INTO canary_control VALUES ($1)", value)
    finally:
        await conn.close()


@pytest.mark.slow
def test_no_canary_reaches_the_postgresql_store_its_wal_logs_or_wire(
    pg_database: PostgresDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same story on ``--store postgresql://…`` (issue 14, threat model T26), on two
    workers with every conversation crossing: every table's rows (raw, as a backup would
    hold them), every WAL byte the server wrote meanwhile (what a standby or a WAL
    archive receives), every hint (NOTIFY) and every byte of the peer links between the
    workers are searched."""
    url = pg_database.url
    wal, hints, links = WalWindow(url), HintTap(url), LinkTap(url)
    planted = canary("planted").encode()
    live: dict[str, bytes] = {}

    def snapshot(story: Scenario) -> None:
        live.update(asyncio.run_coroutine_threadsafe(dump_tables(url), loop).result())

    # ``snapshot`` runs inside the story's event loop: read the tables from another one.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        for start in (wal.open(), hints.open()):
            asyncio.run_coroutine_threadsafe(start, loop).result()
        wire, story, logs = run_story(
            ["--store", url], tmp_path, snapshot, workers=2,
            started=lambda: asyncio.run_coroutine_threadsafe(links.open(), loop).result(),
        )  # fmt: skip
        asyncio.run_coroutine_threadsafe(plant(url, planted), loop).result()
        wal_bytes = asyncio.run_coroutine_threadsafe(wal.read(), loop).result()
        stopped = asyncio.run_coroutine_threadsafe(dump_tables(url), loop).result()
        seal = asyncio.run_coroutine_threadsafe(hint_seal_of(url), loop).result()
    finally:
        for close in (links.close(), hints.close(), wal.close()):
            asyncio.run_coroutine_threadsafe(close, loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    relay_tables = {name: data for name, data in stopped.items() if name != "canary_control"}
    assert {"queue", "accounts", "statements"} <= relay_tables.keys(), sorted(relay_tables)
    sources = {f"table {name} (live)": data for name, data in live.items()}
    sources.update({f"table {name} (stopped)": data for name, data in relay_tables.items()})
    sources["wal"] = wal_bytes
    # Opened too (hints are sealed, routing's docstring; an auditor holds the seed): an
    # envelope rides its hint in base64, where a canary's own base64 form would only
    # show at a multiple of three bytes.
    heard = [seal.open(payload.decode()) for payload in hints.payloads]
    sources["hints"] = b"\n".join(hints.payloads + [hint.envelope for hint in heard])
    sources["links"] = b"".join(links.data)
    sources["logs"] = logs
    sources["frames"] = b"".join(wire.messages)
    sources["socket"] = bytes(wire.socket)
    sources["metrics"] = metrics_were_scraped(story)

    canaries, keys = canaries_of(story)
    found = hits(sources, canaries)
    report(capsys, story, canaries, keys, sources, found)
    assert found == [], found
    network_sees_nothing_but_sizes(sources, story)

    # Positive controls: the scanner finds what the relay legitimately holds, in the
    # tables and in the WAL window, and a value planted by SQL inside the window.
    tables = b"".join(relay_tables.values())
    public = [h.encode() for h in story.handles]
    for name, data in (("tables", tables), ("wal", wal_bytes)):
        assert {v for _, v in hits({name: data}, public)} >= {b"alice", b"bob"}, name
    assert len(hits({"tables": tables}, story.identity_keys)) == 3
    assert len(hits({"wal": wal_bytes}, story.identity_keys)) == 3  # registered in the window
    assert hits({"wal": wal_bytes}, [planted]) == [("wal", planted)]
    # The hints were heard (the first envelope to cross rides one: a link is made when
    # first needed), and any envelope one carried is the very ciphertext its recipient
    # received; the links carried DELIVER frames, byte for byte as received.
    assert any(hint.kind is HintKind.ENVELOPE for hint in heard), heard
    # Sealed: whoever can LISTEN without the seed reads no handle in them.
    assert hits({"hints": b"\n".join(hints.payloads)}, public) == []
    delivered = [m for m in wire.messages if len(m) > 200 and m in sources["links"]]
    assert len(delivered) >= len(story.texts) // 2, len(delivered)
    envelopes = [hint.row()[9] for hint in heard if hint.kind is HintKind.ENVELOPE]
    assert all(envelope in sources["frames"] for envelope in envelopes)
