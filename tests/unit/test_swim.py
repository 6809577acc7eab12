"""SWIM's pure state machine: formulas, codec, precedence, probe/suspect/dead, refusal.

No sockets and no clock: a `Pump` hands messages between `Swim` instances synchronously (through
the real codec), and each test chooses the `now` it passes.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable

import msgpack
import pytest

from spine.core.errors import ConfigError
from spine.core.swim import (
    Member,
    MemberState,
    Outbound,
    Refusal,
    Swim,
    SwimConfig,
    Transition,
    Update,
    failure_detection_bound,
    retransmit_limit,
    supersedes,
    suspicion_duration,
    suspicion_timeout,
)
from spine.core.swim_messages import (
    Ack,
    DecodeError,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Refuse,
    Tag,
    decode,
    encode,
    meta_of,
)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CFG = SwimConfig()


def addr(name: str) -> str:
    return f"{name}.test:7946"


def make(name: str, **kw: object) -> Swim:
    return Swim(name, addr(name), rng=random.Random(name), **kw)  # type: ignore[arg-type]


def rec(name: str, inc: int = 0, state: MemberState = A, **meta: str) -> Member:
    return Member(name, addr(name), inc, state, meta_of(meta))


def gossip(*members: Member, to: str = "a", by: str = "x") -> Ping:
    """A ping from node x to `to` carrying these updates (accused by `by`)."""
    return Ping(1, "x", to, tuple(Update(m, by if m.state in (S, D) else m.node_id)
                                  for m in members))


class Pump:
    """Zero-latency delivery between Swims, through the codec; `cut` drops (from, to) pairs."""

    def __init__(self, *nodes: Swim) -> None:
        self.nodes = {n.address: n for n in nodes}
        self.cut: set[tuple[str, str]] = set()
        self.log: list[tuple[str, str, Message]] = []

    def isolate(self, node: Swim) -> None:
        for other in self.nodes:
            self.cut |= {(node.address, other), (other, node.address)}

    def send(self, src: Swim, outs: Iterable[Outbound], now: float) -> None:
        queue = deque((src.address, dst, msg) for dst, msg in outs)
        while queue:
            s, d, msg = queue.popleft()
            self.log.append((s, d, msg))
            if (s, d) in self.cut or d not in self.nodes:
                continue
            target = self.nodes[d]
            queue.extend((d, d2, m2) for d2, m2 in target.receive(s, decode(encode(msg)), now))

    def tick(self, node: Swim, now: float) -> list[Outbound]:
        outs = node.tick(now)
        self.send(node, outs, now)
        return outs


def cluster(*names: str, **kw: object) -> tuple[list[Swim], Pump]:
    """Nodes that all know each other as ALIVE at incarnation 0, joined at t=0."""
    nodes = [make(n, **kw) for n in names]
    for n in nodes:
        n.join([], 0.0)
    for n in nodes:
        n.merge_state([m.me() for m in nodes], 0.0)
        n.drain_events()
    return nodes, Pump(*nodes)


def tick_until_ping(pump: Pump, node: Swim, target: str | None = None) -> tuple[float, Ping]:
    """Tick `node` at its own deadlines until it sends a probe Ping (to `target`, if given)."""
    for _ in range(200):
        now = node.next_deadline()
        outs = node.tick(now)
        pings = [m for _, m in outs if isinstance(m, Ping)]
        if pings and (target is None or pings[0].target == target):
            return now, pings[0]
        pump.send(node, outs, now)
    raise AssertionError("no probe sent")


# -------------------------------------------------------------------------------------- formulas


@pytest.mark.parametrize(("mult", "n", "period", "expected"), [
    (4, 0, 0.5, 2.0),      # log10 floored at 1: small clusters get the full multiple
    (4, 1, 0.5, 2.0),
    (4, 8, 0.5, 2.0),
    (4, 10, 0.5, 2.0),
    (4, 100, 0.5, 4.0),
    (4, 1000, 1.0, 12.0),
    (5, 10, 1.0, 5.0),     # memberlist LAN: 5 × 1 × 1 s
    (6, 100, 5.0, 60.0),   # memberlist WAN-ish: 6 × 2 × 5 s
])
def test_suspicion_timeout(mult: int, n: int, period: float, expected: float) -> None:
    assert suspicion_timeout(mult, n, period) == pytest.approx(expected)


@pytest.mark.parametrize(("confirmations", "expected_k", "lo", "hi", "timeout"), [
    (0, 2, 2.0, 12.0, 12.0),                                   # lone accuser: the maximum
    (1, 2, 2.0, 12.0, 12.0 - 10.0 * math.log(2) / math.log(3)),
    (2, 2, 2.0, 12.0, 2.0),                                    # k confirmations: the nominal
    (5, 2, 2.0, 12.0, 2.0),                                    # never below the nominal
    (0, 0, 2.0, 12.0, 2.0),                                    # cluster too small to confirm
    (0, 3, 2.0, 2.0, 2.0),                                     # Lifeguard off (max mult 1)
])
def test_suspicion_duration(
    confirmations: int, expected_k: int, lo: float, hi: float, timeout: float
) -> None:
    assert suspicion_duration(confirmations, expected_k, lo, hi) == pytest.approx(timeout)


@pytest.mark.parametrize(("mult", "n", "limit"), [
    (4, 0, 0), (4, 1, 4), (4, 8, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12),
    (3, 1000, 12),
])
def test_retransmit_limit(mult: int, n: int, limit: int) -> None:
    assert retransmit_limit(mult, n) == limit


@pytest.mark.parametrize(("config", "n", "bound"), [
    (CFG, 8, 7 * 0.5 * 2 + 6 * 2.0),                       # 19 s: the sim's kill scenario
    (CFG, 2, 1 * 0.5 * 2 + 6 * 2.0),
    (SwimConfig(suspicion_max_mult=1), 8, 7.0 + 2.0),
    (SwimConfig(protocol_period=1.0, ping_timeout=0.4), 100, 99 * 2 + 6 * 8.0),
])
def test_failure_detection_bound(config: SwimConfig, n: int, bound: float) -> None:
    assert failure_detection_bound(config, n) == pytest.approx(bound)


def test_presets_are_valid() -> None:
    assert SwimConfig.local().protocol_period < CFG.protocol_period


@pytest.mark.parametrize("bad", [
    {"protocol_period": 0}, {"ping_timeout": 0.25}, {"ping_timeout": 0}, {"ping_req_k": 0},
    {"suspicion_max_mult": 0.5}, {"push_pull_interval": 0}, {"max_piggyback": 0},
    {"max_datagram": 512}, {"dead_reap_after": 0},
])
def test_config_rejects_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=f"swim.{next(iter(bad))}"):
        SwimConfig(**bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- codec

UPDATES = (
    Update(rec("n1", 3, A, zone="eu-1", ring="active", cluster="prod"), "n1"),
    Update(rec("n2", 0, S), "n7"),
    Update(rec("n3", 9, D), "n1"),
    Update(rec("n4", 2, L, shards="256", embedder="e5:ab12"), "n4"),
    Update(rec("n5", 1, S), ""),
)

MESSAGES: list[tuple[Message, Tag]] = [
    (Ping(1, "n1", "n2"), Tag.PING),
    (Ping(2**40, "n1", "n2", UPDATES), Tag.PING),
    (PingReq(7, "n1", "n3", "10.0.0.3:7946", UPDATES[:2]), Tag.PING_REQ),
    (Ack(7, "n3"), Tag.ACK),
    (Ack(8, "n3", UPDATES), Tag.ACK),
    (Nack(7, "n2"), Tag.NACK),
    (PushPull("n1", tuple(u.member for u in UPDATES)), Tag.PUSH_PULL),
    (PushPull("n1", (), is_reply=True), Tag.PUSH_PULL),
    (Refuse("n1", "cluster 'dev' is not 'prod'"), Tag.REFUSE),
]


@pytest.mark.parametrize(("msg", "tag"), MESSAGES)
def test_codec_round_trips_every_message_kind(msg: Message, tag: Tag) -> None:
    data = encode(msg)
    assert data[0] == tag
    assert decode(data) == msg


def test_tags_and_state_codes_are_stable() -> None:
    assert [(t.name, t.value) for t in Tag] == [
        ("PING", 1), ("PING_REQ", 2), ("ACK", 3), ("NACK", 4), ("PUSH_PULL", 5), ("REFUSE", 6)]
    assert [(s.name, s.value) for s in MemberState] == [
        ("ALIVE", 0), ("SUSPECT", 1), ("DEAD", 2), ("LEFT", 3)]


def test_decoder_ignores_fields_appended_by_a_newer_peer() -> None:
    body = msgpack.packb([7, "n3", [], "a field from the future"])
    assert decode(bytes((Tag.ACK,)) + body) == Ack(7, "n3")


def _raw(tag: int, body: object) -> bytes:
    return bytes((tag,)) + bytes(msgpack.packb(body))


@pytest.mark.parametrize("data", [
    b"",
    b"\x63",                                           # unknown tag
    bytes((Tag.PING,)),                                # no body
    bytes((Tag.PING,)) + b"\xc1",                      # msgpack's never-used byte
    _raw(Tag.PING, {"seq": 1}),                        # not a list
    _raw(Tag.PING, [1, "n1"]),                         # too short
    _raw(Tag.PING, ["1", "n1", "n2", []]),             # seq not an int
    _raw(Tag.ACK, [True, "n1", []]),                   # a bool is not a seq
    _raw(Tag.ACK, [1, "n1", [["n2", "h:1", 0, 9, {}, "n2"]]]),     # unknown state code
    _raw(Tag.ACK, [1, "n1", [["n2", "h:1", 0, 0, {"k": 1}, "n2"]]]),  # meta value not a string
    _raw(Tag.ACK, [1, "n1", [["n2", "h:1", 0, 0, {}]]]),         # update without its accuser
    _raw(Tag.PUSH_PULL, ["n1", [], "yes"]),            # is_reply not a bool
])
def test_decoder_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


# ------------------------------------------------------------------------------------ precedence

# (what we hold, what arrives, what we hold after); None = not known.
PRECEDENCE: list[tuple[tuple[MemberState, int] | None, tuple[MemberState, int],
                       tuple[MemberState, int] | None]] = [
    ((A, 1), (A, 2), (A, 2)),
    ((A, 1), (A, 1), (A, 1)),
    ((A, 2), (A, 1), (A, 2)),
    ((A, 1), (S, 1), (S, 1)),      # suspect(i) beats alive(j <= i)
    ((A, 1), (S, 2), (S, 2)),
    ((A, 2), (S, 1), (A, 2)),
    ((S, 1), (A, 1), (S, 1)),      # only a higher incarnation refutes
    ((S, 1), (A, 2), (A, 2)),
    ((S, 1), (S, 2), (S, 2)),
    ((S, 2), (S, 1), (S, 2)),
    ((A, 1), (D, 1), (D, 1)),      # dead beats everything of <= incarnation
    ((S, 3), (D, 3), (D, 3)),
    ((S, 3), (D, 2), (S, 3)),
    ((D, 1), (A, 1), (D, 1)),
    ((D, 1), (S, 1), (D, 1)),
    ((D, 1), (A, 2), (A, 2)),      # a restarted node outbids its obituary
    ((A, 1), (L, 1), (L, 1)),
    ((D, 1), (L, 1), (L, 1)),      # a graceful leave is the better-informed verdict
    ((L, 1), (D, 1), (L, 1)),      # LEFT is final for its incarnation
    ((L, 1), (A, 1), (L, 1)),
    ((L, 1), (S, 1), (L, 1)),
    ((L, 1), (A, 2), (A, 2)),      # ... until the node rejoins
    (None, (A, 0), (A, 0)),
    (None, (S, 4), (S, 4)),
    (None, (D, 1), None),          # never learn a member from its obituary
    (None, (L, 1), None),
]


@pytest.mark.parametrize(("held", "arrives", "after"), [r for r in PRECEDENCE if r[0]])
def test_supersedes_table(
    held: tuple[MemberState, int], arrives: tuple[MemberState, int],
    after: tuple[MemberState, int] | None,
) -> None:
    old, new = rec("b", held[1], held[0]), rec("b", arrives[1], arrives[0])
    assert supersedes(new, old) == (after == arrives and arrives != held)


@pytest.mark.parametrize(("held", "arrives", "after"), PRECEDENCE)
def test_gossip_applies_the_precedence_table(
    held: tuple[MemberState, int] | None, arrives: tuple[MemberState, int],
    after: tuple[MemberState, int] | None,
) -> None:
    a = make("a")
    if held is not None:
        a.receive(addr("x"), gossip(rec("b", held[1], A)), 0.0)
        if held[0] is not A:
            a.receive(addr("x"), gossip(rec("b", held[1], held[0])), 0.0)
    a.receive(addr("x"), gossip(rec("b", arrives[1], arrives[0])), 1.0)
    b = a.member("b")
    assert (None if b is None else (b.state, b.incarnation)) == after


def test_push_pull_turns_a_peers_dead_verdict_into_a_suspicion() -> None:
    a = make("a")
    a.receive(addr("x"), gossip(rec("b"), rec("c")), 0.0)
    a.merge_state([rec("b", 0, D), rec("z", 5, D)], 1.0)
    assert a.member("b") == rec("b", 0, S)    # b gets its chance to refute
    assert a.member("z") is None              # a stranger's obituary teaches nothing
    # Full state names no accuser, so a second push-pull does not count as a confirmation.
    deadline = a._suspicions["b"].deadline
    a.merge_state([rec("b", 0, S)], 2.0)
    assert a._suspicions["b"].deadline == deadline


# ------------------------------------------------------------------------------------ refutation


@pytest.mark.parametrize("state", [S, D, L])
def test_a_node_refutes_an_accusation_with_a_higher_incarnation(state: MemberState) -> None:
    a = make("a")
    a.join([], 0.0)
    out = a.receive(addr("x"), gossip(rec("a", 3, state)), 1.0)
    assert a.incarnation == 4
    assert a.member("a") == rec("a", 4, A)
    ack = out[0].msg
    assert isinstance(ack, Ack)
    assert ack.updates[0] == Update(rec("a", 4, A), "a")   # the refutation rides the reply


def test_stale_accusation_resends_the_refutation_without_a_new_incarnation() -> None:
    a = make("a")
    a.join([], 0.0)
    a.receive(addr("x"), gossip(rec("a", 0, S)), 1.0)
    for _ in range(20):                       # exhaust the refutation's retransmits
        a.receive(addr("x"), gossip(), 1.0)
    assert a.incarnation == 1
    a.receive(addr("x"), gossip(rec("a", 0, S)), 2.0)
    assert a.incarnation == 1
    assert a._queue["a"].update.member == rec("a", 1, A)


def test_alive_about_us_from_a_previous_life_is_outbid() -> None:
    a = make("a", meta={"ring": "joining"})
    a.join([], 0.0)
    a.receive(addr("x"), gossip(rec("a", 7, A, ring="active")), 1.0)
    assert a.me() == rec("a", 8, A, ring="joining")


# --------------------------------------------------------------------------------------- probing


def test_ping_is_answered_with_an_ack_carrying_our_record() -> None:
    b = make("b")
    b.join([], 0.0)
    out = b.receive(addr("a"), Ping(42, "a", "b"), 1.0)
    assert len(out) == 1
    assert out[0].address == addr("a")
    ack = out[0].msg
    assert isinstance(ack, Ack)
    assert (ack.seq, ack.sender, ack.updates[0]) == (42, "b", Update(rec("b"), "b"))


def test_ping_meant_for_another_node_is_ignored() -> None:
    b = make("b")
    assert b.receive(addr("a"), Ping(42, "a", "someone-else"), 1.0) == []


def test_nothing_happens_before_join() -> None:
    a = make("a")
    assert a.next_deadline() == math.inf
    assert a.tick(100.0) == []


def test_probe_acked_directly_keeps_target_alive() -> None:
    (a, _, _), pump = cluster("a", "b", "c")
    t, ping = tick_until_ping(pump, a)
    pump.send(a, [Outbound(a.member(ping.target).address, ping)], t)  # type: ignore[union-attr]
    assert not any(isinstance(m, PingReq) for _, m in a.tick(t + CFG.ping_timeout))
    pump.tick(a, t + CFG.protocol_period)
    assert a.member(ping.target).state is A  # type: ignore[union-attr]
    assert a.awareness == 0


def test_ping_timeout_asks_helpers_and_their_relayed_ack_keeps_target_alive() -> None:
    (a, b, c, d), pump = cluster("a", "b", "c", "d")
    t, ping = tick_until_ping(pump, a, "b")
    pump.cut |= {(a.address, b.address), (b.address, a.address)}
    pump.send(a, [Outbound(b.address, ping)], t)          # lost
    seen = len(pump.log)
    early = a.tick(t + CFG.ping_timeout - 0.01)
    assert not any(isinstance(m, PingReq) for _, m in early)
    out = a.tick(t + CFG.ping_timeout)
    reqs = [(dst, m) for dst, m in out if isinstance(m, PingReq)]
    assert sorted(dst for dst, _ in reqs) == [c.address, d.address]   # k=3, two helpers exist
    assert all((m.seq, m.target, m.target_address) == (ping.seq, "b", b.address)
               for _, m in reqs)
    pump.send(a, out, t + CFG.ping_timeout)
    relayed = [m for _, d2, m in pump.log[seen:] if d2 == a.address and isinstance(m, Ack)]
    assert {m.seq for m in relayed} == {ping.seq}
    pump.tick(a, t + CFG.protocol_period)
    assert a.member("b").state is A  # type: ignore[union-attr]
    assert a.drain_events() == []


def test_helper_nacks_when_target_is_silent() -> None:
    (a, b, c), pump = cluster("a", "b", "c")
    pump.isolate(b)
    out = c.receive(a.address, PingReq(9, "a", "b", b.address), 1.0)
    assert [(dst, type(m)) for dst, m in out] == [(b.address, Ping)]
    assert Outbound(a.address, Nack(9, "c")) not in c.tick(1.0 + CFG.ping_timeout - 0.01)
    assert Outbound(a.address, Nack(9, "c")) in c.tick(1.0 + CFG.ping_timeout)


def test_no_ack_at_all_suspects_then_declares_dead_after_the_timeout() -> None:
    (a, b, c), pump = cluster("a", "b", "c")
    pump.isolate(b)
    t, _ = tick_until_ping(pump, a, "b")
    pump.tick(a, t + CFG.ping_timeout)                    # helper c pings b: silence
    pump.tick(c, t + 2 * CFG.ping_timeout)                # c's nack reaches a in time
    pump.tick(a, t + CFG.protocol_period)
    suspected_at = t + CFG.protocol_period
    assert a.member("b") == rec("b", 0, S)
    assert a.awareness == 0                               # c's nack: our links are fine
    # n=3 is too few for Lifeguard confirmations (k=0): the nominal timeout applies.
    timeout = suspicion_timeout(CFG.suspicion_mult, 3, CFG.protocol_period)
    assert timeout == 2.0
    now = suspected_at
    while a.next_deadline() < suspected_at + timeout:     # a keeps probing meanwhile
        now = a.next_deadline()
        pump.tick(a, now)
        assert a.member("b").state is S  # type: ignore[union-attr]
    pump.tick(a, suspected_at + timeout)
    assert a.member("b") == rec("b", 0, D)
    events = [(e.node_id, e.old, e.new) for e in a.drain_events() if isinstance(e, Transition)]
    assert events == [("b", A, S), ("b", S, D)]


def test_lifeguard_confirmations_shorten_a_suspicion() -> None:
    (a, b, *_), pump = cluster("a", "b", "c", "d", "e")
    pump.isolate(b)                                       # else the probe lets it refute
    a.receive(addr("x"), gossip(rec("b", 0, S), by="c"), 10.0)
    lo = suspicion_timeout(CFG.suspicion_mult, 5, CFG.protocol_period)
    assert a._suspicions["b"].deadline == pytest.approx(10.0 + CFG.suspicion_max_mult * lo)
    a.receive(addr("x"), gossip(rec("b", 0, S), by="c"), 10.5)      # same accuser: no change
    a.receive(addr("x"), gossip(rec("b", 0, S), by="d"), 10.5)
    a.receive(addr("x"), gossip(rec("b", 0, S), by="e"), 10.6)      # k = mult - 2 = 2
    assert a._suspicions["b"].deadline == pytest.approx(10.0 + lo)
    pump.tick(a, 10.0 + lo)
    assert a.member("b").state is D  # type: ignore[union-attr]


def test_suspected_target_is_told_so_in_the_probe() -> None:
    (a, b), pump = cluster("a", "b")
    a.receive(addr("x"), gossip(rec("b", 0, S)), 0.0)
    _, ping = tick_until_ping(pump, a, "b")
    assert Update(rec("b", 0, S), "a") in ping.updates
    out = b.receive(a.address, ping, 1.0)
    assert b.incarnation == 1
    a.receive(b.address, out[0].msg, 1.0)
    assert a.member("b") == rec("b", 1, A)


# ----------------------------------------------------------------------------------- piggyback


def test_each_update_is_piggybacked_a_bounded_number_of_times() -> None:
    (a, *_), _ = cluster("a", "b", "c")
    a.drain_events()
    a._queue.clear()
    first = a.receive(addr("x"), gossip(rec("b", 1)), 1.0)[0].msg
    assert isinstance(first, Ack)
    limit = retransmit_limit(CFG.retransmit_mult, 3)
    sent = int(Update(rec("b", 1), "b") in first.updates)
    for seq in range(limit + 3):
        ack = a.receive(addr("c"), Ping(seq, "c", "a"), 1.0)[0].msg
        assert isinstance(ack, Ack)
        sent += Update(rec("b", 1), "b") in ack.updates
    assert sent == limit


def test_piggyback_prefers_least_sent_then_newest_and_caps_the_count() -> None:
    a = make("a", config=SwimConfig(max_piggyback=2))
    a.join([], 0.0)
    a._queue.clear()
    a.merge_state([rec(f"m{i}") for i in range(4)], 1.0)
    first = a.receive(addr("x"), Ping(1, "x", "a"), 5.0)[0].msg
    second = a.receive(addr("x"), Ping(2, "x", "a"), 5.0)[0].msg
    assert isinstance(first, Ack) and isinstance(second, Ack)
    assert [u.member.node_id for u in first.updates] == ["a", "m3", "m2"]
    assert [u.member.node_id for u in second.updates] == ["a", "m1", "m0"]


# ---------------------------------------------------------------------------------- membership


def test_join_via_seed_exchanges_full_state() -> None:
    s, j = make("s"), make("j")
    pump = Pump(s, j)
    assert s.join([], 0.0) == []
    out = j.join([s.address, j.address], 0.0)             # its own address is skipped
    assert [(dst, type(m)) for dst, m in out] == [(s.address, PushPull)]
    pump.send(j, out, 0.0)
    assert s.alive_ids() == j.alive_ids() == ["j", "s"]
    assert s.drain_events() == [Transition(0.0, "j", None, A, 0)]


def test_a_node_without_peers_asks_the_seeds_again() -> None:
    j = make("j")
    j.join([addr("s")], 0.0)
    out: list[Outbound] = []
    while not out:
        out = j.tick(j.next_deadline())
    assert [(dst, type(m)) for dst, m in out] == [(addr("s"), PushPull)]


def test_leave_is_gossiped_as_left_and_is_final_for_its_incarnation() -> None:
    (a, b, c), pump = cluster("a", "b", "c")
    out = a.leave(5.0)
    assert sorted(dst for dst, _ in out) == [b.address, c.address]
    pump.send(a, out, 5.0)
    assert b.member("a") == c.member("a") == rec("a", 0, L)
    assert b.alive_ids() == ["b", "c"]
    b.receive(addr("x"), gossip(rec("a", 0, A), to="b"), 6.0)
    assert b.member("a") == rec("a", 0, L)
    assert not any(isinstance(m, Ping) for _, m in a.tick(a.next_deadline()))  # no probing
    b.receive(addr("x"), gossip(rec("a", 1, A), to="b"), 7.0)   # rejoined
    assert b.member("a") == rec("a", 1, A)


def test_update_meta_bumps_the_incarnation_and_reports_a_meta_transition() -> None:
    (a, b), _ = cluster("a", "b")
    a.update_meta({"ring": "active"})
    assert a.me() == rec("a", 1, A, ring="active")
    ack = a.receive(b.address, Ping(2, "b", "a"), 1.0)[0].msg
    b.receive(a.address, ack, 1.0)
    assert b.member("a") == rec("a", 1, A, ring="active")
    assert b.drain_events() == [Transition(1.0, "a", A, A, 1)]


def test_dead_members_are_reaped_after_the_configured_time() -> None:
    a = make("a", config=SwimConfig(dead_reap_after=60.0))
    a.join([], 0.0)
    a.receive(addr("x"), gossip(rec("b")), 0.0)
    a.receive(addr("x"), gossip(rec("b", 0, D)), 1.0)
    now = 1.0
    while a.member("b") is not None:
        now = a.next_deadline()
        a.tick(now)
    assert 61.0 <= now < 61.0 + CFG.push_pull_interval
    assert a.drain_events()[-1] == Transition(now, "b", D, None, 0)


# ------------------------------------------------------------------------------------ identity


def same_cluster(m: Member) -> str | None:
    meta = m.meta_dict()
    if meta.get("cluster") != "prod" or meta.get("shards") != "256":
        return f"cluster {meta.get('cluster')!r}/{meta.get('shards')} is not 'prod'/256"
    return None


def test_mismatched_joiner_is_refused_and_told_so() -> None:
    s = make("s", meta={"cluster": "prod", "shards": "256"}, accept=same_cluster)
    j = make("j", meta={"cluster": "prod", "shards": "128"}, accept=same_cluster)
    s.join([], 0.0)
    out = s.receive(j.address, j.join([s.address], 0.0)[0].msg, 0.0)
    reason = "cluster 'prod'/128 is not 'prod'/256"
    assert out == [Outbound(j.address, Refuse("s", reason))]   # and none of the cluster's state
    assert s.member("j") is None
    assert s.drain_events() == [Refusal(0.0, "j", j.address, reason, by_peer=False)]
    assert j.receive(s.address, out[0].msg, 0.1) == []
    assert j.drain_events() == [Refusal(0.1, "s", s.address, reason, by_peer=True)]
    assert j.alive_ids() == ["j"]
    # A refused node's pings get no ack; it learns why only from the Refuse that answers its
    # push-pull (a Refuse anywhere else could be forged or reflected: issue 14).
    assert s.receive(j.address, Ping(3, "j", "s"), 1.0) == []


def test_mismatched_member_in_gossip_is_refused_once() -> None:
    s = make("s", meta={"cluster": "prod", "shards": "256"}, accept=same_cluster)
    s.join([], 0.0)
    stranger = rec("z", 0, A, cluster="dev", shards="256")
    out = s.receive(addr("x"), gossip(stranger, to="s"), 1.0)
    assert not any(isinstance(m, Refuse) for _, m in out)  # z is told only on a push-pull
    assert s.member("z") is None
    assert [type(e) for e in s.drain_events()] == [Refusal]
    out = s.receive(addr("x"), gossip(stranger, to="s"), 2.0)
    assert not any(isinstance(m, Refuse) for _, m in out)
    assert s.drain_events() == []
    fixed = rec("z", 0, A, cluster="prod", shards="256")       # restarted with the right config
    s.receive(addr("x"), gossip(fixed, to="s"), 3.0)
    assert s.member("z") == fixed


def test_piggyback_keeps_a_datagram_within_max_datagram() -> None:
    big = {"embedder": "sha256:" + "ab" * 32, "cluster": "spine-prod", "zone": "eu-west-1a"}
    a = make("a", meta=big, config=SwimConfig(max_piggyback=50))
    a.join([], 0.0)
    a.merge_state([rec(f"node-{i:03}", 0, A, **big) for i in range(40)], 1.0)
    a.receive(addr("x"), gossip(rec("node-007", 0, S)), 1.0)        # a hint for node-007
    req = PingReq(2**31, "a" * 40, "node-007", "255.255.255.255:65535", ())
    for _ in range(10):
        ups = a._piggyback("node-007")
        assert len(ups) > 2
        assert len(encode(PingReq(req.seq, req.sender, req.target, req.target_address, ups))) \
            <= CFG.max_datagram
