"""The coordinator: one client request carried out at its consistency level (DESIGN §4–§5).

- eventual: W=1 with a sloppy quorum (a durable hint counts); R=1.
- session: W=quorum of the preference list (hints do not count); R=1 when the client sends a session
  token (asking more replicas until one is as new as the token requires), R=quorum without one.
- strong: a write is one round of per-key Paxos (`spine.cluster.paxos`), as every conditional write
  (`If-Match`, `If-None-Match`, `Spine-Fence`) is, so strong and conditional writes are linearizable
  together; a read is ABD's (`spine.cluster.strong_reads`): the newest of a quorum, written back
  to a quorum first. A committed Paxos change is an ordinary record on a quorum, which that read
  sees.

The coordinator of a key is a live replica of it; a node that is not one forwards the request.
The decisions are pure: routing in `spine.core.routing`, tallies per level in `spine.core.quorum`,
a batch's levels and creates in `spine.core.batch`, which versions are settled (held by every
owner) in `spine.core.settlement`; this class carries them out.

A session token passed in is read, never changed: it gives each key's floor. What the session has
seen through a call is what the call returns — a read's record, each written item's record — and
the caller merges those versions into its own token (`SessionToken.observe`; a read's through
`Got.merge_into`, which leaves a settled version out), as the HTTP layer and the Forward handler
do before they answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from spine.cluster.liveness import Liveness
from spine.cluster.paxos import Proposer
from spine.cluster.replication import Replicator
from spine.cluster.strong_reads import StrongReads
from spine.cluster.version_history import gather_history
from spine.core.batch import by_level, creates
from spine.core.clock import HLC, hlc_from_ms, hlc_ms
from spine.core.conditions import Condition, check, fences_after
from spine.core.consistency import Level, Policy, Quorum, majority
from spine.core.errors import (
    PeerUnavailable,
    QuorumUnavailable,
    SessionUnavailable,
    SpineError,
    Superseded,
    Timeout,
)
from spine.core.expiry import Lifecycle, masked
from spine.core.messages import Forward
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.quorum import (
    ReadTally,
    meets_floor,
    one_is_enough,
    resolve,
    tally_read,
    write_shortfall,
)
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


@dataclass(frozen=True, slots=True)
class Got:
    """What a read returns: the record (None: absent), the level used, the coordinating node,
    and whether every owner holds the record's version (so a session token need not carry it)."""

    record: Record | None
    level: Level
    coordinator: str
    settled: bool = False

    def merge_into(self, token: SessionToken, key: str) -> None:
        """What the read saw, into `token`: a settled version drops the key's entry (no floor is
        needed), any other becomes the key's floor."""
        if self.record is None:
            return
        if self.settled:
            token.forget(key, self.record.version)
        else:
            token.saw(key, self.record)


# An owner whose latency score (`PeerStats.score`) is past both of these, against the best
# owner's, is asked last when a read is forwarded.
SLOW_FACTOR = 4.0
SLOW_MARGIN_S = 0.020
EXPIRED = Timeout("the forwarded write arrived after its deadline and was not applied")
SUPERSEDED = Superseded("this session has already written this key again since this write "
                        "(Spine-Write-Seq): it was not applied", field="Spine-Write-Seq")
Embed = Callable[[list[str]], Awaitable[list[bytes | None]]]


