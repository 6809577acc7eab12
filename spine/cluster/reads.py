"""The read path: one key read at its consistency level (DESIGN §4–§5).

- eventual: R=1.
- session: R=1 when the client sends a session token that may speak for the key (asking more
  replicas until one is as new as the token requires), R=quorum without one.
- strong: ABD's (`spine.cluster.strong_reads`): the newest of a quorum, written back to a quorum
  first.

A read is coordinated by a live replica of the key; a node that is not one forwards it, to the
owners in preference order with the lately far slower ones last. The decisions are pure: routing
in `spine.core.routing`, tallies per level in `spine.core.quorum`, which versions are settled
(held by every owner) in `spine.core.settlement`; this class carries them out. The routing and
the forwarding are the coordinator's, shared with its writes, and passed in.

A session token passed in is read, never changed: it gives the key's floor. The caller merges
what the read saw into its own token (`Got.merge_into`, which leaves a settled version out).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spine.cluster.liveness import Liveness
from spine.cluster.replication import Replicator
from spine.cluster.strong_reads import StrongReads
from spine.core.clock import HLC
from spine.core.consistency import Level, Policy, Quorum, majority
from spine.core.errors import QuorumUnavailable, SessionUnavailable
from spine.core.expiry import masked
from spine.core.messages import Forward
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.quorum import ReadTally, meets_floor, one_is_enough, tally_read
from spine.core.routing import Route, live
from spine.core.session import SessionToken
from spine.ports import RecordStore


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
# The coordinator's routing and forwarding, shared with its writes.
RouteFn = Callable[[str, str], Route]
LocalFn = Callable[[Route], Route | None]
RoutedFn = Callable[[Route, Level | None], Route]
ForwardFn = Callable[[list[str], Forward], Awaitable[dict[str, Any] | None]]


class Reads:
    """One node's reads of a key at their consistency levels (strong ones in `self.strong`)."""

    def __init__(
        self,
        node_id: str,
        store: RecordStore,
        replicator: Replicator,
        liveness: Liveness,
        hlc: HLC,
        policy: Policy,
        metrics: SpineMetrics,
        *,
        route: RouteFn,
        local: LocalFn,
        routed: RoutedFn,
        forward: ForwardFn,
        read_timeout: float,
        write_timeout: float,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.rep = replicator
        self.liveness = liveness
        self.hlc = hlc
        self.policy = policy
        self.metrics = metrics
        self.route = route
        self.local = local
        self.routed = routed
        self.forward = forward
        self.read_timeout = read_timeout
        self.strong = StrongReads(route, replicator, liveness, policy, metrics,
                                  read_timeout=read_timeout, write_timeout=write_timeout)

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
        rt = self.route(namespace, mid)
        to = self.routed(rt, requested)
        if not forwarded and to.forwards(self.node_id):
            msg = Forward("get", namespace, mid, None, None if requested is None else
                          requested.code, token.encode() if token is not None else None)
            reply = await self.forward(self._forward_order(to.coordinators), msg)
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
        lrt = self.local(rt) if level.local else None
        prefs = rt.owners if lrt is None else lrt.owners  # a local level asks its region only
        floor = token.floor(key) if token is not None else None
        local = self.node_id in prefs
        q = self.policy.quorum(level)
        if lrt is not None:
            q = Quorum(majority(len(prefs)), majority(len(prefs)))
        if level.base is Level.STRONG:
            localize = self.local if lrt is not None else None
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

    def _settled(self, key: str, rec: Record, rt: Route) -> bool:
        """Whether every owner holds `rec` (this node's stored version of `key`, just read)."""
        return self.rep.settlement.settled(
            key, rec.version, rt.shard, rt.owners, rt.write_to,
            lambda: self.store.feed_entries(rec.namespace, [rec.id])[0][1])
