"""Requests answered by every live node together: paged listing (and, later, search).

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
from spine.core.model import Record, merge
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
    ) -> None:
        """`now_hlc`: this node's HLC, on which listings judge expiry (DESIGN §13); without it
        nothing is hidden as expired."""
        self.node_id = node_id
        self.ring = ring
        self.rpc = rpc
        self.liveness = liveness
        self.members = members
        self.timeout = timeout
        self.now_hlc = now_hlc

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

    async def ask_cover(self, msg: Message, rounds: int = 3) -> dict[str, Any]:
        """Answers from a covering set of live nodes: every shard with a live replica is asked
        once; a node that fails is replaced by the next cover of what it would have answered."""
        ring = self.ring()
        out: dict[str, Any] = {}
        failed: set[str] = set()
        for _ in range(rounds):
            todo = [n for n in covering_set(ring, self._live(failed), self.node_id)
                    if n not in out]
            if not todo:
                break
            got, lost = await self._ask(todo, msg)
            out.update(got)
            failed |= lost
            if not lost:
                break
        return out

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
