"""spine.cluster.antientropy with real LMDB stores and an in-memory RPC (no sockets, no sleeps).

Three nodes replicate every shard. Each has its own `Store` in a tmp dir whose commit hook feeds
its `AntiEntropy`; RPC calls go straight to the peer's handler table, through the real msgpack
codec. Time is virtual: `wall_ms` is a number the test moves, and the pacing sleeps are recorded
and move a virtual monotonic clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_asyncio

from spine.cluster.antientropy import AntiEntropy
from spine.core.clock import Version, hlc_from_ms
from spine.core.errors import PeerUnavailable
from spine.core.messages import DECODERS
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.ring import Ring
from spine.storage.lmdb_store import Applied, Store

pytestmark = pytest.mark.timeout(60)

NODES = ("n1", "n2", "n3")
SHARDS = 8
NOW_MS = 1_700_000_000_000
GRACE_MS = 7 * 24 * 3600 * 1000
NS = "ae"


def rec(mid: str, ms: int, node: str = "n1", deleted: bool = False) -> Record:
    return Record(NS, mid, Version(hlc_from_ms(ms), node), {node: 1},
                  content="" if deleted else f"{mid}@{ms}", deleted=deleted)


def _wire(obj: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@dataclass
class World:
    """Three nodes' stores and anti-entropy services on one in-memory network."""

    ring: Ring
    stores: dict[str, Store] = field(default_factory=dict)
    aes: dict[str, AntiEntropy] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    now_ms: int = NOW_MS
    slept: list[float] = field(default_factory=list)
    mono: float = 0.0  # the virtual monotonic clock; only the pacing sleeps move it

    async def call(self, src: str, node: str, msg: Any) -> Any:
        if node in self.down or src in self.down:
            raise PeerUnavailable(f"{node} is down", node=node)
        handler = self.aes[node].handlers()[msg.TAG]
        return _wire(await handler(src, DECODERS[msg.TAG](_wire(msg.to_wire()))))

    async def put(self, node: str, records: Sequence[Record]) -> list[Applied]:
        return await self.stores[node].apply(records)

    def roots(self) -> dict[str, list[int | None]]:
        return {n: [ae.root(s) for s in range(SHARDS)] for n, ae in self.aes.items()}

    def contents(self, node: str) -> dict[tuple[str, str], Version]:
        return {(r.namespace, r.id): r.version for r in self.stores[node].iter_all()}

    async def rounds(self, nodes: Sequence[str] = NODES, times: int = 1) -> int:
        moved = 0
        for _ in range(times):
            for n in nodes:
                moved += await self.aes[n].run_round()
        return moved


class _Rpc:
    def __init__(self, world: World, me: str) -> None:
        self.world, self.me = world, me

    async def call(self, node: str, msg: Any, timeout: float) -> Any:
        return await self.world.call(self.me, node, msg)


class _Replicator:
    def __init__(self, world: World, me: str) -> None:
        self.world, self.me = world, me

    async def apply_local(self, records: Sequence[Record]) -> list[Applied]:
        return await self.world.put(self.me, records)

    async def send(self, node: str, records: Sequence[Record]) -> None:
        if node in self.world.down:
            raise PeerUnavailable(f"{node} is down", node=node)
        await self.world.put(node, records)


class _Liveness:
    def __init__(self, world: World) -> None:
        self.world = world

    def is_alive(self, node: str) -> bool:
        return node not in self.world.down


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ring = Ring({n: "" for n in NODES}, shards=SHARDS, vnodes=8, n=3)
    w = World(ring)

    async def sleep(seconds: float) -> None:
        w.slept.append(seconds)
        w.mono += seconds

    for n in NODES:
        store = Store(tmp_path / n, shard_of=ring.shard, sync=False)
        ae = AntiEntropy(
            n, store, _Replicator(w, n), _Rpc(w, n), _Liveness(w),  # type: ignore[arg-type]
            lambda: ring, SpineMetrics(), interval=3600, shards_per_round=SHARDS,
            max_keys_per_s=10_000, grace_ms=GRACE_MS, rpc_timeout=1.0,
            wall_ms=lambda: w.now_ms, monotonic=lambda: w.mono, sleep=sleep,
        )
        store.subscribe(ae.on_commit)
        store.start()
        w.stores[n], w.aes[n] = store, ae
    try:
        yield w
    finally:
        for n in NODES:
            await w.aes[n].stop()
            w.stores[n].close()


