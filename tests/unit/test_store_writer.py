"""The store's group-commit writer in both modes (spine.storage.group_commit).

- "thread" (a node): concurrent writes queue while a group commits and go into the next group
  (up to max_batch); no caller resolves before its group committed; a failed group fails each
  of its callers and only them; close commits what is queued.
- "loop" (the simulator): no thread; the writes submitted in one loop iteration are one group,
  committed at the loop's next turn; `abandon()` drops what is not committed yet, as a killed
  process would, and refuses further writes; close commits what is pending.

The thread mode is held mid-commit by a gate in the write transaction (a threading.Event), so
which writes share a group is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.lmdb_store import Store
from spine.storage.write_ops import ApplyRecords

pytestmark = pytest.mark.timeout(30)


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, 16)


def rec(mid: str, hlc: int) -> Record:
    return Record(namespace="ns", id=mid, version=Version(hlc, "n1"), clock={"n1": hlc},
                  content=f"memory {mid}", created_hlc=hlc)


def open_store(path: Path, **kw: Any) -> Store:
    store = Store(path / "lmdb", shard_of=shard, sync=False, map_size_mb=32, **kw)
    store.start()
    return store


class GatedEnv:
    """Wraps the environment: write transactions wait for `gate` before they begin (the writer
    thread is then mid-group), and `fail_next` makes the next one raise inside the transaction."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next: Exception | None = None

    def begin(self, **kw: Any) -> Any:
        if kw.get("write"):
            err, self.fail_next = self.fail_next, None  # taken when the group begins
            self.entered.set()
            self.gate.wait()
            if err is not None:
                return _Raising(self.env.begin(**kw), err)
        return self.env.begin(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class _Raising:
    """A write transaction whose first put raises `err` (the transaction is then aborted)."""

    def __init__(self, txn: Any, err: Exception) -> None:
        self.txn, self.err = txn, err

    def __enter__(self) -> Any:
        self.txn.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.txn.__exit__(*exc)

    def put(self, *args: Any, **kw: Any) -> Any:
        raise self.err

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Store, GatedEnv]]:
    store = open_store(tmp_path, writer="thread", max_batch=10)
    env = GatedEnv(store.env)
    store.env = env
    try:
        yield store, env
    finally:
        env.gate.set()
        store.env = env.env
        store.close()


async def hold_writer(store: Store, env: GatedEnv) -> asyncio.Task[Any]:
    """Start one write and hold the writer thread inside its group; returns the write's task."""
    env.gate.clear()
    env.entered.clear()
    first = asyncio.create_task(store.apply([rec("first", 1)]))
    await asyncio.get_running_loop().run_in_executor(None, env.entered.wait)
    return first


# -- thread mode -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_thread_writes_queued_during_a_commit_share_the_next_groups(
    gated: tuple[Store, GatedEnv],
) -> None:
    store, env = gated
    first = await hold_writer(store, env)
    rest = [asyncio.create_task(store.apply([rec(f"m{i}", 10 + i)])) for i in range(25)]
    await asyncio.sleep(0)  # every task has submitted its write
    assert not first.done() and not any(t.done() for t in rest), "answered before its commit"
    assert store.get("ns", "first") is None and store.commits == 0
    env.gate.set()
    await asyncio.gather(first, *rest)
    # the held group, then the 25 queued ones as groups of max_batch (10, 10, 5)
    assert (store.commits, store.committed_ops) == (4, 26)
    assert all(store.get("ns", f"m{i}") is not None for i in range(25))
    assert [a.seq for t in rest for a in t.result()] == list(range(2, 27))  # queue order


@pytest.mark.asyncio
async def test_thread_a_failed_group_fails_each_of_its_writes_and_only_them(
    gated: tuple[Store, GatedEnv],
) -> None:
    store, env = gated
    first = await hold_writer(store, env)
    env.fail_next = RuntimeError("the transaction broke")
    doomed = [asyncio.create_task(store.apply([rec(f"d{i}", 10 + i)])) for i in range(3)]
    await asyncio.sleep(0)
    env.gate.set()
    assert (await first)[0].new.id == "first"  # its group had begun before the fault was set
    # the fault is taken by the next group: the three queued writes
    for t in doomed:
        with pytest.raises(RuntimeError, match="broke"):
            await t
    assert all(store.get("ns", f"d{i}") is None for i in range(3))
    assert store.seq == 1, "a failed group advanced the change seq"
    applied = await store.apply([rec("after", 50)])  # the writer goes on
    assert applied[0].seq == 2 and store.get("ns", "after") is not None


@pytest.mark.asyncio
async def test_thread_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = open_store(tmp_path, writer="thread")
    env = GatedEnv(store.env)
    store.env = env
    first = await hold_writer(store, env)
    queued = [asyncio.create_task(store.apply([rec(f"q{i}", 10 + i)])) for i in range(5)]
    await asyncio.sleep(0)
    env.gate.set()
    store.env = env.env
    store.close()  # the writer drains the queue before it stops
    await asyncio.gather(first, *queued)
    with pytest.raises(RuntimeError, match="not running"):
        await store.apply([rec("late", 99)])
    reopened = open_store(tmp_path)
    try:
        assert all(reopened.get("ns", f"q{i}") is not None for i in range(5))
        assert reopened.seq == 6
    finally:
        reopened.close()


