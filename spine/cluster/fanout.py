"""Requests answered by every live node together: paged listing, and search over a covering set.

Each node answers from what it stores; the coordinator merges by id keeping the newest version,
drops tombstones, and reports the shards for which no replica answered (`partial`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from spine.cluster.liveness import Liveness
from spine.cluster.rpc import Handler
from spine.core.errors import PeerUnavailable
from spine.core.expiry import is_expired
from spine.core.messages import ListPage, Message
from spine.core.metrics import SpineMetrics
from spine.core.model import Record, merge
from spine.core.peer_stats import HedgeBudget, PeerStats
from spine.core.ring import Ring, covering_set
from spine.ports import RecordStore, Transport


def missing_shards(ring: Ring, answered: Iterable[str]) -> list[int]:
    """Shards none of whose replicas is among `answered`."""
    got = set(answered)
    return [s for s in range(ring.shards) if not got.intersection(ring.preference_list(s))]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    items: list[Record]
    next_cursor: str | None
    missing_shards: list[int]


class FanOut:
    """Asks every live node and merges what they hold."""

    def __init__(
        self,
        node_id: str,
        ring: Callable[[], Ring],
        rpc: Transport,
        liveness: Liveness,
        members: Callable[[], list[str]],
        timeout: float,
        now_hlc: Callable[[], int] | None = None,
        stats: PeerStats | None = None,
        metrics: SpineMetrics | None = None,
    ) -> None:
        """`now_hlc`: this node's HLC, on which listings judge expiry (DESIGN §13); without it
        nothing is hidden as expired. `stats`: how fast each peer answers lately; the covering
        set then prefers fast nodes and hedges slow ones (`ask_cover`)."""
        self.node_id = node_id
        self.ring = ring
        self.rpc = rpc
        self.liveness = liveness
        self.members = members
        self.timeout = timeout
        self.now_hlc = now_hlc
        self.stats = stats
        self.metrics = metrics
        # The fan-out's own calls, timed apart: a search takes longer than a read, and costs
        # the asked node more, so it is hedged only past its p99.
        self.call_stats = PeerStats(
            hedge_max=timeout / 2 if stats is None else stats.hedge_max, quantile=0.99)
        self.budget = HedgeBudget()  # hedged searches: at most ~5% more

    async def _ask(self, nodes: list[str], msg: Message) -> tuple[dict[str, Any], set[str]]:
        """Ask `nodes` in parallel (this node answers from its own handler): answers, and who
        failed."""
        replies = await asyncio.gather(*(self.rpc.call(n, msg, self.timeout) for n in nodes),
                                       return_exceptions=True)
        out: dict[str, Any] = {}
        failed: set[str] = set()
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, PeerUnavailable):
                failed.add(node)
                if "code" not in reply.details:
                    self.liveness.report_failure(node)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                out[node] = reply
        return out, failed

    def _live(self, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        return [m for m in self.members()
                if m not in exclude and (m == self.node_id or self.liveness.is_alive(m))]

    async def ask_all(self, msg: Message) -> dict[str, Any]:
        """Every live node's answer to `msg` (this node's included), by node id."""
        out, _ = await self._ask(self._live(), msg)
        return out

    async def ask_cover(self, msg: Message) -> dict[str, Any]:
        """Answers from a covering set of live nodes: every shard with a live replica is asked
        once, of its fastest nodes (`stats`); a node that fails is replaced at once by a cover of
        what it would have answered, and one that has not answered within its hedge delay (its
        recent p99) gets such a cover asked beside it (speculative retry, "The Tail at Scale";
        within `budget`: about one search in twenty).
        The first answers that cover every such shard are returned; calls still out are
        cancelled."""
        ring = self.ring()
        live = self._live()
        stats = self.stats
        rank = stats.rank if stats is not None else None
        target = {s for s in range(ring.shards) if set(ring.preference_list(s)) & set(live)}
        holds = {n: set(ring.shards_of(n)) for n in live}
        loop = asyncio.get_running_loop()
        out: dict[str, Any] = {}
        failed: set[str] = set()
        asked: set[str] = set()
        flying: dict[asyncio.Task[Any], str] = {}
        started: dict[str, float] = {}
        hedged: set[str] = set()

        def uncovered(slow: set[str]) -> list[int]:
            """Shards no answer holds and no call in flight, except to `slow`, may bring (all
            in flight slow: the shards no answer holds yet)."""
            got: set[int] = set()
            for n in [*out, *(m for m in flying.values() if m not in slow)]:
                got |= holds.get(n, set())
            return sorted(target - got)

        def ask(nodes: list[str]) -> int:
            fresh = [n for n in nodes if n not in asked]
            for n in fresh:
                asked.add(n)
                started[n] = loop.time()
                flying[asyncio.create_task(self._timed(n, msg))] = n
            return len(fresh)

        def cover(shards: list[int], slow: set[str]) -> list[str]:
            free = [n for n in live if n not in asked and n not in failed and n not in slow]
            return covering_set(ring, free, None, rank=rank, shards=shards) if shards else []

        self.budget.request()
        ask(covering_set(ring, live, self.node_id, rank=rank))
        try:
            while flying and uncovered(set(flying.values())):
                wait: float | None = None
                if stats is not None:
                    dues = [started[n] + self.hedge_after(n) for n in flying.values()
                            if n != self.node_id and n not in hedged]
                    wait = max(0.0, min(dues) - loop.time()) if dues else None
                finished, _ = await asyncio.wait(
                    flying, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                lost = False
                for t in finished:
                    node = flying.pop(t)
                    e = t.exception()
                    if isinstance(e, PeerUnavailable):
                        failed.add(node)
                        lost = True
                        if "code" not in e.details:
                            self.liveness.report_failure(node)
                    elif e is not None:
                        raise e
                    else:
                        out[node] = t.result()
                if lost:
                    ask(cover(uncovered(set()), set()))
                if stats is None:
                    continue
                now = loop.time()
                late = {n for n in flying.values() if n != self.node_id and n not in hedged
                        and now >= started[n] + self.hedge_after(n)}
                if late:
                    hedged |= late
                    slow = {n for n in flying.values() if n in hedged}
                    alt = cover(uncovered(slow), slow)
                    # Over budget: wait for the late node (or its failure) as before hedging.
                    if alt and self.budget.take():
                        extra = ask(alt)
                        if self.metrics is not None:
                            self.metrics.search_speculative.inc(by=extra)
        finally:
            for t in flying:
                t.cancel()
            if flying:
                await asyncio.gather(*flying, return_exceptions=True)
        return out

    def hedge_after(self, node: str) -> float:
        """How long a search call to `node` may take before a cover is asked beside it: from
        the search calls' own latencies (slower than the reads and writes `stats` mostly
        sees), never below what `stats` gives."""
        mine = self.call_stats.hedge_after(node)
        return mine if self.stats is None else max(mine, self.stats.hedge_after(node))

    async def _timed(self, node: str, msg: Message) -> Any:
        """`rpc.call`, its latency kept in `call_stats` (a transport failure: its timeout)."""
        loop = asyncio.get_running_loop()
        self.call_stats.started(node)
        t0 = loop.time()
        took: float | None = None
        try:
            return await self.rpc.call(node, msg, self.timeout)
        except PeerUnavailable as e:
            if "code" not in e.details:
                took = max(loop.time() - t0, self.timeout)
            raise
        finally:
            self.call_stats.finished(node, loop.time() - t0 if took is None else took)

    async def list_page(
        self,
        namespace: str,
        after: str | None,
        limit: int,
        tag: str | None,
        agent_id: str | None,
        max_bytes: int = 0,
    ) -> Page:
        """Live records of a namespace in id order after `after`, at most `limit` and, past the
        first, at most `max_bytes` of stored records (0: no bound); `next_cursor` resumes."""
        msg = ListPage(namespace, after, limit, tag, agent_id, max_bytes)
        replies = await self.ask_all(msg)
        newest: dict[str, Record] = {}
        sizes: dict[str, int] = {}
        bound: str | None = None
        for wires in replies.values():
            recs = [Record.from_wire(w) for w in wires]
            size = 0
            for w, r in zip(wires, recs, strict=True):
                sizes[r.id] = max(sizes.get(r.id, 0), n := _wire_size(w))
                size += n
            # A node that filled its count or (half) its byte budget may hold more after its
            # last id: the page can only be sure up to it. Half, because a peer's own measure
            # may differ a little; a bound set too eagerly only costs one more page.
            if recs and (len(recs) >= limit or (max_bytes and 2 * size >= max_bytes)):
                bound = recs[-1].id if bound is None else min(bound, recs[-1].id)
            for r in recs:
                prev = newest.get(r.id)
                newest[r.id] = r if prev is None else merge(prev, r)
        ids = sorted(i for i in newest if bound is None or i <= bound)
        now = self.now_hlc() if self.now_hlc is not None else 0
        items: list[Record] = []
        total = 0
        cut = False
        for i in ids:
            r = newest[i]
            if r.deleted or is_expired(r, now):  # expired: absent, like a tombstone
                continue
            if len(items) >= limit or (max_bytes and items and total + sizes[i] > max_bytes):
                cut = True
                break
            items.append(r)
            total += sizes[i]
        if cut or len(items) == limit:
            next_cursor: str | None = items[-1].id
        else:
            next_cursor = bound
        return Page(items, next_cursor, missing_shards(self.ring(), replies))


def _wire_size(wire: Any) -> int:
    """A record's size as stored and sent (its msgpack encoding)."""
    return len(msgpack.packb(wire, use_bin_type=True))


def list_handler(store: RecordStore) -> Handler:
    """The LIST handler: this node's answer to a ListPage, scanned off the event loop (a
    filtered scan may read many records; LMDB reads are thread-safe), so gossip and writes go on
    meanwhile."""

    async def list_page(_peer: str, msg: ListPage) -> list[Any]:
        return await asyncio.to_thread(local_list, store, msg)

    return list_page


def local_list(store: RecordStore, msg: ListPage) -> list[Any]:
    """This node's answer to a ListPage: records (tombstones included) in id order."""

    def match(r: Record) -> bool:
        if r.deleted:
            return True
        if msg.tag is not None and msg.tag not in r.tags:
            return False
        return msg.agent_id is None or r.agent_id == msg.agent_id

    recs = store.list_namespace(msg.namespace, msg.after, msg.limit, match, include_deleted=True,
                                max_bytes=msg.max_bytes if isinstance(msg.max_bytes, int) else 0)
    return [r.to_wire() for r in recs]
