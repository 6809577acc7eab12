"""The feed log (spine.storage.feed_log): per namespace, one entry per stored key at the change
seq of its last replacement; readable from any seq; purges leave it; a store written before it
existed gets every key an entry at open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import lmdb
import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.lmdb_store import Store

pytestmark = pytest.mark.timeout(30)


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, 16)


def rec(mid: str, hlc: int, ns: str = "ns", deleted: bool = False) -> Record:
    return Record(namespace=ns, id=mid, version=Version(hlc, "n1"), clock={"n1": hlc},
                  content="" if deleted else f"{mid}@{hlc}", created_hlc=hlc, deleted=deleted)


def open_store(path: Path) -> Store:
    s = Store(path / "lmdb", shard_of=shard, sync=False, map_size_mb=32, writer="loop")
    s.start()
    return s


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(tmp_path)
    try:
        yield s
    finally:
        s.close()


def seen(store: Store, ns: str, after: int = 0, limit: int = 100) -> list[tuple[str, int]]:
    items, _ = store.feed_since(ns, after, limit)
    return [(r.id, r.version.hlc) for _, r in items]


@pytest.mark.asyncio
async def test_each_key_once_at_its_latest_change_in_change_order(store: Store) -> None:
    await store.apply([rec("a", 1), rec("b", 2), rec("c", 3)])
    await store.apply([rec("a", 4)])
    assert seen(store, "ns") == [("b", 2), ("c", 3), ("a", 4)]
    await store.apply([rec("b", 5, deleted=True)])  # a delete is a change like any other
    items, head = store.feed_since("ns", 0, 100)
    assert [(r.id, r.deleted) for _, r in items] == [("c", False), ("a", False), ("b", True)]
    assert head == store.seq and [s for s, _ in items] == sorted(s for s, _ in items)


@pytest.mark.asyncio
async def test_a_reader_resumes_after_the_seq_it_read_and_misses_nothing(store: Store) -> None:
    await store.apply([rec("a", 1), rec("b", 2)])
    items, head = store.feed_since("ns", 0, 1)
    assert [r.id for _, r in items] == ["a"]
    pos = items[-1][0]
    await store.apply([rec("a", 3)])  # moves a's entry past the reader: seen again, newer
    assert seen(store, "ns", pos) == [("b", 2), ("a", 3)]
    assert seen(store, "ns", head + 10) == []


@pytest.mark.asyncio
async def test_an_older_or_equal_version_moves_nothing(store: Store) -> None:
    await store.apply([rec("a", 5)])
    _, head = store.feed_since("ns", 0, 100)
    await store.apply([rec("a", 3), rec("a", 5)])
    assert seen(store, "ns", head) == []


@pytest.mark.asyncio
async def test_namespaces_are_apart(store: Store) -> None:
    await store.apply([rec("a", 1, "ns"), rec("a", 2, "ns2"), rec("b", 3, "n")])
    assert seen(store, "ns") == [("a", 1)]
    assert seen(store, "ns2") == [("a", 2)]
    assert seen(store, "n") == [("b", 3)]


@pytest.mark.asyncio
async def test_a_purged_record_leaves_the_log(store: Store) -> None:
    await store.apply([rec("a", 1), rec("b", 2, deleted=True)])
    await store.purge([store.key_of("ns", "b")])
    assert seen(store, "ns") == [("a", 1)]


@pytest.mark.asyncio
async def test_the_byte_bound_stops_a_page_early(store: Store) -> None:
    await store.apply([rec(f"k{i}", i + 1) for i in range(10)])
    items, _ = store.feed_since("ns", 0, 100, max_bytes=1)
    assert len(items) == 1


@pytest.mark.asyncio
async def test_the_log_survives_a_restart(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await s.apply([rec("a", 1), rec("b", 2)])
    s.close()
    s = open_store(tmp_path)
    try:
        assert seen(s, "ns") == [("a", 1), ("b", 2)]
    finally:
        s.close()


@pytest.mark.asyncio
async def test_a_store_written_before_the_log_existed_is_backfilled_at_open(
    tmp_path: Path,
) -> None:
    s = open_store(tmp_path)
    await s.apply([rec("a", 1), rec("b", 2)])
    before = s.seq
    s.close()
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=16)  # as an older release left it
    with env.begin(write=True) as txn:
        for name in (b"feed", b"feed_at"):
            txn.drop(env.open_db(name, txn=txn), delete=False)
    env.close()
    s = open_store(tmp_path)
    try:
        items, head = s.feed_since("ns", 0, 100)
        assert sorted(r.id for _, r in items) == ["a", "b"]
        assert all(seq > before for seq, _ in items) and head == s.seq == before + 2
    finally:
        s.close()


@pytest.mark.asyncio
async def test_feed_entries_name_each_keys_version_and_entry_seq(store: Store) -> None:
    await store.apply([rec("a", 1), rec("b", 2)])
    await store.apply([rec("a", 3)])
    items, _ = store.feed_since("ns", 0, 100)
    seq = {r.id: s for s, r in items}
    got = store.feed_entries("ns", ["a", "b", "missing"])
    assert [(None if r is None else r.version.hlc, s) for r, s in got] == [
        (3, seq["a"]), (2, seq["b"]), (None, 0)]
