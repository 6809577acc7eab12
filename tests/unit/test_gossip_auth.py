"""Authenticated, bounded gossip (issue 14): the envelope, the decoder's bounds, SWIM's caps, and
the shell's handling of forged packets. The attack tests (incarnation 2^64-1, 1,106 members, a
PingReq aimed at a stranger, an Ack from the wrong node, a bare Refuse) assert what 0d917e7 got
wrong: the same assertions written against its API fail there. The same attacks from another
process, against real nodes, are in tests/integration/test_gossip_hostile.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import struct
from dataclasses import dataclass

import msgpack
import pytest

from spine.cluster.gossip_transport import MAX_DATAGRAM_IN, frame
from spine.cluster.membership import Gossip, identity_meta
from spine.core.metrics import Registry
from spine.core.swim import Member, MemberState, Swim, SwimConfig
from spine.core.swim_auth import OVERHEAD, AuthError, Channel, GossipAuth, gossip_key
from spine.core.swim_messages import (
    MAX_INCARNATION,
    Ack,
    DecodeError,
    Dropped,
    Ping,
    PingReq,
    PushPull,
    Refuse,
    Update,
    decode,
    encode,
)
from spine.runtime import Runtime

pytestmark = pytest.mark.timeout(30)

A, S = MemberState.ALIVE, MemberState.SUSPECT
SECRET = "gossip-test-secret"
WINDOW = 1_000
NOW = 1_700_000_000_000  # ms


def rec(name: str, inc: int = 0, state: MemberState = A) -> Member:
    return Member(name, f"127.0.0.1:{7000 + sum(map(ord, name)) % 1000}", inc, state)


# ---------------------------------------------------------------------------------- envelope


def test_a_sealed_packet_opens_and_costs_25_bytes() -> None:
    auth = GossipAuth([SECRET], WINDOW)
    body = encode(Ping(1, "a", "b"))
    data = auth.seal(Channel.DATAGRAM, body, NOW)
    assert len(data) == len(body) + OVERHEAD == len(body) + 25
    assert auth.open(Channel.DATAGRAM, data, NOW)[0] == body


def test_a_flipped_bit_anywhere_or_a_truncation_is_unauthenticated() -> None:
    auth = GossipAuth([SECRET], WINDOW)
    data = auth.seal(Channel.DATAGRAM, encode(Ping(1, "a", "b")), NOW)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(AuthError) as e:
            GossipAuth([SECRET], WINDOW).open(Channel.DATAGRAM, bytes(bad), NOW)
        assert e.value.reason == "unauthenticated"
    for cut in (0, 1, OVERHEAD, len(data) - 1):
        with pytest.raises(AuthError):
            auth.open(Channel.DATAGRAM, data[:cut], NOW)


def test_the_keyring_accepts_an_old_secret_during_a_rotation_and_signs_with_the_first() -> None:
    old, new = GossipAuth(["old"], WINDOW), GossipAuth(["new", "old"], WINDOW)
    body = encode(Ping(1, "a", "b"))
    assert new.open(Channel.DATAGRAM, old.seal(Channel.DATAGRAM, body, NOW), NOW)[0] == body
    assert GossipAuth(["old", "new"], WINDOW).open(
        Channel.DATAGRAM, new.seal(Channel.DATAGRAM, body, NOW + 1), NOW)[0] == body
    with pytest.raises(AuthError, match="bad MAC"):  # a node with only the old secret
        old.open(Channel.DATAGRAM, new.seal(Channel.DATAGRAM, body, NOW + 2), NOW)
    with pytest.raises(AuthError, match="bad MAC"):  # and a stranger
        GossipAuth(["other"], WINDOW).open(Channel.DATAGRAM, old.seal(Channel.DATAGRAM, body,
                                                                      NOW + 3), NOW)


def test_the_gossip_key_is_derived_apart_from_the_rpc_use_of_the_secret() -> None:
    key = gossip_key(SECRET)
    assert key != SECRET.encode() and len(key) == 32
    # The RPC handshake MACs with the raw secret: no gossip MAC can be replayed there.
    assert key != hmac.new(SECRET.encode(), b"", hashlib.sha256).digest()
    assert gossip_key(SECRET) == key and gossip_key(SECRET + "x") != key


@pytest.mark.parametrize("skew", [-WINDOW - 1, WINDOW + 1, -10**9, 10**9])
def test_a_packet_stamped_outside_the_window_is_stale(skew: int) -> None:
    auth = GossipAuth([SECRET], WINDOW)
    data = auth.seal(Channel.DATAGRAM, encode(Ping(1, "a", "b")), NOW + skew)
    with pytest.raises(AuthError) as e:
        auth.open(Channel.DATAGRAM, data, NOW)
    assert e.value.reason == "stale"


def test_a_replayed_packet_is_accepted_once_and_the_cache_stays_bounded() -> None:
    auth = GossipAuth([SECRET], WINDOW, replay_cap=100)
    data = auth.seal(Channel.DATAGRAM, encode(Ping(1, "a", "b")), NOW)
    auth.open(Channel.DATAGRAM, data, NOW)
    with pytest.raises(AuthError) as e:
        auth.open(Channel.DATAGRAM, data, NOW + 10)
    assert e.value.reason == "replayed"
    for i in range(1_000):
        auth.open(Channel.DATAGRAM, auth.seal(Channel.DATAGRAM, encode(Ping(i + 2, "a", "b")),
                                              NOW + i), NOW + i)
    assert len(auth._seen) <= 100


def test_a_reply_opens_only_on_the_exchange_it_answers() -> None:
    auth = GossipAuth([SECRET], WINDOW)
    req1 = auth.seal(Channel.REQUEST, encode(PushPull("a", ())), NOW)
    req2 = auth.seal(Channel.REQUEST, encode(PushPull("a", ())), NOW + 1)
    reply = auth.seal(Channel.REPLY, encode(Refuse("b", "no")), NOW, bound_to=req1[-16:])
    assert decode(auth.open(Channel.REPLY, reply, NOW, bound_to=req1[-16:])[0]) == \
        Refuse("b", "no")
    with pytest.raises(AuthError, match="bad MAC"):
        auth.open(Channel.REPLY, reply, NOW, bound_to=req2[-16:])
    with pytest.raises(AuthError) as e:  # a request is not a datagram, nor a reply
        auth.open(Channel.DATAGRAM, req1, NOW)
    assert e.value.reason == "unexpected"


# ----------------------------------------------------------------------------------- decoder


def body(tag: int, fields: list[object]) -> bytes:
    return bytes((tag,)) + msgpack.packb(fields)


def member_wire(inc: object = 0, address: object = "127.0.0.1:7000", node: object = "n1",
                meta: object = None) -> list[object]:
    return [node, address, inc, 0, meta if meta is not None else {}]


@pytest.mark.parametrize("data", [
    body(1, [1, "x", "a", [[*member_wire(2**64 - 1), "x"]]]),      # the incarnation
    body(1, [1, "x", "a", [[*member_wire(MAX_INCARNATION + 1), "x"]]]),
    body(1, [-1, "x", "a", []]),                                      # negative seq
    body(1, [2**64 - 1, "x", "a", []]),                               # seq past 2^63
    body(1, [1, "", "a", []]),                                        # empty sender
    body(1, [1, "x" * 257, "a", []]),                                 # id too long
    body(1, [True, "x", "a", []]),                                    # a bool for an integer
    body(2, [1, "x", "a", "127.0.0.1:0", []]),                        # port 0
    body(2, [1, "x", "a", "127.0.0.1:65536", []]),                    # port past 65535
    body(2, [1, "x", "a", "no-port", []]),
    body(2, [1, "x", "a", "h:\u00b2", []]),                         # a digit int() refuses
    body(2, [1, "x", "a", "[]:80", []]),
    body(1, [1, "x", "a", [[*member_wire(address="h:1:x"), "x"]]]),
    body(1, [1, "x", "a", [[*member_wire(meta={f"k{i}": "v" for i in range(17)}), "x"]]]),
    body(1, [1, "x", "a", [[*member_wire(), "x"]] * 65]),             # too many updates
    body(5, ["x", [member_wire(node=f"n{i}") for i in range(1_025)], False]),  # > max_members
    body(6, ["x", "r" * 1_025]),                                      # reason too long
    body(1, [1, "x", "a", [[*member_wire(), "x"]]] + [0] * 20),       # too many fields
    b"\x05" + b"\xdd\xff\xff\xff\xff",                                # a 4-billion-item array
    b"\x01" + b"\x91" * 5_000,                                        # nested deep
])
def test_the_decoder_refuses_values_out_of_range(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_garbage_raises_only_decode_errors() -> None:
    rng = random.Random(14)
    for _ in range(3_000):
        tag = rng.randrange(0, 8)
        data = bytes((tag,)) + rng.randbytes(rng.randrange(0, 64))
        with contextlib.suppress(DecodeError):
            decode(data)


def test_the_largest_legal_values_round_trip() -> None:
    m = Member("n" * 256, "[" + "h" * 250 + "]:65535", MAX_INCARNATION, S,
               tuple((f"k{i:02}", "v" * 512) for i in range(16)))
    msg = Ping(2**63 - 1, "x", "a", (Update(m, "x"),))
    assert decode(encode(msg)) == msg


# ------------------------------------------------------------------------------- SWIM bounds


def swim(name: str = "a", **cfg: object) -> Swim:
    s = Swim(name, rec(name).address, rng=random.Random(1),
             config=SwimConfig(**cfg))  # type: ignore[arg-type]
    s.join([], 0.0)
    return s


def test_a_claim_about_us_at_an_absurd_incarnation_is_not_believed() -> None:
    s = swim()
    claim = Update(rec("a", 2**64 - 1, S), "x")  # the forged claim, past the decoder
    s.receive("127.0.0.1:9", Ping(1, "x", "a", (claim,)), 1.0)
    assert s.incarnation == 0
    assert Dropped(1.0, "absurd_incarnation", "a") in s.drain_events()
    encode(PushPull("a", s.push_pull_state()))  # gossip goes on: everything still encodes
    # The largest claim that can be outbid is outbid, and the refutation still encodes.
    s.receive("127.0.0.1:9", Ping(2, "x", "a", (Update(rec("a", MAX_INCARNATION - 1, S), "x"),)),
              2.0)
    assert s.incarnation == MAX_INCARNATION
    decode(encode(PushPull("a", s.push_pull_state())))
    s.update_meta({"ring": "active"})  # cannot go higher: stays encodable
    assert s.incarnation == MAX_INCARNATION


def test_forged_members_are_capped() -> None:
    s = swim()
    forged = [rec(f"forged-{i}") for i in range(1_106)]  # the 1,106
    s.merge_state(forged, 1.0)
    assert len(s.members()) == SwimConfig().max_members == 1024
    drops = [e for e in s.drain_events() if isinstance(e, Dropped)]
    assert len(drops) == 1_106 - 1_023 and {d.reason for d in drops} == {"members_full"}
    small = swim(max_members=3)
    small.merge_state(forged[:10], 1.0)
    assert len(small.members()) == 3


def test_a_ping_req_for_a_stranger_is_not_relayed() -> None:
    s = swim()
    s.merge_state([rec("b")], 0.0)
    s.drain_events()
    out = s.receive("127.0.0.1:9", PingReq(5, "b", "victim", "203.0.113.9:53"), 1.0)
    assert out == []
    assert s.drain_events() == [Dropped(1.0, "unknown_target", "b")]
    # A member's ping is relayed, to the address we know, not the one asked for.
    out = s.receive("127.0.0.1:9", PingReq(6, "x", "b", "203.0.113.9:53"), 1.0)
    assert [(o.address, type(o.msg)) for o in out] == [(rec("b").address, Ping)]


def test_relays_in_flight_are_capped() -> None:
    s = swim()
    s.merge_state([rec("b")], 0.0)
    sent = sum(len(s.receive("127.0.0.1:9", PingReq(i, "x", "b", rec("b").address), 0.0))
               for i in range(1_000))
    assert sent == 256
    assert sum(isinstance(e, Dropped) and e.reason == "relays_full"
               for e in s.drain_events()) == 1_000 - 256


def test_an_ack_counts_only_from_the_target_or_a_helper_asked() -> None:
    s = swim(ping_timeout=0.1, protocol_period=0.5)
    s.merge_state([rec("b"), rec("c")], 0.0)
    outs: list[object] = []
    now = 0.0
    while not any(isinstance(o.msg, Ping) for o in outs):
        now = s.next_deadline()
        outs = list(s.tick(now))
    ping = next(o.msg for o in outs if isinstance(o.msg, Ping))
    assert isinstance(ping, Ping)
    other = "c" if ping.target == "b" else "b"
    s.receive("127.0.0.1:9", Ack(ping.seq, other), now)  # a replayed Ack from someone else
    assert s._probe is not None and not s._probe.acked
    s.receive("127.0.0.1:9", Ack(ping.seq, ping.target), now)
    assert s._probe.acked


def test_identity_verdicts_are_capped() -> None:
    s = Swim("a", rec("a").address, rng=random.Random(1), accept=lambda m: "no",
             config=SwimConfig(max_members=8))
    s.join([], 0.0)
    s.merge_state([rec(f"x{i}") for i in range(500)], 1.0)
    assert len(s._admission) <= 16 and len(s.members()) == 1


# ------------------------------------------------------------------------------- the shell


@dataclass
class Clock(Runtime):
    now: float = 100.0
    wall: int = NOW

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall


META = identity_meta(zone="", ring_state="active", cluster="c", shards=64, embedder="e")


def offline(rt: Clock, registry: Registry | None = None) -> Gossip:
    g = Gossip("a", "127.0.0.1", 1, runtime=rt, config=SwimConfig.local(), meta=META,
               secrets=[SECRET], registry=registry or Registry(),
               peers={"a": "127.0.0.1:1", "b": "127.0.0.1:2", "c": "127.0.0.1:3"})
    g.swim.join([], rt.now)
    me = tuple(META.items())
    g.swim.merge_state([Member("b", "127.0.0.1:2", 0, A, me), Member("c", "127.0.0.1:3", 0, A, me)],
                       rt.now)
    g.swim.drain_events()
    return g


def test_a_forged_udp_refuse_has_no_effect() -> None:
    rt = Clock(rng=random.Random(1))
    g = offline(rt)
    forged = encode(Refuse("b", "x"))  # the bare datagram, no MAC
    g.net._on_datagram(forged, ("127.0.0.99", 5000))
    sealed = g.net.codec.seal(Channel.DATAGRAM, Refuse("c", "x"))  # even with the secret
    g.net._on_datagram(sealed, ("127.0.0.99", 5000))
    assert g.is_alive("b") and g.is_alive("c") and g.down() == set()
    assert g.drops.get("unauthenticated") == 1 and g.drops.get("unexpected") == 1


def test_a_refusal_by_a_peer_lapses() -> None:
    rt = Clock(rng=random.Random(1))
    g = offline(rt)
    g._handle("127.0.0.1:2", Refuse("b", "identity mismatch"))  # as a push-pull's reply
    assert not g.is_alive("b")
    rt.now += g.refuse_ttl
    assert g.is_alive("b")


def test_garbage_stale_replayed_and_oversized_datagrams_are_counted_not_raised() -> None:
    rt = Clock(rng=random.Random(1))
    reg = Registry()
    g = offline(rt, reg)
    src = ("127.0.0.99", 5000)
    rng = random.Random(7)
    for _ in range(200):
        g.net._on_datagram(rng.randbytes(rng.randrange(0, 200)), src)
    g.net._on_datagram(b"\x00" * (MAX_DATAGRAM_IN + 1), src)
    good = GossipAuth([SECRET], 1).seal(Channel.DATAGRAM, encode(Ping(1, "b", "a")), NOW)
    g.net._on_datagram(good, src)
    g.net._on_datagram(good, src)
    rt.wall += 60_000
    g.net._on_datagram(GossipAuth([SECRET], 1).seal(Channel.DATAGRAM, encode(Ping(2, "b", "a")),
                                                    NOW), src)
    bad_body = GossipAuth([SECRET], 1).seal(Channel.DATAGRAM, b"\x01\xc1", rt.wall)
    g.net._on_datagram(bad_body, src)
    assert g.drops.get("unauthenticated") == 200
    assert [g.drops.get(r) for r in ("oversized", "replayed", "stale", "malformed")] == [1] * 4
    assert 'spine_gossip_dropped_total{reason="unauthenticated"} 200' in reg.render()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
async def test_unauthenticated_and_oversized_tcp_frames_are_dropped_and_counted() -> None:
    port = _free_port()
    g = Gossip("a", "127.0.0.1", port, runtime=Runtime(rng=random.Random(1)),
               config=SwimConfig.local(), meta=META, secrets=[SECRET], registry=Registry(),
               leave_grace=0.0)
    await g.start()
    try:
        async def send(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            got = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return got

        forged = encode(PushPull("x", (rec("x"),)))  # no MAC
        assert await send(frame(forged)) == b""
        assert await send(struct.pack(">I", 16 * 1024 * 1024) + b"\x00" * 64) == b""
        replayed = GossipAuth([SECRET], 10_000).seal(
            Channel.DATAGRAM, encode(PushPull("x", (rec("x"),))), Runtime().wall_ms())
        assert await send(frame(replayed)) == b""  # a datagram's seal is not a request's
        for _ in range(100):
            if g.drops.get("unexpected") >= 1:
                break
            await asyncio.sleep(0.01)
        assert g.drops.get("unauthenticated") == 1 and g.drops.get("oversized") == 1
        assert g.drops.get("unexpected") == 1
        assert g.member("x") is None
    finally:
        await g.stop()


def test_a_member_whose_new_version_is_refused_is_forgotten_until_one_passes() -> None:
    def check(m: Member) -> str | None:
        return None if m.meta_dict().get("cluster") == "c" else "another cluster"

    s = Swim("a", rec("a").address, rng=random.Random(1), accept=check)
    s.join([], 0.0)
    good = Member("b", rec("b").address, 0, A, (("cluster", "c"),))
    s.merge_state([good], 0.0)
    # A lie (or a real change of identity) at a higher incarnation: b is no longer trusted.
    s.receive("127.0.0.1:9", Ping(1, "x", "a", (Update(Member("b", good.address, 5, A,
                                                               (("cluster", "z"),)), "b"),)), 1.0)
    assert s.member("b") is None and s.refused("b") == "another cluster"
    assert s.receive(good.address, Ping(2, "b", "a"), 1.5) == []  # no ack for a refused node
    # b's own word, at its own incarnation, brings it back.
    s.receive(good.address, Ping(3, "b", "a", (Update(good, "b"),)), 2.0)
    assert s.member("b") == good and s.refused("b") is None


def test_the_gossip_settings_are_checked_and_reach_swim() -> None:
    from spine.cluster.membership import swim_config
    from spine.core.config import from_dict
    from spine.core.errors import ConfigError

    cfg = from_dict({"gossip": {"max_members": 64, "freshness_margin_ms": 2_000}})
    assert swim_config(cfg.gossip).max_members == 64
    assert from_dict({}).gossip.max_members == 1024 == SwimConfig().max_members
    for bad in ({"max_members": 1}, {"max_members": 70_000}, {"max_members": "many"},
                {"freshness_margin_ms": -1}):
        key = next(iter(bad))
        with pytest.raises(ConfigError, match=f"gossip.{key}"):
            from_dict({"gossip": bad})
