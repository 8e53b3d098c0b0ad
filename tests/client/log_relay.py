"""A fake relay with a transparency log, and what the log tests build with it
(tests/client/test_logcheck.py, tests/client/test_logcheck_incoming.py).

:class:`LoggingRelay` plays an honest or a lying relay frame by frame: it keeps a log
of entries the test appends, signs heads with its key, and answers BUNDLE_FETCH with
whatever bundle and proof the test chose. A :class:`Writer` plays a contact (or the
relay forging one) whose messages reach alice.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import replace

from blindrelay.client.sdk import Client
from blindrelay.protocol import frames
from blindrelay.protocol.content import Content, Text, decode_content, encode_content
from blindrelay.protocol.crypto.keys import IdentityKeyPair, PreKeyBundle
from blindrelay.protocol.crypto.session import Session, decrypt, encrypt, initiate_session
from blindrelay.protocol.signed import make_statement
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import KeyBinding, StatementLogged
from blindrelay.protocol.transparency.evidence import statement_entry
from blindrelay.protocol.transparency.treehead import sign_tree_head

from ..relays import T0
from .fake_relay import RELAY_KEY, URL, FakeLog, FakeRelay, RelayEnd, answer_plainly, signer
from .harness import within

AIRLINE_SEED = b"\x41" * 32
ALICE_SEED = b"\x61" * 32
FAKE_SEED = b"\x66" * 32

_delivery_ids = itertools.count(1)


class LoggingRelay(FakeRelay):
    """A fake relay with a transparency log: :attr:`bundles` says what BUNDLE_FETCH gets."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[bytes] = []
        self.heads: list[bytes] = []
        self.bundles: list[frames.Bundle] = []
        """Served in turn, the last one again and again."""
        self.fetches = 0
        self.answer = self._answer

    def append(self, *entries: bytes) -> int:
        self.entries.extend(entries)
        return len(self.entries) - 1

    def sign_head(self, key=RELAY_KEY, root: bytes | None = None) -> bytes:
        size = len(self.entries)
        root = root or merkle.root_of([merkle.leaf_hash(e) for e in self.entries])
        signed = sign_tree_head(signer(key), size, root, T0 + len(self.heads))
        self.heads.append(signed)
        return signed

    def proven(self, made: frames.Bundle, index: int, sth: bytes | None = None) -> frames.Bundle:
        size = len(self.entries)
        leaves = [merkle.leaf_hash(e) for e in self.entries]
        proof = _path(leaves, index, size)
        log = frames.LogProof(
            entry=self.entries[index], index=index, proof=tuple(proof), sth=sth or self.heads[-1]
        )
        return replace(made, log=log)

    def _answer(self, end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.BundleFetch):
            self.fetches += 1
            served = self.bundles[min(self.fetches, len(self.bundles)) - 1]
            end.send(replace(served, re=frame.id))
        elif isinstance(frame, frames.LogHeadFetch):
            end.send(frames.LogHead(re=frame.id, sth=self.heads[-1] if self.heads else None))
        elif isinstance(frame, frames.LogConsistencyFetch):
            leaves = [merkle.leaf_hash(e) for e in self.entries]
            proof = _consistency(leaves, frame.first, frame.second)
            end.send(frames.LogConsistency(re=frame.id, proof=tuple(proof)))
        else:
            answer_plainly(end, frame)


def _lookup(leaves: list[bytes]) -> merkle.NodeHashes:
    """The complete subtrees of ``leaves``, as a relay's store keeps them."""
    frontier, nodes = merkle.Frontier(), {}
    for leaf in leaves:
        nodes.update(frontier.append(leaf))
    return lambda wanted: {node: nodes[node] for node in wanted}


def _path(leaves: list[bytes], index: int, size: int) -> list[bytes]:
    return merkle.inclusion_proof(index, size, _lookup(leaves[:size]))


def _consistency(leaves: list[bytes], first: int, second: int) -> list[bytes]:
    return merkle.consistency_proof(first, second, _lookup(leaves[:second]))


def binding(handle: str, seed: bytes, kind: str = "business", at: int = T0) -> bytes:
    key = IdentityKeyPair.from_seed(seed).public
    return KeyBinding(v=1, handle=handle, kind=kind, identity_key=key, at=at).to_bytes()


def filler(n: int) -> list[bytes]:
    return [StatementLogged(v=1, commitment=bytes([i]) * 32, at=T0).to_bytes() for i in range(n)]


def alices_statement(action: str = "grant") -> bytes:
    """alice's signed ``action`` of ``utility`` to shop under the fake relay's key: the
    statement the consent-evidence tests prove logged (or refuse to)."""
    alice = IdentityKeyPair.from_seed(ALICE_SEED)
    return make_statement(
        action, signer="alice", signer_key=alice.public, target="shop",
        relay_key=RELAY_KEY.verify_key.encode(), now_ms=T0, rng=os.urandom,
        categories=("utility",),
    ).sign(alice.sign)  # fmt: skip


def log_holding(statement: bytes) -> FakeLog:
    """A log of three other entries and then ``statement``'s, under a head signed at T0."""
    log = FakeLog()
    log.append(*filler(3), statement_entry(statement))
    log.sign_head(T0)
    return log


def answering(log: FakeLog) -> Callable[[RelayEnd, frames.Frame], None]:
    """A fake relay's ``answer``: the log's frames from ``log``, every other plainly."""

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if not log.answer(end, frame):
            answer_plainly(end, frame)

    return answer


async def customer(relay: LoggingRelay, **options) -> Client:
    client = Client.open(None, open_transport=relay.open, **options)
    await within(client.connect(URL))
    await within(client.register("alice"))
    return client


class Writer:
    """Writes to alice (or the account ``to``) as ``handle`` under the identity key of
    ``seed``: its first message is a prekey message that starts the session, as the relay
    can forge one (it holds alice's published prekeys) or the account itself would send it."""

    def __init__(
        self, relay: FakeRelay, alice: Client, handle: str, seed: bytes, *, to: str = "alice"
    ) -> None:
        self.relay, self.handle = relay, handle
        alice.sessions.prekeys_upload(99, relay_one_time=0, relay_has_signed=False)
        signed = alice.store.current_signed_prekey()
        assert signed is not None
        theirs = PreKeyBundle(
            alice.sessions.identity.identity_public, signed.key_id, signed.public_key,
            signed.signature,
        )  # fmt: skip
        self.session: Session = initiate_session(
            IdentityKeyPair.from_seed(seed), theirs, os.urandom,
            our_handle=handle, their_handle=to,
        )  # fmt: skip

    def deliver(self, text: str, sender_kind: str = "business", sth: bytes | None = None) -> None:
        """A message on the last connection; ``sth``: the tree head it carries (gossip)."""
        msg_id = os.urandom(16)
        self.session, envelope = encrypt(
            self.session, encode_content(Content(msg_id, Text(text), sth)), os.urandom
        )
        deliver = frames.Deliver(
            delivery_id=next(_delivery_ids), sender=self.handle, sender_kind=sender_kind,
            msg_id=msg_id, intent="chat", sent_at=self.relay.sent_at(), body=envelope,
        )  # fmt: skip
        self.relay.ends[-1].send(deliver)

    def read(self, send: frames.Send) -> str:
        """What alice sent on this writer's session (fails if it is not on it)."""
        self.session, plaintext = decrypt(self.session, send.body, os.urandom)
        body = decode_content(plaintext).body
        assert isinstance(body, Text)
        return body.text
