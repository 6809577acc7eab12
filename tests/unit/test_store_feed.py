"""The store's change feed (spine.storage.change_feed), in both writer modes.

Subscribers registered with `store.subscribe` are called after each commit that applied or purged
records, with their `Applied` in commit order (change seqs consecutive across commits), after the
commit is durable and before the writers' callers resume. A subscriber that raises fails neither
the commit nor the other subscribers, and is counted; commits of hints or meta publish nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.group_commit import WriterMode
from spine.storage.layout import Applied, Outcome
from spine.storage.lmdb_store import Store

pytestmark = pytest.mark.timeout(30)


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, 16)


def rec(mid: str, hlc: int) -> Record:
    return Record(namespace="ns", id=mid, version=Version(hlc, "n1"), clock={"n1": hlc},
                  content=f"memory {mid}", created_hlc=hlc)


@pytest_asyncio.fixture(params=["thread", "loop"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    mode: WriterMode = request.param
    s = Store(tmp_path / "lmdb", shard_of=shard, sync=False, map_size_mb=32, writer=mode)
    s.start()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.asyncio
async def test_subscribers_get_every_change_in_commit_order(store: Store) -> None:
    seen: list[list[Applied]] = []
    store.subscribe(seen.append)
    await asyncio.gather(*(store.apply([rec(f"m{i}", 10 + i), rec(f"k{i}", 50 + i)])
                           for i in range(6)))
    await store.apply([rec("m0", 5)])  # older than the stored m0: stale, still reported
    await store.add_hints([("n2", 1, rec("h", 1))])  # no records changed: no call
    await store.meta_put("x", b"1")
    await store.purge([store.key_of("ns", "k0")])
    flat = [a for batch in seen for a in batch]
    assert [a.seq for a in flat] == list(range(1, 15))
    assert [a.new.id for a in flat[:12]] == [x for i in range(6) for x in (f"m{i}", f"k{i}")]
    assert flat[12].outcome is Outcome.STALE and flat[12].new.version.hlc == 10
    assert flat[13].new.id == "k0" and flat[13].new.deleted and flat[13].old is not None
    assert all(batch for batch in seen)


@pytest.mark.asyncio
async def test_a_subscriber_sees_the_commit_before_its_caller_resumes(store: Store) -> None:
    resumed: list[str] = []
    observed: list[tuple[bool, list[str]]] = []

    def check(applied: list[Applied]) -> None:
        observed.append((store.get("ns", applied[0].new.id) is not None, list(resumed)))

    store.subscribe(check)
    await store.apply([rec("a", 1)])
    resumed.append("a")
    await store.apply([rec("b", 2)])
    assert observed == [(True, []), (True, ["a"])]


@pytest.mark.asyncio
async def test_a_failing_subscriber_fails_neither_the_commit_nor_the_others(store: Store) -> None:
    calls: list[str] = []

    def broken(applied: list[Applied]) -> None:
        calls.append("broken")
        raise RuntimeError("a derived structure broke")

    store.subscribe(broken)
    store.subscribe(lambda applied: calls.append("after"))
    applied = await store.apply([rec("a", 1)])
    assert applied[0].outcome is Outcome.APPLIED and store.get("ns", "a") is not None
    assert calls == ["broken", "after"] and store.feed.failures == 1


@pytest.mark.asyncio
async def test_unsubscribe_stops_the_calls(store: Store) -> None:
    seen: list[list[Applied]] = []
    store.subscribe(seen.append)
    await store.apply([rec("a", 1)])
    store.unsubscribe(seen.append)
    store.unsubscribe(seen.append)  # twice: no error
    await store.apply([rec("b", 2)])
    assert [a.new.id for batch in seen for a in batch] == ["a"]
    assert store.feed.subscribers == ()
