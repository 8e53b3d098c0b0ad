"""Both ends of a connection, wired back to back in memory (h11's ConnectionPair).

Shared by the tests of the state machines (test_connection.py), of the proof of
work (test_pow.py) and of the relay's dispatch (tests/server/test_dispatch.py):
fixed keys, a counting RNG and a fixed clock, so every run is the same bytes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

from nacl.signing import SigningKey

from blindrelay.protocol import channel, codec
from blindrelay.protocol import frames as f
from blindrelay.protocol.connection import ClientConnection, RelayConnection

T0 = 1_790_000_000_000
"""The relay's clock at HELLO (Unix ms)."""

HANDSHAKE_HASH = bytes(range(64))
"""The channel's handshake hash both ends sign and check over (SPEC §1.3, §4.2): the
channel itself is tested apart (test_channel.py)."""

ALICE = SigningKey(b"\x02" * 32)
"""Alice's identity key."""


def counter_rng() -> Callable[[int], bytes]:
    """Bytes that differ call by call and run by run alike."""
    counter = itertools.count()
    return lambda n: bytes([next(counter) % 256]) * n


def signer(key: SigningKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message).signature


class Pair:
    """A client and a relay connection wired back to back."""

    def __init__(self, first_request_id: int = 1) -> None:
        self.relay_key = SigningKey(b"\x01" * 32)
        self.relay = RelayConnection(
            self.relay_key.verify_key.encode(), T0, counter_rng(), handshake_hash=HANDSHAKE_HASH
        )
        self.client = ClientConnection(HANDSHAKE_HASH, first_request_id=first_request_id)
        self.flush()

    def flush(self) -> tuple[list[f.Frame], list[f.Frame]]:
        """Move bytes both ways; return (frames the relay got, frames the client got)."""
        for data in self.client.data_to_send():
            self.relay.receive_data(data)
        for data in self.relay.data_to_send():
            self.client.receive_data(data)
        return self.relay.events_received(), self.client.events_received()

    def relay_errors(self) -> list[f.Error]:
        return [codec.decode(d) for d in self.relay.data_to_send()]  # type: ignore[misc]


def register(pair: Pair, handle: str = "alice", key: SigningKey = ALICE) -> f.Register:
    pair.client.register(handle, "user", key.verify_key.encode(), signer(key))
    (frame,), _ = pair.flush()
    assert isinstance(frame, f.Register)
    return frame


def welcome(pair: Pair, frame: f.Register | f.Login, kind: str = "user") -> None:
    pair.relay.send(
        f.Welcome(
            re=frame.id, handle=frame.handle, kind=kind, queued=0, one_time_prekeys=0,
            has_signed_prekey=False,
        )
    )  # fmt: skip
    pair.flush()


def authenticated(handle: str = "alice", key: SigningKey = ALICE) -> Pair:
    """A pair past registration and WELCOME: both ends AUTHENTICATED as ``handle``."""
    pair = Pair()
    frame = register(pair, handle, key)
    pair.relay.verify_registration(frame, T0 + 1)
    welcome(pair, frame)
    return pair


def channel_pair(
    relay_seed: bytes = b"\x05" * 32, **kwargs: int
) -> tuple[channel.ClientChannel, channel.RelayChannel]:
    """Both ends of a Noise channel (SPEC §1.3), past the handshake, fresh ephemerals."""
    static = channel.relay_static_key(relay_seed)
    binding = channel.static_binding(SigningKey(relay_seed), static.public)
    relay = channel.RelayChannel(static, binding, os.urandom, **kwargs)
    client = channel.ClientChannel(os.urandom, **kwargs)
    client.receive_handshake(relay.receive_handshake(client.start()))
    return client, relay
