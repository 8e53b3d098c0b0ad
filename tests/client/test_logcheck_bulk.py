"""A bulk send keeps the split-view bound of SPEC §15.6 rule 5 as a single send does
(client/sending.py, client/logcheck.py): a contact whose tree head the relay has refused
to prove past the bound is not sent to from ``send_many`` either.

Over the in-memory relay of :mod:`.log_relay`: alice keeps the head the relay showed
her, carol's message brings a head of another history, and the relay refuses every
consistency fetch (900).
"""

from __future__ import annotations

import asyncio

from blindrelay.client.sdk import RecheckPolicy
from blindrelay.protocol import frames
from blindrelay.protocol.errors import InternalError, LogUnchecked
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import StatementLogged
from blindrelay.protocol.transparency.treehead import sign_tree_head

from ..relays import T0
from .fake_relay import RELAY_KEY, RelayEnd, signer
from .harness import Inbox, run, within
from .log_relay import LoggingRelay, Writer, customer, filler

CAROL_SEED = b"\x43" * 32

OVERDUE_AT_ONCE = RecheckPolicy(refusals=3, after_ms=0, first_wait_s=0.001, max_wait_s=0.005)
"""Overdue after three refusals (the SDK's: six, and ten minutes since the head came)."""


def refused_histories(relay: LoggingRelay) -> tuple[bytes, bytes]:
    """The head the relay showed alice (4 entries), one of another history (6, the
    second entry rewritten), and every consistency fetch refused."""
    relay.append(*filler(4))
    ours = relay.sign_head()
    leaves = [merkle.leaf_hash(e) for e in filler(6)]
    leaves[1] = merkle.leaf_hash(StatementLogged(v=1, commitment=b"\x99" * 32, at=T0).to_bytes())
    honest = relay.answer

    def refusing(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.LogConsistencyFetch):
            end.refuse(InternalError(), frame.id)
        else:
            honest(end, frame)

    relay.answer = refusing
    return ours, sign_tree_head(signer(RELAY_KEY), 6, merkle.root_of(leaves), T0 + 10)


def test_send_many_sends_nothing_to_a_contact_whose_head_is_overdue() -> None:
    async def scenario() -> None:
        relay = LoggingRelay()
        ours, theirs = refused_histories(relay)
        alice = await customer(relay, log_recheck=OVERDUE_AT_ONCE)
        alice.store.set_tree_head(ours)
        Writer(relay, alice, "carol", CAROL_SEED).deliver("hi", "user", sth=theirs)
        inbox = Inbox(alice)
        await inbox.next()

        async def overdue() -> None:
            while not alice.log_check.overdue("carol"):
                await asyncio.sleep(0.01)

        await within(overdue())
        ((handle, outcome),) = await within(alice.send_many(["carol"], "are you there?"))
        assert handle == "carol" and isinstance(outcome, LogUnchecked)
        assert all(end.received(frames.Send) == [] for end in relay.ends)
        await inbox.close()
        await alice.close()

    run(scenario())
