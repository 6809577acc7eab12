"""Anti-entropy (DESIGN §10; Dynamo §4.7, Cassandra repair): replicas of a shard converge by
themselves, without any read touching the keys.

The trees live in :class:`~spine.cluster.hashtrees.HashTrees` (built from a store scan, kept
current by the commit hook). Every ``interval`` a round takes the next ``shards_per_round``
shards this node replicates, round robin, and for each other replica that is alive:

1. one ``SHARD_TREE`` call fetches the peer's roots of all those shards;
2. for the shards whose roots differ, a :class:`~spine.core.merkle.Descent` per shard, all in
   lock step, one ``SHARD_TREE`` call per level (``depth`` round trips at most);
3. for each differing leaf set, ``SHARD_FETCH`` sends our ``(key, version)`` listing of the leaves
   and gets the peer's listing and the records it holds newer; we apply those
   (``Replicator.apply_local``) and send the peer ours that are newer or missing there
   (``Replicator.send``). Records exchanged are paced by a token bucket (``max_keys_per_s``).

Each replica runs its own rounds (as in Dynamo), so a pair of replicas may repair the same key
from both ends; LWW merges make that harmless, and the pacing bounds what it costs.

After a round, a shard's tombstones that are past ``tombstone.grace_s`` and that every other
replica confirmed in that round are purged (DESIGN §3); one replica not reached blocks the purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from spine.cluster.hashtrees import HashTrees
from spine.cluster.liveness import Liveness
from spine.cluster.replication import Replicator
from spine.cluster.rpc import Handler
from spine.core.antientropy import (
    Held,
    PeerView,
    TokenBucket,
    chunk_leaves,
    listing_from_wire,
    listing_to_wire,
    next_shards,
    purgeable,
    reconcile,
)
from spine.core.errors import InvalidInput, Overloaded, SpineError
from spine.core.merkle import Descent
from spine.core.messages import ShardFetch, ShardTreeQuery, Tag
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.ring import Ring
from spine.core.settlement import Settlement
from spine.ports import RecordStore, Transport
from spine.storage.lmdb_store import Applied, split_record_key

log = structlog.get_logger("spine.antientropy")

MAX_LEAVES_PER_FETCH = 64
MAX_KEYS_PER_FETCH = 512
MAX_PURGE_PER_SHARD = 1000


@dataclass
class Tally:
    """Records and bytes a shard transfer pulled."""

    records: int = 0
    bytes: int = 0


class AntiEntropy:
    """Per-shard hash trees kept current, and the periodic repair rounds that compare them."""

    def __init__(
        self,
        node_id: str,
        store: RecordStore,
        replicator: Replicator,
        rpc: Transport,
        liveness: Liveness,
        ring: Callable[[], Ring],
        metrics: SpineMetrics,
        *,
        interval: float,
        shards_per_round: int,
        max_keys_per_s: int,
        grace_ms: int,
        rpc_timeout: float,
        wall_ms: Callable[[], int],
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random | None = None,
        enabled: bool = True,
        fanout: int = 16,
        depth: int = 3,
        settlement: Settlement | None = None,
    ) -> None:
        self.node_id = node_id
        self.settlement = settlement  # told which shards every owner matched (see run_round)
        self.store = store
        self.rep = replicator
        self.rpc = rpc
        self.liveness = liveness
        self.ring = ring
        self.interval = interval
        self.shards_per_round = shards_per_round
        self.grace_ms = grace_ms
        self.rpc_timeout = rpc_timeout
        self.wall_ms = wall_ms
        self.monotonic = monotonic
        self.sleep = sleep
        self.enabled = enabled
        self.shape = (fanout, depth)
        self.fetch_keys = max(1, min(MAX_KEYS_PER_FETCH, max_keys_per_s))
        self._bucket = TokenBucket(max_keys_per_s, max_keys_per_s, monotonic())
        self.trees = HashTrees(store, fanout, depth)
        self._stopping = False
        # Each replica starts its sweep at its own place and jitters its interval, so that the
        # replicas of a shard do not all compare the same shards in the same round (measured:
        # in lock step, two replicas repaired the same keys and the third found nothing left).
        # `rng` is the node's Runtime's; without one (tests), a stream fixed by the node's id.
        self._rng = rng if rng is not None else random.Random(node_id)
        self._cursor = self._rng.randrange(1 << 16)
        self._build: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        r = metrics.registry
        self.rounds = r.counter("spine_antientropy_rounds_total", "anti-entropy rounds run")
        self.repaired = r.counter(
            "spine_antientropy_keys_repaired_total",
            "records anti-entropy copied to or from a peer replica")
        self.purged = r.counter(
            "spine_antientropy_tombstones_purged_total",
            "tombstones purged once every replica held them and their grace had passed")
        self.differing = r.gauge(
            "spine_antientropy_shards_differing",
            "shards of the last round whose root differed on some reachable peer replica")
        self.differing.set(0.0)
        self.rpc_errors = metrics.rpc_errors

    # ------------------------------------------------------------ trees

    @property
    def ready(self) -> bool:
        """True once the trees reflect the whole store."""
        return self.trees.ready

    def root(self, shard: int) -> int | None:
        """This node's root of ``shard`` (0 when it holds nothing), None before the build ends."""
        return self.trees.root(shard)

    def root_hex(self, shard: int) -> str | None:
        """:meth:`root` as 16 hex digits (GET /v1/cluster/shards)."""
        r = self.trees.root(shard)
        return None if r is None else f"{r:016x}"

    def on_commit(self, applied: list[Applied]) -> None:
        """Commit hook (LMDB writer thread). The trees are kept even with rounds off: shard
        transfers (ring changes) compare them too."""
        self.trees.on_commit(applied)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run :meth:`build`, then (when enabled) a round every ``interval``, in one task."""
        self._task = asyncio.create_task(self._loop())

    async def build(self) -> None:
        """Build the trees from a store scan on an executor thread (once; the loop calls it)."""
        if self._build is None:
            loop = asyncio.get_running_loop()
            self._build = loop.run_in_executor(
                None, self.trees.build, self.ring().shards, lambda: self._stopping
            )
        # Shielded: cancelling the caller must not orphan the scan, which `stop` waits for.
        await asyncio.shield(self._build)
        log.info("antientropy_trees_built", shards=len(self.trees))

    async def stop(self) -> None:
        """Cancel the round loop and wait for the build thread to leave the store."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._build is not None:
            with contextlib.suppress(Exception):
                await self._build

    async def _loop(self) -> None:
        try:
            await self.build()
        except Exception:
            log.exception("antientropy_build_failed")
            return
        while self.enabled:
            await self.sleep(self.interval * self._rng.uniform(0.75, 1.25))
            try:
                await self.run_round()
            except Exception:
                log.exception("antientropy_round_failed")

    # ------------------------------------------------------------ a round

    async def run_round(self) -> int:
        """Compare the next shards with their peer replicas; the number of records exchanged."""
        if not self.trees.ready:
            return 0
        ring = self.ring()
        held = ring.shards_of(self.node_id)
        picked, self._cursor = next_shards(held, self._cursor, self.shards_per_round)
        now = self.wall_ms()
        # Purge candidates are taken before any peer is asked: a tombstone that arrives later in
        # the round was not covered by the comparisons below.
        candidates = {s: self.trees.expired_tombstones(s, now, self.grace_ms) for s in picked}
        by_peer: dict[str, list[int]] = {}
        for s in picked:
            for peer in ring.preference_list(s):
                if peer != self.node_id:
                    by_peer.setdefault(peer, []).append(s)
        # One peer after the other: what the first one gave us is not fetched again from the
        # next (side by side, a replica that missed writes would pull each key from every peer).
        views: dict[str, dict[int, PeerView]] = {}
        exchanged = 0
        for peer, shards in by_peer.items():
            try:
                views[peer], moved = await self._sync_peer(peer, shards)
            except Exception:  # a bug, not a peer failure (those give no views): say so
                log.exception("antientropy_sync_failed", peer=peer)
                views[peer], moved = {}, 0
            exchanged += moved
        differing = 0
        for s in picked:
            owners = ring.preference_list(s)
            shard_views = [views[p].get(s) for p in owners if p != self.node_id]
            if any(v is not None and not v.equal for v in shard_views):
                differing += 1
            agreed = [v.seq for v in shard_views if v is not None and v.equal]
            if (self.settlement is not None and len(agreed) == len(shard_views)
                    and self.node_id in owners):
                # Every other owner held what this node held up to the smallest of those seqs.
                self.settlement.note_shard(s, owners, min(agreed, default=self.trees.seq))
            if candidates[s]:
                await self._purge(s, candidates[s], shard_views, now)
        self.differing.set(float(differing))
        self.rounds.inc()
        return exchanged

    async def _purge(
        self, shard: int, candidates: dict[bytes, bytes], views: Sequence[PeerView | None],
        now: int,
    ) -> None:
        keys = purgeable(candidates, self.trees.tree(shard).leaf_of, views, now, self.grace_ms)
        keys = keys[:MAX_PURGE_PER_SHARD]  # one short write transaction; the rest next time
        keys = self.trees.still_held(shard, {k: candidates[k] for k in keys})
        if keys:
            await self.store.purge(keys)
            self.purged.inc(by=len(keys))
            log.info("tombstones_purged", shard=shard, count=len(keys))

    async def sync_shards(
        self, peer: str, shards: list[int], bucket: TokenBucket, tally: Tally
    ) -> dict[int, bool]:
        """Reconcile ``shards`` with ``peer`` once (a shard transfer's step), paced by
        ``bucket``; per shard the peer answered for, whether the roots were equal already.
        Records and bytes pulled are added to ``tally``."""
        views, _ = await self._sync_peer(peer, shards, bucket, tally)
        return {s: v.equal for s, v in views.items()}

    async def _sync_peer(
        self, peer: str, shards: list[int], bucket: TokenBucket | None = None,
        tally: Tally | None = None,
    ) -> tuple[dict[int, PeerView], int]:
        """Compare ``shards`` with ``peer``: a view per shard it answered for, records moved."""
        views: dict[int, PeerView] = {}
        moved = 0
        if not self.liveness.is_alive(peer):
            return views, moved
        fanout, depth = self.shape
        try:
            roots = await self._call(peer, ShardTreeQuery(fanout, depth,
                                                          [(s, 0, []) for s in shards]))
            descents: dict[int, Descent] = {}
            with self.trees.lock:
                for s, r in zip(shards, roots, strict=True):
                    if r is None:
                        continue  # the peer is still building its trees: no view
                    if self.trees.tree(s).root() == r[0]:
                        views[s] = PeerView(True, seq=self.trees.seq)
                    else:
                        descents[s] = Descent(self.trees.tree(s), r[0])
            while pending := [s for s, d in descents.items() if not d.done]:
                queries = [(s, *descents[s].request()) for s in pending]
                reply = await self._call(peer, ShardTreeQuery(fanout, depth, queries))
                with self.trees.lock:
                    for s, values in zip(pending, reply, strict=True):
                        if values is None:
                            del descents[s]
                        else:
                            descents[s].step(values)
            for s, d in descents.items():
                leaves = d.differing_leaves
                if not leaves:  # roots differ but no leaf does: a collision or a racing write
                    views[s] = PeerView(False, None)
                    continue
                listed, n = await self._exchange(peer, s, leaves, bucket, tally)
                moved += n
                views[s] = PeerView(False, frozenset(leaves), frozenset(leaves), listed)
        except (SpineError, ValueError) as e:
            # Whatever was not settled with this peer stays without a view: no purge there.
            log.info("antientropy_peer_failed", peer=peer, error=repr(e))
        return views, moved

    async def _exchange(
        self, peer: str, shard: int, leaves: list[int], bucket: TokenBucket | None = None,
        tally: Tally | None = None,
    ) -> tuple[dict[bytes, Held], int]:
        """Reconcile ``leaves`` of ``shard`` with ``peer``; its listing and records moved."""
        counts = self.trees.leaf_counts(shard, leaves)
        listed: dict[bytes, Held] = {}
        moved = 0
        for chunk in chunk_leaves(leaves, counts, self.fetch_keys, MAX_LEAVES_PER_FETCH):
            mine = self.trees.listing(shard, chunk)
            msg = ShardFetch(shard, chunk, listing_to_wire(mine), self.fetch_keys)
            their_pairs, their_records = await self._call(peer, msg)
            theirs = listing_from_wire(their_pairs)
            plan = reconcile(mine, theirs, self.wall_ms(), self.grace_ms)
            want = set(plan.pull)
            pulled = [r for r in map(Record.from_wire, their_records)
                      if self.store.key_of(r.namespace, r.id) in want]
            if pulled:
                await self.rep.apply_local(pulled)
            pushed = self._read(plan.push)
            if pushed:
                await self.rep.send(peer, pushed)
            n = len(pulled) + len(pushed)
            if tally is not None:
                tally.records += len(pulled)
                tally.bytes += sum(r.size() for r in pulled)
            if n:
                moved += n
                if tally is None:
                    self.repaired.inc(by=n)
                delay = (bucket or self._bucket).take(n, self.monotonic())
                if delay > 0:
                    await self.sleep(delay)
            listed.update(theirs)
        return listed, moved

    def _read(self, keys: Sequence[bytes]) -> list[Record]:
        """The stored records of some records keys (a key purged meanwhile is skipped)."""
        got = self.store.get_many([split_record_key(k)[1:] for k in keys])
        return [r for r in got if r is not None]

    async def _call(self, peer: str, msg: ShardTreeQuery | ShardFetch) -> Any:
        try:
            return await self.rpc.call(peer, msg, self.rpc_timeout)
        except SpineError:
            self.rpc_errors.inc(peer)
            raise

    # ------------------------------------------------------------ serving peers

    def handlers(self) -> dict[Tag, Handler]:
        """The RPC handlers a peer's rounds call."""
        return {Tag.SHARD_TREE: self._handle_tree, Tag.SHARD_FETCH: self._handle_fetch}

    async def _handle_tree(self, _peer: str, msg: ShardTreeQuery) -> list[list[int] | None]:
        if (msg.fanout, msg.depth) != self.shape:
            raise InvalidInput(f"tree shape {(msg.fanout, msg.depth)} is not {self.shape}",
                               field="shape")
        try:
            return self.trees.answer(msg.queries)
        except ValueError as e:
            raise InvalidInput(str(e), field="queries") from None

    async def _handle_fetch(self, _peer: str, msg: ShardFetch) -> list[Any]:
        if not self.trees.ready:
            raise Overloaded("anti-entropy trees are still being built")
        try:
            theirs = listing_from_wire(msg.pairs)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"bad listing: {e}", field="pairs") from None
        mine = self.trees.listing(msg.shard, msg.leaves)
        plan = reconcile(mine, theirs, self.wall_ms(), self.grace_ms)
        records = self._read(plan.push[: max(0, msg.limit)])
        return [listing_to_wire(mine), [r.to_wire() for r in records]]
