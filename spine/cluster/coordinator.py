"""The coordinator: one client request carried out at its consistency level (DESIGN §4–§5).

- eventual: W=1 with a sloppy quorum (a durable hint counts).
- session: W=quorum of the preference list (hints do not count).
- strong: a write is one round of per-key Paxos (`spine.cluster.paxos`), as every conditional write
  (`If-Match`, `If-None-Match`, `Spine-Fence`) is, so strong and conditional writes are linearizable
  together with strong reads (ABD's, `spine.cluster.strong_reads`): a committed Paxos change is an
  ordinary record on a quorum, which such a read sees.

Reads at every level are `spine.cluster.reads`' (`Reads`), which this class hands the routing
and forwarding it shares with the writes; `get`, `read` and the feed's `settle` go there.

The coordinator of a key is a live replica of it; a node that is not one forwards the request.
The decisions are pure: routing in `spine.core.routing`, tallies per level in `spine.core.quorum`,
a batch's levels and creates in `spine.core.batch`; this class carries them out.

A session token passed in is read, never changed: it gives each key's floor. What the session has
seen through a call is what the call returns — a read's record, each written item's record — and
the caller merges those versions into its own token (`SessionToken.observe`; a read's through
`Got.merge_into`, which leaves a settled version out), as the HTTP layer and the Forward handler
do before they answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from spine.cluster.liveness import Liveness
from spine.cluster.paxos import Proposer
from spine.cluster.reads import Got, Reads
from spine.cluster.replication import Replicator
from spine.cluster.version_history import gather_history
from spine.core.batch import by_level, creates
from spine.core.clock import HLC, hlc_from_ms, hlc_ms
from spine.core.conditions import Condition, check, condition_to_wire, fences_after
from spine.core.consistency import Level, Policy, majority
from spine.core.errors import (
    InvalidInput,
    PeerUnavailable,
    QuorumUnavailable,
    SpineError,
    Superseded,
    Timeout,
)
from spine.core.expiry import Lifecycle, masked
from spine.core.messages import Forward
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.quorum import meets_floor, resolve, write_shortfall
from spine.core.requests import (
    ItemResult,
    WriteOp,
    WriteResult,
    body_to_wire,
    item_from_wire,
)
from spine.core.ringmap import Placement
from spine.core.routing import Route, catch_up_peers, live, localized, route, split_writes
from spine.core.session import SessionToken, WriteSeq
from spine.core.validation import normalise
from spine.core.versioning import mint, seen_hlc
from spine.ports import RecordStore, Transport

EXPIRED = Timeout("the forwarded write arrived after its deadline and was not applied")
SUPERSEDED = Superseded("this session has already written this key again since this write "
                        "(Spine-Write-Seq): it was not applied", field="Spine-Write-Seq")
Embed = Callable[[list[str]], Awaitable[list[bytes | None]]]
# (namespace, id, this node, the key's write set, is_alive) -> the other live replica that led
# the key's latest round (`Acceptor.leader`), or None
Leader = Callable[[str, str, str, Sequence[str], Callable[[str], bool]], str | None]


class Coordinator:
    """Carries out puts, deletes and batches at their consistency levels; reads go to `Reads`."""

    def __init__(
        self,
        node_id: str,
        placement: Callable[[], Placement],
        store: RecordStore,
        replicator: Replicator,
        rpc: Transport,
        liveness: Liveness,
        hlc: HLC,
        policy: Policy,
        metrics: SpineMetrics,
        *,
        read_timeout: float,
        write_timeout: float,
        session_max_keys: int,
        embed: Embed | None = None,
        dim: int = 384,
        proposer: Proposer | None = None,
        ignore_fences: bool = False,
        lifecycle: Lifecycle | None = None,
        leader: Leader | None = None,
    ) -> None:
        self.node_id = node_id
        self.placement = placement
        self.store = store
        self.rep = replicator
        self.rpc = rpc
        self.liveness = liveness
        self.hlc = hlc
        self.policy = policy
        self.metrics = metrics
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.session_max_keys = session_max_keys  # unused since tokens are merged by callers
        self.embed = embed
        self.dim = dim
        self.proposer = proposer
        self.leader = leader  # where a conditional write runs (None: always here)
        self.ignore_fences = ignore_fences  # test-only tooth: paxos.unsafe_ignore_fences
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle()
        self.reads = Reads(node_id, store, replicator, liveness, hlc, policy, metrics,
                           route=self._route, local=self._local, routed=self._routed,
                           forward=self._forward, read_timeout=read_timeout,
                           write_timeout=write_timeout)

    # ------------------------------------------------------------ routing

    def _route(self, namespace: str, mid: str) -> Route:
        """The key's owners, write set and coordinators under the current placement."""
        return route(self.placement(), namespace, mid, self.node_id, self.liveness.is_alive)

    def _local(self, rt: Route) -> Route | None:
        """`rt` within this node's region (a region-local level's route), None when the region
        holds no owner of the key (the level then acts as its global form)."""
        placement = self.placement()
        region = placement.region_of(self.node_id)
        return localized(rt, lambda nodes: placement.owners_in_region(nodes, region),
                         self.node_id, self.liveness.is_alive)

    def _routed(self, rt: Route, requested: Level | None) -> Route:
        """Where a request goes: a region-local level asked for by the client is coordinated
        by an owner in this node's region, when it has one."""
        if requested is None or not requested.local:
            return rt
        lrt = self._local(rt)
        return rt if lrt is None else replace(rt, coordinators=lrt.coordinators)

    async def _forward(self, targets: list[str], msg: Forward) -> dict[str, Any] | None:
        """Run the request on the first target that answers; None if none could. A write that
        reached a target which then did not answer fails with Timeout (504): the target may have
        applied it, and writing it again here would mint a second, newer version of one client
        write, which could undo a write acknowledged in between (a strong register would read
        the old value back after the new one: not linearizable)."""
        for target in targets:
            try:
                reply: dict[str, Any] = await self.rpc.call(
                    target, msg, self.write_timeout + self.read_timeout
                )
            except PeerUnavailable as e:
                if "code" not in e.details:
                    self.liveness.report_failure(target)
                    if msg.op != "get" and e.details.get("sent"):
                        raise Timeout(f"the write went to {target}, which did not answer in"
                                      " time: it may or may not have been applied") from None
                continue
            self.metrics.forwards.inc()
            return reply
        return None

    # ------------------------------------------------------------ reads

    async def get(
        self,
        namespace: str,
        mid: str,
        requested: Level | None,
        token: SessionToken | None,
        *,
        forwarded: bool = False,
    ) -> tuple[Record | None, Level, str]:
        """Read a key: (stored version or None, level used, coordinating node); see `read`."""
        got = await self.reads.read(namespace, mid, requested, token, forwarded=forwarded)
        return got.record, got.level, got.coordinator

    async def read(
        self,
        namespace: str,
        mid: str,
        requested: Level | None,
        token: SessionToken | None,
        *,
        forwarded: bool = False,
    ) -> Got:
        """Read a key at its level (`Reads.read`); merge what it saw into the session's token
        (`Got.merge_into`)."""
        return await self.reads.read(namespace, mid, requested, token, forwarded=forwarded)

    async def settle(self, rec: Record) -> Record:
        """A version the change feed is about to deliver, made safe to deliver: see
        `StrongReads.settle`."""
        return await self.reads.strong.settle(rec)

    # ------------------------------------------------------------ writes

    async def write(
        self,
        namespace: str,
        ops: Sequence[WriteOp],
        requested: Level | None,
        token: SessionToken | None,
        agent: str | None,
        *,
        forwarded: bool = False,
        deadline: int | None = None,
        by: WriteSeq | None = None,
    ) -> list[ItemResult]:
        """Upsert or delete keys; one result per op, in order. `token` (read only) holds the
        session's floors; merge each successful item's version into it. `deadline` (an HLC value,
        set on forwarded writes): no new version is minted after it — the forwarding node has
        given up by then and may have written the key itself. `by`: the client's number for
        this write (monotonic writes, DESIGN §4), stored with each new version."""
        results: dict[int, ItemResult] = {}
        routes = [self._routed(self._route(namespace, op.id), requested) for op in ops]
        plan = split_writes(routes, self.node_id, forwarded=forwarded)
        local = list(plan.local)
        for target, idxs in plan.forward.items():
            try:
                got = await self._forward_writes(target, namespace, [ops[i] for i in idxs],
                                                 requested, token, agent, by)
            except Timeout as e:  # the outcome there is unknown: never written twice
                results.update((i, ItemResult(ops[i].id, error=e)) for i in idxs)
                continue
            if got is None:
                local.extend(idxs)
            else:
                results.update(zip(idxs, got, strict=True))
        if local:
            local.sort()
            got = await self._write_local(namespace, [ops[i] for i in local], requested, token,
                                          agent, deadline, by)
            results.update(zip(local, got, strict=True))
        return [results[i] for i in range(len(ops))]

    async def _forward_writes(
        self,
        target: str,
        namespace: str,
        ops: list[WriteOp],
        requested: Level | None,
        token: SessionToken | None,
        agent: str | None,
        by: WriteSeq | None,
    ) -> list[ItemResult] | None:
        body = [[op.id, None if op.body is None else body_to_wire(op.body)] for op in ops]
        msg = Forward("write", namespace, "", body, None if requested is None else requested.code,
                      token.encode() if token is not None else None, agent,
                      self._forward_deadline(), None if by is None else by.encode())
        reply = await self._forward([target], msg)
        if reply is None:
            return None
        return [item_from_wire(x) for x in reply["results"]]

    def _forward_deadline(self) -> int:
        """The HLC after which a forwarded write mints no version. The target must mint well
        before we give up on it (our call's timeout is read + write timeouts): a request
        delivered late, after a partition heals, must not create a version newer than writes
        acknowledged since."""
        budget_ms = int((self.read_timeout + self.write_timeout) * 1000 / 2)
        return hlc_from_ms(hlc_ms(self.hlc.now()) + budget_ms)

    async def _write_local(
        self,
        namespace: str,
        ops: list[WriteOp],
        requested: Level | None,
        token: SessionToken | None,
        agent: str | None,
        deadline: int | None = None,
        by: WriteSeq | None = None,
    ) -> list[ItemResult]:
        olds = self.store.get_many([(namespace, op.id) for op in ops])
        if token is not None:
            await self._catch_up(namespace, ops, olds, token)
        out: dict[int, ItemResult] = {}
        if by is not None:  # a later write of this session is here already: this one came late
            out = {i: ItemResult(op.id, error=SUPERSEDED) for i, (op, old) in
                   enumerate(zip(ops, olds, strict=True)) if old is not None
                   and old.writer == by.writer and old.writer_seq > by.seq}
        now = self.hlc.now()  # an expired version counts as absent: a write over it creates
        olds = [masked(old, now) for old in olds]
        created = creates(ops, olds)
        vectors = await self._vectors(ops)
        for level, every in by_level(self.policy, ops, olds, requested).items():
            idxs = [i for i in every if i not in out]
            if level.base is Level.STRONG:
                for i in idxs:
                    out[i] = await self._strong_write(namespace, ops[i], vectors[i], token, agent,
                                                      deadline, by=by, local=level.local)
                continue
            if self._expired(deadline):
                for i in idxs:
                    out[i] = ItemResult(ops[i].id, error=EXPIRED)
                continue
            records = [
                self._new_record(namespace, ops[i], olds[i], vectors[i], token, agent, None, by)
                for i in idxs
            ]
            sets = [self._route(namespace, ops[i].id) for i in idxs]
            w = self.policy.quorum(level).w
            needs = [w + rt.extra for rt in sets]
            counted: list[frozenset[str] | None] = [None] * len(sets)
            if level.local:  # a quorum of the region's replicas; the others get it all the same
                for j, rt in enumerate(sets):
                    lrt = self._local(rt)
                    if lrt is not None:
                        needs[j] = majority(len(lrt.owners)) + lrt.extra
                        counted[j] = frozenset(lrt.write_to)
            acks = await self.rep.write(
                records, [rt.write_to for rt in sets], needs,
                hints_count=level is Level.EVENTUAL, timeout=self.write_timeout, counted=counted,
            )
            for i, rec, a, need in zip(idxs, records, acks, needs, strict=True):
                short = write_shortfall(a, need)
                if short is None:
                    result = WriteResult(rec, created[i], level, self.node_id)
                    out[i] = ItemResult(ops[i].id, result)
                else:
                    self.metrics.quorum_failures.inc("write", level.label)
                    out[i] = ItemResult(ops[i].id, error=short)
        return [out[i] for i in range(len(ops))]

    async def _catch_up(
        self,
        namespace: str,
        ops: Sequence[WriteOp],
        olds: list[Record | None],
        token: SessionToken,
    ) -> None:
        """Replace local versions older than the session has seen with a replica's newer one.

        The new version's clock, created_at and created flag build on the previous version; a
        replica that missed the client's last write must not build on what it has instead.
        """
        for i, op in enumerate(ops):
            floor = token.floor(f"{namespace}/{op.id}")
            old = olds[i]
            if floor is None or (old is not None and old.version >= floor):
                continue
            owners = self._route(namespace, op.id).owners
            others = catch_up_peers(owners, self.node_id, self.liveness.is_alive)
            answers = await self.rep.read(
                namespace, op.id, others, 1, timeout=self.read_timeout, floor=floor
            )
            newest = resolve({**answers, self.node_id: old}).newest
            if meets_floor(newest, floor):
                olds[i] = newest

    async def _strong_write(
        self,
        namespace: str,
        op: WriteOp,
        vector: bytes | None,
        token: SessionToken | None,
        agent: str | None,
        deadline: int | None = None,
        cond: Condition | None = None,
        by: WriteSeq | None = None,
        local: bool = False,
    ) -> ItemResult:
        """One Paxos round on the key: `cond` judged on the record a quorum holds (none: a strong
        write), the new version minted over it, committed to a quorum. `local` (local_strong):
        the round runs among the key's replicas in this node's region, and the other regions'
        replicas are sent the committed record afterwards (hinted when down)."""
        if self.proposer is None:
            raise RuntimeError("strong and conditional writes need a Paxos proposer")
        cond = cond or Condition()
        judged = Condition(cond.if_match, cond.if_none_match, None) if self.ignore_fences else cond
        found: list[Record | None] = []

        def decide(current: Record | None, clock: dict[str, int]) -> Record | SpineError:
            current = masked(current, self.hlc.now())  # expired: absent to If-None-Match too
            found[:] = [current]
            err = check(judged, current)
            if err is not None:
                return err
            if self._expired(deadline):
                return EXPIRED
            rec = self._new_record(namespace, op, current, vector, token, agent, clock, by)
            return replace(rec, fences=fences_after(judged, current))

        level = Level.LOCAL_STRONG if local else Level.STRONG
        localize = self._local if local else None
        try:
            rec = await self.proposer.run(namespace, op.id, decide, self.write_timeout,
                                          localize=localize)
        except SpineError as e:
            if isinstance(e, QuorumUnavailable):
                self.metrics.quorum_failures.inc("write", level.label)
            return ItemResult(op.id, error=e)
        if local:
            rt = self._route(namespace, op.id)
            lrt = self._local(rt)
            away = [n for n in rt.write_to if lrt is None or n not in lrt.write_to]
            if away:  # the other regions, asynchronously (need 0: nothing waits for them)
                self.rep.spawn(self.rep.write([rec], [away], 0, hints_count=False,
                                              timeout=self.write_timeout))
        old = found[0] if found else None
        created = not rec.deleted and (old is None or old.deleted)
        return ItemResult(op.id, WriteResult(rec, created, level, self.node_id))

    async def conditional(
        self,
        namespace: str,
        op: WriteOp,
        cond: Condition,
        token: SessionToken | None,
        agent: str | None,
        by: WriteSeq | None = None,
        *,
        forwarded: bool = False,
        deadline: int | None = None,
    ) -> ItemResult:
        """A write with `If-Match`, `If-None-Match` or `Spine-Fence` (DESIGN §12): one Paxos
        round. It runs on the node that led the key's latest round when this node's acceptor
        names another live replica (`round_leader`): there the key is warm (no prepare over the
        network; a failed condition costs one call, `Proposer._warm_refusal`) and the key's
        changes take turns instead of duelling with ballots from several nodes. Forwarded once
        at most; here when the leader cannot be reached before the request was sent (any node
        may propose), 504 when it was sent and no answer came (it may have been applied).
        `deadline` (forwarded): no version is minted after it, as for a forwarded write."""
        if not forwarded and self.leader is not None:
            rt = self._route(namespace, op.id)
            if self.node_id in rt.write_to:
                lead = self.leader(namespace, op.id, self.node_id, rt.write_to,
                                   self.liveness.is_alive)
                if lead is not None:
                    try:
                        got = await self._forward_conditional(lead, namespace, op, cond, token,
                                                              agent, by)
                    except Timeout as e:  # its outcome there is unknown: never proposed twice
                        return ItemResult(op.id, error=e)
                    if got is not None:
                        return got
        vector = (await self._vectors([op]))[0]
        return await self._strong_write(namespace, op, vector, token, agent, deadline, cond, by)

    async def _forward_conditional(
        self,
        target: str,
        namespace: str,
        op: WriteOp,
        cond: Condition,
        token: SessionToken | None,
        agent: str | None,
        by: WriteSeq | None,
    ) -> ItemResult | None:
        body = [None if op.body is None else body_to_wire(op.body), condition_to_wire(cond)]
        msg = Forward("cas", namespace, op.id, body, None,
                      token.encode() if token is not None else None, agent,
                      self._forward_deadline(), None if by is None else by.encode())
        try:
            reply = await self._forward([target], msg)
        except InvalidInput as e:
            if e.field != "op":
                raise
            return None  # a node of an older release, which takes no forwarded `cas`: here
        return None if reply is None else item_from_wire(reply["results"][0])

    def _expired(self, deadline: int | None) -> bool:
        if deadline is None or hlc_ms(self.hlc.now()) <= hlc_ms(deadline):
            return False
        self.metrics.forwards_expired.inc()
        return True

    def _new_record(
        self,
        namespace: str,
        op: WriteOp,
        old: Record | None,
        vector: bytes | None,
        token: SessionToken | None,
        agent: str | None,
        clock: dict[str, int] | None,
        by: WriteSeq | None = None,
    ) -> Record:
        floor = token.floor(f"{namespace}/{op.id}") if token is not None else None
        seen = seen_hlc(old, floor)
        hlc = self.hlc.observe(seen) if seen else self.hlc.now()
        ttl = None if op.body is None else self.lifecycle.ttl_s(op.body.ttl_s, op.body.tags)
        rec = mint(namespace, op, old, vector, hlc=hlc, node_id=self.node_id, agent=agent,
                   clock=clock, ttl_s=ttl)
        return rec if by is None else replace(rec, writer=by.writer, writer_seq=by.seq)

    async def _vectors(self, ops: Sequence[WriteOp]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(ops)
        to_embed: list[int] = []
        for i, op in enumerate(ops):
            if op.body is None:
                continue
            if op.body.vector is not None:
                out[i] = normalise(op.body.vector)
            elif self.embed is not None:
                to_embed.append(i)
        if to_embed and self.embed is not None:
            vecs = await self.embed([ops[i].body.content for i in to_embed])  # type: ignore[union-attr]
            for i, v in zip(to_embed, vecs, strict=True):
                out[i] = v
        return out

    # ------------------------------------------------------------ history

    async def history(self, namespace: str, mid: str) -> list[tuple[Record, bool]]:
        """Versions kept for a key across its live replicas, newest first (concurrent flagged)."""
        alive = live(self._route(namespace, mid).owners, self.liveness.is_alive)
        return await gather_history(alive, self.rpc, namespace, mid, self.read_timeout)
