"""Gossip, the asyncio shell around SWIM: real UDP/TCP on 127.0.0.1, several nodes in one process.

The first tests need no sockets (the identity check, the framing, the `Liveness` answers on a
fake clock); the rest start two or three `Gossip`s on free ports and poll, with a deadline, for
convergence and for refusals.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from spine.cluster.gossip_transport import split_address
from spine.cluster.membership import Gossip, identity_check, identity_meta, swim_config
from spine.core.config import GossipSection
from spine.core.metrics import Registry
from spine.core.swim import Member, MemberState, SwimConfig
from spine.core.swim_messages import Ping, Update
from spine.runtime import Runtime

pytestmark = pytest.mark.timeout(60)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
FAST = SwimConfig.local()  # T = 0.2 s
RESERVED = (range(18788, 20791), range(38788, 40791))  # the benchmarks' ports
SECRETS = ("test-gossip-secret",)


def meta(cluster: str = "c", shards: int = 64, embedder: str = "hash:8:v1",
         zone: str = "") -> dict[str, str]:
    return identity_meta(zone=zone, ring_state="active", cluster=cluster, shards=shards,
                         embedder=embedder)


def states(g: Gossip) -> dict[str, MemberState]:
    return {m.node_id: m.state for m in g.members()}


# ------------------------------------------------------------------------------ no sockets


def test_identity_check_admits_the_same_identity_whatever_the_zone() -> None:
    accept = identity_check(meta())
    assert accept(Member("b", "h:1", 0, A, tuple(meta(zone="z2").items()))) is None


@pytest.mark.parametrize(
    ("theirs", "key"),
    [(meta(cluster="other"), "cluster"), (meta(shards=128), "shards"),
     (meta(embedder="hash:16:v1"), "embedder")],
)
def test_identity_check_names_what_differs(theirs: dict[str, str], key: str) -> None:
    reason = identity_check(meta())(Member("b", "h:1", 0, A, tuple(theirs.items())))
    assert reason is not None and reason.startswith("identity mismatch")
    assert f"{key} is {theirs[key]!r} there, {meta()[key]!r} here" in reason
    assert reason.count(" is ") == 1  # only what differs


def test_split_address() -> None:
    assert split_address("127.0.0.1:7946") == ("127.0.0.1", 7946)
    assert split_address("[::1]:7946") == ("::1", 7946)
    for bad in ("nohost", ":12", "h:port"):
        with pytest.raises(ValueError):
            split_address(bad)


@dataclass
class FakeRuntime(Runtime):
    now: float = 100.0

    def monotonic(self) -> float:
        return self.now


def _offline(rt: FakeRuntime, peers: Mapping[str, str] | None = None) -> Gossip:
    g = Gossip("a", "127.0.0.1", 1, runtime=rt, config=FAST, meta=meta(), secrets=SECRETS,
               peers=peers if peers is not None else {"a": "127.0.0.1:1", "b": "127.0.0.1:2"})
    g.swim.join([], rt.now)
    return g


def test_a_failure_is_a_hint_that_lapses_by_itself() -> None:
    rt = FakeRuntime(rng=random.Random(1))
    g = _offline(rt)
    assert g.is_alive("a") and g.is_alive("b")  # b: configured, in the start-up grace
    g.report_failure("b")
    g.report_failure("a")  # never about ourselves
    assert not g.is_alive("b") and g.is_alive("a")
    assert g.down() == {"b"}
    rt.now += g.hint_ttl
    assert g.is_alive("b")


def test_a_success_clears_the_hint_and_wakes_whoever_waits() -> None:
    rt = FakeRuntime(rng=random.Random(1))
    g = _offline(rt)
    woken: list[str] = []
    g.on_up.append(woken.append)
    g.report_success("b")
    assert woken == []  # nothing was set aside
    g.report_failure("b")
    g.report_success("b")
    assert g.is_alive("b") and woken == ["b"]


def test_swim_seeing_a_member_alive_overrides_the_hint_and_fires_on_up() -> None:
    rt = FakeRuntime(rng=random.Random(1))
    g = _offline(rt)
    woken: list[str] = []
    g.on_up.append(woken.append)
    g.report_failure("b")
    b = Member("b", "127.0.0.1:2", 0, A, tuple(meta().items()))
    g._handle("127.0.0.1:2", Ping(1, "b", "a", (Update(b, "b"),)))  # no transport: no reply
    assert g.is_alive("b") and woken == ["b"]
    assert g.member("b") == b


def test_unknown_peers_are_alive_only_during_the_start_up_grace() -> None:
    rt = FakeRuntime(rng=random.Random(1))
    g = _offline(rt)
    assert not g.is_alive("stranger")  # not configured: never assumed
    g._grace_until = rt.now + 1.0
    assert g.is_alive("b")
    rt.now += 1.0
    assert not g.is_alive("b") and g.down() == {"b"}


def test_suspect_is_alive_dead_and_left_are_not() -> None:
    rt = FakeRuntime(rng=random.Random(1))
    g = _offline(rt)
    me = tuple(meta().items())
    g.swim.merge_state([Member("b", "127.0.0.1:2", 0, A, me)], rt.now)
    assert g.member("b") is not None and g.is_alive("b")
    g.swim.merge_state([Member("b", "127.0.0.1:2", 0, S, me)], rt.now)
    assert states(g)["b"] is S and g.is_alive("b")
    dead = Member("b", "127.0.0.1:2", 0, D, me)
    g._handle("127.0.0.1:3", Ping(9, "c", "a", (Update(dead, "c"),)))
    assert states(g)["b"] is D and not g.is_alive("b")
    g.swim.merge_state([Member("b", "127.0.0.1:2", 1, L, me)], rt.now)
    assert states(g)["b"] is L and not g.is_alive("b")


# --------------------------------------------------------------------------- real sockets


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1, outside the benchmarks' ranges."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if any(port in r for r in RESERVED):
            continue
        if _bindable(port, socket.SOCK_DGRAM) and _bindable(port, socket.SOCK_STREAM):
            return port
    raise RuntimeError("no free port")


async def eventually(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(*nodes: Gossip) -> AsyncIterator[tuple[Gossip, ...]]:
    started: list[Gossip] = []
    try:
        for g in nodes:
            await g.start()
            started.append(g)
        yield nodes
    finally:
        await asyncio.gather(*(g.stop() for g in started))


def make(
    ids: str,
    *,
    metas: Mapping[str, dict[str, str]] | None = None,
    peers: Mapping[str, str] | None = None,
    seeds: Mapping[str, str] | None = None,
    registries: dict[str, Registry] | None = None,
) -> list[Gossip]:
    """One Gossip per id on free ports. `peers` / `seeds` map an id to the ids it has in its
    config / seed list (default: everyone as configured peers, no seeds)."""
    addr = {i: f"127.0.0.1:{free_port()}" for i in ids}
    out = []
    for n, i in enumerate(ids):
        reg = Registry()
        if registries is not None:
            registries[i] = reg
        configured = (peers or {}).get(i, ids)
        out.append(Gossip(
            i, "127.0.0.1", split_address(addr[i])[1], runtime=Runtime(rng=random.Random(n)),
            config=FAST, meta=(metas or {}).get(i, meta()), secrets=SECRETS,
            seeds=[addr[s] for s in (seeds or {}).get(i, "")],
            peers={p: addr[p] for p in configured}, registry=reg, leave_grace=0.2))
    return out


@pytest.mark.asyncio
async def test_three_nodes_converge_to_alive_and_see_a_graceful_leave() -> None:
    registries: dict[str, Registry] = {}
    nodes = make("abc", registries=registries)
    async with running(*nodes) as (a, b, c):
        await eventually(lambda: all(states(g) == {"a": A, "b": A, "c": A} for g in nodes), 10,
                         "every node to see all three ALIVE")
        assert all(g.is_alive(x) for g in nodes for x in "abc")
        assert all(g.down() == set() for g in nodes)
        text = registries["a"].render()
        assert 'spine_members{state="alive"} 3' in text, text
        assert 'spine_members{state="dead"} 0' in text, text
        # b and c came alive (a suspicion refuted under a loaded CI box adds more, never fewer)
        alive = re.search(r'spine_member_events_total\{event="alive"\} (\d+)', text)
        assert alive is not None and int(alive.group(1)) >= 2, text
        await c.stop()
        await eventually(lambda: states(a).get("c") is L and states(b).get("c") is L, 5,
                         "a and b to see c LEFT")
        assert not a.is_alive("c") and a.down() == {"c"}


@pytest.mark.asyncio
async def test_a_node_that_joins_through_a_seed_learns_the_others_by_gossip() -> None:
    # Each has only itself configured; b and c have a as their seed.
    nodes = make("abc", peers={"a": "a", "b": "b", "c": "c"}, seeds={"b": "a", "c": "a"})
    async with running(*nodes):
        await eventually(lambda: all(set(states(g)) == {"a", "b", "c"} for g in nodes), 10,
                         "b and c to learn of each other through a")
        await eventually(lambda: all(set(states(g).values()) == {A} for g in nodes), 10,
                         "all ALIVE")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "theirs",
    [meta(cluster="other"), meta(shards=128), meta(embedder="hash:16:v1")],
    ids=["cluster", "shards", "embedder"],
)
async def test_a_mismatched_member_is_refused_on_both_sides(theirs: dict[str, str]) -> None:
    # x is configured by neither a nor b, and joins through both.
    a, b, x = make("abx", metas={"x": theirs}, peers={"a": "ab", "b": "ab", "x": "x"},
                   seeds={"x": "ab"})
    with capture_logs() as logs:
        async with running(a, b, x):
            def refused() -> bool:
                by_us = {r.node_id for g in (a, b) for r in g.refusals if not r.by_peer}
                by_peer = {r.node_id for r in x.refusals if r.by_peer}
                return by_us == {"x"} and by_peer == {"a", "b"}

            await eventually(refused, 10, "a and b to refuse x, and x to hear it")
            await eventually(lambda: states(a) == {"a": A, "b": A} == states(b), 10,
                             "a and b to see each other")
            await asyncio.sleep(3 * FAST.protocol_period)  # x keeps knocking; still refused
            assert "x" not in states(a) and "x" not in states(b)
            assert set(states(x)) == {"x"}
            assert not a.is_alive("x") and not x.is_alive("a") and not x.is_alive("b")
            assert x.events_total is not None and x.events_total.get("refused") >= 2
            assert a.events_total is not None and a.events_total.get("refused") >= 1
    errors = [e for e in logs if e["event"] == "member_refused" and e["log_level"] == "error"]
    key = next(k for k in ("cluster", "shards", "embedder") if theirs[k] != meta()[k])
    assert {(e["peer"], e["by_peer"]) for e in errors} == {("x", False), ("a", True), ("b", True)}
    assert all(key in e["reason"] for e in errors), errors
    # Logged once per peer and reason, however often x retries.
    assert len(errors) == 4


def test_the_gossip_section_defaults_are_swims() -> None:
    assert swim_config(GossipSection()) == SwimConfig()
    fast = swim_config(GossipSection(protocol_period_ms=200, ping_timeout_ms=80,
                                     push_pull_interval_ms=5000))
    assert fast == SwimConfig.local()
