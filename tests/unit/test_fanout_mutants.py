"""spine.cluster.fanout: what the mutants that survived the unit tests and the simulation seeds
changed (bench/mutation.py --sample 0.1, 2026-12-03). Each test names the mutant it kills; the
nodes answer through a fake transport, with no sockets and no sleeps but the hedge's own wait."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest

from spine.cluster.fanout import FanOut, local_list
from spine.core.clock import Version
from spine.core.messages import ListPage, Message, Read
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.peer_stats import PeerStats
from spine.core.ring import shard_of
from spine.storage.lmdb_store import Store
from tests.unit.test_speculative_read import Alive, Peers, Shards, fanout

pytestmark = pytest.mark.timeout(30)


def rec(mid: str, agent: str = "", content: str = "x") -> Record:
    return Record("ns", mid, Version(1, "n1"), {"n1": 1}, content=content, agent_id=agent)


class Listing:
    """A transport whose nodes each answer a ListPage with their own records' wire form."""

    def __init__(self, held: dict[str, list[Record]]) -> None:
        self.held = held

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        assert isinstance(msg, ListPage)
        return [r.to_wire() for r in self.held[node]]

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_a_merged_page_keeps_to_its_byte_budget_across_nodes() -> None:
    """`total += sizes[i]` -> `-=` (list_page__mutmut_106): each node answers well inside the
    budget, so only the coordinator's sum of the merged records can cut the page."""
    held = {n: [rec(f"m{i}", content="y" * 300)] for i, n in enumerate(["n0", "n1", "n2", "n3"])}
    fo = FanOut("n0", lambda: Shards(), Listing(held), Alive(),  # type: ignore[arg-type, return-value]
                lambda: list(held), 1.0)
    size = len(msgpack.packb(held["n0"][0].to_wire(), use_bin_type=True))
    page = await fo.list_page("ns", None, 100, None, None, max_bytes=2 * size + size // 2)
    assert [r.id for r in page.items] == ["m0", "m1"]
    assert page.next_cursor == "m1"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "lmdb", shard_of=lambda ns, mid: shard_of(ns, mid, 8), sync=False,
              map_size_mb=64)
    s.start()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.asyncio
async def test_a_listing_without_an_agent_filter_holds_every_agents_records(store: Store) -> None:
    """`agent_id is None or ...` -> `and` (local_list__mutmut_6): an unfiltered listing held
    only the records whose agent equals None, that is none."""
    await store.apply([rec("a", agent="ag1"), rec("b", agent="ag2"), rec("c")])
    got = local_list(store, ListPage("ns", None, 10, None, None))
    assert [Record.from_wire(w).id for w in got] == ["a", "b", "c"]
    only = local_list(store, ListPage("ns", None, 10, None, "ag2"))
    assert [Record.from_wire(w).id for w in only] == ["b"]


@pytest.mark.asyncio
async def test_a_byte_bound_that_is_not_a_number_is_no_bound(store: Store) -> None:
    """`max_bytes if isinstance(max_bytes, int) else 0` -> `... or True ...`
    (local_list__mutmut_24): a peer's ListPage whose sixth field is not an int (a hostile or
    garbled message) must list unbounded, not fail in the store's comparison."""
    await store.apply([rec("a"), rec("b")])
    msg = ListPage.from_wire(["ns", None, 10, None, None, "lots"])
    assert [Record.from_wire(w).id for w in local_list(store, msg)] == ["a", "b"]


@pytest.mark.asyncio
async def test_the_cover_returns_each_nodes_answer() -> None:
    """`out[node] = t.result()` -> `None` (ask_cover__mutmut_111): the search merged nothing."""
    peers = Peers({})
    peers.replies = {n: [f"hit-of-{n}"] for n in ["n0", "n1", "n2", "n3", "n4"]}
    stats = PeerStats(hedge_min=3.0, hedge_max=4.0)
    got = await fanout(peers, stats, SpineMetrics()).ask_cover(ListPage("ns"))
    assert got == {n: [f"hit-of-{n}"] for n in ["n0", "n1", "n2"]}


def test_a_search_hedge_waits_for_the_nodes_own_search_latency() -> None:
    """`call_stats.hedge_after(node)` -> `(None)` (hedge_after__mutmut_2): a node whose searches
    take 0.3 s (its reads are fast) would be hedged at the 50 ms default instead."""
    stats = PeerStats(hedge_min=0.005, hedge_max=1.0)
    fo = FanOut("n0", lambda: Shards(), Peers({}), Alive(),  # type: ignore[arg-type, return-value]
                lambda: ["n0", "n1"], 5.0, stats=stats)
    for _ in range(20):
        fo.call_stats.started("n1")
        fo.call_stats.finished("n1", 0.3)
        stats.started("n1")
        stats.finished("n1", 0.001)
    assert fo.hedge_after("n1") == pytest.approx(0.3)


@pytest.mark.asyncio
async def test_the_cover_hedges_at_the_slow_nodes_own_delay_not_the_default() -> None:
    """`self.hedge_after(n)` -> `(None)` in the wait for the next hedge (ask_cover__mutmut_77):
    the loop slept for the delay of a node with no samples (here 3 s), not n1's (5 ms), so the
    hedge for a hanging n1 came seconds late."""
    peers = Peers({})
    peers.hang.add("n1")
    stats = PeerStats(hedge_min=0.005, hedge_max=5.0, hedge_default=3.0)
    fo = fanout(peers, stats, SpineMetrics())
    for node in ["n1", "n2", "n3", "n4"]:  # searches as fast as reads: ~1 ms
        for _ in range(20):
            for s in (stats, fo.call_stats):
                s.started(node)
                s.finished(node, 0.001 if node != "n3" else 0.002)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await fo.ask_cover(Read([]))
    took = loop.time() - t0
    assert sorted(got) == ["n0", "n2", "n3"]  # n3 answered for shard 0 in n1's place
    assert took < 1.5, f"hedged after {took:.2f} s, not ~5 ms"
