"""RPC framing and handshake arithmetic without sockets: sealing, MAC checks, decode limits,
frame shapes, the keys both sides of a handshake derive, and the rpc settings."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest

from spine.cluster import rpc_handshake as hs
from spine.cluster.rpc_frames import (
    HANDSHAKE_MAX,
    MAC_LEN,
    REPLY,
    REQUEST,
    Frame,
    SealedChannel,
    parse_frame,
    read_frame,
    unpack_bounded,
)
from spine.core.errors import FrameTooLarge, InvalidInput, PeerUnavailable, ProtocolError
from spine.core.messages import DECODERS, Ping, Tag, decode

K1, K2 = b"k" * 32, b"q" * 32


def _pair(max_frame: int = 1 << 20) -> tuple[SealedChannel, SealedChannel]:
    return SealedChannel(K1, K2, max_frame), SealedChannel(K2, K1, max_frame)


def _split(data: bytes) -> tuple[bytes, bytes]:
    return data[:4], data[4:]


def _read(chan: SealedChannel, data: bytes) -> Frame:
    async def go() -> Frame:
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await chan.read(r)

    return asyncio.run(go())


def test_sealed_frames_round_trip_in_order() -> None:
    a, b = _pair()
    for i in range(3):
        f = b.open(*_split(a.seal([REQUEST, i, 1, 5, ["x" * i]])))
        assert f == Frame(REQUEST, i, 1, 5, ["x" * i])


def test_every_flipped_bit_fails_the_mac() -> None:
    a, _ = _pair()
    data = a.seal([REQUEST, 1, 1, 5, ["node"]])
    for i in range(4, len(data)):  # body and tag; the length prefix changes the framing itself
        for bit in (0, 7):
            forged = bytearray(data)
            forged[i] ^= 1 << bit
            _, fresh = _pair()
            with pytest.raises(ProtocolError) as ei:
                fresh.open(*_split(bytes(forged)))
            assert ei.value.details["reason"] == "mac"


def test_a_replayed_or_reordered_frame_fails_the_mac() -> None:
    a, b = _pair()
    first, second = a.seal([REQUEST, 1, 1, 5, []]), a.seal([REQUEST, 2, 1, 5, []])
    b.open(*_split(first))
    with pytest.raises(ProtocolError):
        b.open(*_split(first))  # replay of an accepted frame
    _, c = _pair()
    with pytest.raises(ProtocolError):
        c.open(*_split(second))  # the second frame first


def test_a_frame_reflected_back_to_its_sender_fails() -> None:
    a, _ = _pair()
    mirror = SealedChannel(K1, K2, 1 << 20)  # the sender's own keys: it receives under K2
    with pytest.raises(ProtocolError):
        mirror.open(*_split(a.seal([REPLY, 1, 1, 5, None])))


def test_seal_refuses_past_the_limit_without_using_a_sequence_number() -> None:
    a, b = _pair(max_frame=1000)
    with pytest.raises(FrameTooLarge) as ei:
        a.seal([REQUEST, 1, 1, 5, b"x" * 2000])
    assert isinstance(ei.value, PeerUnavailable) and ei.value.details["code"] == "frame_too_large"
    assert b.open(*_split(a.seal([REQUEST, 2, 1, 5, b"ok"]))).body == b"ok"


def test_read_refuses_a_length_past_the_limit_before_reading_the_body() -> None:
    a, b = _pair(max_frame=1000)
    with pytest.raises(FrameTooLarge):
        _read(b, struct.pack(">I", 64 << 20))  # no body follows: it was never waited for
    assert _read(b, a.seal([REPLY, 1, 1, 5, "fine"])).body == "fine"


def test_plain_read_refuses_past_the_handshake_cap_from_the_prefix_alone() -> None:
    async def go(data: bytes) -> Any:
        r = asyncio.StreamReader()
        r.feed_data(data)
        return await read_frame(r)  # no EOF: reading the body would wait forever

    with pytest.raises(ProtocolError):
        asyncio.run(asyncio.wait_for(go(struct.pack(">I", HANDSHAKE_MAX + 1)), 2))
    ok = msgpack.packb([1, 2], use_bin_type=True)
    assert asyncio.run(go(struct.pack(">I", len(ok)) + ok)) == [1, 2]


@pytest.mark.parametrize("raw", [
    b"\xdd\xff\xff\xff\xff",  # array32 declaring 4 billion items
    b"\xdb\xff\xff\xff\xff",  # str32 declaring 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 declaring 4 GiB
    b"\xc7\x01\x05x",  # an ext type: refused outright
    b"\x91" * 3000 + b"\xc0",  # nesting past msgpack's stack
    b"\x01\x02",  # extra data after one object
    b"\xc1",  # a reserved byte
])
def test_unpack_bounded_raises_only_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack_bounded(raw, max_str=len(raw), max_bin=len(raw), max_items=len(raw))


@pytest.mark.parametrize("obj", [
    None, [], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6], {"a": 1}, [9, 1, 1, 1, None],
    [1, -1, 1, 1, None], [1, 1, 1, 2**64, None], [True, 1, 1, 1, None], ["1", 1, 1, 1, None],
    [1, 1, 70000, 1, None], [1, 1.5, 1, 1, None],
])
def test_parse_frame_refuses_wrong_shapes(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_frame(obj)


@pytest.mark.parametrize("tag,body", [
    (int(Tag.PING), "ab"), (int(Tag.PING), []), (int(Tag.READ), [[1]]), (int(Tag.APPLY), [[[]]]),
    (int(Tag.SHARD_FETCH), [float("inf"), [], [], 1]), (int(Tag.TRANSFER), [None]),
    (999, [1]), (int(Tag.FORWARD), {"a": 1}),
])
def test_message_decoders_raise_invalid_input_on_bad_bodies(tag: int, body: Any) -> None:
    with pytest.raises(InvalidInput):
        decode(tag, body)
    if tag in DECODERS:
        with pytest.raises(InvalidInput):
            DECODERS[tag](body)


def test_decode_keeps_good_bodies() -> None:
    assert decode(int(Tag.PING), ["n1"]) == Ping("n1")


# ------------------------------------------------------------------ handshake arithmetic

def test_both_sides_derive_the_same_direction_keys_and_distinct_proofs() -> None:
    root = hs.root_key("a-long-enough-cluster-secret")
    tr = hs.transcript("n1", "n2", b"s" * 32, b"c" * 32)
    c2s, s2c = hs.session_keys(root, tr)
    assert c2s != s2c and len(c2s) == len(s2c) == 32
    assert hs.proof(root, "client", tr) != hs.proof(root, "server", tr)
    other = hs.transcript("n1", "n2", b"s" * 32, b"d" * 32)  # a fresh client nonce
    assert hs.session_keys(root, other) != (c2s, s2c)
    assert hs.proof(hs.root_key("another-secret-entirely"), "client", tr) != hs.proof(
        root, "client", tr)


def test_rpc_root_key_is_not_the_bare_secret_mac() -> None:
    # Domain separation: the RPC key is a labelled derivation, not the secret itself, so no
    # MAC computed elsewhere under the bare secret (gossip) can pass for an RPC proof.
    assert hs.root_key("s") != b"s" and len(hs.root_key("s")) == 32


def test_transcript_fields_are_length_prefixed() -> None:
    assert hs.transcript("ab", "c", b"", b"") != hs.transcript("a", "bc", b"", b"")


def test_sealed_frame_overhead() -> None:
    a, _ = _pair()
    body = msgpack.packb([REQUEST, 1, 1, 5, None], use_bin_type=True)
    assert len(a.seal([REQUEST, 1, 1, 5, None])) == 4 + len(body) + MAC_LEN


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("key,value,message", [
    ("max_frame_bytes", 1000, "rpc.max_frame_bytes: must be between"),
    ("max_frame_bytes", 2**32, "rpc.max_frame_bytes: must be between"),
    ("max_pending_handshakes", 0, "rpc.max_pending_handshakes: must be an integer >= 1"),
    ("handshake_timeout_ms", 0, "rpc.handshake_timeout_ms: must be an integer >= 1"),
    ("max_inflight_per_connection", "many", "rpc.max_inflight_per_connection: must be an integer"),
    ("frame_bytes", 1, "rpc.frame_bytes: unknown key"),
])
def test_rpc_settings_are_checked_by_the_loader(key: str, value: Any, message: str) -> None:
    from spine.core.config import from_dict
    from spine.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        from_dict({"rpc": {key: value}})
    assert from_dict({"rpc": {"max_frame_bytes": 1 << 20}}).rpc.max_frame_bytes == 1 << 20
