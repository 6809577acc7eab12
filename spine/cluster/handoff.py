"""Hinted handoff (Dynamo §4.6): replay writes kept for a replica once it answers again.

Hints live in LMDB, so they survive a restart of the node that keeps them. A hint older than
`handoff.window` is dropped (anti-entropy repairs what it would have delivered).

Hints for a node that has left the ring (decommissioned or removed) are not kept for it: each
goes to the current owners (and pending owners) of its record's shard instead, so a write that
was acknowledged on the strength of a hint (eventual level) is not lost with the node.
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
from spine.core.model import Record
from spine.core.ringmap import LEFT, Placement
from spine.ports import RecordStore

log = structlog.get_logger("spine.handoff")


class Handoff:
    """Periodically replays pending hints to replicas that are alive."""

    def __init__(
        self,
        store: RecordStore,
        replicator: Replicator,
        liveness: Liveness,
        metrics: SpineMetrics,
        *,
        interval: float,
        window_ms: int,
        batch: int,
        wall_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]],
        placement: Callable[[], Placement] | None = None,
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
        self.placement = placement
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
            gone = self._gone(target)
            if not gone and not self.liveness.is_alive(target):
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
                        if gone:
                            await self._reroute([h.record for h in live])
                        else:
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

    def _gone(self, target: str) -> bool:
        """Whether `target` has left the ring (its hints go to the records' owners instead)."""
        if self.placement is None:
            return False
        return self.placement().map.state(target) == LEFT

    async def _reroute(self, records: list[Record]) -> None:
        assert self.placement is not None
        p = self.placement()
        by_node: dict[str, list[Record]] = {}
        for r in records:
            for node in p.write_set(p.shard(r.namespace, r.id))[0]:
                by_node.setdefault(node, []).append(r)
        for node, recs in by_node.items():
            await self.rep.send(node, recs)  # this node's own share included
