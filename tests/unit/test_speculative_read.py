"""Reads that prefer fast replicas and hedge slow ones (issue 17 item 3; Cassandra's dynamic
snitch and speculative retry, "The Tail at Scale"): the Replicator over a fake transport, timed
by PeerLatency, whose peers answer at once, hang, or fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from spine.cluster.fanout import FanOut
from spine.cluster.peer_latency import PeerLatency
from spine.cluster.replication import Replicator
from spine.core.clock import Version
from spine.core.errors import PeerUnavailable
from spine.core.messages import Message, Read, records_to_wire
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.peer_stats import PeerStats

pytestmark = pytest.mark.timeout(30)

SLOW = 5.0  # what a hanging peer takes: its call's timeout


def rec(hlc: int) -> Record:
    return Record("ns", "k", Version(hlc, "n1"), {"n1": hlc}, content=f"v{hlc}")


class Peers:
    """A transport: each node answers at once, hangs until its call times out, or fails."""

    def __init__(self, held: dict[str, Record | None]) -> None:
        self.held = held
        self.hang: set[str] = set()
        self.fail: set[str] = set()
        self.delay: dict[str, float] = {}  # seconds a node takes to answer
        self.calls: list[str] = []
        self.replies: dict[str, Any] = {}

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        self.calls.append(node)
        if node in self.fail:
            raise PeerUnavailable(f"{node} refused the connection", node=node)
        if node in self.hang:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.Event().wait(), timeout)
            raise PeerUnavailable(f"{node} did not answer", node=node)
        if node in self.delay:
            await asyncio.sleep(self.delay[node])
        if isinstance(msg, Read):
            return records_to_wire([self.held.get(node)])
        return self.replies.get(node, [])

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


class Alive:
    def is_alive(self, node: str) -> bool:
        return True

    def report_failure(self, node: str) -> None:
        pass

    def report_success(self, node: str) -> None:
        pass


class Setup:
    def __init__(self, held: dict[str, Record | None], stats: PeerStats | None) -> None:
        self.peers = Peers(held)
        self.stats = stats if stats is not None else PeerStats()
        self.metrics = SpineMetrics()
        loop = asyncio.get_running_loop()
        timed = PeerLatency(self.peers, self.stats, loop.time)
        self.rep = Replicator("n0", None, timed, Alive(), self.metrics,  # type: ignore[arg-type]
                              rpc_timeout=SLOW, wall_ms=lambda: 0, stats=stats)

    async def read(self, nodes: list[str], r: int, **kw: Any) -> tuple[dict[str, Any], float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await self.rep.read("ns", "k", nodes, r, timeout=SLOW, repair=False, **kw)
        return got, loop.time() - t0


def warmed(**ewma: float) -> PeerStats:
    """Stats with a history: each node answered in its given seconds, ten times."""
    s = PeerStats(hedge_min=0.005, hedge_max=1.0)
    for node, x in ewma.items():
        for _ in range(10):
            s.started(node)
            s.finished(node, x)
    return s


@pytest_asyncio.fixture
async def cleanup() -> AsyncIterator[list[Replicator]]:
    reps: list[Replicator] = []
    yield reps
    for r in reps:
        await r.stop()


@pytest.mark.asyncio
async def test_the_fastest_ranked_replica_is_asked_first_and_alone(
    cleanup: list[Replicator],
) -> None:
    s = Setup({"n1": rec(1), "n2": rec(1), "n3": rec(1)}, warmed(n1=0.03, n2=0.001, n3=0.02))
    cleanup.append(s.rep)
    got, _ = await s.read(["n1", "n2", "n3"], 1)
    assert list(got) == ["n2"] and s.peers.calls == ["n2"]
    assert s.metrics.read_speculative.get() == 0


@pytest.mark.asyncio
async def test_a_slow_replica_is_hedged_after_its_p95_not_waited_for(
    cleanup: list[Replicator],
) -> None:
    stats = warmed(n1=0.001, n2=0.002)
    s = Setup({"n1": rec(1), "n2": rec(1)}, stats)
    cleanup.append(s.rep)
    s.peers.hang.add("n1")  # the best-ranked one stops answering (paused)
    hedge = stats.hedge_after("n1")
    got, took = await s.read(["n1", "n2"], 1)
    assert list(got) == ["n2"]
    assert s.peers.calls == ["n1", "n2"]
    assert s.metrics.read_speculative.get() == 1
    assert hedge <= took < hedge + 0.5, (hedge, took)  # ~the hedge delay, never SLOW


@pytest.mark.asyncio
async def test_a_quorum_read_hedges_past_a_hanging_replica(cleanup: list[Replicator]) -> None:
    s = Setup({"n0": rec(1), "n1": rec(1), "n2": rec(1)}, warmed(n1=0.001, n2=0.002))
    cleanup.append(s.rep)
    s.peers.hang.add("n1")
    got, took = await s.read(["n1", "n0", "n2"], 2)
    assert sorted(got) == ["n0", "n2"]
    assert s.peers.calls[:2] == ["n0", "n1"]  # this node first (fast), then the best peer
    assert took < 0.5 and s.metrics.read_speculative.get() == 1


@pytest.mark.asyncio
async def test_a_hanging_fast_replica_is_hedged_after_its_own_delay_not_the_slowest_asked(
    cleanup: list[Replicator],
) -> None:
    """Regions: a quorum of 3 asks two near replicas (1 ms) and a far one (60 ms). When a near
    one hangs (paused), the next is asked once the near one is late by its own p95, not once the
    far one is: the read takes about one far round trip, not two."""
    stats = warmed(n1=0.001, n2=0.001, far1=0.06, far2=0.06)
    s = Setup({n: rec(1) for n in ("n1", "n2", "far1", "far2")}, stats)
    cleanup.append(s.rep)
    s.peers.delay.update(far1=0.06, far2=0.06)
    s.peers.hang.add("n1")
    got, took = await s.read(["n1", "n2", "far1", "far2"], 3)
    assert sorted(got) == ["far1", "far2", "n2"]
    assert s.peers.calls[:3] == ["n1", "n2", "far1"] and "far2" in s.peers.calls
    assert s.metrics.read_speculative.get() == 1
    assert took < 0.06 + 0.04, took  # one far round trip (+ n1's few ms), never two


@pytest.mark.asyncio
async def test_a_failing_replica_gets_another_asked_at_once(cleanup: list[Replicator]) -> None:
    # A long hedge delay: only the failure can explain an early second ask.
    stats = PeerStats(hedge_min=3.0, hedge_max=4.0)
    s = Setup({"n1": rec(1), "n2": rec(1), "n3": rec(1)}, stats)
    cleanup.append(s.rep)
    s.peers.fail.add("n1")
    got, took = await s.read(["n1", "n2", "n3"], 2)
    assert sorted(got) == ["n2", "n3"]
    assert s.peers.calls == ["n1", "n2", "n3"]
    assert took < 1.0 and s.metrics.read_speculative.get() == 0
    assert stats.rank(["n1", "n2", "n3"])[-1] == "n1"  # the failure counted as slow


@pytest.mark.asyncio
async def test_answers_that_miss_the_floor_ask_the_next_replica_at_once(
    cleanup: list[Replicator],
) -> None:
    stats = PeerStats(hedge_min=3.0, hedge_max=4.0)
    s = Setup({"n1": rec(1), "n2": rec(1), "n3": rec(5)}, stats)
    cleanup.append(s.rep)
    got, took = await s.read(["n1", "n2", "n3"], 1, floor=Version(5, "n1"))
    assert s.peers.calls == ["n1", "n2", "n3"]
    assert got["n3"] == rec(5) and took < 1.0


@pytest.mark.asyncio
async def test_when_no_replica_meets_the_floor_every_one_is_asked_and_answers(
    cleanup: list[Replicator],
) -> None:
    s = Setup({"n1": rec(1), "n2": rec(1)}, PeerStats())
    cleanup.append(s.rep)
    got, _ = await s.read(["n1", "n2"], 1, floor=Version(9, "n1"))
    assert sorted(got) == ["n1", "n2"]


@pytest.mark.asyncio
async def test_without_stats_every_replica_is_asked_at_once(cleanup: list[Replicator]) -> None:
    s = Setup({"n1": rec(1), "n2": rec(1), "n3": rec(1)}, None)
    s.rep.stats = None
    cleanup.append(s.rep)
    await s.read(["n1", "n2", "n3"], 1)
    assert sorted(s.peers.calls) == ["n1", "n2", "n3"]


@pytest.mark.asyncio
async def test_read_repair_still_reaches_the_replicas_not_asked_before_the_reply(
    cleanup: list[Replicator],
) -> None:
    s = Setup({"n1": rec(5), "n2": rec(1), "n3": rec(5)}, warmed(n1=0.001, n2=0.03, n3=0.002))
    cleanup.append(s.rep)
    sent: list[str] = []

    async def send(node: str, records: Any) -> None:
        sent.append(node)

    s.rep.send = send  # type: ignore[method-assign]
    got = await s.rep.read("ns", "k", ["n1", "n2", "n3"], 2, timeout=SLOW)
    assert sorted(got) == ["n1", "n3"]

    async def repaired() -> None:
        while sent != ["n2"]:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(repaired(), 5)


# ---------------------------------------------------------------- search fan-out's covering set



class Shards:
    """A ring of two shards: shard 0 on n1, n3; shard 1 on n2, n4 (n0 is the coordinator and
    holds nothing)."""

    shards = 2

    def __init__(self) -> None:
        self.prefs = {0: ["n1", "n3"], 1: ["n2", "n4"]}

    def preference_list(self, shard: int) -> list[str]:
        return self.prefs[shard]

    def shards_of(self, node: str) -> list[int]:
        return [s for s, p in self.prefs.items() if node in p]


def fanout(peers: Peers, stats: PeerStats, metrics: SpineMetrics) -> FanOut:
    loop = asyncio.get_running_loop()
    timed = PeerLatency(peers, stats, loop.time)
    members = ["n0", "n1", "n2", "n3", "n4"]
    return FanOut("n0", lambda: Shards(), timed, Alive(),  # type: ignore[arg-type, return-value]
                  lambda: members, SLOW, stats=stats, metrics=metrics)


@pytest.mark.asyncio
async def test_the_search_cover_prefers_fast_nodes() -> None:
    peers = Peers({})
    stats = warmed(n1=0.03, n2=0.03, n3=0.001, n4=0.001)
    got = await fanout(peers, stats, SpineMetrics()).ask_cover(Read([]))
    assert sorted(got) == ["n0", "n3", "n4"] and sorted(peers.calls) == ["n0", "n3", "n4"]


@pytest.mark.asyncio
async def test_a_slow_cover_node_is_hedged_and_the_first_answer_per_shard_wins() -> None:
    peers = Peers({})
    stats = warmed(n1=0.001, n2=0.001, n3=0.002, n4=0.002)
    metrics = SpineMetrics()
    peers.hang.add("n1")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await fanout(peers, stats, metrics).ask_cover(Read([]))
    took = loop.time() - t0
    assert sorted(got) == ["n0", "n2", "n3"]  # n3 answered for shard 0 in n1's place
    assert took < 0.5 and metrics.search_speculative.get() == 1
    assert stats.outstanding("n1") == 0  # the losing call was cancelled and accounted


@pytest.mark.asyncio
async def test_a_failed_cover_node_is_replaced_at_once() -> None:
    peers = Peers({})
    stats = PeerStats(hedge_min=3.0, hedge_max=4.0)
    metrics = SpineMetrics()
    peers.fail.add("n1")
    got = await fanout(peers, stats, metrics).ask_cover(Read([]))
    assert sorted(got) == ["n0", "n2", "n3"] and metrics.search_speculative.get() == 0
