"""protocol/noise.py against the cacophony vectors and an independent implementation.

The vectors (``protocol/vectors/noise/cacophony.json``) fix every key and ephemeral:
each entry is replayed in both roles, handshake and transport messages byte for
byte, and the handshake hash compared. The oracle is the ``noiseprotocol`` package
(test extra only): with the same keys, its messages and ours are identical in both
directions, for the pattern blindrelay uses (SPEC §1.3) and the ones it was compared with.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from noise.connection import Keypair, NoiseConnection

from blindrelay.protocol import noise
from blindrelay.protocol.noise import CipherState, HandshakeState, KeyPair

VECTORS = Path(__file__).parents[2] / "protocol" / "vectors" / "noise" / "cacophony.json"
ENTRIES = json.loads(VECTORS.read_text())["vectors"]


def fixed(*values: bytes) -> noise.Rng:
    """An rng that hands out the given values in turn (the vectors' ephemerals)."""
    it: Iterator[bytes] = iter(values)

    def rng(n: int) -> bytes:
        value = next(it)
        assert len(value) == n
        return value

    return rng


def _key(entry: dict[str, str], name: str) -> bytes | None:
    value = entry.get(name)
    return bytes.fromhex(value) if value else None


def sides(entry: dict[str, str]) -> tuple[HandshakeState, HandshakeState]:
    pattern = entry["protocol_name"].split("_")[1]
    init_static, resp_static = _key(entry, "init_static"), _key(entry, "resp_static")
    initiator = HandshakeState(
        pattern, initiator=True, rng=fixed(bytes.fromhex(entry["init_ephemeral"])),
        prologue=bytes.fromhex(entry["init_prologue"]),
        s=KeyPair.from_private(init_static) if init_static else None,
        rs=_key(entry, "init_remote_static"),
    )  # fmt: skip
    responder = HandshakeState(
        pattern, initiator=False, rng=fixed(bytes.fromhex(entry["resp_ephemeral"])),
        prologue=bytes.fromhex(entry["resp_prologue"]),
        s=KeyPair.from_private(resp_static) if resp_static else None,
    )  # fmt: skip
    return initiator, responder


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["protocol_name"] for e in ENTRIES])
def test_the_cacophony_vectors_replay_byte_for_byte_in_both_roles(entry: dict) -> None:
    initiator, responder = sides(entry)
    messages = entry["messages"]
    pairs: list[tuple[CipherState, CipherState]] = []  # (sender, receiver) by direction
    for i, message in enumerate(messages):
        payload, ciphertext = (
            bytes.fromhex(message["payload"]),
            bytes.fromhex(message["ciphertext"]),
        )
        writer, reader = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        if not initiator.finished:
            assert writer.write_message(payload) == ciphertext
            assert reader.read_message(ciphertext) == payload
            if initiator.finished:
                assert responder.finished
                i_send, i_recv = initiator.split()
                r_send, r_recv = responder.split()
                pairs = [(i_send, r_recv), (r_send, i_recv)]
                assert initiator.handshake_hash == responder.handshake_hash
                assert initiator.handshake_hash.hex() == entry["handshake_hash"]
            continue
        sender, receiver = pairs[i % 2]
        assert sender.encrypt_with_ad(b"", payload) == ciphertext
        assert receiver.decrypt_with_ad(b"", ciphertext) == payload


@pytest.fixture(params=["NX", "XX", "IK", "NK"])
def pattern(request: pytest.FixtureRequest) -> str:
    return str(request.param)


KEYS = {
    name: bytes(range(i * 32 + 1, i * 32 + 33))
    for i, name in enumerate(("init_s", "resp_s", "init_e", "resp_e"))
}
PROLOGUE = b"blindrelay/v2/noise"


def _uses(pattern: str) -> tuple[bool, bool]:
    """(the initiator has a static key, the responder's is known in advance)."""
    return pattern in {"XX", "IK"}, pattern in {"IK", "NK"}


def ours(pattern: str, initiator: bool) -> HandshakeState:
    init_static, pre = _uses(pattern)
    resp_public = KeyPair.from_private(KEYS["resp_s"]).public
    if initiator:
        return HandshakeState(
            pattern, initiator=True, rng=fixed(KEYS["init_e"]), prologue=PROLOGUE,
            s=KeyPair.from_private(KEYS["init_s"]) if init_static else None,
            rs=resp_public if pre else None,
        )  # fmt: skip
    return HandshakeState(
        pattern, initiator=False, rng=fixed(KEYS["resp_e"]), prologue=PROLOGUE,
        s=KeyPair.from_private(KEYS["resp_s"]),
    )  # fmt: skip


