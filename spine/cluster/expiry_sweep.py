"""The expiry sweep (DESIGN §13): each node turns the expired records it is responsible for into
tombstones, which then replicate and are purged like any delete's (DESIGN §3).

Reads hide an expired record from the moment its expiry passes (`spine.core.expiry.masked`,
judged on each node's HLC), so the sweep is housekeeping, not visibility: it frees the space and
the index entries, and it lets the change feed and anti-entropy see the expiry as a delete.

Per shard, only its first live owner sweeps (`sweeper_of`). It walks the shard's stored records
at `keys_per_s` at most; for a record expired at least `margin_ms` ago (every write minted before
the instant of expiry has finished by then) it reads the key from a quorum of its owners, and if
the newest version there is still expired, writes the tombstone `sweep_tombstone` stamps at the
instant of expiry to the key's write set, with hints for the owners that are down: an eventual
delete, whose hints and anti-entropy carry it to a replica that was away. That replica, on its
return, hides the expired version meanwhile on its own; nothing can bring the record back,
since the tombstone is newer than the expired version and the expired version stays expired.

One race remains, as in any leaderless store: an `eventual` write made just before the instant
of expiry that reached none of the owners the sweep read is concurrent with the tombstone and
loses to it (it stays in the key's history as a concurrent loser, and is counted as a conflict).

A node that stores nothing expiring idles after one pass (`on_commit` wakes it), so a cluster
that does not use expiry pays nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from spine.cluster.liveness import Liveness
from spine.cluster.replication import Replicator
from spine.core.clock import HLC
from spine.core.expiry import sweep_due, sweep_tombstone, sweeper_of
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.quorum import resolve
from spine.core.ringmap import Placement
from spine.core.routing import live, route
from spine.ports import RecordStore
from spine.storage.layout import Applied

log = structlog.get_logger("spine.expiry")

PAGE = 1000  # records read from the store in one scan call


class ExpirySweep:
    """Finds expired records this node sweeps and replaces them with tombstones."""

    def __init__(
        self,
        node_id: str,
        store: RecordStore,
        replicator: Replicator,
        liveness: Liveness,
        placement: Callable[[], Placement],
        hlc: HLC,
        metrics: SpineMetrics,
        *,
        interval: float,
        keys_per_s: int,
        margin_ms: int,
        read_quorum: int,
        read_timeout: float,
        write_timeout: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.rep = replicator
        self.liveness = liveness
        self.placement = placement
        self.hlc = hlc
        self.interval = interval
        self.budget = max(1, int(keys_per_s * interval))  # records read per tick
        self.margin_ms = margin_ms
        self.read_quorum = read_quorum
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.sleep = sleep
        self._shard = 0
        self._after: bytes | None = None
        # Idling: a cluster that stores no expiring record pays for one pass after start and
        # nothing after it. `_commits` counts commits of expiring records (the store's writer
        # thread is its only writer); a pass that saw no expiring record makes the sweep idle
        # until that count moves past where it stood when the pass began, or until the shards
        # this node sweeps change (an owner went down or came back, the ring changed).
        self._commits = 0
        self._pass_start = 0
        self._idle_at = -1
        self._seen = False
        self._pass_shards: frozenset[int] | None = None  # the shards swept when the pass began
        self._idle_shards: frozenset[int] = frozenset()
        self._task: asyncio.Task[None] | None = None
        r = metrics.registry
        self.swept = r.counter("spine_expiry_swept_total",
                               "expired records this node replaced with tombstones")
        self.deferred = r.counter(
            "spine_expiry_deferred_total",
            "expired records the sweep left for a later pass: too few owners answered, or the"
            " tombstone reached none of them")

    def on_commit(self, applied: list[Applied]) -> None:
        """Commit hook (LMDB writer thread): note that an expiring record was stored."""
        if any(a.new.expires_hlc and not a.new.deleted for a in applied):
            self._commits += 1

    def _mine(self, placement: Placement) -> frozenset[int]:
        """The shards this node sweeps now."""
        return frozenset(s for s in range(placement.shards)
                         if sweeper_of(placement.owners(s), self._alive) == self.node_id)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Sweep every `interval`, in one owned task."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Cancel the sweep loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self.sleep(self.interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("expiry_sweep_failed")

    # ------------------------------------------------------------ one tick

    async def run_once(self) -> int:
        """Read up to one tick's budget of records from the shards this node sweeps, going on
        where the last tick stopped (wrapping round), and retire the expired ones. Returns how
        many it replaced with tombstones."""
        placement = self.placement()
        mine = self._mine(placement)
        if self._idle_at == self._commits and mine == self._idle_shards:
            return 0  # idle: nothing expiring stored since a pass over these shards found none
        if self._pass_shards is None:
            self._pass_shards = mine
        shards = placement.shards
        budget = self.budget
        due: list[Record] = []
        visited = 0
        while budget > 0 and visited < shards:  # at most one pass per tick
            shard = self._shard % shards
            if shard not in mine:
                self._next_shard(shards, mine)
                visited += 1
                continue
            limit = min(PAGE, budget)
            page = await asyncio.to_thread(self.store.scan_shard, shard, self._after, limit)
            budget -= max(1, len(page))
            now = self.hlc.now()
            self._seen = self._seen or any(r.expires_hlc and not r.deleted for _, r in page)
            due.extend(rec for _, rec in page if sweep_due(rec, now, self.margin_ms))
            if len(page) < limit:  # the shard is done
                self._next_shard(shards, mine)
                visited += 1
            else:
                self._after = page[-1][0]
        swept = 0
        for rec in due:
            swept += await self.retire(rec.namespace, rec.id)
        return swept

    def _next_shard(self, shards: int, mine: frozenset[int]) -> None:
        self._shard = (self._shard + 1) % shards
        self._after = None
        if self._shard == 0:  # a pass ended
            if not self._seen and mine == self._pass_shards:
                self._idle_at, self._idle_shards = self._pass_start, mine
            self._seen = False
            self._pass_start = self._commits
            self._pass_shards = mine

    def _alive(self, node: str) -> bool:
        return node == self.node_id or self.liveness.is_alive(node)

    async def retire(self, namespace: str, mid: str) -> int:
        """Replace the key's newest version, read from a quorum of its owners, by its sweep
        tombstone if it is still expired. 1 if a tombstone was written, else 0."""
        rt = route(self.placement(), namespace, mid, self.node_id, self._alive)
        answers = await self.rep.read(namespace, mid, live(rt.owners, self._alive),
                                      self.read_quorum, timeout=self.read_timeout, repair=False)
        if len(answers) < self.read_quorum:
            self.deferred.inc()
            return 0
        newest = resolve(answers).newest
        if newest is None or not sweep_due(newest, self.hlc.now(), self.margin_ms):
            return 0  # rewritten, deleted or not yet expired at a quorum: nothing to retire
        tomb = sweep_tombstone(newest, self.node_id)
        if tomb is None:
            return 0
        acks = await self.rep.write([tomb], [rt.write_to], 1, hints_count=True,
                                    timeout=self.write_timeout)
        if acks[0] < 1:
            self.deferred.inc()
            return 0
        self.swept.inc()
        log.debug("expiry_swept", namespace=namespace, id=mid, version=tomb.version.encode())
        return 1
