"""Hinted handoff (Dynamo §4.6): replay writes kept for a replica once it answers again.

Hints live in LMDB, so they survive a restart of the node that keeps them. A hint older than
`handoff.window` is dropped (anti-entropy repairs what it would have delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from spine.cluster.liveness import Liveness
from spine.cluster.replication import Replicator
from spine.core.errors import PeerUnavailable
from spine.core.metrics import SpineMetrics
from spine.storage.lmdb_store import Store

log = structlog.get_logger("spine.handoff")


class Handoff:
    """Periodically replays pending hints to replicas that are alive."""

    def __init__(
        self,
        store: Store,
        replicator: Replicator,
        liveness: Liveness,
        metrics: SpineMetrics,
        *,
        interval: float,
        window_ms: int,
        batch: int,
        wall_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.store = store
        self.rep = replicator
        self.liveness = liveness
        self.metrics = metrics
        self.interval = interval
        self.window_ms = window_ms
        self.batch = batch
        self.wall_ms = wall_ms
        self.sleep = sleep
        self.enabled = True
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Start the replay loop."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the replay loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self, _node: str = "") -> None:
        """Replay now (a peer just came back)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if not self.enabled:
                continue
            try:
                await self.replay_once()
            except Exception:
                log.exception("handoff_failed")

    async def replay_once(self) -> int:
        """Deliver what can be delivered now; the number of hints delivered."""
        delivered = 0
        for target in self.store.hint_counts():
            if not self.liveness.is_alive(target):
                continue
            while True:
                hints = self.store.hints_for(target, self.batch)
                if not hints:
                    break
                cutoff = self.wall_ms() - self.window_ms
                expired = [h.key for h in hints if h.created_ms < cutoff]
                live = [h for h in hints if h.created_ms >= cutoff]
                if live:
                    try:
                        await self.rep.send(target, [h.record for h in live])
                    except PeerUnavailable:
                        break
                await self.store.delete_hints(expired + [h.key for h in live])
                delivered += len(live)
                self.metrics.hints_delivered.inc(by=len(live))
                if expired:
                    self.metrics.hints_expired.inc(by=len(expired))
                    log.info("hints_expired", target=target, count=len(expired))
                if len(hints) < self.batch:
                    break
        return delivered
