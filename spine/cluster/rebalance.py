"""Ring changes in motion (DESIGN §9): shard copies, settling, and dropping what moved away.

Three loops, on every node:

- **Copies (pending owner).** For every shard this node is a pending owner of, it pulls the
  shard from a current owner (the leaving one first) with anti-entropy's tree comparison, paced by
  its own token bucket, until the roots are equal. When the claimant asks it to *finish* (a
  barrier), it syncs each pending shard once more with every live owner — at least a quorum of
  them — starting after the request: every write acknowledged before the whole cluster knew of
  the change is then held here, and every later write was sent here as a pending owner.
- **Settling (claimant).** The claimant (the live active node with the smallest id) waits until
  every member holds the same ring map, then for the write timeout (so that no write begun
  under the old map is still in flight), sends the barrier to every pending owner, and when all
  report it done moves joining nodes to active and leaving nodes to left in one new map. The
  decisions are `spine.core.ring_change.Claimant`'s; this loop carries them out.
- **Drops (old owner).** A shard this node holds data of but neither owns nor is about to own is
  purged once it has been so for `drop_grace` seconds — after the settle, so after the new owners
  were caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from spine.cluster.antientropy import AntiEntropy, Tally
from spine.cluster.liveness import Liveness
from spine.cluster.ringkeeper import RingKeeper
from spine.cluster.rpc import Handler
from spine.core.antientropy import TokenBucket
from spine.core.errors import Conflict, InvalidInput, NotFound, SpineError
from spine.core.messages import Tag, Transfer
from spine.core.metrics import SpineMetrics
from spine.core.ring import shortfall
from spine.core.ring_change import CheckAgreement, Claimant, Settle, Status, Wait, agrees
from spine.core.ringmap import ACTIVE, JOINING, LEAVING, LEFT
from spine.ports import RecordStore, Transport

log = structlog.get_logger("spine.rebalance")

MAX_PASSES = 8  # comparisons with one peer per shard before giving the shard up for this turn


@dataclass
class Copy:
    """One shard this node is a pending owner of."""

    shard: int
    sources: tuple[str, ...]
    state: str = "waiting"  # waiting | copying | copied
    source: str | None = None
    records: int = 0
    bytes: int = 0

    def view(self) -> dict[str, Any]:
        return {"state": self.state, "source": self.source, "records": self.records,
                "bytes": self.bytes}


class Rebalancer:
    """Copies, settling and drops for one node."""

    def __init__(
        self,
        node_id: str,
        keeper: RingKeeper,
        antientropy: AntiEntropy,
        store: RecordStore,
        rpc: Transport,
        liveness: Liveness,
        metrics: SpineMetrics,
        *,
        max_keys_per_s: int,
        drop_grace: float,
        settle_delay: float,
        min_synced: int,
        rpc_timeout: float,
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        interval: float = 0.5,
        indexed_seq: Callable[[], int] | None = None,
    ) -> None:
        """`indexed_seq()`: the last commit the vector index has applied; a pending owner reports
        its copies done only once the index holds them, so search finds them when it owns them."""
        self.node_id = node_id
        self.keeper = keeper
        self.ae = antientropy
        self.store = store
        self.rpc = rpc
        self.liveness = liveness
        self.max_keys_per_s = max_keys_per_s
        self.drop_grace = drop_grace
        self.settle_delay = settle_delay
        self.min_synced = min_synced
        self.rpc_timeout = rpc_timeout
        self.monotonic = monotonic
        self.sleep = sleep
        self.interval = interval
        self.indexed_seq = indexed_seq
        self._bucket = TokenBucket(max_keys_per_s, max_keys_per_s, monotonic())
        # Pending-owner side.
        self._transition = ""
        self._copies: dict[int, Copy] = {}
        self._started_at = 0.0
        self._requested = 0  # the latest finish barrier asked for this transition
        self._done = 0  # the latest one completed
        # Claimant side.
        self._claimant = Claimant(node_id, settle_delay)
        # Old-owner side.
        self._unowned: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        r = metrics.registry
        self.moved_records = r.counter(
            "spine_transfer_records_total", "records pulled into this node by shard transfers")
        self.moved_bytes = r.counter(
            "spine_transfer_bytes_total", "payload bytes pulled into this node by shard transfers")
        self.dropped = r.counter(
            "spine_transfer_dropped_records_total",
            "records purged from shards this node no longer owns (after the grace)")
        self.settles = r.counter("spine_ring_settles_total",
                                 "ring changes this node settled as claimant")
        self.last_duration = r.gauge(
            "spine_transfer_last_seconds",
            "how long this node's last completed set of shard copies took")
        r.gauge("spine_transfers_pending", "shard copies this node has not finished", (),
                lambda: {(): float(sum(c.state != "copied" for c in self._copies.values()))})
        keeper.on_change.append(lambda _p: self._wake.set())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for fn in (self._copy_loop, self._claim_loop, self._drop_loop):
            self._tasks.append(asyncio.create_task(self._guard(fn), name=fn.__name__))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rebalance_step_failed", step=fn.__name__)
            await self.sleep(self.interval)

    async def _nap(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.interval)
        self._wake.clear()

    # ------------------------------------------------------------------ pending owner

    async def _copy_loop(self) -> None:
        while True:
            await self._nap()
            self._plan()
            for c in self._copies.values():
                if c.state != "copied":
                    await self._copy(c)
            copied = all(c.state == "copied" for c in self._copies.values())
            if self._copies and copied and self._requested > self._done:
                await self._finish(self._requested)

    def _plan(self) -> None:
        """(Re)plan the copies when the ring map changed."""
        m = self.keeper.map
        digest = m.digest()
        if digest == self._transition:
            return
        moves = [mv for mv in self.keeper.placement.moves() if mv.target == self.node_id]
        old = self._copies
        self._copies = {}
        for mv in moves:
            c = Copy(mv.shard, mv.sources)
            prev = old.get(mv.shard)
            if prev is not None:  # the same shard under a newer map: its data is here already
                c.records, c.bytes = prev.records, prev.bytes
            self._copies[mv.shard] = c
        self._transition = digest
        self._requested = self._done = 0
        self._started_at = self.monotonic()
        if moves:
            log.info("transfers_planned", shards=len(moves), digest=digest)

    async def _copy(self, c: Copy) -> None:
        for src in c.sources:
            if src == self.node_id or not self.liveness.is_alive(src):
                continue
            c.state, c.source = "copying", src
            if await self._sync_until_equal(c, src):
                c.state = "copied"
                if all(x.state == "copied" for x in self._copies.values()):
                    took = self.monotonic() - self._started_at
                    self.last_duration.set(took)
                    log.info("transfers_copied", shards=len(self._copies),
                             records=sum(x.records for x in self._copies.values()),
                             seconds=round(took, 2))
                return
        c.state = "waiting"

    async def _sync_until_equal(self, c: Copy, peer: str) -> bool:
        for _ in range(MAX_PASSES):
            tally = Tally()
            equal = await self.ae.sync_shards(peer, [c.shard], self._bucket, tally)
            c.records += tally.records
            c.bytes += tally.bytes
            self.moved_records.inc(by=tally.records)
            self.moved_bytes.inc(by=tally.bytes)
            if c.shard not in equal:
                return False  # the peer did not answer for it
            if equal[c.shard]:
                return True
        return False

    async def _finish(self, barrier: int) -> None:
        """Sync every pending shard with every live owner (a quorum at least), after `barrier`
        was asked for; then report it done."""
        placement = self.keeper.placement
        for c in self._copies.values():
            synced = 0
            for owner in placement.owners(c.shard):
                if owner == self.node_id or not self.liveness.is_alive(owner):
                    continue
                if not await self._sync_until_equal(c, owner):
                    return  # tried again on the next turn
                synced += 1
            if synced < min(self.min_synced, len(placement.owners(c.shard))):
                log.info("transfer_finish_waiting", shard=c.shard, synced=synced,
                         needed=self.min_synced)
                return
        synced_seq = self.store.seq
        while self.indexed_seq is not None and self.indexed_seq() < synced_seq:
            await self.sleep(0.1)
        self._done = barrier
        log.info("transfers_finished", barrier=barrier, shards=len(self._copies))

    def status(self) -> dict[str, Any]:
        """This node's copies for the current transition."""
        return {"node": self.node_id, "transition": self._transition,
                "shards": len(self._copies),
                "copied": sum(c.state == "copied" for c in self._copies.values()),
                "records": sum(c.records for c in self._copies.values()),
                "bytes": sum(c.bytes for c in self._copies.values()),
                "requested": self._requested, "done": self._done}

    def copy_view(self, shard: int) -> dict[str, Any] | None:
        c = self._copies.get(shard)
        return None if c is None else c.view()

    async def _handle(self, _peer: str, msg: Transfer) -> dict[str, Any]:
        self._plan()
        if msg.op == "finish":
            if msg.transition != self._transition:
                raise Conflict(f"this node's ring map is {self._transition}, not"
                               f" {msg.transition}", field="transition")
            self._requested = max(self._requested, msg.barrier)
            self._wake.set()
        elif msg.op != "status":
            raise InvalidInput(f"unknown transfer op {msg.op!r}", field="op")
        return self.status()

    def handlers(self) -> dict[Tag, Handler]:
        return {Tag.TRANSFER: self._handle}

    # ------------------------------------------------------------------ claimant

    async def _claim_loop(self) -> None:
        """One claimant turn: carry out the step `spine.core.ring_change.Claimant` decides."""
        c, m = self._claimant, self.keeper.map
        step = c.begin(m, (mv.target for mv in self.keeper.placement.moves()),
                       self.keeper.peers(), self.liveness.is_alive, self.monotonic())
        if isinstance(step, Wait):
            return
        if isinstance(step, CheckAgreement):
            ready = c.on_agreement(await self._all_agree(step), self.liveness.is_alive)
            if isinstance(ready, Wait):
                return
            barrier = self.keeper.now_version()
            targets = list(ready.targets)
            accepted = await self._ask_all(targets, Transfer("finish", ready.digest, barrier))
            c.on_finish(barrier if accepted is not None else None)
            if accepted is not None:
                log.info("ring_change_finishing", barrier=barrier, targets=targets)
            return
        replies = await self._ask_all(list(step.targets), Transfer("status", step.digest, 0))
        statuses = None if replies is None else [
            Status(r["transition"], r["done"], r.get("requested")) for r in replies]
        if isinstance(c.on_status(statuses), Settle):
            settled = m.settled(self.keeper.now_version())
            await self.keeper.adopt(list(settled.entries.values()))
            self.keeper.push()
            self.settles.inc()
            log.info("ring_settled", digest=self.keeper.map.digest(),
                     members=self.keeper.placement.members())

    async def _all_agree(self, step: CheckAgreement) -> bool:
        """Every member that must (see `ring_change.must_agree`) holds the map `step.digest`,
        and so does this node after the exchanges."""
        for peer in step.peers:
            theirs = await self.keeper.sync_with(peer)
            if not agrees(step.digest, theirs, self.keeper.map):
                return False
        return True

    async def _ask_all(self, targets: list[str], msg: Transfer) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = []
        for t in targets:
            try:  # this node, when it is a pending owner, answers from its own handler
                out.append(await self.rpc.call(t, msg, self.rpc_timeout))
            except SpineError as e:
                log.info("transfer_call_failed", target=t, error=repr(e))
                return None
        return out

    # ------------------------------------------------------------------ old owner

    async def _drop_loop(self) -> None:
        await self.sleep(max(self.interval, min(2.0, self.drop_grace / 4)))
        placement = self.keeper.placement
        if not len(self.keeper.map):
            return
        now = self.monotonic()
        for s in range(placement.shards):
            if placement.holds(self.node_id, s) or not self.store.scan_shard(s, limit=1):
                self._unowned.pop(s, None)
                continue
            since = self._unowned.setdefault(s, now)
            if now - since >= self.drop_grace:
                await self._drop(s)
                self._unowned.pop(s, None)

    async def _drop(self, shard: int) -> None:
        total = 0
        while True:
            if self.keeper.placement.holds(self.node_id, shard):
                return  # it came back to us meanwhile
            page = self.store.scan_shard(shard, limit=1000)
            if not page:
                break
            await self.store.purge([k for k, _ in page])
            total += len(page)
        self.dropped.inc(by=total)
        log.info("shard_dropped", shard=shard, records=total)

    # ------------------------------------------------------------------ admin

    async def admin(self, action: str, node: str) -> dict[str, Any]:
        """POST /v1/cluster/nodes/{node}/{join|decommission|remove}."""
        m = self.keeper.map
        entry = m.get(node)
        if action == "join":
            if node != self.node_id:
                raise InvalidInput(f"ask {node} itself to join: this is {self.node_id}",
                                   field="node")
            if entry is None or entry.state == LEFT:
                await self.keeper.start_join()
        elif entry is None:
            raise NotFound(f"no node {node!r} in the ring", field="node")
        elif action == "decommission":
            if entry.state not in (ACTIVE, LEAVING):
                raise Conflict(f"{node} is {entry.state}, not active", field="node")
            if node != self.node_id and not self.liveness.is_alive(node):
                raise Conflict(f"{node} is down: remove it instead", field="node")
            self._check_room(node)
            await self.keeper.set_state(node, LEAVING)
        elif action == "remove":
            if node == self.node_id or self.liveness.is_alive(node):
                raise Conflict(f"{node} is alive: decommission it instead", field="node")
            if entry.state == JOINING:
                await self.keeper.set_state(node, LEFT, removed=True)  # it held nothing yet
            elif entry.state in (ACTIVE, LEAVING):
                self._check_room(node)
                await self.keeper.set_state(node, LEAVING, removed=True)
        else:
            raise InvalidInput(f"unknown cluster action {action!r}", field="action")
        return {"node": node, "action": action, "state": self.keeper.state(node),
                "ring": self.keeper.map.digest()}

    def _check_room(self, node: str) -> None:
        stay = [e.region for n, e in self.keeper.map.entries.items()
                if e.state in (ACTIVE, JOINING) and n != node]
        short = shortfall(stay, self.keeper.replicas)
        if short is not None:
            raise Conflict(f"without {node} the ring would have {short}", field="node")
