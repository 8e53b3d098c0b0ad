"""The relay link (client/link.py): connect, reconnect with backoff, log in again, requests.

The unit tests drive a :class:`RelayLink` over the in-memory relay of
:mod:`.fake_relay`, with an account that records what the link reports and a
backoff that records each wait it is asked for (and waits for none); the last
tests, the same through the SDK against a real relay on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blindrelay.client.connection import Connection, NoAnswer
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.link import MAX_UNANSWERED, Backoff, LinkHandlers, RelayLink
from blindrelay.client.transport import ConnectionLost, tapped
from blindrelay.client.trust import RelayKeyChanged, RelayKeyPin
from blindrelay.protocol import frames
from blindrelay.protocol.errors import AuthenticationFailed, ErrorCode, HandleTaken, InvalidPrekeys
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import serve

from ..relays import relay_at
from .fake_relay import (
    OTHER_RELAY_KEY,
    URL,
    FakeRelay,
    RelayEnd,
    answer_plainly,
    signer,
    welcome,
)
from .harness import Inbox, make_client, online, replace_relay_key, run, store_outage, within

KEY = SigningKey(b"\x33" * 32)
"""The account's identity key."""


STABLE_MS = 10_000
"""The test backoff's ``stable_s``, in the fake clock's milliseconds."""


class Waits:
    """A backoff that records the attempt number of each wait and waits for none."""

    stable_s = STABLE_MS / 1000

    def __init__(self) -> None:
        self.attempts: list[int] = []

    def delay(self, attempt: int, jitter: object) -> float:
        self.attempts.append(attempt)
        return 0.0


class Account:
    """What a link reports to: logs in as ``alice`` and records the rest."""

    def __init__(self, relay: FakeRelay) -> None:
        self.store = MemoryKeyStore()
        self.waits = Waits()
        self.link = RelayLink(
            RelayKeyPin(self.store), clock=relay.clock, backoff=self.waits,  # type: ignore[arg-type]
            jitter=lambda: 0.5, open_transport=relay.open,  # type: ignore[arg-type]
        )  # fmt: skip
        self.logins = 0
        self.welcomes: list[frames.Welcome] = []
        self.online = asyncio.Event()
        self.stopped: list[BaseException] = []
        self.link.listen(
            LinkHandlers(
                deliver_received=lambda conn, deliver: None,
                prekeys_low=lambda conn, remaining: None,
                send_answered=lambda msg_id, at, error: None,
                log_in=self.log_in,
                authenticated=self.authenticated,
                online=self.went_online,
                stopped=self.stopped.append,
            )
        )

    async def register(self, handle: str = "alice") -> None:
        conn = await within(self.link.wait_ready())
        request_id = conn.machine.register(handle, "user", KEY.verify_key.encode(), signer(KEY))
        await within(self.link.authenticate(conn, request_id))

    async def log_in(self, conn: Connection) -> None:
        self.logins += 1
        await self.link.authenticate(conn, conn.machine.login("alice", signer(KEY)))

    async def authenticated(self, conn: Connection, welcome: frames.Welcome) -> None:
        pass

    def went_online(self, welcome: frames.Welcome) -> None:
        self.welcomes.append(welcome)
        self.online.set()

    async def back_online(self) -> None:
        self.online.clear()
        await within(self.online.wait())


async def online_account(relay: FakeRelay) -> Account:
    account = Account(relay)
    await within(account.link.connect(URL))
    await account.register()
    return account


async def test_reconnects_wait_longer_after_each_failure_and_start_again_once_online() -> None:
    relay = FakeRelay()
    account = await online_account(relay)
    relay.refusals = 3  # the relay cannot be reached three times
    relay.ends[0].drop()
    await account.back_online()
    assert account.waits.attempts == [0, 1, 2, 3]
    assert len(relay.ends) == 2

    relay.clock.advance(STABLE_MS)  # online that long: the next wait is the first again
    relay.ends[1].drop()
    await account.back_online()
    assert account.waits.attempts == [0, 1, 2, 3, 0]
    await account.link.close()


async def test_connections_dropped_soon_after_going_online_keep_the_backoff_growing() -> None:
    """T58: any connection that had gone online started the backoff again, so a relay (or
    a box on the way) that closes every connection just after its WELCOME was reconnected
    to every half second for ever, a handshake and a LOGIN each time (attempts
    [0, 0, 0, 0]). Now only one that stayed online for the backoff's ``stable_s`` does."""
    relay = FakeRelay()
    account = await online_account(relay)
    for _ in range(4):
        relay.clock.advance(STABLE_MS - 1)
        relay.ends[-1].drop()
        await account.back_online()
    assert len(account.welcomes) == 5  # each connection went online before it was dropped
    assert account.waits.attempts == [0, 1, 2, 3]
    relay.clock.advance(STABLE_MS)
    relay.ends[-1].drop()
    await account.back_online()
    assert account.waits.attempts == [0, 1, 2, 3, 0]
    await account.link.close()