class Coordinator:
    """Carries out gets, puts, deletes and batches at their consistency levels."""

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
        self.ignore_fences = ignore_fences  # test-only tooth: paxos.unsafe_ignore_fences
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle()
        self.strong = StrongReads(self._route, replicator, liveness, policy, metrics,
                                  read_timeout=read_timeout, write_timeout=write_timeout)

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

    def _forward_order(self, targets: Sequence[str]) -> list[str]:
        """The owners to forward a read to: in preference order (which spreads keys over the
        owners), except that an owner far slower lately than the best one — paused, or
        overloaded — goes last (Cassandra's dynamic snitch and its badness threshold: ranking
        every read by latency alone sent every node's forwards to the one fastest owner, and
        cost a quarter of the read throughput in bench/slow_replica.py)."""
        stats = self.rep.stats
        if stats is None or len(targets) < 2:
            return list(targets)
        scores = {t: stats.score(t) for t in targets}
        known = [x for x in scores.values() if x is not None]
        if not known:
            return list(targets)
        bar = max(SLOW_FACTOR * min(known), min(known) + SLOW_MARGIN_S)
        slow = [t for t in targets if (x := scores[t]) is not None and x > bar]
        return [t for t in targets if t not in slow] + slow

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
                    if msg.op == "write" and e.details.get("sent"):
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
        got = await self.read(namespace, mid, requested, token, forwarded=forwarded)
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
        """Read a key. `token` (read only) holds the session's floors; merge the returned
        record's version into it (`Got.merge_into`: unless the version is settled, held by every
        owner (`spine.core.settlement`), when the token's entry for the key goes instead).

        An expired version (DESIGN §13) comes back as a tombstone view of itself (`masked`,
        judged on this node's HLC now): absent to the caller, yet its version still counts
        toward the session's floors, which the replicas' raw versions were checked against."""
        rt = self._route(namespace, mid)
        to = self._routed(rt, requested)
        if not forwarded and to.forwards(self.node_id):
            msg = Forward("get", namespace, mid, None, None if requested is None else
                          requested.code, token.encode() if token is not None else None)
            reply = await self._forward(self._forward_order(to.coordinators), msg)
            if reply is not None:
                rec = None if reply["record"] is None else Record.from_wire(reply["record"])
                return Got(masked(rec, self.hlc.now()), Level.from_code(reply["level"]),
                           reply["coordinator"], reply.get("settled") is True)
        level = self.policy.read_level(requested)
        rec, settled = await self._read_at(namespace, mid, rt, level, token)
        if rec is not None:
            stronger = self.policy.escalate(level, rec.tags)
            if stronger is not None:
                level = stronger
                rec, settled = await self._read_at(namespace, mid, rt, level, token)
        return Got(masked(rec, self.hlc.now()), level, self.node_id, settled)

    async def _read_at(
        self,
        namespace: str,
        mid: str,
        rt: Route,
        level: Level,
        token: SessionToken | None,
    ) -> tuple[Record | None, bool]:
        """The record a read at `level` returns, and whether it is settled (only judged for a
        read this node answers alone: a quorum's answer is simply tracked)."""
        key = f"{namespace}/{mid}"
        lrt = self._local(rt) if level.local else None
        prefs = rt.owners if lrt is None else lrt.owners  # a local level asks its region only
        floor = token.floor(key) if token is not None else None
        local = self.node_id in prefs
        q = self.policy.quorum(level)
        if lrt is not None:
            q = Quorum(majority(len(prefs)), majority(len(prefs)))
        if level.base is Level.STRONG:
            localize = self._local if lrt is not None else None
            return await self.strong.read(namespace, mid, prefs, q.r, q.w, floor,
                                          localize=localize), False
        enough = one_is_enough(level, token, key)
        if enough and local:
            rec = self.store.get(namespace, mid)
            if meets_floor(rec, floor) and not (token is not None and token.stale_for(key, rec)):
                settled = rec is not None and self._settled(key, rec, rt)
                if settled:
                    self.metrics.settled_reads.inc()
                return rec, settled
            self.metrics.session_waits.inc()
        r = 1 if enough else q.r
        asked = live(prefs, self.liveness.is_alive)
        answers = await self.rep.read(namespace, mid, asked, r, timeout=self.read_timeout,
                                      floor=floor)
        tally = tally_read(answers, r, floor)
        doubted = [p for p in prefs if p not in asked]
        if tally.error is not None and doubted:
            # This node's failure verdicts may be stale (it was paused or cut off, and SWIM has
            # not heard the others since): before refusing, ask the owners it holds down too.
            met = floor is None or any(meets_floor(x, floor) for x in answers.values())
            more = await self.rep.read(
                namespace, mid, doubted, max(1, r - len(answers)), timeout=self.read_timeout,
                floor=None if met else floor, doubted=True,
            )
            answers = {**answers, **more}
            tally = tally_read(answers, r, floor)
        if tally.error is None and token is not None and token.stale_for(key, tally.outcome.newest):
            tally = await self._past_own_write(namespace, mid, prefs, token, key)
        if isinstance(tally.error, QuorumUnavailable):
            self.metrics.quorum_failures.inc("read", level.label)
        if tally.error is not None:
            raise tally.error
        return tally.outcome.newest, False

    async def _past_own_write(
        self, namespace: str, mid: str, owners: Sequence[str], token: SessionToken, key: str
    ) -> ReadTally:
        """The answers held an earlier write of this session with a larger HLC than its last
        one (minted late: `spine.core.model.merge`): ask every owner, whose answers merge to the
        later write if any holds it; else the session cannot be served here."""
        answers = await self.rep.read(namespace, mid, list(owners), len(owners),
                                      timeout=self.read_timeout, doubted=True)
        tally = tally_read(answers, 1, token.floor(key))
        if tally.error is None and token.stale_for(key, tally.outcome.newest):
            err = SessionUnavailable("no reachable replica holds this session's last write",
                                     reached=len(answers))
            return ReadTally(tally.outcome, err)
        return tally

    async def settle(self, rec: Record) -> Record:
        """A version the change feed is about to deliver, made safe to deliver: see
        `StrongReads.settle`."""
        return await self.strong.settle(rec)

    def _settled(self, key: str, rec: Record, rt: Route) -> bool:
        """Whether every owner holds `rec` (this node's stored version of `key`, just read)."""
        return self.rep.settlement.settled(
            key, rec.version, rt.shard, rt.owners, rt.write_to,
            lambda: self.store.feed_entries(rec.namespace, [rec.id])[0][1])

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
        # The target must mint its versions well before we give up on it (our call's timeout is
        # read + write timeouts): a request delivered late, after a partition heals, must not
        # create a version newer than writes acknowledged since.
        budget_ms = int((self.read_timeout + self.write_timeout) * 1000 / 2)
        deadline = hlc_from_ms(hlc_ms(self.hlc.now()) + budget_ms)
        msg = Forward("write", namespace, "", body, None if requested is None else requested.code,
                      token.encode() if token is not None else None, agent, deadline,
                      None if by is None else by.encode())
        reply = await self._forward([target], msg)
        if reply is None:
            return None
        return [item_from_wire(x) for x in reply["results"]]

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
    ) -> ItemResult:
        """A write with `If-Match`, `If-None-Match` or `Spine-Fence` (DESIGN §12): one Paxos
        round from this node (any node may propose; nothing is forwarded)."""
        vector = (await self._vectors([op]))[0]
        return await self._strong_write(namespace, op, vector, token, agent, None, cond, by)

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
