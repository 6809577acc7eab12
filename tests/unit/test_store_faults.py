"""Disk faults at the store and the index, without sockets (issue 14, item 5).

- A commit whose sync fails (EIO) turns the store FAILED: that write and every later one answer
  StorageFailed, no write transaction is begun again (a failed fsync is never retried), reads go
  on from the last commit. The fault is injected where LMDB raises it: the write transaction's
  commit (the integration test drives the real fsync through libfiu).
- MDB_MAP_FULL and a filesystem below `storage.reserve_mb` answer InsufficientStorage; a later
  write that fits commits again (no restart).
- (An index update that fails and the catch-up after it: test_indexer_catch_up.)
- A snapshot whose bytes changed (a flipped byte that still loads, a manifest whose watermark
  was edited) is refused by its digests and rebuilt from LMDB.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from spine.core.clock import Version
from spine.core.disk_health import DiskState, Failure, admit, judge
from spine.core.errors import InsufficientStorage, StorageFailed
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Store

pytestmark = pytest.mark.timeout(60)

DIM = 8
MIB = 1024 * 1024


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, 64)


def rec(mid: str, hlc: int, size: int = 16, ns: str = "ns") -> Record:
    v = np.random.default_rng(hlc).standard_normal(DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    return Record(namespace=ns, id=mid, version=Version(hlc, "n1"), clock={"n1": hlc},
                  content="x" * size, vector=v.tobytes(), created_hlc=hlc)


class _FailingCommit:
    """A write transaction whose commit fails as LMDB's does when fdatasync returns EIO."""

    def __init__(self, txn: Any) -> None:
        self.txn = txn

    def __enter__(self) -> Any:
        return self.txn.__enter__()

    def __exit__(self, *exc: object) -> bool:
        self.txn.abort()
        raise lmdb.Error("mdb_txn_commit: Input/output error")


