"""An index update that fails never advances the index watermark, and the index catches up.

A real LMDB Store in a tmp dir and a real Indexer fed by the store's change feed; the fault is
injected where hnswlib raises it (IndexSet.get, which the update calls to grow a namespace's
index). After a failed update the watermark stays below the failed change, snapshots and the
change-log prune never pass it, and a catch-up (the next commit's delivery, or the persist loop's
`catch_up`) replays the change log until the index holds exactly LMDB's live records. The state
is exported as `spine_index_behind` and `spine_index_update_failures`.

The index thread is a single-thread executor: a no-op submitted to it after `await store.apply`
returns once every earlier batch of the feed has been handled (the store publishes before it
answers), so the tests wait on that, never on a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.metrics import Registry
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.index_set import IndexSet
from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Store

pytestmark = pytest.mark.timeout(60)

DIM = 8


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, 64)


def rec(mid: str, hlc: int, *, deleted: bool = False) -> Record:
    v = np.random.default_rng(hlc).standard_normal(DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    return Record(namespace="ns", id=mid, version=Version(hlc, "n1"), clock={"n1": hlc},
                  content="" if deleted else f"memory {mid}", deleted=deleted,
                  vector=None if deleted else v.tobytes(), created_hlc=hlc)


class Breaker:
    """Makes the index's updates raise (as hnswlib does when it cannot grow) while `broken`."""

    def __init__(self, indexes: IndexSet) -> None:
        self.real_get = indexes.get
        self.broken = False
        self.fail_once = False
        indexes.get = self.get  # type: ignore[method-assign]

    def get(self, namespace: str) -> Any:
        if self.broken or self.fail_once:
            self.fail_once = False
            raise MemoryError("hnswlib could not grow the index")
        return self.real_get(namespace)


class World:
    def __init__(self, store: Store, indexer: Indexer) -> None:
        self.store = store
        self.indexer = indexer
        self.breaker = Breaker(indexer.indexes)

    async def apply(self, *records: Record) -> None:
        """Commit, then wait until the index thread has handled every batch published so far."""
        await self.store.apply(list(records))
        await self.index_thread_idle()

    async def index_thread_idle(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.indexer._writer, lambda: None)

    def indexed_ids(self) -> set[str]:
        index = self.indexer.indexes.peek("ns")
        return set() if index is None else set(index.keys())

    def live_ids(self) -> set[str]:
        return {r.id for r in self.store.iter_all() if not r.deleted and r.vector is not None}

    def assert_index_matches_lmdb(self) -> None:
        assert self.indexed_ids() == self.live_ids()
        index = self.indexer.indexes.peek("ns")
        assert index is not None
        for r in self.store.iter_all():
            if not r.deleted and r.vector is not None:
                got = index.vector(r.id)
                assert got is not None
                np.testing.assert_allclose(got, np.frombuffer(r.vector, np.float32), atol=1e-6)


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = Store(tmp_path / "lmdb", shard_of=shard, sync=False, map_size_mb=64)
    indexer = Indexer(store, tmp_path / "index", dim=DIM, m=8, ef_construction=32,
                      ef_search=16, fingerprint="test/8", persist_interval=3600,
                      sleep=asyncio.sleep)
    store.subscribe(indexer.on_commit)
    indexer.recover()
    store.start()
    try:
        yield World(store, indexer)
    finally:
        await indexer.stop()
        store.close()


@pytest.mark.asyncio
async def test_a_failed_update_keeps_the_watermark_until_catch_up_applies_it(
    world: World,
) -> None:
    store, indexer = world.store, world.indexer
    await world.apply(rec("a", 1), rec("z", 2))
    good = indexer.indexed_seq
    assert good == store.seq and not indexer.behind

    world.breaker.broken = True
    await world.apply(rec("b", 3))  # its update fails
    failed_seq = store.seq
    await world.apply(rec("c", 4))  # the retry on this delivery fails too
    await world.apply(rec("a", 5, deleted=True))  # deletes go through the index as well
    assert indexer.indexed_seq == good < failed_seq, (
        f"watermark {indexer.indexed_seq} passed the failed change {failed_seq}")
    assert indexer.behind and indexer.update_failures >= 2
    assert world.indexed_ids() == {"a", "z"}

    assert await indexer.persist() == good  # a snapshot claims only what the index holds
    kept = [seq for seq, _ in store.changes_since(good)]
    assert failed_seq in kept, "the change log was pruned past a change the index lacks"

    world.breaker.broken = False
    assert await indexer.catch_up() == 3  # b, c and a's tombstone, from the change log
    assert not indexer.behind and indexer.indexed_seq == store.seq
    assert world.indexed_ids() == {"b", "c", "z"}
    world.assert_index_matches_lmdb()


