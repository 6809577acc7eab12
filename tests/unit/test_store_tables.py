"""The store's tables through the Store façade: merge and history retention, hints, the change
log, meta counters across a restart, and the namespace listing (spine.storage.records, history,
hints, changelog, meta)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.lmdb_store import Outcome, Store

pytestmark = pytest.mark.timeout(30)


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, 16)


def rec(mid: str, hlc: int, node: str = "n1", clock: dict[str, int] | None = None,
        ns: str = "ns") -> Record:
    return Record(namespace=ns, id=mid, version=Version(hlc, node),
                  clock=clock if clock is not None else {node: hlc},
                  content=f"{mid}@{hlc}", created_hlc=hlc)


def open_store(path: Path, keep: int = 3) -> Store:
    s = Store(path / "lmdb", shard_of=shard, sync=False, map_size_mb=32, history_keep=keep,
              writer="loop")
    s.start()
    return s


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.asyncio
async def test_newer_versions_replace_and_history_keeps_the_newest_few(store: Store) -> None:
    for hlc in range(1, 7):
        (a,) = await store.apply([rec("a", hlc, clock={"n1": hlc})])
        assert a.outcome is Outcome.APPLIED
    got = store.get("ns", "a")
    assert got is not None and got.version.hlc == 6
    assert [h.record.version.hlc for h in store.history("ns", "a")] == [5, 4, 3]  # keep=3
    assert not any(h.concurrent for h in store.history("ns", "a"))


@pytest.mark.asyncio
async def test_a_concurrent_loser_goes_to_history_flagged(store: Store) -> None:
    await store.apply([rec("a", 10, "n1", {"n1": 1})])
    (late,) = await store.apply([rec("a", 5, "n2", {"n2": 1})])  # concurrent, lower version
    assert late.outcome is Outcome.STALE and late.conflict
    got = store.get("ns", "a")
    assert got is not None and got.version == Version(10, "n1")
    assert dict(got.clock) == {"n1": 1, "n2": 1}  # the clocks joined
    (h,) = store.history("ns", "a")
    assert h.concurrent and h.record.version == Version(5, "n2")
    (again,) = await store.apply([rec("a", 10, "n1", {"n1": 1})])  # a version it has
    assert again.outcome is Outcome.STALE and not again.conflict
    assert len(store.history("ns", "a")) == 1


@pytest.mark.asyncio
async def test_hints_keep_order_per_target_and_delete(store: Store) -> None:
    await store.add_hints([("n2", 100, rec("a", 1)), ("n3", 101, rec("b", 2)),
                           ("n2", 102, rec("c", 3))])
    assert store.hint_counts() == {"n2": 2, "n3": 1}
    hints = store.hints_for("n2", 10)
    assert [(h.target, h.created_ms, h.record.id) for h in hints] == [
        ("n2", 100, "a"), ("n2", 102, "c")]
    assert [h.record.id for h in store.hints_for("n2", 1)] == ["a"]
    await store.delete_hints([hints[0].key])
    assert [h.record.id for h in store.hints_for("n2", 10)] == ["c"]
    assert store.hint_counts() == {"n2": 1, "n3": 1}


@pytest.mark.asyncio
async def test_change_log_follows_replacements_and_purges_and_prunes(store: Store) -> None:
    await store.apply([rec("a", 1), rec("b", 2)])
    await store.apply([rec("a", 1)])  # stale: a seq, no change-log entry
    await store.purge([store.key_of("ns", "b"), store.key_of("ns", "nope")])
    assert store.seq == 5
    assert store.changes_since(0) == [(1, store.key_of("ns", "a")), (2, store.key_of("ns", "b")),
                                      (4, store.key_of("ns", "b"))]
    assert store.changes_since(2) == [(4, store.key_of("ns", "b"))]
    assert store.changes_since(0, limit=1) == [(1, store.key_of("ns", "a"))]
    await store.prune_changes(2)
    assert store.changes_since(0) == [(4, store.key_of("ns", "b"))]
    assert store.get("ns", "b") is None and store.count() == 1


@pytest.mark.asyncio
async def test_counters_and_meta_survive_a_restart(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await s.apply([rec("a", 70), rec("b", 30)])
    await s.add_hints([("n2", 1, rec("a", 70))])
    await s.meta_put("ring", b"map-bytes")
    s.close()
    s = open_store(tmp_path)
    try:
        assert (s.seq, s.max_hlc) == (2, 70)
        assert s.meta_get("ring") == b"map-bytes" and s.meta_get("other") is None
        await s.add_hints([("n2", 2, rec("b", 30))])  # hint seq resumes: it sorts after
        assert [h.record.id for h in s.hints_for("n2", 10)] == ["a", "b"]
        (c,) = await s.apply([rec("c", 5)])
        assert c.seq == 3 and s.max_hlc == 70
    finally:
        s.close()


@pytest.mark.asyncio
async def test_listing_a_namespace_in_id_order(store: Store) -> None:
    await store.apply([rec(m, i + 1) for i, m in enumerate(["d", "b", "a", "c"])])
    await store.apply([rec("x", 9, ns="other")])
    await store.apply([Record(namespace="ns", id="c", version=Version(20, "n1"),
                              clock={"n1": 20}, deleted=True)])
    assert [r.id for r in store.list_namespace("ns", None, 10)] == ["a", "b", "d"]
    assert [r.id for r in store.list_namespace("ns", None, 10, include_deleted=True)] == [
        "a", "b", "c", "d"]
    assert [r.id for r in store.list_namespace("ns", "b", 10)] == ["d"]
    assert [r.id for r in store.list_namespace("ns", None, 2)] == ["a", "b"]
    await store.purge([store.key_of("ns", "a")])
    assert [r.id for r in store.list_namespace("ns", None, 10)] == ["b", "d"]
    assert [r.id for r in store.list_namespace("other", None, 10)] == ["x"]
