"""Per-key Paxos, a replica's side: the acceptor (the decisions are `spine.core.paxos`'s; the
proposer's shell is `spine.cluster.paxos`).

Each transition is decided on the key's state synchronously (no await between reading the state
and taking the decision, so two rounds' messages on one key are ordered by the event loop), then
persisted; the answer goes out only once the state is durable. The states of recently used keys
stay in memory (the acceptor is the only writer of its `ballots` table, so the copy is exact),
so a message reads and decodes nothing from the store.

**Promises are durable through a bound, not one write each** (the prepare was one of the three
persisted phases of a round: one fewer LMDB write and fsync wait per replica and round).
Paxos needs an acceptor never to take a ballot below one it promised, across a crash too.
Here the acceptor keeps a durable *promise bound* (HLC, its `ballots` table under a reserved
key) and makes a promise in memory only while the ballot's HLC is below the bound;
a prepare at or past it first raises the bound to its HLC + `bound_margin` (250 ms of HLC: one
write a quarter second under load) and waits for that write. At start the acceptor reads the
bound and treats every key as promised up to it (`_floor`), which is above every promise the
previous process made, durable or not: so no ballot it may have promised can be accepted or
promised again below that promise after a restart, which is all a durable promise gives. The
cost: after a restart, rounds with ballots minted before it are refused once, and the proposer
takes the bound from the refusal (`HLC.observe`, within `clock.max_offset`, which the margin
stays under) and goes again. Accepted values and commits are written before the answer, as
before; a promise held only in memory is written out before its key's state leaves memory.
The bound follows the ballots it is asked to cover, so a ballot from far in the future would,
after this node restarts, leave every key refusing until the clock got there. So a ballot's HLC
is checked against this node's clock like an RPC frame's (`clock_check`: `HLC.check`, refused
past `clock.max_offset` ahead of the wall clock) before it is promised or accepted: a proposer
mints ballots from its HLC, which its peers' frame checks already keep within that offset, so
only a forged or corrupt ballot is refused (`503 clock_skew` to that round, from this replica).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import structlog

from spine.cluster.rpc import Handler
from spine.core.clock import ZERO, Version, hlc_from_ms
from spine.core.messages import PaxosAccept, PaxosCommit, PaxosPrepare, Tag
from spine.core.model import Record
from spine.core.paxos import (
    AcceptorState,
    Promise,
    on_accept,
    on_commit,
    on_prepare,
    on_warm_accept,
    round_leader,
    settled_at,
    taken_already,
)
from spine.ports import RecordStore

log = structlog.get_logger("spine.paxos")


# Where the promise bound is kept: a key no namespace can have (namespaces are never empty).
BOUND_KEY = ("", "\0paxos-promise-bound")
_MAX_HLC = 2**64 - 1


@dataclass(slots=True)
class _Held:
    """A key's acceptor state in memory: the newest decided, the writes of it still in flight,
    and whether the store will hold it once they land (False: a promise kept in memory only)."""

    state: AcceptorState
    writes: int = 0
    durable: bool = True


class Acceptor:
    """A replica's acceptor for every key it holds."""

    def __init__(
        self,
        store: RecordStore,
        apply: Callable[[Sequence[Record]], Coroutine[Any, Any, Any]],
        *,
        any_ballot: bool = False,
        bound_margin: int = hlc_from_ms(250),
        max_held: int = 8192,
        clock_check: Callable[[int], None] | None = None,
    ) -> None:
        """`clock_check` raises ClockSkew for an HLC too far ahead (`HLC.check`); None: no check
        (unit tests on made-up ballots)."""
        self.store = store
        self.apply = apply
        self.clock_check = clock_check
        self.any_ballot = any_ballot  # test-only tooth: paxos.unsafe_accept_any_ballot
        self.bound_margin = bound_margin
        self.max_held = max_held
        self._held: OrderedDict[tuple[str, str], _Held] = OrderedDict()
        raw = store.ballots_get(*BOUND_KEY)
        self._bound = 0 if raw is None else int(msgpack.unpackb(raw))
        # Every promise the previous process made had a ballot below (bound, ""): see the module
        # docstring. ZERO when there was none.
        self._floor = Version(self._bound, "") if self._bound else ZERO
        self._raising: asyncio.Future[None] | None = None

    def state(self, namespace: str, mid: str) -> AcceptorState:
        """The key's state: the newest decided (in memory), else the stored one (promised at
        least up to the floor)."""
        key = (namespace, mid)
        held = self._held.get(key)
        if held is not None:
            self._held.move_to_end(key)
            return held.state
        raw = self.store.ballots_get(namespace, mid)
        st = AcceptorState() if raw is None else AcceptorState.from_wire(
            msgpack.unpackb(raw, raw=False))
        if st.promised < self._floor:
            st = replace(st, promised=self._floor)
        self._held[key] = _Held(st)
        self._trim()
        return st

    def leader(self, namespace: str, mid: str, me: str, write_to: Sequence[str],
               is_alive: Callable[[str], bool]) -> str | None:
        """The other live replica that led the key's latest round here (`round_leader`), if
        any: where this node forwards a conditional write of the key."""
        return round_leader(self.state(namespace, mid), me, write_to, is_alive)

    def _promise(self, key: tuple[str, str], st: AcceptorState) -> None:
        """Make `st` (a new promise, below the durable bound) the key's state, in memory only."""
        held = self._held.get(key)
        if held is None:
            self._held[key] = _Held(st, 0, False)
            self._trim()
        else:
            held.state, held.durable = st, False

    def _persist(self, namespace: str, mid: str, st: AcceptorState) -> asyncio.Future[None]:
        """Make `st` the key's state now (what the next message on the key is decided on) and
        start the write that makes it durable (await it before answering). Writes start in the
        order states are decided (a task starts in creation order), so the last one stored is the
        last one decided; each carries every promise decided before it."""
        key = (namespace, mid)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(st)
        held.state, held.durable = st, True
        held.writes += 1
        return asyncio.ensure_future(self._write(key, st, held))

    async def _write(self, key: tuple[str, str], st: AcceptorState, held: _Held) -> None:
        try:
            await self.store.ballots_put(*key, msgpack.packb(st.to_wire(), use_bin_type=True))
        except BaseException:
            held.durable = False  # kept in memory (and written again before it leaves)
            raise
        finally:
            held.writes -= 1

    def _trim(self) -> None:
        """Keep at most `max_held` keys in memory: the least recently used durable ones leave;
        one holding a promise kept only in memory is written out first (and leaves later)."""
        excess = len(self._held) - self.max_held
        if excess <= 0:
            return
        for key in list(itertools.islice(self._held, excess + 32)):
            held = self._held[key]
            if held.writes:
                continue
            if held.durable:
                del self._held[key]
                excess -= 1
                if excess <= 0:
                    return
            else:
                self._persist(*key, held.state).add_done_callback(_log_spill)

    async def _cover(self, hlc: int) -> None:
        """Return once the durable promise bound is above `hlc` (one write raises it for every
        prepare waiting meanwhile)."""
        while hlc >= self._bound and self._bound < _MAX_HLC:
            if self._raising is None:
                self._raising = asyncio.ensure_future(
                    self._raise(min(hlc + self.bound_margin, _MAX_HLC)))
            await asyncio.shield(self._raising)

    async def _raise(self, target: int) -> None:
        try:
            await self.store.ballots_put(*BOUND_KEY, msgpack.packb(target))
            self._bound = max(self._bound, target)
        finally:
            self._raising = None

    def handlers(self) -> dict[Tag, Handler]:
        """The RPC handlers a proposer's rounds call."""

        async def prepare(_peer: str, msg: PaxosPrepare) -> list[Any]:
            return await self.prepare(msg)

        async def accept(_peer: str, msg: PaxosAccept) -> list[Any]:
            return await self.accept(msg)

        async def commit(_peer: str, msg: PaxosCommit) -> bool:
            return await self.commit(msg)

        return {Tag.PAXOS_PREPARE: prepare, Tag.PAXOS_ACCEPT: accept, Tag.PAXOS_COMMIT: commit}

    async def prepare(self, msg: PaxosPrepare) -> list[Any]:
        """Phase 1: a Promise's wire form. A promise is kept in memory when the durable bound
        covers its ballot; the bound is raised (and durable) first when it does not."""
        if self.clock_check is not None:
            self.clock_check(msg.ballot.hlc)
        if msg.after is not None:
            await self._commit_pending(msg)
        if msg.ballot.hlc >= self._bound and msg.ballot > self.state(msg.namespace,
                                                                     msg.id).promised:
            await self._cover(msg.ballot.hlc)
        st = self.state(msg.namespace, msg.id)  # decided from here on without an await
        if msg.after is not None and not self._settled(msg.namespace, msg.id, st, msg.after,
                                                       msg.expect):
            # a warm round's guard failed: no promise (the proposer runs a round of the usual
            # kind), answered as a refusal
            return Promise(False, st.promised, st.accepted, None, st.committed, None).to_wire()
        new, ok = on_prepare(st, msg.ballot, any_ballot=self.any_ballot)
        if new is not None:
            if msg.ballot.hlc < self._bound:
                self._promise((msg.namespace, msg.id), new)
            else:  # the bound fell behind meanwhile (a hostile ballot): the plain way
                await self._persist(msg.namespace, msg.id, new)
            st = new
        rec = self.store.get(msg.namespace, msg.id)
        return Promise(ok, st.promised, st.accepted, st.accepted_record, st.committed,
                       rec).to_wire()

    async def accept(self, msg: PaxosAccept) -> list[Any]:
        """Phase 2: [accepted, the ballot promised]."""
        assert msg.record is not None  # the decoder requires one
        if self.clock_check is not None:
            self.clock_check(msg.ballot.hlc)
        if msg.after is not None:
            await self._commit_pending(msg)
        st = self.state(msg.namespace, msg.id)
        if taken_already(st, msg.ballot):  # delivered again: answered once durable, as before
            await self._persist(msg.namespace, msg.id, st)
            return [True, [st.promised.hlc, st.promised.node]]
        if msg.after is None:
            new, ok = on_accept(st, msg.ballot, msg.record, any_ballot=self.any_ballot)
        elif self.any_ballot or self._settled(msg.namespace, msg.id, st, msg.after, msg.expect):
            new, ok = on_warm_accept(st, msg.ballot, msg.record, msg.after,
                                     any_ballot=self.any_ballot)
        else:
            new, ok = None, False
        if new is not None:
            await self._persist(msg.namespace, msg.id, new)
            st = new
        return [ok, [st.promised.hlc, st.promised.node]]

    async def _commit_pending(self, msg: PaxosPrepare | PaxosAccept) -> None:
        """A warm round's message says its proposer saw its round `after` chosen (it remembers
        only chosen rounds). A replica that accepted that round but has not had its commit yet
        (the commit is on its way: the round was answered after a quorum of commits) commits it
        first, as Multi-Paxos lets the next accept carry the last commit: committing a chosen
        value is always safe, and the guard then judges the key as that round left it."""
        st = self.state(msg.namespace, msg.id)
        if (msg.after is not None and st.accepted == msg.after and st.committed < msg.after
                and st.accepted_record is not None):
            await self.commit(PaxosCommit(msg.namespace, msg.id, msg.after, st.accepted_record))

    def _settled(self, namespace: str, mid: str, st: AcceptorState, after: Version,
                 expect: Version | None) -> bool:
        """A warm round's guard: the key's rounds stand where the proposer's last left them
        (`settled_at`) and this replica stores that round's version (`expect`), so no write of
        any level has reached this replica since."""
        if not settled_at(st, after):
            return False
        rec = self.store.get(namespace, mid)
        return rec is not None and rec.version == expect

    async def commit(self, msg: PaxosCommit) -> bool:
        """Phase 3: the record merged into the store, then the ballot noted committed."""
        assert msg.record is not None
        new = on_commit(self.state(msg.namespace, msg.id), msg.ballot)
        if new is None:
            await self.apply([msg.record])
        else:  # submitted together: one group commit (one fsync) carries both
            durable = self._persist(msg.namespace, msg.id, new)
            await asyncio.gather(self.apply([msg.record]), durable)
        return True


def _log_spill(fut: asyncio.Future[None]) -> None:
    """A promise written out to leave memory failed: it stays in memory (`_write`); logged."""
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("paxos_state_spill_failed", error=str(fut.exception())[:200])