async def build_all(w: World) -> None:
    await asyncio.gather(*(ae.build() for ae in w.aes.values()))


@pytest.mark.asyncio
async def test_trees_built_from_the_store_match_trees_kept_by_the_hook(world: World) -> None:
    w = world
    recs = [rec(f"k{i}", NOW_MS - 1000 + i) for i in range(300)]
    w.aes["n2"].enabled = False  # n2 learns nothing from its hook: only the scan fills it
    await w.put("n1", recs)
    await w.put("n2", recs)
    w.aes["n2"].enabled = True
    assert w.aes["n1"].root(0) is None  # not built yet
    await build_all(w)
    roots = w.roots()
    assert roots["n1"] == roots["n2"]
    assert any(roots["n1"]) and not any(roots["n3"])


@pytest.mark.asyncio
async def test_a_purge_seen_during_the_build_is_not_undone_by_the_scan(world: World) -> None:
    w = world
    ae, store = w.aes["n1"], w.stores["n1"]
    tomb = rec("gone", NOW_MS - GRACE_MS - 10, deleted=True)
    await w.put("n1", [tomb, rec("kept", NOW_MS)])
    snapshot = [(s, store.scan_shard(s)) for s in range(SHARDS)]  # taken before the purge
    await store.purge([store.key_of(NS, "gone")])

    class Stale:  # replays the pre-purge scan, as a scan racing the commit hook would see it
        key_of = staticmethod(store.key_of)
        seq = 0

        @staticmethod
        def scan_shard(shard: int, after: bytes | None = None, limit: int = 1000) -> Any:
            return [] if after is not None else dict(snapshot)[shard]

    ae.trees.store = Stale()  # type: ignore[assignment]
    await ae.build()
    fresh = AntiEntropy("x", store, None, None, None, lambda: w.ring,  # type: ignore[arg-type]
                        SpineMetrics(), interval=1, shards_per_round=1, max_keys_per_s=1,
                        grace_ms=1, rpc_timeout=1, wall_ms=lambda: 0, monotonic=lambda: 0.0,
                        sleep=asyncio.sleep)
    await fresh.build()
    assert [ae.root(s) for s in range(SHARDS)] == [fresh.root(s) for s in range(SHARDS)]


@pytest.mark.asyncio
async def test_rounds_make_every_replica_equal(world: World) -> None:
    w = world
    everything = [rec(f"k{i}", NOW_MS - 5000 + i, node=NODES[i % 3]) for i in range(400)]
    await w.put("n1", everything[:300])
    await w.put("n2", everything[100:])
    await w.put("n2", [rec("k5", NOW_MS, "n2")])  # newer on n2
    await w.put("n1", [rec("k150", NOW_MS, "n1", deleted=True)])  # deleted on n1 only
    await build_all(w)
    assert len(set(map(tuple, w.roots().values()))) == 3
    moved = await w.rounds(["n1"])
    # n1 and n2 now agree; n3, if n1 synced with it before n2, still lacks what n1 only got
    # from n2 in that round, and n1's next round hands it over.
    assert moved > 0
    assert w.contents("n1") == w.contents("n2")
    moved += await w.rounds(["n1"])
    assert w.contents("n1") == w.contents("n2") == w.contents("n3")
    roots = w.roots()
    assert roots["n1"] == roots["n2"] == roots["n3"]
    assert len(w.contents("n1")) == 400
    k5 = w.stores["n3"].get(NS, "k5")
    assert k5 is not None and k5.version == Version(hlc_from_ms(NOW_MS), "n2")
    assert k5.content == f"k5@{NOW_MS}"
    k150 = w.stores["n2"].get(NS, "k150")
    assert k150 is not None and k150.deleted
    assert await w.rounds() == 0  # converged: nothing more to move
    ae = w.aes["n1"]
    assert ae.rounds.get() == 3 and ae.repaired.get() == moved
    assert w.aes["n2"].differing.values[()] == 0.0