def theirs(pattern: str, initiator: bool) -> NoiseConnection:
    init_static, pre = _uses(pattern)
    conn = NoiseConnection.from_name(noise.protocol_name(pattern))
    conn.set_prologue(PROLOGUE)
    if initiator:
        conn.set_as_initiator()
        if init_static:
            conn.set_keypair_from_private_bytes(Keypair.STATIC, KEYS["init_s"])
        if pre:
            public = KeyPair.from_private(KEYS["resp_s"]).public
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, public)
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, KEYS["init_e"])
    else:
        conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, KEYS["resp_s"])
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, KEYS["resp_e"])
    with warnings.catch_warnings():  # the oracle warns of fixed ephemerals: a test's need
        warnings.filterwarnings("ignore", "One of ephemeral keypairs", UserWarning)
        conn.start_handshake()
    return conn


def test_an_independent_implementation_writes_the_same_bytes_and_reads_ours(
    pattern: str,
) -> None:
    """Two of ours and two of the oracle's, same keys: in every role every handshake
    and transport message is byte-identical, and each side reads the other's (our
    initiator with their responder, their initiator with ours), over a Rekey()."""
    our_i, our_r = ours(pattern, True), ours(pattern, False)
    their_i, their_r = theirs(pattern, True), theirs(pattern, False)
    step = 0
    while not our_i.finished:
        payload = f"handshake payload {step}".encode()
        if step % 2 == 0:
            message = our_i.write_message(payload)
            assert bytes(their_i.write_message(payload)) == message
            assert our_r.read_message(message) == payload
            assert bytes(their_r.read_message(message)) == payload
        else:
            message = our_r.write_message(payload)
            assert bytes(their_r.write_message(payload)) == message
            assert our_i.read_message(message) == payload
            assert bytes(their_i.read_message(message)) == payload
        step += 1
    assert our_r.finished and their_i.handshake_finished and their_r.handshake_finished
    assert our_i.handshake_hash == our_r.handshake_hash == their_i.get_handshake_hash()
    i_send, i_recv = our_i.split()
    r_send, r_recv = our_r.split()
    for n in range(40):
        if n == 20:  # Rekey() on every cipher state (Noise §11.3): the nonces go on
            for cipher in (i_send, i_recv, r_send, r_recv):
                cipher.rekey()
            for conn in (their_i, their_r):
                conn.rekey_inbound_cipher()
                conn.rekey_outbound_cipher()
        payload = bytes([n]) * (n * 37)
        to_responder = i_send.encrypt_with_ad(b"", payload)
        assert their_i.encrypt(payload) == to_responder
        assert their_r.decrypt(to_responder) == payload
        assert r_recv.decrypt_with_ad(b"", to_responder) == payload
        to_initiator = r_send.encrypt_with_ad(b"", payload[::-1])
        assert their_r.encrypt(payload[::-1]) == to_initiator
        assert their_i.decrypt(to_initiator) == payload[::-1]
        assert i_recv.decrypt_with_ad(b"", to_initiator) == payload[::-1]


# --- failures ------------------------------------------------------------------------


def handshaken(
    pattern: str = "NX",
) -> tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]]:
    initiator, responder = ours(pattern, True), ours(pattern, False)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return initiator.split(), responder.split()


def test_a_failed_decryption_changes_nothing_and_the_right_message_still_reads() -> None:
    (send, _), (_, receive) = handshaken()
    first = send.encrypt_with_ad(b"", b"first")
    tampered = first[:-1] + bytes([first[-1] ^ 1])
    with pytest.raises(noise.DecryptFailed):
        receive.decrypt_with_ad(b"", tampered)
    assert receive.n == 0
    assert receive.decrypt_with_ad(b"", first) == b"first"


def test_replayed_reordered_or_dropped_messages_fail_to_decrypt() -> None:
    (send, _), (_, receive) = handshaken()
    one, two, three = (send.encrypt_with_ad(b"", bytes([i])) for i in range(3))
    with pytest.raises(noise.DecryptFailed):
        receive.decrypt_with_ad(b"", two)  # reordered, or the first dropped
    assert receive.decrypt_with_ad(b"", one) == b"\x00"
    with pytest.raises(noise.DecryptFailed):
        receive.decrypt_with_ad(b"", one)  # replayed
    assert receive.decrypt_with_ad(b"", two) == b"\x01"
    assert receive.decrypt_with_ad(b"", three) == b"\x02"


def test_the_reserved_nonce_is_never_used() -> None:
    (send, _), _ = handshaken()
    send.n = noise.MAX_NONCE
    with pytest.raises(noise.NonceExhausted):
        send.encrypt_with_ad(b"", b"x")


