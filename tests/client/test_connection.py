"""One connection to the relay (client/connection.py): requests matched to their answers
by id, a relay ERROR raised as its named exception (SPEC §9), what the relay sends
unasked handed to the account, the connection's end failing every waiting request.

Unit tests drive a :class:`Connection` over the in-memory relay of :mod:`.fake_relay`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.protocol.errors import (
    HandleTaken,
    RateLimited,
    RecipientUnavailable,
)

from ..relays import relay_at
from .harness import (
    make_client,
    online,
    run,
    within,
)

# --- Against a real relay ---------------------------------------------------------------


def test_relay_errors_raise_their_named_exceptions(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, bundle_burst=2, bundle_rate_per_min=1.0) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            carol = await online(relay.url, "carol")

            with pytest.raises(RecipientUnavailable):
                await within(alice.send("nobody", "hello?"))
            await within(alice.send("bob", "hi"))  # second bundle fetch of the burst
            with pytest.raises(RateLimited) as limited:
                await within(alice.send("carol", "hi"))
            assert limited.value.retry_after_ms > 0

            taken = make_client()
            await within(taken.connect(relay.url))
            with pytest.raises(HandleTaken):
                await within(taken.register("alice"))
            await within(taken.register("dave"))  # a fresh challenge after the refusal
            await within(taken.send("bob", "hello from dave"))
            for client in (taken, alice, bob, carol):
                await client.close()

    run(scenario())