@pytest.mark.asyncio
async def test_a_down_replica_is_skipped_then_repaired(world: World) -> None:
    w = world
    await build_all(w)
    w.down.add("n3")
    await w.put("n1", [rec(f"k{i}", NOW_MS + i) for i in range(50)])
    await w.rounds(["n1", "n2"])
    assert w.contents("n2") == w.contents("n1") and w.contents("n3") == {}
    w.down.clear()
    await w.rounds(["n3"])
    assert w.contents("n3") == w.contents("n1")


@pytest.mark.asyncio
async def test_records_exchanged_are_paced(world: World) -> None:
    w = world
    for ae in w.aes.values():
        ae.fetch_keys = 10  # small exchanges, so the bucket is consulted often
        ae._bucket.rate = ae._bucket.burst = 100.0
        ae._bucket.tokens = 100.0
    await w.put("n1", [rec(f"k{i}", NOW_MS + i) for i in range(250)])
    await build_all(w)
    moved = await w.rounds(["n1"])
    assert moved == 500  # 250 to n2, 250 to n3
    # Only the pacing sleeps move the virtual clock: all past the 100-record burst is waited.
    assert sum(w.slept) == pytest.approx((500 - 100) / 100, rel=0.05)


@pytest.mark.asyncio
async def test_tombstones_are_purged_only_when_every_replica_holds_them(world: World) -> None:
    w = world
    old = NOW_MS - GRACE_MS - 1000
    doomed = [rec(f"d{i}", old, deleted=True) for i in range(20)]
    fresh = [rec(f"f{i}", NOW_MS, deleted=True) for i in range(5)]
    live = [rec(f"l{i}", NOW_MS) for i in range(20)]
    await w.put("n1", doomed + fresh + live)
    await w.put("n2", doomed + fresh + live)
    await w.put("n3", [rec(f"d{i}", old - 1000) for i in range(20)])  # n3 missed the deletes
    await build_all(w)

    w.down.add("n3")
    await w.rounds(["n1", "n2"])
    assert all(w.stores["n1"].get(NS, d.id) is not None for d in doomed)  # n3 not reached

    w.down.clear()
    await w.rounds(["n1"])  # n3 gets the tombstones; n1 cannot purge in the same round
    assert all(w.stores["n3"].get(NS, d.id) == d for d in doomed)
    assert all(w.stores["n1"].get(NS, d.id) is not None for d in doomed)

    await w.rounds(times=2)
    for n in NODES:
        got = w.contents(n)
        assert not any(mid.startswith("d") for _, mid in got), n  # purged everywhere
        assert {mid for _, mid in got} == {r.id for r in fresh + live}, n  # fresh ones kept
    roots = w.roots()
    assert roots["n1"] == roots["n2"] == roots["n3"]
    assert sum(ae.purged.get() for ae in w.aes.values()) == 60


@pytest.mark.asyncio
async def test_a_purged_tombstone_is_not_brought_back(world: World) -> None:
    w = world
    tomb = rec("t", NOW_MS - GRACE_MS - 1, deleted=True)
    for n in NODES:
        await w.put(n, [tomb])
    await build_all(w)
    await w.stores["n1"].purge([w.stores["n1"].key_of(NS, "t")])  # n1 purged first
    await w.rounds(["n2"])  # n2 sees n1 holding nothing: no copy back, and purges too
    assert w.stores["n1"].get(NS, "t") is None
    assert w.stores["n2"].get(NS, "t") is None
    await w.rounds(["n3"])
    assert all(w.stores[n].get(NS, "t") is None for n in NODES)


@pytest.mark.asyncio
async def test_peer_handlers_refuse_a_foreign_tree_shape(world: World) -> None:
    from spine.core.errors import InvalidInput
    from spine.core.messages import ShardTreeQuery

    await build_all(world)
    handler = world.aes["n1"].handlers()[ShardTreeQuery.TAG]
    with pytest.raises(InvalidInput):
        await handler("n2", ShardTreeQuery(4, 2, [(0, 0, [])]))
    with pytest.raises(InvalidInput):
        await handler("n2", ShardTreeQuery(16, 3, [(0, 7, [0])]))
    assert await handler("n2", ShardTreeQuery(16, 3, [(0, 0, [])])) == [[0]]