def test_the_last_nonce_before_the_reserved_one_is_used_and_then_both_ends_stop() -> None:
    """Noise §5.1: 2^64−2 is the last nonce a message may use; at 2^64−1 EncryptWithAd()
    and DecryptWithAd() fail, and keep failing, with n unchanged — a check one short
    would lose a usable nonce, one that moved n would let the next call reuse one."""
    (send, _), (_, receive) = handshaken()
    last = noise.MAX_NONCE - 1
    send.n = receive.n = last
    assert send.k is not None
    sealed = send.encrypt_with_ad(b"ad", b"last")
    assert sealed == noise.encrypt(send.k, last, b"ad", b"last")  # sealed under 2^64−2
    assert receive.decrypt_with_ad(b"ad", sealed) == b"last"
    assert send.n == receive.n == noise.MAX_NONCE
    for _ in range(2):
        with pytest.raises(noise.NonceExhausted):
            send.encrypt_with_ad(b"ad", b"one more")
        with pytest.raises(noise.NonceExhausted):
            receive.decrypt_with_ad(b"ad", sealed)
        assert send.n == receive.n == noise.MAX_NONCE


def test_a_low_order_ephemeral_fails_the_handshake_with_a_noise_error() -> None:
    responder = ours("NX", False)
    with pytest.raises(noise.InvalidPublicKey):
        responder.read_message(bytes(32))
        responder.write_message()


def test_a_tampered_handshake_message_fails_and_a_short_one_is_refused() -> None:
    initiator, responder = ours("NX", True), ours("NX", False)
    responder.read_message(initiator.write_message())
    second = responder.write_message(b"payload")
    with pytest.raises(noise.DecryptFailed):
        initiator.read_message(second[:40] + bytes([second[40] ^ 1]) + second[41:])
    with pytest.raises(noise.NoiseError, match="too short"):
        ours("NX", False).read_message(b"\x01" * 31)


def test_hash_hmac_and_hkdf_agree_with_libsodium_s_blake2b() -> None:
    """Noise §4.3 with RFC 2104, over the standard library's BLAKE2b-512: checked apart
    from the vectors against PyNaCl's (libsodium's ``generichash``) BLAKE2b."""
    import hmac

    import nacl.hashlib

    def libsodium_blake2b(data: bytes = b"") -> nacl.hashlib.blake2b:
        return nacl.hashlib.blake2b(data, digest_size=64)

    ck, ikm = b"c" * 64, b"i" * 32
    assert noise.hash_(ikm) == libsodium_blake2b(ikm).digest()
    temp = hmac.digest(ck, ikm, libsodium_blake2b)  # type: ignore[arg-type]
    o1 = hmac.digest(temp, b"\x01", libsodium_blake2b)  # type: ignore[arg-type]
    o2 = hmac.digest(temp, o1 + b"\x02", libsodium_blake2b)  # type: ignore[arg-type]
    o3 = hmac.digest(temp, o2 + b"\x03", libsodium_blake2b)  # type: ignore[arg-type]
    assert noise.hkdf(ck, ikm, 3) == [o1, o2, o3]


def test_the_reserved_nonce_is_never_used_to_decrypt_either() -> None:
    """Noise §5.1: once n reaches 2^64−1, DecryptWithAd() signals an error too."""
    _, (_, receive) = handshaken()
    receive.n = noise.MAX_NONCE
    with pytest.raises(noise.NonceExhausted):
        receive.decrypt_with_ad(b"", bytes(noise.TAGLEN))


def test_messages_are_written_and_read_in_turn_and_split_waits_for_the_last() -> None:
    """Noise §5.3: each side writes only its own messages, reads only the peer's, and
    Split() only once the pattern is done (before it, ck is not the session's)."""
    initiator, responder = ours("NX", True), ours("NX", False)
    with pytest.raises(noise.NoiseError, match="not our turn"):
        responder.write_message()
    with pytest.raises(noise.NoiseError, match="not the peer's turn"):
        initiator.read_message(b"\x09" * 32)
    first = initiator.write_message()
    with pytest.raises(noise.NoiseError, match="not our turn"):
        initiator.write_message()
    with pytest.raises(noise.NoiseError, match="not finished"):
        initiator.split()
    responder.read_message(first)
    with pytest.raises(noise.NoiseError, match="not the peer's turn"):
        responder.read_message(first)
    initiator.read_message(responder.write_message())
    assert initiator.finished and responder.finished
    with pytest.raises(noise.NoiseError):
        initiator.write_message()
    with pytest.raises(noise.NoiseError):
        responder.read_message(first)


def test_a_handshake_message_over_65535_bytes_is_refused() -> None:
    """Noise §3: no message is longer, on writing or reading; NX's first message has no
    key yet, so without the check its payload would be read as plaintext of any size."""
    with pytest.raises(noise.NoiseError, match="65535"):
        ours("NX", False).read_message(b"\x09" * (noise.MAX_MESSAGE_LEN + 1))
    assert ours("NX", False).read_message(b"\x09" * noise.MAX_MESSAGE_LEN)
    with pytest.raises(noise.NoiseError, match="65535"):
        ours("NX", True).write_message(bytes(noise.MAX_MESSAGE_LEN - noise.DHLEN + 1))
