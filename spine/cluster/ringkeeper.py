"""The ring map on one node: kept in LMDB, exchanged with peers, turned into placement.

Every `interval` the keeper sends its map to one random live member (`RING` RPC); the reply is
that member's map after merging ours, which we merge back: one call brings both to the join.
A local change (a join, a decommission, a settle) is pushed to every live member at once. The
map is stored under the `ringmap` meta key before anyone is told of it.

A node starts from, in order: its stored map; with `join`, the map of the first configured peer
that answers, with itself added as `joining`; otherwise the *genesis* map (every configured node
`active` at version 0, which any later change outranks). Listeners (`on_change`) learn each new
placement: the RPC client its addresses, gossip this node's ring state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import structlog

from spine.cluster.liveness import Liveness
from spine.cluster.rpc import Handler
from spine.core.errors import InvalidInput, SpineError
from spine.core.messages import RingSync, Tag
from spine.core.ring import Replicas, Ring, total_replicas
from spine.core.ringmap import JOINING, LEFT, Entry, Placement, RingMap
from spine.ports import RecordStore, Transport

log = structlog.get_logger("spine.ring")

META_KEY = "ringmap"


class RingKeeper:
    """This node's ring map and placement, and the loop that spreads them."""

    def __init__(
        self,
        node_id: str,
        store: RecordStore,
        rpc: Transport,
        liveness: Liveness,
        *,
        genesis: RingMap,
        me: Entry,
        shards: int,
        vnodes: int,
        n: Replicas,
        interval: float,
        rpc_timeout: float,
        now_version: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]],
        monotonic: Callable[[], float],
        rng: random.Random,
        trailing_window: float,
        join: bool = False,
    ) -> None:
        """`trailing_window`: how long after a settle writes still go to the previous owners
        (nodes that have not heard of the settle yet read from them). `sleep`, `monotonic` and
        `rng` (which peer each round syncs with) are the node's Runtime's. `n`:
        `replication.n`, an int or a map region → N; `shape` holds the total N."""
        self.node_id = node_id
        self.store = store
        self.rpc = rpc
        self.liveness = liveness
        self.shape = (shards, vnodes, total_replicas(n))
        self.replicas: Replicas = n
        self.interval = interval
        self.rpc_timeout = rpc_timeout
        self.now_version = now_version
        self.sleep = sleep
        self.monotonic = monotonic
        self.rng = rng
        self.trailing_window = trailing_window
        self._trailing: Ring | None = None
        self._trailing_until = 0.0
        self.join = join
        self._me = me
        self._genesis = genesis
        self.on_change: list[Callable[[Placement], None]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        stored = store.meta_get(META_KEY)
        if stored is not None:
            self.map = RingMap.from_wire(orjson.loads(stored))
            self.origin = "stored"
        elif join:
            self.map = RingMap()  # filled from a peer in `start`
            self.origin = "peer"
        else:
            self.map = genesis
            self.origin = "genesis"
        self.placement = self._place(self.map)

    # ------------------------------------------------------------------ queries

    def _place(self, m: RingMap) -> Placement:
        shards, vnodes, _ = self.shape
        trailing = self._trailing if self.monotonic() < self._trailing_until else None
        return Placement(m, shards=shards, vnodes=vnodes, n=self.replicas, trailing=trailing)

    def state(self, node: str | None = None) -> str | None:
        """A node's ring state (this node's by default); None when not in the map."""
        return self.map.state(node or self.node_id)

    def peers(self) -> list[str]:
        """Every node in the map but this one and those that left."""
        return sorted(n for n, e in self.map.entries.items()
                      if n != self.node_id and e.state != LEFT)

    def live_peers(self) -> list[str]:
        return [p for p in self.peers() if self.liveness.is_alive(p)]

    # ------------------------------------------------------------------ changes

    async def adopt(self, entries: Sequence[Entry]) -> bool:
        """Merge `entries` in; store, place and announce the result if anything changed."""
        async with self._lock:
            merged = self.map.merge(entries)
            if merged is self.map:
                return False
            await self.store.meta_put(META_KEY, orjson.dumps(merged.to_wire()))
            before = self.map
            if before.changing and not merged.changing:  # a settle: the old owners trail
                self._trailing = self.placement.current
                self._trailing_until = self.monotonic() + self.trailing_window
            self.map = merged
            self.placement = self._place(merged)
        for e in entries:
            old = before.get(e.node)
            if old is None or old.state != merged.entries[e.node].state:
                log.info("ring_changed", node=e.node, state=merged.entries[e.node].state,
                         was=None if old is None else old.state, digest=merged.digest())
        for fn in self.on_change:
            fn(self.placement)
        return True

    async def set_state(self, node: str, state: str, removed: bool = False) -> RingMap:
        """Move `node` to `state` (a new version), marked removed or not, then push the map to
        every live peer."""
        e = self.map.entries[node]
        if (e.state, e.removed) != (state, removed):
            changed = self.map.with_state(node, state, self.now_version(), removed)
            await self.adopt(list(changed.entries.values()))
        self.push()
        return self.map

    def push(self) -> None:
        """Send the map to every live peer now (in the background)."""
        for peer in self.live_peers():
            self._spawn(self.sync_with(peer))

    async def sync_with(self, peer: str) -> RingMap | None:
        """One exchange with `peer`; its map after the merge, or None if it did not answer."""
        try:
            reply = await self.rpc.call(peer, RingSync(self.map.to_wire()), self.rpc_timeout)
            theirs = RingMap.from_wire(reply)
        except (SpineError, ValueError, TypeError) as e:
            log.debug("ring_sync_failed", peer=peer, error=repr(e))
            return None
        await self.adopt(list(theirs.entries.values()))
        return theirs

    # ------------------------------------------------------------------ lifecycle

    async def start(self, seeds: Sequence[str], deadline: float = 60.0) -> None:
        """Bootstrap (with `join`: fetch the map from a configured peer and add this node as
        joining, if it is not a member yet), then spread the map every `interval`."""
        if self.origin == "genesis" and self.store.meta_get(META_KEY) is None:
            await self.store.meta_put(META_KEY, orjson.dumps(self.map.to_wire()))
        if self.join and not len(self.map):
            await self._fetch(seeds, deadline)
        if self.join and self.state() in (None, LEFT):
            await self.start_join()
        self._task = asyncio.create_task(self._loop(), name=f"ring-{self.node_id}")
        self.push()

    async def start_join(self) -> None:
        """Add this node to the map as `joining` (a new version) and tell every live peer."""
        me = replace(self._me, state=JOINING, version=self.now_version(), removed=False)
        old = self.map.get(self.node_id)
        if old is not None and not me.newer_than(old):
            me = replace(me, version=old.version + 1)
        await self.adopt([me])
        log.info("ring_joining", digest=self.map.digest())
        self.push()

    async def _fetch(self, seeds: Sequence[str], deadline: float) -> None:
        waited = 0.0
        while True:
            for peer in seeds:
                answered = peer != self.node_id and await self.sync_with(peer) is not None
                if answered and len(self.map):
                    return
            if waited >= deadline:
                raise SpineError(f"no peer of {list(seeds)} answered with a ring map in"
                                 f" {deadline:.0f}s: cannot join")
            await self.sleep(0.2)
            waited += 0.2

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self.sleep(self.interval)
            if self._trailing is not None and self.monotonic() >= self._trailing_until:
                self._trailing = None
                self.placement = self._place(self.map)
                for fn in self.on_change:
                    fn(self.placement)
            live = self.live_peers()
            if live:
                try:
                    await self.sync_with(self.rng.choice(live))
                except Exception:
                    log.exception("ring_gossip_failed")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ serving

    def handlers(self) -> dict[Tag, Handler]:
        return {Tag.RING: self._handle}

    async def _handle(self, _peer: str, msg: RingSync) -> list[Any]:
        try:
            theirs = RingMap.from_wire(msg.entries)
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"bad ring map: {e}", field="entries") from None
        await self.adopt(list(theirs.entries.values()))
        return self.map.to_wire()
