"""The change feed, served by any node (DESIGN §15): a thin shell over `spine.core.feed`.

`poll` reads a page of every live member's feed log after the cursor's position (one FeedRead
each, in parallel; a call to this node is answered by its own handler), makes every version it
is about to deliver safe to deliver (`Coordinator.settle` for a key the pages did not show on a
quorum), and returns the changes with the next cursor. With `wait_s`, when no member has anything
after the cursor, each member is asked again to wait for a change in the namespace (its commit
wakes it), and the poll returns once one answers with something (the others get a moment to
answer too, then are left: their positions stay).

`serve` is the FeedRead handler: a page of this node's log (`Store.feed_since`), waiting for a
commit in the namespace when asked to and when fewer than `max_waiters` requests wait already.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from spine.core import feed as rules
from spine.core.clock import Version
from spine.core.errors import CursorExpired, NotServing, SpineError
from spine.core.expiry import masked
from spine.core.messages import (
    MAX_PROBE_IDS,
    FeedProbe,
    FeedRead,
    Tag,
    feed_page_from_wire,
    feed_probe_from_wire,
)
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.routing import Route
from spine.ports import RecordStore, Transport
from spine.storage.layout import Applied

log = structlog.get_logger("spine.feed")

EPOCH_META = "feed_epoch"
SETTLE_CONCURRENCY = 32
STRAGGLER_S = 0.05  # after one member answered a long poll, how long the others may still answer


class FeedService:
    """The change feed of one node: its handler, and polls coordinated from here."""

    def __init__(
        self,
        node_id: str,
        store: RecordStore,
        rpc: Transport,
        *,
        members: Callable[[], Sequence[str]],
        is_alive: Callable[[str], bool],
        route: Callable[[str, str], Route],
        settle: Callable[[Record], Awaitable[Record]],
        quorum_w: int,
        metrics: SpineMetrics,
        now_hlc: Callable[[], int],
        grace_hlc: int,
        rpc_timeout: float,
        page_bytes: int,
        max_waiters: int,
        rng: Callable[[], int],
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.rpc = rpc
        self.members = members
        self.is_alive = is_alive
        self.route = route
        self.settle = settle
        self.quorum_w = quorum_w
        self.metrics = metrics
        self.now_hlc = now_hlc
        self.grace_hlc = grace_hlc
        self.rpc_timeout = rpc_timeout
        self.page_bytes = page_bytes
        self.max_waiters = max_waiters
        self._rng = rng
        self.epoch = 0  # this node's log epoch, set by `start`
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._waiting = 0

    async def start(self) -> None:
        """Read this store's log epoch, or draw one for a new store."""
        self._loop = asyncio.get_running_loop()
        raw = self.store.meta_get(EPOCH_META)
        if raw is None:
            epoch = 1 + self._rng() % (2**62)
            await self.store.meta_put(EPOCH_META, str(epoch).encode())
        else:
            epoch = int(raw)
        self.epoch = epoch

    def handlers(self) -> dict[Tag, Any]:
        """The FeedRead and FeedProbe handlers."""
        return {Tag.FEED: self.serve, Tag.FEED_PROBE: self.probe}

    async def probe(self, _peer: str, msg: FeedProbe) -> dict[str, Any]:
        """Per id: the version this node stores and its feed-log entry's seq (see FeedProbe)."""
        if self.epoch == 0:
            raise NotServing("the change feed is not started on this node")
        entries = self.store.feed_entries(msg.namespace, msg.ids)
        return {"epoch": self.epoch, "entries": [
            [None if r is None else [r.version.hlc, r.version.node], seq] for r, seq in entries]}

    # ------------------------------------------------------------ serving a page of this log

    def on_commit(self, applied: list[Applied]) -> None:
        """Store subscriber (the committer's thread): wake the requests waiting on a namespace
        a commit changed."""
        loop = self._loop
        if loop is None or not self._waiters:
            return
        namespaces = {a.new.namespace for a in applied}
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(self._wake, namespaces)

    def _wake(self, namespaces: set[str]) -> None:
        for ns in namespaces:
            for fut in self._waiters.pop(ns, ()):
                if not fut.done():
                    fut.set_result(None)

    async def serve(self, _peer: str, msg: FeedRead) -> dict[str, Any]:
        """A page of this node's log of `msg.namespace` (see FeedRead)."""
        if self.epoch == 0:
            raise NotServing("the change feed is not started on this node")
        start = rules.after((msg.epoch, msg.after), self.epoch)
        entries, head = self.store.feed_since(msg.namespace, start, msg.limit, msg.max_bytes)
        if not entries and msg.wait_ms > 0 and msg.limit > 0 and self._waiting < self.max_waiters:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(msg.namespace, set()).add(fut)
            self._waiting += 1
            try:
                # A commit between the read above and here is seen by the second read below.
                entries, head = self.store.feed_since(msg.namespace, start, msg.limit,
                                                      msg.max_bytes)
                if not entries:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fut, msg.wait_ms / 1000)
                    entries, head = self.store.feed_since(msg.namespace, start, msg.limit,
                                                          msg.max_bytes)
            finally:
                self._waiting -= 1
                waiting = self._waiters.get(msg.namespace)
                if waiting is not None:
                    waiting.discard(fut)
                    if not waiting:
                        del self._waiters[msg.namespace]
        nxt = entries[-1][0] if entries else max(start, head)
        return {"epoch": self.epoch, "entries": [[s, r.to_wire()] for s, r in entries],
                "next": nxt}

    # ------------------------------------------------------------ a poll, coordinated here

    async def poll(
        self,
        namespace: str,
        cursor: rules.Cursor | None,
        *,
        from_now: bool = False,
        limit: int = 100,
        wait_s: float = 0.0,
    ) -> tuple[list[Record], rules.Cursor]:
        """The changes after `cursor` (None: from the beginning, or from now with `from_now`)
        and the cursor after them. CursorExpired for a cursor older than the tombstone grace."""
        now = self.now_hlc()
        if cursor is not None and rules.expired(cursor, now, self.grace_hlc):
            raise CursorExpired("the cursor is older than the tombstone grace: deletes after it"
                                " may be gone; start again (list the namespace, then follow"
                                " from=now)", field="cursor")
        start = rules.start_positions(cursor, self.members())
        nodes = [m for m in start if self.is_alive(m)]
        if from_now:
            pages = await self._pages(namespace, start, nodes, 0, 0)
            return [], rules.Cursor(rules.advance(start, pages, set()), now)
        pages = await self._pages(namespace, start, nodes, limit, 0)
        if wait_s > 0 and not any(p.entries for p in pages.values()):
            start = rules.advance(start, pages, set())
            pages = await self._pages(namespace, start, nodes, limit, int(wait_s * 1000))
        states = rules.newest_per_key(pages)
        deliver: list[Record] = []
        partial: list[Record] = []  # on a quorum, but some live replica's page did not show it
        unsettled: list[Record] = []
        for mid, state in states.items():
            rt = self.route(namespace, mid)
            if not rules.on_quorum(state, rt.write_to, self.quorum_w + rt.extra):
                unsettled.append(state.newest)
            elif any(n in start and n not in state.holders and self.is_alive(n)
                     for n in rt.write_to):
                partial.append(state.newest)  # that replica may have shown it before
            else:
                deliver.append(state.newest)
        repeats = await self._repeats(namespace, unsettled + partial, start)
        deliver += [r for r in partial if r.id not in repeats]
        logged = len(deliver)
        unsettled = [r for r in unsettled if r.id not in repeats]
        held = await self._settle_all(unsettled, deliver)
        self.metrics.feed_items.inc("logged", by=logged)
        self.metrics.feed_items.inc("settled", by=len(deliver) - logged)
        if held:
            self.metrics.feed_held.inc(by=len(held))
        if repeats:
            self.metrics.feed_repeats.inc(by=len(repeats))
        records = [masked(r, now) for r in rules.order_items(deliver)]
        return [r for r in records if r is not None], rules.Cursor(
            rules.advance(start, pages, held), now)

    async def _repeats(
        self, namespace: str, records: list[Record], start: dict[str, rules.Position]
    ) -> set[str]:
        """The ids of `records` the consumer already has (or something newer of): asked of the
        keys' live replicas, one FeedProbe per replica (`rules.delivered_before`)."""
        asks: dict[str, list[str]] = {}
        for rec in records:
            for node in self.route(namespace, rec.id).write_to:
                if node in start and self.is_alive(node):
                    asks.setdefault(node, []).append(rec.id)
        answers = await asyncio.gather(*(self._probe(n, namespace, ids)
                                         for n, ids in asks.items()))
        probes: dict[str, dict[str, rules.Probe]] = {}
        for node, got in zip(asks, answers, strict=True):
            if got is None:
                continue
            epoch, entries = got
            for mid, (version, seq) in zip(asks[node], entries, strict=True):
                probes.setdefault(mid, {})[node] = (epoch, version, seq)
        return {r.id for r in records
                if rules.delivered_before(r.version, probes.get(r.id, {}), start)}

    async def _probe(
        self, node: str, namespace: str, ids: list[str]
    ) -> tuple[int, list[tuple[Version | None, int]]] | None:
        out: list[tuple[Version | None, int]] = []
        epoch = 0
        for i in range(0, len(ids), MAX_PROBE_IDS):
            chunk = ids[i:i + MAX_PROBE_IDS]
            try:
                reply = await self.rpc.call(node, FeedProbe(namespace, chunk), self.rpc_timeout)
                epoch, entries = feed_probe_from_wire(reply, len(chunk))
            except SpineError as e:
                log.debug("feed_probe_failed", peer=node, error=e.code)
                return None
            out += entries
        return epoch, out

    async def _settle_all(self, unsettled: list[Record], deliver: list[Record]) -> set[str]:
        """Settle each record (appending what to deliver); the ids that could not be."""
        held: set[str] = set()
        gate = asyncio.Semaphore(SETTLE_CONCURRENCY)

        async def one(rec: Record) -> None:
            async with gate:
                try:
                    deliver.append(await self.settle(rec))
                except SpineError as e:
                    log.debug("feed_change_held", id=rec.id, error=e.code)
                    held.add(rec.id)

        await asyncio.gather(*(one(r) for r in unsettled))
        return held

    async def _pages(
        self,
        namespace: str,
        start: dict[str, rules.Position],
        nodes: list[str],
        limit: int,
        wait_ms: int,
    ) -> dict[str, rules.Page]:
        """One page from each of `nodes` that answers. With `wait_ms`, return soon after the
        first page with entries (or when all answered, or the wait ended)."""
        tasks = {n: asyncio.ensure_future(self._page(n, namespace, start[n], limit, wait_ms))
                 for n in nodes}
        pages: dict[str, rules.Page] = {}
        pending = set(tasks.values())
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending, timeout=timeout,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for task in done:
                    page = task.result()
                    if page is not None:
                        node, got = page
                        pages[node] = got
                        if wait_ms and got.entries and deadline is None:
                            deadline = loop.time() + STRAGGLER_S
        finally:
            for task in pending:
                task.cancel()
        return pages

    async def _page(
        self, node: str, namespace: str, position: rules.Position, limit: int, wait_ms: int
    ) -> tuple[str, rules.Page] | None:
        msg = FeedRead(namespace, position[1], limit, self.page_bytes, wait_ms, position[0])
        try:
            reply = await self.rpc.call(node, msg, self.rpc_timeout + wait_ms / 1000)
            epoch, entries, nxt = feed_page_from_wire(reply, limit)
        except SpineError as e:
            log.debug("feed_page_failed", peer=node, error=e.code)
            return None
        return node, rules.Page(epoch, entries, nxt)
