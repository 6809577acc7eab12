"""Fuzz of the decoders that face the network (issue 14, item 7): the gossip datagram and TCP
push-pull decoder, the RPC frame reader, the RPC handshake and the RPC message decoders.

Inputs are arbitrary bytes and structured-but-wrong msgpack: right shapes with wrong types, huge
and negative integers, deep nesting, oversized declared lengths. The property everywhere: the only
exceptions that escape are the project's own (`SpineError` and its subclasses, such as the gossip
`DecodeError`), plus `asyncio.IncompleteReadError` where a stream ends early, which every caller
treats as a closed connection. Anything else (IndexError, TypeError, msgpack's own errors, an
OverflowError later on) is an unhandled path a hostile packet can reach.

The examples are derandomized, so a run in CI is repeatable; `SPINE_FUZZ_EXAMPLES` raises the
count for a longer local search.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import struct
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spine.core import swim_messages as sm
from spine.core.errors import SpineError
from spine.core.messages import DECODERS

EXAMPLES = int(os.environ.get("SPINE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------ strategies

# Integers at the edges of what msgpack carries: uint64's top, int64's bottom, around 2^63.
EDGE_INTS = st.sampled_from([
    0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1,
    -(2**63),
])  # msgpack carries nothing outside [-2^63, 2^64 - 1]
INTS = st.one_of(EDGE_INTS, st.integers(-(2**63), 2**64 - 1))
SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(allow_nan=True),
    st.text(max_size=40), st.binary(max_size=40),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(st.one_of(st.text(max_size=8), INTS), inner, max_size=6),
    ),
    max_leaves=40,
)


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _deep(depth: int) -> bytes:
    """A msgpack list nested `depth` deep (msgpack's own stack limit is 1024)."""
    return b"\x91" * depth + b"\xc0"


# Raw msgpack headers that declare far more than follows: array32, map32, str32, bin32.
HUGE_HEADERS = st.sampled_from([
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff",
])

# Members and updates in the right shape, with each field drawn from the wrong-or-right pool.
FIELD = st.one_of(VALUES, st.text(max_size=20), INTS)
MEMBER_WIRE = st.lists(FIELD, min_size=5, max_size=7).map(
    lambda w: [*w[:4], w[4] if isinstance(w[4], dict) else {}, *w[5:]]
)
PLAUSIBLE_MEMBER = st.builds(
    lambda node, addr, inc, state, meta, by: [node, addr, inc, state, meta, by],
    st.text(max_size=12), st.text(max_size=24), INTS, st.integers(-2, 6),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4), st.text(max_size=12),
)
GOSSIP_BODIES = st.one_of(
    st.lists(FIELD, max_size=6),
    st.tuples(INTS, st.text(max_size=12), st.text(max_size=12),
              st.lists(st.one_of(PLAUSIBLE_MEMBER, MEMBER_WIRE), max_size=4)).map(list),
    st.tuples(st.text(max_size=12), st.lists(st.one_of(PLAUSIBLE_MEMBER, MEMBER_WIRE),
                                             max_size=4), st.booleans()).map(list),
    VALUES,
)
GOSSIP_TAGS = st.one_of(st.sampled_from([int(t) for t in sm.Tag]), st.integers(0, 255))

# Well-formed messages (tag matches the body's layout) whose values are hostile: incarnations and
# sequence numbers at the integer edges, unknown states, odd addresses, fake members.
ADDRESSES = st.one_of(st.just("127.0.0.1:7946"), st.text(max_size=24),
                      st.builds("127.0.0.{}:{}".format, st.integers(0, 300), INTS))
STATES = st.one_of(st.sampled_from([s.value for s in sm.MemberState]), INTS)
MEMBERS = st.builds(
    lambda node, addr, inc, state, meta: [node, addr, inc, state, meta],
    st.text(max_size=12), ADDRESSES, INTS, STATES,
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
)
UPDATES = st.lists(st.builds(lambda m, by: [*m, by], MEMBERS, st.text(max_size=12)), max_size=4)
WELL_FORMED = st.one_of(
    st.builds(lambda *f: bytes([sm.Tag.PING]) + _pack(list(f)),
              INTS, st.text(max_size=12), st.text(max_size=12), UPDATES),
    st.builds(lambda *f: bytes([sm.Tag.PING_REQ]) + _pack(list(f)),
              INTS, st.text(max_size=12), st.text(max_size=12), ADDRESSES, UPDATES),
    st.builds(lambda *f: bytes([sm.Tag.ACK]) + _pack(list(f)),
              INTS, st.text(max_size=12), UPDATES),
    st.builds(lambda *f: bytes([sm.Tag.NACK]) + _pack(list(f)), INTS, st.text(max_size=12)),
    st.builds(lambda *f: bytes([sm.Tag.PUSH_PULL]) + _pack(list(f)),
              st.text(max_size=12), st.lists(MEMBERS, max_size=6), st.booleans()),
    st.builds(lambda *f: bytes([sm.Tag.REFUSE]) + _pack(list(f)),
              st.text(max_size=12), st.text(max_size=40)),
)