@pytest.mark.asyncio
async def test_the_next_commit_catches_up_after_a_transient_failure(world: World) -> None:
    """No persist loop here (its interval is an hour): the next delivery replays the log."""
    indexer = world.indexer
    await world.apply(rec("a", 1))
    world.breaker.fail_once = True
    await world.apply(rec("b", 2))
    assert indexer.behind and indexer.update_failures == 1
    assert world.indexed_ids() == {"a"}
    await world.apply(rec("c", 3))
    assert not indexer.behind, "the index stays behind LMDB until the persist loop runs"
    assert indexer.indexed_seq == world.store.seq
    assert world.indexed_ids() == {"a", "b", "c"}
    world.assert_index_matches_lmdb()


@pytest.mark.asyncio
async def test_retries_back_off_while_the_index_keeps_failing(world: World) -> None:
    indexer = world.indexer
    await world.apply(rec("a", 1))
    good = indexer.indexed_seq
    world.breaker.broken = True
    await world.apply(rec("b", 2))
    assert indexer.update_failures == 1
    for i in range(20):
        await world.apply(rec(f"m{i}", 10 + i))
    # tries after the 1st, 3rd, 7th and 15th later commit (every 1, 2, 4, 8 commits)
    assert indexer.update_failures == 1 + 4
    assert indexer.indexed_seq == good and indexer.behind
    world.breaker.broken = False
    await world.apply(rec("n", 100))  # the 21st: not yet a try (the next is at the 31st)
    assert indexer.behind
    await indexer.catch_up()  # the persist loop's try
    assert not indexer.behind and indexer.indexed_seq == world.store.seq
    world.assert_index_matches_lmdb()


def gauge(registry: Registry, name: str) -> float:
    """The value of an unlabelled metric in the /metrics text."""
    for line in registry.render().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


@pytest.mark.asyncio
async def test_metrics_show_the_index_behind_and_its_failures(world: World) -> None:
    registry = Registry()
    world.indexer.register_metrics(registry)
    await world.apply(rec("a", 1))
    assert gauge(registry, "spine_index_behind") == 0
    world.breaker.broken = True
    await world.apply(rec("b", 2))
    assert gauge(registry, "spine_index_behind") == 1
    assert gauge(registry, "spine_index_update_failures") == 1
    world.breaker.broken = False
    await world.indexer.catch_up()
    assert gauge(registry, "spine_index_behind") == 0
    assert gauge(registry, "spine_index_update_failures") == 1


@pytest.mark.asyncio
async def test_a_loop_committer_hands_batches_over_through_the_loop(tmp_path: Path) -> None:
    """With the store committing on the event loop, the index update goes through the loop's
    executor hook: a loop that runs it inline (the simulator's) indexes without a thread."""
    store = Store(tmp_path / "lmdb", shard_of=shard, sync=False, map_size_mb=64, writer="loop")
    indexer = Indexer(store, tmp_path / "index", dim=DIM, m=8, ef_construction=32,
                      ef_search=16, fingerprint="test/8", persist_interval=3600,
                      sleep=asyncio.sleep)
    store.subscribe(indexer.on_commit)
    indexer.recover()
    store.start()
    loop = asyncio.get_running_loop()
    handed: list[str] = []

    def inline(executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:
        handed.append(func.__name__)
        fut: asyncio.Future[Any] = loop.create_future()
        fut.set_result(func(*args))
        return fut

    loop.run_in_executor = inline  # type: ignore[method-assign]
    try:
        await store.apply([rec("a", 1), rec("b", 2)])
        assert handed == ["_apply_committed"]
        assert indexer.indexed_seq == store.seq  # applied inline: no wait for a thread
        index = indexer.indexes.peek("ns")
        assert index is not None and sorted(index.keys()) == ["a", "b"]
    finally:
        del loop.run_in_executor  # type: ignore[method-assign]
        await indexer.stop()
        store.close()
