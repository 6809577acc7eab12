"""Graph builds off the write path: the Indexer with a real LMDB Store and its builder task.

A write is searchable (exactly) as soon as the index thread has stored its vector; the builder
moves pending vectors into the HNSW graph in the background; a snapshot taken mid-build keeps the
pending labels, and the index recovered from it answers the same and finishes the build.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spine.storage.graph_builder import BuildPolicy
from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Store
from tests.unit.test_indexer import (
    DIM,
    FINGERPRINT,
    Model,
    apply,
    assert_index_matches,
    assert_search,
    open_store,
    unit,
)

pytestmark = pytest.mark.timeout(120)

NO_FILTER: list[Any] = [[], [], None, None, None]


def builder_indexer(store: Store, path: Path, policy: BuildPolicy) -> Indexer:
    """A small-graph Indexer whose namespaces get a graph past 16 records."""
    return Indexer(
        store, path / "index", dim=DIM, m=8, ef_construction=64, ef_search=64,
        fingerprint=FINGERPRINT, persist_interval=3600, sleep=asyncio.sleep, exact_max=16,
        build=policy,
    )


@asynccontextmanager
async def running(path: Path, policy: BuildPolicy) -> AsyncIterator[tuple[Store, Indexer]]:
    """A store and its indexer, recovered and started with the builder as Node.start does;
    the indexer is stopped and the store closed at the end."""
    store = open_store(path)
    indexer = builder_indexer(store, path, policy)
    store.subscribe(indexer.on_commit)
    indexer.recover()
    store.start()
    indexer.start()
    try:
        yield store, indexer
    finally:
        await indexer.stop()
        store.close()


async def drained(indexer: Indexer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while indexer.pending():
        if time.monotonic() > deadline:
            raise AssertionError(f"{indexer.pending()} records still pending after {timeout}s")
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_fresh_writes_are_found_before_the_builder_reaches_them(tmp_path: Path) -> None:
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    model = Model()
    # A builder that builds 1% of the time: the graph lags far behind the writes.
    slow = BuildPolicy(threads=1, batch_ms=1, busy_pct=1, backlog_max=1 << 30)
    async with running(tmp_path, slow) as (store, indexer):
        for _ in range(6):
            await apply(store, indexer, [model.put("alpha", f"m{rng.randrange(400)}", unit(nrng))
                                         for _ in range(100)])
        assert indexer.pending() > 0, "the slow builder should leave a backlog"
        for _ in range(20):  # exact over the backlog + the graph: equal to brute force
            await assert_search(indexer, model, "alpha", unit(nrng), 10, NO_FILTER, None)
        last = model.put("alpha", "newest", unit(nrng))
        await apply(store, indexer, [last])
        assert last.vector is not None
        q = np.frombuffer(last.vector, np.float32)
        assert [r.id for r, _ in await indexer.search("alpha", q, 1, NO_FILTER)] == ["newest"]
        # Flat out, the builder empties the backlog and the answers stay those of brute force.
        await indexer.builder.build_all()
        assert indexer.pending() == 0
        index = indexer.indexes.peek("alpha")
        assert index is not None and index.has_graph
        for _ in range(20):
            await assert_search(indexer, model, "alpha", unit(nrng), 5, NO_FILTER, None)
        assert_index_matches(indexer, store, model)


@pytest.mark.asyncio
async def test_builder_drains_and_a_mid_build_snapshot_recovers(tmp_path: Path) -> None:
    rng = random.Random(8)
    nrng = np.random.default_rng(8)
    model = Model()
    slow = BuildPolicy(threads=1, batch_ms=1, busy_pct=1)
    async with running(tmp_path, slow) as (store, indexer):
        ops = [model.put("alpha", f"m{i}", unit(nrng)) for i in range(300)]
        await apply(store, indexer, ops)
        await indexer.persist()  # mid-build: the snapshot names the pending labels
        left = indexer.pending()  # the builder goes on after the snapshot: only fewer now
        assert left > 0
        fresh = builder_indexer(store, tmp_path, BuildPolicy(threads=1))
        try:
            fresh.recover()
            assert fresh.pending() >= left
            assert_index_matches(fresh, store, model)
            for _ in range(10):
                q = unit(nrng)
                await assert_search(fresh, model, "alpha", q, 10, NO_FILTER, None)
        finally:
            await fresh.stop()
        # The running builder, woken by writes, drains its own backlog at full speed.
        indexer.builder.policy = BuildPolicy(threads=1, batch_ms=20, busy_pct=100)
        await apply(store, indexer, [model.put("alpha", f"m{rng.randrange(300)}", unit(nrng))])
        await drained(indexer)
        for _ in range(10):
            await assert_search(indexer, model, "alpha", unit(nrng), 10, NO_FILTER, None)


@pytest.mark.asyncio
async def test_a_finished_build_is_saved_at_stop_so_a_restart_rebuilds_nothing(
        tmp_path: Path) -> None:
    nrng = np.random.default_rng(9)
    model = Model()
    slow = BuildPolicy(threads=1, batch_ms=1, busy_pct=1)
    async with running(tmp_path, slow) as (store, indexer):
        await apply(store, indexer, [model.put("alpha", f"m{i}", unit(nrng)) for i in range(200)])
        await indexer.persist()  # a snapshot with a backlog
        assert indexer.pending() > 0
        await indexer.builder.build_all()  # no commit since: only the graph moved
    # Leaving `running` stopped the indexer, which saves again because the graph moved.
    store = open_store(tmp_path)
    fresh = builder_indexer(store, tmp_path, BuildPolicy(threads=1))
    try:
        fresh.recover()
        assert fresh.pending() == 0
        assert_index_matches(fresh, store, model)
    finally:
        await fresh.stop()
        store.close()
