"""List pages bounded by bytes as well as count, with the scan off the event loop (issue 14: a
1,000-item page over 64 MiB broke peer connections; a 40k-record filtered scan blocked the event
loop 0.7 s)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spine.cluster.fanout import FanOut, list_handler
from spine.cluster.loopback import Loopback
from spine.core.clock import Version
from spine.core.messages import Message, Tag
from spine.core.model import Record
from spine.core.ring import Ring, shard_of
from spine.storage.lmdb_store import Store

SHARDS = 8


class _Alive:
    def is_alive(self, node: str) -> bool:
        return True

    def report_failure(self, node: str) -> None:
        raise AssertionError(node)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "lmdb", shard_of=lambda ns, mid: shard_of(ns, mid, SHARDS), sync=False,
              map_size_mb=64)
    s.start()
    try:
        yield s
    finally:
        s.close()


class _NoPeers:
    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        raise AssertionError(f"one node: nothing goes over RPC, not to {node}")

    def drop(self, node: str) -> None:
        raise AssertionError(node)

    async def close(self) -> None:
        pass


def _fanout(store: Store) -> FanOut:
    ring = Ring({"n1": ""}, shards=SHARDS, vnodes=4, n=1)
    handlers = {Tag.LIST: list_handler(store)}  # what the node serves itself
    rpc = Loopback("n1", _NoPeers(), lambda: handlers)
    return FanOut("n1", lambda: ring, rpc, _Alive(), lambda: ["n1"], 1.0)


async def _fill(store: Store, n: int, size: int) -> None:
    await store.apply([
        Record("big", f"m{i:03d}", Version(i + 1, "n1"), {"n1": i + 1}, content="x" * size,
               tags=("t",) if i % 2 else ())
        for i in range(n)
    ])


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_page_stops_at_its_byte_budget_and_resumes(store: Store) -> None:
    await _fill(store, 30, 50_000)  # 1.5 MB in all
    fanout = _fanout(store)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await fanout.list_page("big", cursor, 1000, None, None, 200_000)
        pages += 1
        assert len(page.items) <= 4, len(page.items)  # 50 kB records, 200 kB budget
        # Only the last page may be empty: a node that filled half its budget may hold more.
        assert page.items or page.next_cursor is None
        assert sum(len(r.content) for r in page.items) <= 200_000
        seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert pages < 40
    assert seen == [f"m{i:03d}" for i in range(30)]  # nothing lost, nothing twice


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_one_record_past_the_budget_still_makes_a_page(store: Store) -> None:
    await _fill(store, 3, 50_000)
    page = await _fanout(store).list_page("big", None, 1000, None, None, 1_000)
    assert [r.id for r in page.items] == ["m000"] and page.next_cursor == "m000"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_the_scan_runs_off_the_event_loop(store: Store, monkeypatch: Any) -> None:
    await _fill(store, 10, 10)
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = store.list_namespace

    def spy(*args: Any, **kw: Any) -> list[Record]:
        threads.append(threading.get_ident())
        return real(*args, **kw)

    monkeypatch.setattr(store, "list_namespace", spy)
    page = await _fanout(store).list_page("big", None, 100, "t", None)
    assert [r.id for r in page.items] == [f"m{i:03d}" for i in range(1, 10, 2)]
    assert threads and loop_thread not in threads
