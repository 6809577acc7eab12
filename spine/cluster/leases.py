"""Leases with fencing tokens (DESIGN §12): acquire, read and release, each one Paxos round (or,
for a read, a strong read) on the lease's record. The decisions are `spine.core.leases`'s.

A lease's record lives in the reserved namespace `~leases`, replicated, hinted, repaired and
moved on ring changes like any record, so a lease survives restarts and node loss as data does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from spine.cluster.paxos import Proposer
from spine.core.clock import HLC, Version, hlc_ms, vv_increment
from spine.core.consistency import Level
from spine.core.errors import NotFound, SpineError
from spine.core.leases import (
    LeaseState,
    LeaseView,
    decide_acquire,
    decide_release,
    lease_key,
    state_of,
    view,
)
from spine.core.model import Record

# The coordinator's get: (namespace, id, level, session token) -> (record, level, coordinator).
StrongGet = Callable[[str, str, Level, None], Awaitable[tuple[Record | None, Level, str]]]


class Leases:
    """The lease API of one node."""

    def __init__(
        self,
        node_id: str,
        proposer: Proposer,
        strong_get: StrongGet,
        hlc: HLC,
        *,
        max_offset_ms: int,
        timeout: float,
    ) -> None:
        self.node_id = node_id
        self.proposer = proposer
        self.strong_get = strong_get
        self.hlc = hlc
        self.max_offset_ms = max_offset_ms
        self.timeout = timeout

    def _record(self, namespace: str, mid: str, current: Record | None, clock: dict[str, int],
                st: LeaseState) -> Record:
        return Record(
            namespace=namespace, id=mid, version=Version(st.granted_hlc, self.node_id),
            clock=vv_increment(clock, self.node_id), metadata=st.metadata(),
            created_hlc=current.created_hlc if current is not None else st.granted_hlc,
        )

    def _stamp(self, current: Record | None) -> int:
        """An HLC reading above the current version's, for the new one."""
        return self.hlc.observe(current.version.hlc) if current is not None else self.hlc.now()

    async def acquire(self, namespace: str, name: str, holder: str, ttl_ms: int) -> LeaseView:
        """Grant or renew the lease; LeaseHeld (409) when another holder has it."""
        lns, lid = lease_key(namespace, name)

        def decide(current: Record | None, clock: dict[str, int]) -> Record | SpineError:
            now = self._stamp(current)
            st = decide_acquire(state_of(current), holder, ttl_ms, now, self.max_offset_ms)
            if isinstance(st, SpineError):
                return st
            return self._record(lns, lid, current, clock, st)

        rec = await self.proposer.run(lns, lid, decide, self.timeout)
        return self._view(name, rec)

    async def get(self, namespace: str, name: str) -> LeaseView:
        """The lease as a strong read finds it; NotFound when it was never granted."""
        lns, lid = lease_key(namespace, name)
        rec, _, _ = await self.strong_get(lns, lid, Level.STRONG, None)
        if state_of(rec) is None:
            raise NotFound(f"no lease {name!r} in namespace {namespace!r}")
        assert rec is not None
        return self._view(name, rec)

    async def release(self, namespace: str, name: str, token: int) -> LeaseView:
        """Free the lease if `token` is its current one (Conflict 409 otherwise)."""
        lns, lid = lease_key(namespace, name)

        def decide(current: Record | None, clock: dict[str, int]) -> Record | SpineError:
            st = decide_release(state_of(current), token)
            if isinstance(st, SpineError):
                return st
            now = self._stamp(current)
            return self._record(lns, lid, current, clock,
                                LeaseState(None, st.token, now, 0))

        rec = await self.proposer.run(lns, lid, decide, self.timeout)
        return self._view(name, rec)

    def _view(self, name: str, rec: Record) -> LeaseView:
        st = state_of(rec)
        assert st is not None
        return view(name, st, hlc_ms(self.hlc.now()), self.max_offset_ms)