async def test_connections_that_end_before_login_keep_the_backoff_growing() -> None:
    relay = FakeRelay()
    account = await online_account(relay)
    cut = 0

    def drop_two_logins(end: RelayEnd, frame: frames.Frame) -> None:
        nonlocal cut
        if isinstance(frame, frames.Login) and cut < 2:
            cut += 1
            end.drop()
        else:
            answer_plainly(end, frame)

    relay.answer = drop_two_logins
    relay.ends[0].drop()
    await account.back_online()
    assert account.waits.attempts == [0, 1, 2]  # never online in between: no reset
    assert len(relay.ends) == 4
    await account.link.close()


async def test_once_authenticated_every_new_connection_logs_in_by_itself() -> None:
    relay = FakeRelay()
    account = await online_account(relay)
    assert account.link.logs_in_again and account.logins == 0
    for number in (1, 2):
        relay.ends[number - 1].drop()
        await account.back_online()
        (login,) = relay.ends[number].received(frames.Login)
        assert login.handle == "alice"
    assert account.logins == 2 and len(account.welcomes) == 3
    await account.link.close()


async def test_a_link_never_authenticated_reconnects_without_logging_in() -> None:
    relay = FakeRelay()
    account = Account(relay)
    await within(account.link.connect(URL))
    assert not account.link.logs_in_again
    first = await within(account.link.wait_ready())
    relay.ends[0].drop()
    second = await within(relay.connection(1))
    conn = await within(account.link.wait_ready())
    assert conn is not first and conn.relay_key == relay.key.verify_key.encode()
    assert second.received() == [] and account.logins == 0
    await account.register()  # the application authenticates on the new one
    await account.link.close()


async def test_a_taken_handle_ends_its_connection_so_another_is_tried_on_a_fresh_one() -> None:
    relay = FakeRelay()

    def alice_is_taken(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Register) and frame.handle == "alice":
            end.machine.spend_challenge(relay.clock())
            end.refuse(HandleTaken(), re=frame.id)
        else:
            answer_plainly(end, frame)

    relay.answer = alice_is_taken
    account = Account(relay)
    await within(account.link.connect(URL))
    with pytest.raises(HandleTaken):
        await account.register("alice")
    assert relay.ends[0].transport.aborted  # dropped at once, not when its reader noticed
    await account.register("alice.b")
    (register,) = relay.ends[1].received(frames.Register)
    assert register.handle == "alice.b"
    assert relay.ends[1].machine.challenge != relay.ends[0].machine.challenge
    assert not account.link.failed
    await account.link.close()


async def test_a_request_cut_off_by_a_drop_is_sent_again_on_the_next_connection() -> None:
    relay = FakeRelay()
    account = await online_account(relay)

    def answer_on_the_second(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.ProfileFetch):
            if end is relay.ends[1]:
                end.send(frames.Profile(re=frame.id, handle="bob", identity_key=b"\x44" * 32))
        else:
            answer_plainly(end, frame)

    relay.answer = answer_on_the_second
    fetch = asyncio.create_task(
        account.link.request(lambda rid: frames.ProfileFetch(id=rid, handle="bob"))
    )
    await relay.ends[0].wait_for(frames.ProfileFetch)
    relay.ends[0].drop()
    profile = await within(fetch)
    assert isinstance(profile, frames.Profile) and profile.handle == "bob"
    assert [f.handle for f in relay.ends[1].received(frames.ProfileFetch)] == ["bob"]
    await account.link.close()


async def test_a_reconnect_to_another_relay_key_stops_the_link_before_anything_is_written() -> None:
    relay = FakeRelay()
    account = await online_account(relay)
    assert account.link.online is not None
    relay.key = OTHER_RELAY_KEY
    relay.ends[0].drop()
    await relay.connection(1)
    with pytest.raises(RelayKeyChanged):
        await within(account.link.wait_online())
    assert relay.ends[1].received() == []  # no LOGIN on a relay we do not trust
    assert account.link.failed and isinstance(account.stopped[0], RelayKeyChanged)
    assert account.link.online is None
    await account.link.close()