def gossip_datagrams() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, a known tag with junk, a known tag with structured-but-wrong msgpack."""
    return st.one_of(
        st.binary(max_size=300),
        WELL_FORMED,
        st.builds(lambda t, b: bytes([t]) + b, GOSSIP_TAGS, st.binary(max_size=200)),
        st.builds(lambda t, body: bytes([t]) + _pack(body), GOSSIP_TAGS, GOSSIP_BODIES),
        st.builds(lambda t, h: bytes([t]) + h, GOSSIP_TAGS, HUGE_HEADERS),
        st.builds(lambda t, d: bytes([t]) + _deep(d), GOSSIP_TAGS, st.sampled_from([50, 2000])),
    )


# The probe: an alive claim about a member at incarnation 2^64 - 1 (its refutation at
# incarnation + 1 no longer fit msgpack).
TOP_CLAIM = bytes([sm.Tag.PING]) + _pack(
    [1, "n9", "n1", [["n1", "127.0.0.11:7946", 2**64 - 1, 0, {}, "n9"]]])


# ------------------------------------------------------------------------------ gossip

def _gossip_decode() -> Any:
    """The public gossip decoder (the name helper A's authenticated codec exposes, if any)."""
    return sm.decode


def _encodable(msg: sm.Message) -> None:
    """What a node does next with a decoded message: re-encode it, and for a claim about itself
    refute at incarnation + 1. Both must fit the wire (a claim at 2^64-1 used to break this)."""
    members: list[sm.Member] = []
    match msg:
        case sm.Ping(updates=ups) | sm.PingReq(updates=ups) | sm.Ack(updates=ups):
            members = [u.member for u in ups]
        case sm.PushPull(members=ms):
            members = list(ms)
    sm.encode(msg)
    for m in members:
        _pack(m.incarnation + 1)


@FUZZ
@example(TOP_CLAIM)
@given(gossip_datagrams())
def test_gossip_decoder_raises_only_decode_errors(data: bytes) -> None:
    try:
        msg = _gossip_decode()(data)
    except SpineError:
        return
    _encodable(msg)


@FUZZ
@given(st.one_of(st.binary(max_size=120), gossip_datagrams()), st.booleans(),
       st.sampled_from([1, 2, 3, 0, 255]))
def test_gossip_envelope_then_decoder_raise_only_decode_errors(
    payload: bytes, sealed: bool, channel: int
) -> None:
    """What a node does with a datagram: open the envelope (MAC, channel, freshness, replay),
    then decode. Forged envelopes and an insider's sealed junk both end in a DecodeError."""
    auth_mod = pytest.importorskip("spine.core.swim_auth")
    secret, now = "fuzz-secret-0123456789abcdef", 1_000_000
    auth = auth_mod.GossipAuth([secret], window_ms=10_000)
    data = payload
    if sealed:
        with contextlib.suppress(ValueError):
            data = auth_mod.GossipAuth([secret], 10_000).seal(
                auth_mod.Channel(channel), payload, now)
    try:
        inner, _ = auth.open(auth_mod.Channel.DATAGRAM, data, now)
        msg = _gossip_decode()(inner)
    except SpineError:
        return
    _encodable(msg)


def _read_gossip_frame(data: bytes) -> bytes:
    from spine.cluster import gossip_transport as gt

    async def go() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await gt.read_frame(reader)

    return asyncio.run(go())


@FUZZ
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, b: struct.pack(">I", n) + b, st.integers(0, 2**32 - 1),
              st.binary(max_size=64)),
))
def test_gossip_frame_reader_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(SpineError, asyncio.IncompleteReadError):
        _read_gossip_frame(data)


# ------------------------------------------------------------------------------ RPC

RPC_TAGS = st.one_of(st.sampled_from(sorted(int(t) for t in DECODERS)), st.integers(-5, 300))


def _decode_rpc_body(tag: int, body: Any) -> Any:
    decoder = DECODERS.get(tag)
    if decoder is None:
        return None
    return decoder(body)


@FUZZ
@given(RPC_TAGS, st.one_of(VALUES, st.lists(FIELD, max_size=12),
                            st.lists(st.lists(FIELD, max_size=13), max_size=3).map(lambda x: [x])))
def test_rpc_message_decoders_raise_only_spine_errors(tag: int, body: Any) -> None:
    # What a peer past the handshake can send: any msgpack body under any tag. Round-trip the
    # body through msgpack first so it holds only what the wire can carry.
    wire = msgpack.unpackb(_pack(body), raw=False, strict_map_key=False)
    with contextlib.suppress(SpineError):
        _decode_rpc_body(tag, wire)


def _rpc_module() -> Any:
    from spine.cluster import rpc

    return rpc


def _read_rpc_frame(data: bytes) -> Any:
    """The frame reader the handshake uses (`rpc_frames.read_frame`; `rpc._read_frame` at
    0d917e7, where every frame went through it)."""
    try:
        from spine.cluster.rpc_frames import read_frame as read
    except ImportError:
        read = _rpc_module()._read_frame

    async def go() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read(reader)

    return asyncio.run(go())