@pytest.mark.asyncio
async def test_thread_abandon_drops_the_queue_and_lets_the_group_in_flight_finish(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path, writer="thread")
    env = GatedEnv(store.env)
    store.env = env
    first = await hold_writer(store, env)
    lost = [asyncio.create_task(store.apply([rec(f"q{i}", 10 + i)])) for i in range(2)]
    await asyncio.sleep(0)
    assert store.writer._queue.qsize() == 2
    crash = threading.Thread(target=store.writer.abandon)  # joins the held writer thread
    crash.start()
    deadline = asyncio.get_running_loop().time() + 10
    while store.writer.running:  # False once abandon dropped the queue
        assert asyncio.get_running_loop().time() < deadline, "abandon did not drop the queue"
        await asyncio.sleep(0.001)
    env.gate.set()
    await asyncio.get_running_loop().run_in_executor(None, crash.join)
    assert (await first)[0].new.id == "first"  # the group being committed completed
    assert not any(t.done() for t in lost), "a dropped write was answered"
    store.env = env.env
    store.env.close()
    reopened = open_store(tmp_path)
    try:
        assert reopened.get("ns", "first") is not None
        assert all(reopened.get("ns", f"q{i}") is None for i in range(2))
    finally:
        reopened.close()
    for t in lost:
        t.cancel()


# -- loop mode -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_loop_one_iterations_writes_are_one_group_committed_at_the_next_turn(
    tmp_path: Path,
) -> None:
    threads = set(threading.enumerate())
    store = open_store(tmp_path, writer="loop")
    try:
        assert set(threading.enumerate()) == threads, "the loop writer started a thread"
        futures = [store.writer.submit(ApplyRecords([rec(f"m{i}", 1 + i)])) for i in range(20)]
        assert store.get("ns", "m0") is None and store.commits == 0  # nothing before the turn
        results = await asyncio.gather(*futures)
        assert (store.commits, store.committed_ops) == (1, 20)
        assert [r[0].seq for r in results] == list(range(1, 21))
        applied = await asyncio.gather(*(store.apply([rec(f"n{i}", 50 + i)]) for i in range(5)))
        assert len(applied) == 5 and store.commits == 2  # five tasks' writes, one more group
    finally:
        store.close()


@pytest.mark.asyncio
async def test_loop_groups_are_cut_at_max_batch(tmp_path: Path) -> None:
    store = open_store(tmp_path, writer="loop", max_batch=10)
    try:
        await asyncio.gather(*(store.apply([rec(f"m{i}", 1 + i)]) for i in range(25)))
        assert (store.commits, store.committed_ops) == (3, 25)
    finally:
        store.close()


@pytest.mark.asyncio
async def test_loop_abandon_drops_what_is_not_committed(tmp_path: Path) -> None:
    store = open_store(tmp_path, writer="loop")
    await store.apply([rec("kept", 1)])
    lost = store.writer.submit(ApplyRecords([rec("lost", 2)]))
    store.abandon()  # the crash: before the loop's next turn
    for _ in range(3):
        await asyncio.sleep(0)  # the turns that would have committed and answered it
    assert not lost.done(), "a dropped write was answered"
    with pytest.raises(RuntimeError, match="not running"):
        await store.apply([rec("after", 3)])
    reopened = open_store(tmp_path, writer="loop")  # the restart
    try:
        assert reopened.get("ns", "kept") is not None
        assert reopened.get("ns", "lost") is None
        assert reopened.seq == 1 and reopened.max_hlc == 1
        applied = await reopened.apply([rec("again", 4)])
        assert applied[0].seq == 2
    finally:
        reopened.close()
    lost.cancel()


@pytest.mark.asyncio
async def test_loop_close_commits_what_is_pending(tmp_path: Path) -> None:
    store = open_store(tmp_path, writer="loop")
    pending = store.writer.submit(ApplyRecords([rec("p", 1)]))
    store.close()
    assert (await pending)[0].new.id == "p"
    reopened = open_store(tmp_path, writer="loop")
    try:
        assert reopened.get("ns", "p") is not None
    finally:
        reopened.close()


@pytest.mark.asyncio
async def test_loop_a_failed_group_fails_each_of_its_writes(tmp_path: Path) -> None:
    store = open_store(tmp_path, writer="loop")
    env = GatedEnv(store.env)
    store.env = env
    try:
        env.fail_next = RuntimeError("the transaction broke")
        doomed = [store.writer.submit(ApplyRecords([rec(f"d{i}", 1 + i)])) for i in range(3)]
        for f in doomed:
            with pytest.raises(RuntimeError, match="broke"):
                await f
        assert store.seq == 0 and store.commits == 0
        await store.apply([rec("ok", 9)])
        assert store.seq == 1
    finally:
        store.env = env.env
        store.close()


@pytest.mark.asyncio
async def test_writes_before_start_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb", shard_of=shard, sync=False, map_size_mb=32, writer="loop")
    try:
        with pytest.raises(RuntimeError, match="not running"):
            await store.apply([rec("a", 1)])
    finally:
        store.close()