async def test_waiting_before_connect_and_after_close_raise_at_once() -> None:
    relay = FakeRelay()
    account = Account(relay)
    with pytest.raises(RuntimeError, match="connect"):
        await within(account.link.wait_online())
    await within(account.link.connect(URL))
    with pytest.raises(RuntimeError, match="already connected"):
        await account.link.connect(URL)
    await account.register()
    await account.link.close()
    assert relay.ends[0].transport.closed
    with pytest.raises(ConnectionLost, match="closed"):
        await within(account.link.wait_online())
    assert len(relay.ends) == 1  # a closed link does not reconnect


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=10.0)
    assert [backoff.delay(n, lambda: 1.0) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [backoff.delay(n, lambda: 0.0) for n in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.delay(10_000, lambda: 1.0) == 10.0


# --- Against a real relay ---------------------------------------------------------------


def test_the_server_dropping_the_connection_is_survived_by_reconnecting(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            reconnected = asyncio.Event()
            bob = await online(relay.url, "bob", on_connected=lambda welcome: reconnected.set())
            reconnected.clear()
            await within(alice.send("bob", "before the drop"))
            inbox = Inbox(bob)
            assert (await inbox.next()).body == "before the drop"

            session = relay.ctx.sessions.get("bob")
            assert session is not None
            session.transport.close(1011, "test drop")
            await within(reconnected.wait())
            assert bob.connection_count == 2

            await within(alice.send("bob", "after the drop"))
            assert (await inbox.next()).body == "after the drop"
            await within(bob.send("alice", "still here"))
            assert (await Inbox(alice).next()).body == "still here"
            await inbox.close()
            await bob.close()
            await alice.close()

    run(scenario())


def test_a_login_refused_by_a_store_outage_is_tried_again_on_a_new_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.3 (issue 14): the automatic LOGIN after a reconnect answered 902 (the relay's
    store is down) stopped the client for good. 902 is transient: the client reconnects
    (the challenge is spent) after retry_after and logs in again."""
    stores = store_outage(monkeypatch, outages=0, operation="login_counts")

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            reconnected = asyncio.Event()
            bob = await online(relay.url, "bob", on_connected=lambda welcome: reconnected.set())
            reconnected.clear()
            stores[0].outages = 2  # the next two logins meet the outage
            session = relay.ctx.sessions.get("bob")
            assert session is not None
            session.transport.close(1011, "test drop")
            await within(reconnected.wait())
            assert stores[0].refused == 2
            await within(alice.send("bob", "after the outage"))
            inbox = Inbox(bob)
            assert (await inbox.next()).body == "after the outage"
            for closing in (inbox, alice, bob):
                await closing.close()

    run(scenario())


def test_a_relay_presenting_another_key_is_an_error_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    """Issue 13 item 11: the pinned relay key binds our statements (SPEC §7.4); another key
    is RelayKeyChanged from connect, before any frame of ours is written on that link,
    until the application deliberately accepts the new key."""

    async def scenario() -> None:
        alice_store = MemoryKeyStore()
        async with relay_at(tmp_path) as relay:
            old_key = relay.relay_key
            alice = await online(relay.url, "alice", store=alice_store)
            await alice.close()
            bob = await online(relay.url, "bob")
            await within(bob.send("alice", "queued while the key changes"))
            await bob.close()
        replace_relay_key(tmp_path / "relay.db")
        async with relay_at(tmp_path) as relay:
            assert relay.relay_key != old_key
            written: list[bytes] = []
            alice = make_client(
                alice_store,
                open_transport=tapped(
                    lambda way, data: written.append(data) if way == "out" else None
                ),
            )
            with pytest.raises(RelayKeyChanged) as changed:
                await within(alice.connect(relay.url))
            assert (changed.value.pinned, changed.value.presented) == (old_key, relay.relay_key)
            assert written == []  # no LOGIN, no ACK, no resend on that link
            assert alice.relay_key == old_key  # nothing changed by itself

            alice.accept_relay_key(relay.relay_key)
            await within(alice.connect(relay.url))
            await within(alice.login())
            assert alice.relay_key == relay.relay_key
            assert alice.welcome is not None and alice.welcome.queued == 1  # never acked
            inbox = Inbox(alice)
            assert (await inbox.next()).body == "queued while the key changes"
            await inbox.close()
            await alice.close()

    run(scenario())


def test_a_reconnect_to_a_relay_with_another_key_stops_the_client_with_the_error(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        relay = await serve(RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db"))
        port = int(relay.url.rsplit(":", 1)[1])  # the reconnect finds the new relay there
        alice = await online(relay.url, "alice")
        await relay.close()
        replace_relay_key(tmp_path / "relay.db")
        relay = await serve(RelayConfig(host="127.0.0.1", port=port, db_path=tmp_path / "relay.db"))
        try:
            with pytest.raises(RelayKeyChanged):
                await within(alice.wait_online())
            with pytest.raises(RelayKeyChanged):
                await within(alice.send("alice", "to myself"))
            alice.accept_relay_key(relay.relay_key)
            await within(alice.connect(relay.url))  # logs in again by itself
            await within(alice.wait_online())
            assert alice.connection_count == 2
            await alice.close()
        finally:
            await relay.close()

    run(scenario())


async def refused_login(refusal: str) -> tuple[int, int]:
    """Play a relay that answers a client's first automatic LOGIN (after a drop) with
    ``refusal``, and later ones plainly: how many connections the client opened and how
    many times it was online, once online again after a second drop."""
    relay = FakeRelay()
    connected = asyncio.Event()
    alice = await online(
        URL, "alice", open_transport=relay.open, on_connected=lambda welcome: connected.set()
    )
    refused = False

    def refuse_once(end: RelayEnd, frame: frames.Frame) -> None:
        nonlocal refused
        if isinstance(frame, frames.Login) and not refused:
            refused = True
            if refusal == "prekeys refused":  # the login goes; the upload after it not
                end.machine.verify_login(frame, end.relay.accounts[frame.handle], relay.clock())
                end.send(welcome(frame.id, frame.handle, "user", one_time_prekeys=0))
                return
            end.send(REFUSALS[refusal](frame.id))
        elif isinstance(frame, frames.PrekeysUpload) and len(relay.ends) == 2:
            end.refuse(InvalidPrekeys(), re=frame.id)
        else:
            answer_plainly(end, frame)

    relay.answer = refuse_once
    for _ in range(2):  # online again, and it goes on reconnecting as ever
        connected.clear()
        relay.ends[-1].drop()
        await within(connected.wait())
    assert not alice.link.failed
    await alice.close()
    return len(relay.ends), alice.connection_count


YEARS_MS = 2**53 - 1
"""The largest ``retry_after`` (SPEC §9): 285,616 years."""

REFUSALS: dict[str, Callable[[int], frames.Frame]] = {
    "900": lambda re: frames.Error(code=ErrorCode.INTERNAL_ERROR, re=re),
    "an unknown code": lambda re: frames.Error(code=999, re=re),
    "a 1xx": lambda re: frames.Error(code=ErrorCode.MALFORMED_FRAME, re=re, reason="no"),
    "402 for years": lambda re: frames.Error(
        code=ErrorCode.RATE_LIMITED, re=re, retry_after=YEARS_MS
    ),
    "902 for years": lambda re: frames.Error(
        code=ErrorCode.STORE_UNAVAILABLE, re=re, retry_after=YEARS_MS
    ),
    "a log answer": lambda re: frames.LogHead(re=re, sth=None),
}


@pytest.mark.parametrize("refusal", [*REFUSALS, "prekeys refused"])
async def test_a_relay_refusing_the_automatic_login_is_tried_again_not_obeyed_for_ever(
    refusal: str,
) -> None:
    """T55: the LOGIN a client sends by itself after a drop, answered with any refusal but
    AUTH_FAILED — 900, a code it does not know, a log answer (receivable before WELCOME)
    under the login's id, a 402 or 902 naming years, or a refused prekey upload after the
    WELCOME — stopped the client for good ("client stopped after an error"), or had it
    sleep the years. A relay that fails or lies once costs a reconnection now: dropped,
    retried after the backoff (a ``retry_after`` at most its cap), online again."""
    opened, online_count = await refused_login(refusal)
    assert online_count == 3  # the first, again after the refused one, after the next drop
    assert opened == 4


CLOSING_PUSHES = {
    "901": ErrorCode.SHUTTING_DOWN,
    "105": ErrorCode.TOO_MANY_ERRORS,
    "200": ErrorCode.AUTH_FAILED,  # the authentication timeout's (SPEC §1.2.2)
}


@pytest.mark.parametrize("code", CLOSING_PUSHES)
@pytest.mark.parametrize("when", ["online", "before WELCOME"])
async def test_a_relay_that_leaves_the_connection_open_after_a_closing_error_is_left(
    code: str, when: str
) -> None:
    """T55: after an ERROR that closes (SPEC §9) the relay closes the connection. One that
    left it open kept the client "online" on a connection nothing is written to (sends
    and requests kept for the next connection, which never came), or waiting for ever for
    its automatic LOGIN's answer: the grant below never returned. The client ends such a
    connection itself, and the next one logs in."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open)
    if when == "online":
        relay.ends[0].send(frames.Error(code=CLOSING_PUSHES[code]))
    else:
        pushed = False

        def push_at_login(end: RelayEnd, frame: frames.Frame) -> None:
            nonlocal pushed
            if isinstance(frame, frames.Login) and not pushed:
                pushed = True
                end.send(frames.Error(code=CLOSING_PUSHES[code]))
            else:
                answer_plainly(end, frame)

        relay.answer = push_at_login
        relay.ends[0].drop()
    last = await relay.connection(1 if when == "online" else 2)  # never came before
    await within(last.wait_for(frames.Login))
    await within(alice.wait_online())
    await within(alice.grant("airline", ["utility"]))
    assert last.received(frames.Statement) and len(relay.ends) == (2 if when == "online" else 3)
    await alice.close()


async def test_a_closing_error_answering_a_request_once_online_ends_the_connection() -> None:
    """T55: the same for a closing ERROR under a request's id (a relay lying: only a
    LOGIN or REGISTER is answered with 200): the request raises it, and the connection,
    left open, is ended by the client; the next request goes on a new one."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open)
    refused = False

    def refuse_once(end: RelayEnd, frame: frames.Frame) -> None:
        nonlocal refused
        if isinstance(frame, frames.Statement) and not refused:
            refused = True
            end.send(frames.Error(code=ErrorCode.AUTH_FAILED, re=frame.id))
        else:
            answer_plainly(end, frame)

    relay.answer = refuse_once
    with pytest.raises(AuthenticationFailed):
        await within(alice.grant("airline", ["utility"]))
    await within(alice.grant("airline", ["utility"]), 5)
    assert len(relay.ends) == 2 and relay.ends[1].received(frames.Statement)
    await alice.close()


# --- A relay that never answers a request (T55) -----------------------------------------

QUICK = 0.2
"""The answer timeout these tests give the client (``ANSWER_TIMEOUT_S`` is 60 s)."""


def never_answering(
    kind: type[frames.Frame], answered_from: int | None = None
) -> Callable[[RelayEnd, frames.Frame], None]:
    """A relay that leaves every ``kind`` unanswered — but on connection ``answered_from``
    and later — and answers the rest plainly (keep-alive pings too: the socket is fine)."""

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        number = end.relay.ends.index(end)
        if isinstance(frame, kind) and (answered_from is None or number < answered_from):
            return
        if isinstance(frame, frames.StatementsList):
            end.send(frames.Statements(re=frame.id, statements=[]))
        else:
            answer_plainly(end, frame)

    return answer


async def test_a_request_never_answered_is_asked_again_then_raises_no_answer() -> None:
    """T55: a relay that answers pings but never a request kept the caller waiting for
    ever (here, ``statements()``). The connection on which a request waits longer than
    the answer timeout is dropped, the request asked again on the next one, and after
    ``MAX_UNANSWERED`` connections the call raises NoAnswer."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open, answer_timeout_s=QUICK)
    relay.answer = never_answering(frames.StatementsList)
    with pytest.raises(NoAnswer):
        await within(alice.statements(), 5)
    asked = [len(end.received(frames.StatementsList)) for end in relay.ends]
    assert asked == [1] * MAX_UNANSWERED
    await alice.close()


async def test_a_request_unanswered_once_is_answered_on_the_next_connection() -> None:
    """T55: a relay that lost one request (it restarted before answering) is not given
    up on: the request goes again on the next connection and its answer is returned."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open, answer_timeout_s=QUICK)
    relay.answer = never_answering(frames.StatementsList, answered_from=1)
    assert await within(alice.statements(), 5) == []
    assert len(relay.ends) == 2
    await alice.close()


async def test_the_automatic_login_never_answered_is_tried_on_a_new_connection() -> None:
    """T55: a LOGIN the client sends by itself after a reconnect, never answered, kept
    the client offline for ever; the connection is now dropped and the next logs in."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open, answer_timeout_s=QUICK)
    relay.answer = never_answering(frames.Login, answered_from=2)
    relay.ends[0].drop()
    await (await relay.connection(2)).wait_for(frames.Login)
    await within(alice.wait_online(), 5)
    assert await within(alice.statements(), 5) == []
    await alice.close()