def rpc_frames() -> st.SearchStrategy[bytes]:
    def framed(body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + body

    return st.one_of(
        st.binary(max_size=80),
        st.builds(lambda n, b: struct.pack(">I", n) + b, st.integers(0, 2**32 - 1),
                  st.binary(max_size=64)),
        st.builds(lambda v: framed(_pack(v)), VALUES),
        st.builds(framed, HUGE_HEADERS),
        st.builds(lambda d: framed(_deep(d)), st.sampled_from([50, 2000])),
        st.builds(lambda b: framed(_pack(1) + b), st.binary(min_size=1, max_size=8)),
    )


@FUZZ
@given(rpc_frames())
def test_rpc_frame_reader_raises_only_spine_errors(data: bytes) -> None:
    with contextlib.suppress(SpineError, asyncio.IncompleteReadError):
        _read_rpc_frame(data)


class _Sink:
    """A StreamWriter stand-in that keeps what the server wrote."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self.out += c

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.99", 40000) if name == "peername" else default

    @property
    def transport(self) -> _Sink:
        return self

    def abort(self) -> None:
        self.closed = True


def _server() -> Any:
    """An RpcServer with no handlers (the fuzz never gets past the handshake)."""
    from spine.core.clock import HLC

    rpc = _rpc_module()
    hlc = HLC(wall_ms=lambda: 1_000, max_offset_ms=500)
    secret = "fuzz-secret-0123456789abcdef"
    keyring = [secret] if "keyring" in inspect.signature(rpc.RpcServer).parameters else secret
    return rpc.RpcServer("n1", keyring, hlc, {}, lambda n: b"\x07" * n)


HANDSHAKES = st.one_of(
    st.lists(FIELD, max_size=5),
    st.tuples(st.one_of(st.just(1), INTS), st.one_of(st.text(max_size=12), FIELD),
              st.one_of(st.binary(min_size=32, max_size=32), FIELD)).map(list),
    VALUES,
)


def _handshake_inputs() -> st.SearchStrategy[bytes]:
    def framed(body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + body

    return st.one_of(
        rpc_frames(),
        st.builds(lambda hs, rest: framed(_pack(hs)) + rest, HANDSHAKES, st.binary(max_size=40)),
    )


@FUZZ
@given(_handshake_inputs())
def test_rpc_handshake_refuses_without_escaping_errors(data: bytes) -> None:
    """Drive the server's connection handler with a hostile client's bytes: it must close the
    connection and leave nothing unhandled (no task error, no exception out of the callback)."""
    errors: list[dict[str, Any]] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        server = _server()
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        sink = _Sink()
        await asyncio.wait_for(server._serve(reader, sink), 10)
        assert sink.closed, "the server left a hostile connection open"

    asyncio.run(go())
    assert not errors, errors


def test_rpc_handshake_refuses_a_huge_declared_frame_without_waiting_for_it() -> None:
    """A client that declares a 64 MiB handshake frame and sends nothing more: the server must
    refuse on the length alone (the issue's 66 -> 619 MB probe), not wait to read the body."""

    async def go() -> bool:
        server = _server()
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", 64 * 1024 * 1024) + b"\x93")  # no EOF: it stays open
        sink = _Sink()
        try:
            await asyncio.wait_for(server._serve(reader, sink), 1.0)
        except TimeoutError:
            return False
        return sink.closed

    assert asyncio.run(go()), "the server waited for the body of an oversized handshake frame"


def _sealed_channel() -> Any:
    frames = pytest.importorskip("spine.cluster.rpc_frames")
    if not hasattr(frames, "SealedChannel"):
        pytest.skip("no sealed RPC frames in this tree")
    return frames


BODIES = st.one_of(st.binary(max_size=200), st.builds(_pack, VALUES),
                  st.builds(lambda v: _pack([1, 1, 1, 1, v]), VALUES))


@FUZZ
@given(BODIES, st.booleans())
def test_rpc_sealed_frames_raise_only_spine_errors(body: bytes, insider: bool) -> None:
    """Frames after the handshake: a forged one (no key) fails its MAC; one sealed with the
    session key (a peer that holds the secret and lies) still decodes to a SpineError at worst,
    whatever its body holds."""
    frames = _sealed_channel()
    key = b"k" * 32
    chan = frames.SealedChannel(key, key, 1 << 20)
    if insider:  # sealed by the real code, whatever its MAC, around raw bytes instead of msgpack
        sender = frames.SealedChannel(key, key, 1 << 20)
        with mock.patch.object(frames.msgpack, "packb", lambda obj, **_: obj):
            sealed = sender.seal(body)
        head, rest = sealed[:frames.HEADER], sealed[frames.HEADER:]
    else:
        head, rest = struct.pack(">I", len(body)), body + b"\x00" * frames.MAC_LEN
    try:
        chan.open(head, rest)
    except SpineError as e:
        assert not insider or e.details.get("reason") != "mac", "the insider's MAC was refused"