class FaultyEnv:
    """Wraps the store's LMDB environment: counts write transactions, fails commits on demand."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.fail_commits = False
        self.write_txns = 0

    def begin(self, **kw: Any) -> Any:
        txn = self.env.begin(**kw)
        if kw.get("write"):
            self.write_txns += 1
            if self.fail_commits:
                return _FailingCommit(txn)
        return txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def open_store(tmp_path: Path, **kw: Any) -> Store:
    store = Store(tmp_path / "lmdb", shard_of=shard, sync=True, **kw)
    store.start()
    return store


# -- pure decisions -------------------------------------------------------------------------------


def test_judge_tells_a_full_disk_from_a_failed_one() -> None:
    lots = 10 * 1024 * MIB
    assert judge(Failure.NO_SPACE, "", lots, 0, 0).state is DiskState.FULL
    assert judge(Failure.MAP_FULL, "", lots, 0, 0).state is DiskState.FULL
    assert judge(Failure.IO_ERROR, "", lots, 64 * MIB, 1000).state is DiskState.FAILED
    assert judge(Failure.IO_ERROR, "", None, 64 * MIB, 1000).state is DiskState.FAILED
    assert judge(Failure.PANIC, "", 0, 0, 0).state is DiskState.FAILED
    # LMDB reports a page write cut short by a full filesystem as EIO: near-full means FULL
    assert judge(Failure.IO_ERROR, "", 1024, 0, 1000).state is DiskState.FULL
    assert judge(Failure.IO_ERROR, "", 66 * MIB, 64 * MIB, 1000).state is DiskState.FULL


def test_admit_never_retries_a_failed_disk_and_keeps_the_reserve() -> None:
    assert admit(DiskState.OK, "", 100 * MIB, 64 * MIB) is None
    assert admit(DiskState.FULL, "was full", 100 * MIB, 64 * MIB) is None  # try again
    refused = admit(DiskState.FAILED, "fsync failed", 100 * MIB, 64 * MIB)
    assert refused is not None and refused.state is DiskState.FAILED
    low = admit(DiskState.OK, "", 10 * MIB, 64 * MIB)
    assert low is not None and low.state is DiskState.FULL


# -- the store ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_failed_sync_fails_the_store_until_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    faulty = FaultyEnv(store.env)
    store.env = faulty
    try:
        await store.apply([rec("a", 1)])
        faulty.fail_commits = True
        with pytest.raises(StorageFailed):
            await store.apply([rec("b", 2)])
        assert store.disk.state is DiskState.FAILED
        failure = store.disk.failure()
        assert failure is not None and "fsync" in failure.message
        faulty.fail_commits = False  # the disk "works" again: still no write, and no retry
        begun = faulty.write_txns
        for i in range(3):
            with pytest.raises(StorageFailed):
                await store.apply([rec(f"c{i}", 3 + i)])
        with pytest.raises(StorageFailed):
            store.check_writable()
        assert faulty.write_txns == begun, "a write transaction was begun after a failed sync"
        got = store.get("ns", "a")  # reads go on from the last commit
        assert got is not None and got.version.hlc == 1
        assert store.get("ns", "b") is None
    finally:
        store.env = faulty.env
        store.close()
    reopened = open_store(tmp_path)  # a restart: the store takes writes again
    try:
        await reopened.apply([rec("d", 9)])
        assert reopened.get("ns", "a") is not None and reopened.get("ns", "d") is not None
    finally:
        reopened.close()


@pytest.mark.asyncio
async def test_map_full_answers_insufficient_storage_and_recovers(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size_mb=1)
    try:
        stored: list[str] = []
        with pytest.raises(InsufficientStorage):
            for i in range(1000):
                await store.apply([rec(f"big{i}", i + 1, size=20_000)])
                stored.append(f"big{i}")
        assert store.disk.state is DiskState.FULL
        assert store.disk.failure() is None  # full is not failed: ready, reads go on
        assert stored and all(store.get("ns", mid) is not None for mid in stored)
        await store.purge([store.key_of("ns", mid) for mid in stored[: len(stored) // 2]])
        await store.apply([rec("small", 5000, size=10)])  # space freed: writes commit again
        assert store.disk.state is DiskState.OK
        assert store.get("ns", "small") is not None
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_filesystem_below_the_reserve_refuses_writes(tmp_path: Path) -> None:
    store = open_store(tmp_path, reserve_mb=1 << 40)  # more than any disk has free
    try:
        with pytest.raises(InsufficientStorage):
            store.check_writable()
        with pytest.raises(InsufficientStorage):
            await store.apply([rec("a", 1)])
        assert store.get("ns", "a") is None
        store.disk.reserve_bytes = 0  # space "freed": the next write commits
        await store.apply([rec("a", 1)])
        assert store.get("ns", "a") is not None
    finally:
        store.close()


# -- the indexer ----------------------------------------------------------------------------------


def make_indexer(store: Store, path: Path) -> Indexer:
    return Indexer(store, path / "index", dim=DIM, m=8, ef_construction=32, ef_search=16,
                   fingerprint="test/8", persist_interval=3600, sleep=asyncio.sleep)


async def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _snapshot(tmp_path: Path) -> Store:
    store = Store(tmp_path / "lmdb", shard_of=shard, sync=False)
    indexer = make_indexer(store, tmp_path)
    store.subscribe(indexer.on_commit)
    indexer.recover()
    store.start()
    await store.apply([rec(f"m{i}", i + 1) for i in range(20)])
    await wait_for(lambda: indexer.indexed_seq == store.seq, "indexed")
    await indexer.persist()
    await indexer.stop()
    return store


def _current(index_dir: Path) -> Path:
    return index_dir / (index_dir / "CURRENT").read_text().strip()


def _flip_vectors(index_dir: Path) -> None:
    """Flip one byte inside the saved vectors: numpy still loads the file, with a wrong value."""
    ns_dir = _current(index_dir) / "ns"
    meta = json.loads((ns_dir / "meta.json").read_text())
    vecs = ns_dir / meta["vectors"]
    data = bytearray(vecs.read_bytes())
    data[-3] ^= 0x40
    vecs.write_bytes(bytes(data))


def _edit_watermark(index_dir: Path) -> None:
    """A manifest claiming a later watermark: replay would skip changes the index lacks."""
    path = _current(index_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["watermark"] = int(manifest["watermark"]) + 5
    path.write_text(json.dumps(manifest))


@pytest.mark.asyncio
@pytest.mark.parametrize("damage", [_flip_vectors, _edit_watermark], ids=["flip", "watermark"])
async def test_snapshot_with_changed_bytes_is_rebuilt(tmp_path: Path, damage: Any) -> None:
    store = await _snapshot(tmp_path)
    try:
        damage(tmp_path / "index")
        fresh = make_indexer(store, tmp_path)
        try:
            assert fresh.recover() == "rebuilt"
            index = fresh.indexes.peek("ns")
            assert index is not None and len(index) == 20
            for i in range(20):
                want = np.frombuffer(rec(f"m{i}", i + 1).vector or b"", np.float32)
                got = index.vector(f"m{i}")
                assert got is not None
                np.testing.assert_allclose(got, want, atol=1e-6)
        finally:
            await fresh.stop()
    finally:
        store.close()
