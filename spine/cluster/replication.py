"""Sending versions to replicas and reading them back (Dynamo §4.5–§4.6).

`write` fans a set of records out to their preference lists in parallel, one Apply per node, and
returns as soon as every record has `w` acknowledgements (or every answer is in, or the deadline
passes). A replica that is down or fails the call gets a hint, kept durably here for handoff.
Calls still in flight after the reply go on in owned background tasks (never fire-and-forget).
When every node of a record's write set has acknowledged it, the version is settled
(`spine.core.settlement`): this node notes it, and tells the others on the next `Apply` it sends
them (or on an empty one `NOTICE_DELAY` later), so their readers need not track it in tokens.
`read` asks replicas for a key and reports what they hold; stale ones are read-repaired.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from spine.cluster.liveness import Liveness
from spine.core.clock import Version
from spine.core.errors import InsufficientStorage, PeerUnavailable, SpineError, StorageFailed
from spine.core.messages import Apply, Read, records_from_wire
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.peer_stats import PeerStats
from spine.core.quorum import meets_floor, resolve
from spine.core.settlement import MAX_NOTICES, Notice, Settlement
from spine.ports import RecordStore, Transport
from spine.storage.lmdb_store import Applied

log = structlog.get_logger("spine.replication")

# How long a settle notice waits for an Apply to the same peer before it goes in an empty one.
NOTICE_DELAY = 0.02


class Replicator:
    """Writes to and reads from the replicas of keys, with hints and read repair."""

    def __init__(
        self,
        node_id: str,
        store: RecordStore,
        rpc: Transport,
        liveness: Liveness,
        metrics: SpineMetrics,
        *,
        rpc_timeout: float,
        wall_ms: Callable[[], int],
        hints_enabled: bool = True,
        monotonic: Callable[[], float] | None = None,
        replicated: Callable[[str, float], None] | None = None,
        stats: PeerStats | None = None,
    ) -> None:
        """`replicated(node, seconds)`, with `monotonic`: told how long each write took to
        reach each node that acknowledged it (cross-region replication lag, issue 17).
        `stats`: how fast each peer answers lately; reads then ask the fastest replicas first
        and hedge (`read`)."""
        self.node_id = node_id
        self.store = store
        self.rpc = rpc
        self.liveness = liveness
        self.metrics = metrics
        self.rpc_timeout = rpc_timeout
        self.wall_ms = wall_ms
        self.hints_enabled = hints_enabled
        self.monotonic = monotonic
        self.replicated = replicated
        self.stats = stats
        self._tasks: set[asyncio.Task[Any]] = set()
        self.settlement = Settlement()
        self._outbox: dict[str, list[Notice]] = {}  # notices per peer, not yet sent

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as an owned background task (cancelled by `stop`)."""
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def stop(self) -> None:
        """Cancel background work (pending replications and repairs)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def apply_local(self, records: Sequence[Record]) -> list[Applied]:
        """Apply versions to the local store (derived structures follow via commit hooks)."""
        applied = await self.store.apply(records)
        conflicts = sum(1 for a in applied if a.conflict)
        if conflicts:
            self.metrics.conflicts.inc(by=conflicts)
        return applied

    async def send(self, node: str, records: Sequence[Record]) -> None:
        """Apply `records` on `node` (this node's own store too: the transport answers a call to
        itself from its handlers); PeerUnavailable if it cannot. Liveness always holds this node
        alive and never hears a failure of it."""
        if not self.liveness.is_alive(node):
            raise PeerUnavailable(f"{node} is down", node=node)
        try:
            await self.rpc.call(node, Apply(list(records), self._take_notices(node)),
                                self.rpc_timeout)
        except PeerUnavailable as e:
            self._failed(node, e)
            raise
        self.liveness.report_success(node)

    # ------------------------------------------------------------ settle notices

    def _settled(self, record: Record, write_set: Sequence[str]) -> None:
        """Every node of `write_set` acknowledged `record`: note it here, tell the others."""
        self.settlement.note(f"{record.namespace}/{record.id}", record.version)
        notice = (record.namespace, record.id, record.version)
        for node in write_set:
            if node == self.node_id:
                continue
            box = self._outbox.get(node)
            if box is None:
                box = self._outbox[node] = []
                self.spawn(self._flush_later(node))
            if len(box) < MAX_NOTICES:  # beyond: dropped, which only keeps versions in tokens
                box.append(notice)

    def _take_notices(self, node: str) -> list[Notice]:
        return self._outbox.pop(node, []) if node != self.node_id else []

    async def _flush_later(self, node: str) -> None:
        """Send `node` its notices in an empty Apply unless another Apply took them first."""
        await asyncio.sleep(NOTICE_DELAY)
        if node in self._outbox:
            with contextlib.suppress(SpineError):
                await self.send(node, [])

    def noticed(self, notices: Sequence[Notice]) -> None:
        """A peer's notices (from its Apply): those versions are on every node of their sets."""
        for namespace, mid, version in notices:
            self.settlement.note(f"{namespace}/{mid}", version)

    async def hint(self, nodes: Sequence[str], record: Record) -> None:
        """Keep `record` durably for `nodes`, which did not take it (handoff replays it when
        they are back): what a Paxos commit leaves for the replicas it could not reach."""
        if not self.hints_enabled or not nodes:
            return
        now = self.wall_ms()
        await self.store.add_hints([(n, now, record) for n in nodes])
        self.metrics.hints_written.inc(by=len(nodes))

    def _failed(self, node: str, e: SpineError) -> None:
        self.metrics.rpc_errors.inc(node)
        if "code" not in e.details:  # a transport failure, not an error the peer answered
            self.liveness.report_failure(node)
            self.rpc.drop(node)

    async def write(
        self,
        records: Sequence[Record],
        prefs: Sequence[Sequence[str]],
        w: int | Sequence[int],
        *,
        hints_count: bool,
        timeout: float,
        counted: Sequence[frozenset[str] | None] | None = None,
    ) -> list[int]:
        """Replicate each record to its nodes; acks per record (≥ its `w` means success; `w` is
        one number for all records or one per record). `counted`, per record: the nodes whose
        acknowledgements count toward its `w` (None: all; a region-local level counts its
        region's), though every node of its list is sent it."""
        started = self.monotonic() if self.monotonic is not None else 0.0
        acks = [0] * len(records)
        held = [0] * len(records)  # acknowledgements by the node itself (no hint): settling
        need = [w] * len(records) if isinstance(w, int) else list(w)
        # When this node is a replica, its own commit is waited for too (as Riak's coordinating
        # vnode writes first): a write it acknowledged is then in its store, so the next write
        # through it builds on it (clock, created_at, 201 after a delete) and its local reads
        # see it, even when two peers answered before the local commit ended.
        by_node: dict[str, list[int]] = {}
        for i, pl in enumerate(prefs):
            for node in pl:
                by_node.setdefault(node, []).append(i)
        local = self.node_id in by_node
        if local:  # a failed or full disk here: refuse (503/507) before any replica is sent to
            self.store.check_writable()
        local_error: list[SpineError] = []
        done = asyncio.Event()
        outstanding = len(by_node)
        local_pending = local

        def check() -> None:
            if not local_pending and all(a >= n for a, n in zip(acks, need, strict=True)):
                done.set()

        def ack(node: str, idxs: list[int], *, hinted: bool = False) -> None:
            for i in idxs:
                only = counted[i] if counted is not None else None
                acks[i] += only is None or node in only
                held[i] += not hinted
            check()
            if not hinted and self.replicated is not None and self.monotonic is not None:
                self.replicated(node, self.monotonic() - started)

        async def one(node: str, idxs: list[int]) -> None:
            nonlocal outstanding, local_pending
            recs = [records[i] for i in idxs]
            try:
                await self.send(node, recs)
                ack(node, idxs)
            except PeerUnavailable:
                if self.hints_enabled:
                    now = self.wall_ms()
                    await self.store.add_hints([(node, now, r) for r in recs])
                    self.metrics.hints_written.inc(by=len(recs))
                    if hints_count:
                        ack(node, idxs, hinted=True)
            except (InsufficientStorage, StorageFailed) as e:  # our own disk refused the commit
                local_error.append(e)
            except Exception:
                log.exception("replicate_failed", peer=node)
            finally:
                outstanding -= 1
                if node == self.node_id:
                    local_pending = False
                    check()
                if outstanding == 0:
                    done.set()
                    for i, pl in enumerate(prefs):
                        if held[i] == len(pl):
                            self._settled(records[i], pl)

        if not by_node:
            return acks
        for node, idxs in by_node.items():
            self.spawn(one(node, idxs))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        if local_error and any(a < n for a, n in zip(acks, need, strict=True)):
            raise local_error[0]  # say why (507 / 503) rather than "too few acks"
        return acks

    async def read(
        self,
        namespace: str,
        mid: str,
        nodes: Sequence[str],
        r: int,
        *,
        timeout: float,
        floor: Version | None = None,
        repair: bool = True,
        doubted: bool = False,
    ) -> dict[str, Record | None]:
        """Ask `nodes` for a key; return once `r` answered (and one meets `floor`) or all did.
        `doubted`: ask them even if liveness holds them down (a verdict that may be stale).

        With `stats`, the `r` fastest-ranked nodes are asked first (this node first of all),
        one more each time a node asked has not answered within its own hedge delay (its recent
        p95: speculative retry), and one more at once when one fails or the answers miss
        `floor`.
        Without, every node is asked at once. Either way the answer is the same: only who is
        asked when differs.

        When every answer is in, replicas that answered with an older version are repaired;
        with `repair`, the nodes not asked before the reply are asked then, for the repair.
        """
        answers: dict[str, Record | None] = {}
        local_error: list[StorageFailed] = []
        done = asyncio.Event()
        pending = self._ranked(nodes) if self.stats is not None else list(nodes)
        pending.reverse()  # popped from the end: fastest first
        flying: list[str] = []
        launched: dict[str, float] = {}  # node → when it was asked (loop time)
        tasks: list[asyncio.Task[Any]] = []
        replied = False
        loop = asyncio.get_running_loop()

        def enough() -> bool:
            if len(answers) < r:
                return False
            return floor is None or any(meets_floor(x, floor) for x in answers.values())

        def launch() -> bool:
            if not pending:
                return False
            node = pending.pop()
            flying.append(node)
            launched[node] = loop.time()
            tasks.append(self.spawn(one(node)))
            return True

        def top_up() -> None:
            """After an answer or a failure: ask more at once if the asked cannot be enough."""
            if replied or done.is_set():
                return
            while len(answers) + len(flying) < r and launch():
                pass
            if len(answers) >= r and not flying:  # r answered, none meets the floor
                launch()
            if not flying and not pending:
                done.set()

        async def one(node: str) -> None:
            try:
                answers[node] = await self.read_one(node, namespace, mid, doubted=doubted)
                if enough():
                    done.set()
            except PeerUnavailable:
                pass
            except StorageFailed as e:  # our own LMDB refuses reads (MDB_PANIC)
                local_error.append(e)
            finally:
                flying.remove(node)
                top_up()

        first = len(pending) if self.stats is None else max(1, r)
        for _ in range(first):
            launch()
        if tasks:
            await self._hedge(done, pending, flying, launched, launch, timeout)
        replied = True
        if local_error and len(answers) < r:
            raise local_error[0]  # say why (503 storage_failed) rather than "too few answers"
        snapshot = dict(answers)
        if repair and tasks:
            while launch():  # the rest, for the repair only
                pass
            self.spawn(self._repair_after(tasks, answers, timeout))
        return snapshot

    def _ranked(self, nodes: Sequence[str]) -> list[str]:
        """`nodes` fastest first: this node (no network hop), then by `stats`."""
        assert self.stats is not None
        others = self.stats.rank(n for n in nodes if n != self.node_id)
        return [self.node_id, *others] if self.node_id in nodes else others

    async def _hedge(
        self,
        done: asyncio.Event,
        pending: list[str],
        flying: list[str],
        launched: dict[str, float],
        launch: Callable[[], bool],
        timeout: float,
    ) -> None:
        """Wait for `done` up to `timeout`; meanwhile, each time a node in flight has not
        answered within its own hedge delay, ask the next one, once per late node ("The Tail
        at Scale"): a paused local replica is covered after its few milliseconds, not after
        the slowest (remote) replica's delay."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        hedged: set[str] = set()  # late nodes already covered by another ask
        while not done.is_set():
            now = loop.time()
            left = end - now
            if left <= 0:
                return
            late_at, late = left, None
            if pending and self.stats is not None:
                for n in flying:
                    if n not in hedged and n != self.node_id:
                        at = launched[n] + self.stats.hedge_after(n) - now
                        if at < late_at:
                            late_at, late = at, n
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), max(0.0, late_at))
            if done.is_set() or late is None:
                continue
            hedged.add(late)
            if late in flying and launch():
                self.metrics.read_speculative.inc()

    async def read_one(
        self, node: str, namespace: str, mid: str, *, doubted: bool = False
    ) -> Record | None:
        """What `node` stores for a key (this node's through its own Read handler); `doubted`:
        ask even if liveness holds it down."""
        if not doubted and not self.liveness.is_alive(node):
            raise PeerUnavailable(f"{node} is down", node=node)
        try:
            reply = await self.rpc.call(node, Read([(namespace, mid)]), self.rpc_timeout)
        except PeerUnavailable as e:
            self._failed(node, e)
            raise
        self.liveness.report_success(node)
        return records_from_wire(reply)[0]

    async def _repair_after(
        self, tasks: list[asyncio.Task[Any]], answers: dict[str, Record | None], timeout: float
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
        await self.repair(answers)

    async def repair(self, answers: dict[str, Record | None]) -> None:
        """Send the newest answer to every replica that answered with something older."""
        outcome = resolve(answers)
        if outcome.newest is None or not outcome.stale:
            return
        newest = outcome.newest
        results = await asyncio.gather(
            *(self.send(n, [newest]) for n in outcome.stale), return_exceptions=True
        )
        repaired = sum(1 for x in results if not isinstance(x, BaseException))
        if repaired:
            self.metrics.read_repairs.inc(by=repaired)
