"""The background builder that moves pending vectors into each namespace's HNSW graph (DESIGN §6).

A write's vector is stored in its namespace's `VectorIndex` and marked pending; searches scan
pending vectors exactly, so nothing waits for the graph. This builder inserts them later, as
Qdrant's optimizer does for appendable segments: in batches on `threads` hnswlib threads, each
batch sized from a running per-insert estimate to hold the namespace's index for about
`batch_ms` (hnswlib inserts are not safe beside queries, so that namespace's searches wait that
long), with pauses between batches so it builds `busy_pct` of the time while a namespace's
backlog is below `backlog_max`, and without pauses above it. Commits wake it; it never polls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from spine.storage.vector_index import VectorIndex

log = structlog.get_logger("spine.indexer")


@dataclass(frozen=True)
class BuildPolicy:
    """How the builder spends CPU on graph inserts (config `index.build_*`)."""

    threads: int = 1  # hnswlib threads per batch
    batch_ms: int = 20  # a batch's target length: searches of that namespace wait this long
    busy_pct: int = 50  # share of wall time spent building while the backlog is small
    backlog_max: int = 20_000  # a namespace's pending records past which it builds flat out


class GraphBuilder:
    """One task and one thread per node that keep every namespace's graph catching up."""

    def __init__(
        self,
        graphs: Callable[[], list[VectorIndex]],
        policy: BuildPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]],
        monotonic: Callable[[], float],
        on_failure: Callable[[], None],
    ) -> None:
        self.graphs = graphs
        self.policy = policy
        self.sleep = sleep
        self.monotonic = monotonic
        self.on_failure = on_failure
        self.unsaved = False  # graph inserts since the owner's last snapshot
        self._item_s = 0.001  # the estimate of one graph insert's wall time
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="index-build")
        self._task: asyncio.Task[None] | None = None

    def pending(self) -> int:
        """Records waiting for a graph insert, over every namespace."""
        return sum(index.pending for index in self.graphs())

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=True)

    def wake(self) -> None:
        """A namespace has new pending vectors (callable from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or wake.is_set():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to wake
                loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not any(index.needs_build for index in self.graphs()):
                await self._wake.wait()
                continue
            try:
                built, elapsed, backlog = await loop.run_in_executor(self._thread, self._batch)
            except Exception:  # searches stay exact over the backlog meanwhile
                self.on_failure()
                log.exception("index_build_failed", pending=self.pending())
                await self.sleep(1.0)
                continue
            if built:
                self.unsaved = True
            if built and backlog <= self.policy.backlog_max:
                busy = self.policy.busy_pct / 100
                await self.sleep(elapsed * (1 - busy) / busy)
            else:
                await self.sleep(0)

    def _batch(self) -> tuple[int, float, int]:
        """One batch into the namespace with the longest backlog: (inserted, seconds, the
        longest backlog left)."""
        waiting = [index for index in self.graphs() if index.needs_build]
        if not waiting:
            return 0, 0.0, 0
        index = max(waiting, key=lambda ix: ix.pending)
        items = int(self.policy.batch_ms / 1000 / max(self._item_s, 1e-6))
        start = self.monotonic()
        built = index.build(max(8, min(items, 4096)), num_threads=self.policy.threads)
        elapsed = max(0.0, self.monotonic() - start)
        if built:
            self._item_s = 0.7 * self._item_s + 0.3 * (elapsed / built)
        return built, elapsed, max((ix.pending for ix in waiting), default=0)

    async def build_all(self) -> int:
        """Insert every pending record into its graph now (tests, benchmarks); how many."""
        loop = asyncio.get_running_loop()

        def run() -> int:
            return sum(ix.build(num_threads=self.policy.threads) for ix in self.graphs())

        built: int = await loop.run_in_executor(self._thread, run)
        if built:
            self.unsaved = True
        return built
