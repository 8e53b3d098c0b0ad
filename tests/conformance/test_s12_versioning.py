"""SPEC §12 Versioning and extension: the major version, unknown frame types."""

from __future__ import annotations

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from blindrelay.protocol import PROTOCOL_VERSION, SUBPROTOCOL
from blindrelay.protocol.frames import Error

from .wire import FRAME_TIMEOUT_S


@pytest.mark.spec("12.1")
async def test_the_major_version_is_in_the_subprotocol_and_in_hello(relay):
    """SPEC §12.1: "The major version is in the subprotocol name (blindrelay.v2) and in
    HELLO version"; the handshake picks the version both sides speak."""
    ws = await connect(
        relay.url,
        subprotocols=["blindrelay.v9", SUBPROTOCOL],
        compression=None,
        proxy=None,
        open_timeout=FRAME_TIMEOUT_S,
    )
    try:
        assert ws.subprotocol == SUBPROTOCOL == "blindrelay.v2"
    finally:
        await ws.close()
    peer = await relay.connect()
    assert peer.hello.version == PROTOCOL_VERSION == 2


@pytest.mark.spec("12.1")
async def test_a_handshake_for_another_major_version_only_is_refused(relay):
    """SPEC §12.1/§1.1.2: a client offering only another version gets no upgrade — version 1
    too: there is no compatibility mode for the protocol without the channel."""
    with pytest.raises(InvalidStatus) as refused:
        ws = await connect(
            relay.url,
            subprotocols=["blindrelay.v1", "blindrelay.v3"],
            compression=None,
            proxy=None,
            open_timeout=FRAME_TIMEOUT_S,
        )
        await ws.close()
    assert refused.value.response.status_code == 400


@pytest.mark.spec("12.2")
async def test_an_unknown_frame_type_is_102_and_harms_nothing(relay):
    """SPEC §12.2: "a peer that does not know a type answers ERROR 102, which tells the
    sender the extension is unsupported without harming the connection"."""
    peer = await relay.user()
    await peer.send_raw(msgpack.packb({"t": 90, "id": 1, "future": b"field"}), expect_re=1)
    error = await peer.recv()
    assert isinstance(error, Error) and (error.code, error.re) == (102, 1)
    assert await peer.round_trip() == []
