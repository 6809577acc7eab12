"""Strong reads: ABD's two phases carried out (Attiya, Bar-Noy, Dolev 1995; DESIGN §4).

A strong read asks a quorum of the key's live owners, and before it returns the newest version
they hold it writes that version back to a quorum unless a quorum already holds it, so no later
quorum read can return anything older (the read is linearizable with strong and conditional
writes: a committed Paxos change is an ordinary record on a quorum). The decisions are pure, in
`spine.core.abd`; this shell sends the phases out through the replicator.

The change feed uses the same two phases to make a version safe to deliver (`settle`).
"""

from __future__ import annotations

from collections.abc import Callable

from spine.cluster.liveness import Liveness
from spine.cluster.replication import Replicator
from spine.core.abd import Failed, ReadQuorum, StrongRead, WriteQuorum
from spine.core.clock import Version
from spine.core.consistency import Level, Policy
from spine.core.errors import QuorumUnavailable, SpineError
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.routing import Route, live


class StrongReads:
    """ABD reads of one node, and the feed's `settle` built on them."""

    def __init__(
        self,
        route: Callable[[str, str], Route],
        replicator: Replicator,
        liveness: Liveness,
        policy: Policy,
        metrics: SpineMetrics,
        *,
        read_timeout: float,
        write_timeout: float,
    ) -> None:
        self.route = route
        self.rep = replicator
        self.liveness = liveness
        self.policy = policy
        self.metrics = metrics
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout

    async def read(
        self,
        namespace: str,
        mid: str,
        prefs: tuple[str, ...],
        r: int,
        w: int,
        floor: Version | None,
        *,
        localize: Callable[[Route], Route | None] | None = None,
    ) -> Record | None:
        """The newest version a quorum (`r`) of the live `prefs` holds, on a quorum (`w`) before
        it is returned; it must meet `floor` (a session's), else SessionUnavailable. `localize`
        (local_strong): the write-back goes to the key's write set within one region."""
        abd = StrongRead(live(prefs, self.liveness.is_alive), r, w, floor)
        answers = await self._read_quorum(namespace, mid, abd.start())
        rt = self.route(namespace, mid)
        if localize is not None:
            rt = localize(rt) or rt
        step = abd.on_answers(answers, (rt.write_to, rt.extra))
        if isinstance(step, WriteQuorum):
            step = abd.on_acks(await self._write_quorum(step))
            if abd.repaired:
                self.metrics.read_repairs.inc(by=abd.repaired)
        if isinstance(step, Failed):
            raise self._failed(step)
        return step.record

    async def settle(self, rec: Record) -> Record:
        """A version the change feed is about to deliver, made safe to deliver (DESIGN §15): on
        a quorum of its key's replicas, so no later quorum read returns anything older. The key
        is read at the strong level (ABD: the newest a quorum holds, written back to a quorum);
        if `rec` is newer still (its own replica alone holds it), `rec` itself is written to a
        quorum. Returns what to deliver, the newer of the two; QuorumUnavailable if neither
        could be made to hold."""
        rt = self.route(rec.namespace, rec.id)
        q = self.policy.quorum(Level.STRONG)
        found = await self.read(rec.namespace, rec.id, rt.owners, q.r, q.w, None)
        if found is not None and found.version >= rec.version:
            return found
        need = q.w + rt.extra
        acks = await self.rep.write([rec], [rt.write_to], need, hints_count=False,
                                    timeout=self.write_timeout)
        if acks[0] < need:
            raise QuorumUnavailable("could not write the version to a quorum",
                                    reached=acks[0], needed=need)
        return rec

    async def _read_quorum(
        self, namespace: str, mid: str, step: ReadQuorum
    ) -> dict[str, Record | None]:
        """ABD's read phase: what a quorum of `step.nodes` holds (no read repair: the write-back
        is ABD's own)."""
        return await self.rep.read(
            namespace, mid, step.nodes, step.r, timeout=self.read_timeout, repair=False
        )

    async def _write_quorum(self, step: WriteQuorum) -> int:
        """ABD's write phase: how many of `step.nodes` acknowledged (hints do not count)."""
        acks = await self.rep.write(
            [step.record], [step.nodes], step.need, hints_count=False,
            timeout=self.write_timeout,
        )
        return acks[0]

    def _failed(self, step: Failed) -> SpineError:
        if step.metric is not None:
            self.metrics.quorum_failures.inc(*step.metric)
        return step.error
