"""Per-key Paxos, the thin shells (the decisions are `spine.core.paxos`'s).

- `Acceptor`: a replica's side. Each transition is decided on the key's state synchronously (no
  await between reading the state and taking the decision, so two rounds' messages on one key are
  ordered by the event loop), then persisted; the answer goes out only once the state is durable.
  The states of recently used keys stay in memory (the acceptor is the only writer of its
  `ballots` table, so the copy is exact), so a message reads and decodes nothing from the store.
- **Promises are durable through a bound, not one write each** (the prepare was one of the three
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
  The bound follows the ballots it is asked to cover, so a peer sending a ballot from far in the
  future (its frames pass the RPC layer's clock check, its ballots are not checked against a
  clock here) would, after this node restarts, leave every key refusing until the clock gets
  there, where before it blocked only the key it was sent for.
- `Proposer`: a round from any node: prepare, complete an interrupted change, judge the
  condition, accept, commit; retried with a higher ballot and a random back-off under contention
  until the deadline. The accept goes first to a quorum only ("thrifty": the replicas that
  promised, this node first), and to the other replicas when one of those refuses or fails, or
  has not answered after `hedge` seconds: Paxos's safety never depends on whom an accept is sent
  to, only on a quorum of acceptances, and a replica left out still gets the commit (the record,
  as every replica does). Prepares and commits go to every replica: a prepare sent to a quorum
  only would leave the others' acceptors unaware of competing ballots, so under contention a
  proposer's own acceptor would take a value its rivals had already overtaken, and the round
  end in a 504 (measured: 82 and 133 against 19 and 26 in the contended benchmark case).

A change the proposer sent for acceptance and then could not see through is *indeterminate*: a
later round may still complete it. The proposer says so (504 timeout) rather than answer 503,
unless it can tell from a later round that the change did land (then it succeeded) or could not
have (nothing of it accepted anywhere: 503, nothing applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import structlog

from spine.cluster.liveness import Liveness
from spine.cluster.rpc import Handler
from spine.core.clock import HLC, ZERO, Version, hlc_from_ms
from spine.core.errors import PeerUnavailable, QuorumUnavailable, SpineError, Timeout
from spine.core.messages import PaxosAccept, PaxosCommit, PaxosPrepare, Tag
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.paxos import (
    AcceptorState,
    Ballot,
    Current,
    Promise,
    Rejected,
    Repropose,
    ballot_from_wire,
    count_accepts,
    on_accept,
    on_commit,
    on_prepare,
    quorum_size,
    read_promises,
)
from spine.core.routing import Route, live
from spine.ports import RecordStore, Transport

log = structlog.get_logger("spine.paxos")

CHOSEN, NOWHERE, PARTLY = "chosen", "nowhere", "partly"  # what became of a proposal

# What a round's caller decides, given the key's current record (None: never written) and the
# version vector the new version must dominate: the record to write, or why not (412, 409, ...).
Decide = Callable[[Record | None, dict[str, int]], Record | SpineError]


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
    ) -> None:
        self.store = store
        self.apply = apply
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
        if msg.ballot.hlc >= self._bound and msg.ballot > self.state(msg.namespace,
                                                                     msg.id).promised:
            await self._cover(msg.ballot.hlc)
        st = self.state(msg.namespace, msg.id)  # decided from here on without an await
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
        st = self.state(msg.namespace, msg.id)
        new, ok = on_accept(st, msg.ballot, msg.record, any_ballot=self.any_ballot)
        if new is not None:
            await self._persist(msg.namespace, msg.id, new)
            st = new
        return [ok, [st.promised.hlc, st.promised.node]]

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


class Proposer:
    """Runs Paxos rounds on keys from this node."""

    def __init__(
        self,
        node_id: str,
        route: Callable[[str, str], Route],
        rpc: Transport,
        liveness: Liveness,
        hlc: HLC,
        rng: random.Random,
        *,
        rpc_timeout: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        metrics: SpineMetrics,
        hint: Callable[[Sequence[str], Record], Awaitable[None]] | None = None,
        hedge: float | None = None,
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.route = route
        self.rpc = rpc
        self.liveness = liveness
        self.hlc = hlc
        self.rng = rng
        self.rpc_timeout = rpc_timeout
        self.spawn = spawn
        self.hint = hint  # keeps a committed record for the replicas the commit did not reach
        # How long a thrifty accept waits for its quorum before asking the other replicas too
        # (a replica that fails or refuses brings them in at once). 100 ms fired on most
        # rounds of a saturated node, so its saving was lost; a quarter of the RPC timeout.
        self.hedge = rpc_timeout / 4 if hedge is None else hedge

    async def run(self, namespace: str, mid: str, decide: Decide, timeout: float) -> Record:
        """Carry out one change of a key: the record committed, or the error (412/409 from
        `decide`; 503 quorum_unavailable when nothing of it was accepted; 504 when its fate is
        unknown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        mine: Record | None = None  # our change, once sent for acceptance
        attempt = 0
        while True:
            attempt += 1
            rt = self.route(namespace, mid)
            # this node first: its own acceptor answers without a round trip
            nodes = sorted(live(rt.write_to, self.liveness.is_alive),
                           key=lambda n: n != self.node_id)
            need = quorum_size(len(rt.owners), rt.extra)
            budget = end - loop.time()
            if len(nodes) < need or budget <= 0:
                raise self._gave_up(mine, len(nodes), need)
            ballot = Version(self.hlc.now(), self.node_id)
            promises = await self._prepare(nodes, namespace, mid, ballot, need, budget)
            step = read_promises(promises, need)
            # the accept goes first to the replicas that promised
            nodes.sort(key=lambda n: not (n in promises and promises[n].ok))
            if isinstance(step, Rejected):
                await self._contended(step, attempt, end)
                continue
            if isinstance(step, Repropose):
                self.metrics.paxos_rounds.inc("reproposed")
                done = await self._choose(nodes, rt.write_to, ballot, step.record, need,
                                          end) == CHOSEN
                if done and mine is not None and step.record.version == mine.version:
                    return mine  # our own change, completed
                continue
            if mine is not None:
                if step.record is not None and step.record.version == mine.version:
                    return mine  # it landed after all
                raise Timeout("the change was sent for acceptance but its round did not finish;"
                              " it may or may not have been applied: read before retrying")
            out = decide(step.record, step.clock)
            if isinstance(out, SpineError):
                self.metrics.paxos_rounds.inc("refused")
                await self._repair(step, end)
                raise out
            mine = out
            outcome = await self._choose(nodes, rt.write_to, ballot, out, need, end)
            if outcome == CHOSEN:
                self.metrics.paxos_rounds.inc("chosen")
                return out
            if outcome == NOWHERE:
                mine = None  # no replica took it: the next round decides afresh

    def _gave_up(self, mine: Record | None, reached: int, need: int) -> SpineError:
        if mine is not None:
            return Timeout("the change was sent for acceptance but no round could finish it in"
                           " time; it may or may not have been applied: read before retrying")
        return QuorumUnavailable(f"{reached} of {need} replicas took part in the round; nothing"
                                 " was applied", reached=reached, needed=need, applied=False)

    async def _contended(self, step: Rejected, attempt: int, end: float) -> None:
        """A higher ballot was promised: wait a random while (longer each time) and go again."""
        self.metrics.paxos_rounds.inc("contended")
        if step.highest.hlc:
            with contextlib.suppress(SpineError):  # a ballot from past the clock's max offset
                self.hlc.observe(step.highest.hlc)
        loop = asyncio.get_running_loop()
        pause = self.rng.uniform(0, min(0.002 * 2**attempt, 0.1))
        await asyncio.sleep(max(0.0, min(pause, end - loop.time())))

    async def _choose(
        self, nodes: list[str], targets: Sequence[str], ballot: Ballot, record: Record,
        need: int, end: float,
    ) -> str:
        """Accept `record` under `ballot`, then commit it to a quorum: CHOSEN. Not accepted by a
        quorum (a higher ballot came): NOWHERE when every replica answered and none accepted,
        else PARTLY; the caller starts a new round. A replica of `targets` (the key's whole write
        set) thought down, or whose commit call fails, gets a hint, as a quorum write leaves one."""
        loop = asyncio.get_running_loop()
        answers = await self._gather(
            nodes, PaxosAccept(record.namespace, record.id, ballot, record), need,
            end - loop.time(), _accept_reply, lambda a: a[0])
        rejected = count_accepts(answers, need)
        if rejected is not None:
            await self._contended(rejected, 1, end)
            nowhere = len(answers) == len(nodes) and rejected.granted == 0
            return NOWHERE if nowhere else PARTLY
        hint = self.hint
        missed = None if hint is None else (lambda node: hint([node], record))
        if hint is not None:  # the write set's replicas thought down get one at once
            await hint([n for n in targets if n not in nodes], record)
        acks = await self._gather(
            nodes, PaxosCommit(record.namespace, record.id, ballot, record), need,
            max(0.0, end - loop.time()), lambda w: bool(w), lambda a: a, missed)
        got = sum(1 for a in acks.values() if a)
        if got < need:
            raise Timeout(f"the change was chosen but {got} of {need} replicas committed it in"
                          " time; it will be completed by the next round on this key")
        return CHOSEN

    async def _repair(self, step: Current, end: float) -> None:
        """Before a failed condition is answered: the last commit to the promisers lacking it."""
        if step.repair is None or not step.laggards:
            return
        loop = asyncio.get_running_loop()
        rec = step.repair
        await self._gather(list(step.laggards),
                           PaxosCommit(rec.namespace, rec.id, step.repair_ballot, rec),
                           len(step.laggards), max(0.0, end - loop.time()),
                           lambda w: bool(w), lambda a: a)

    async def _prepare(
        self, nodes: list[str], namespace: str, mid: str, ballot: Ballot, need: int,
        timeout: float,
    ) -> dict[str, Promise]:
        return await self._gather(nodes, PaxosPrepare(namespace, mid, ballot), need, timeout,
                                  Promise.from_wire, lambda p: p.ok)

    async def _gather(
        self,
        nodes: Sequence[str],
        msg: PaxosPrepare | PaxosAccept | PaxosCommit,
        need: int,
        timeout: float,
        parse: Callable[[Any], Any],
        good: Callable[[Any], bool],
        missed: Callable[[str], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Send `msg` to `nodes`; return the parsed answers once `need` are good, or every node
        asked answered, or `timeout` passed. Calls still out go on in owned tasks; `missed(node)`
        runs for each whose call fails for want of the peer (even after the return). An accept
        is thrifty: asked of the first `need` nodes, and of the others once one of those fails or
        answers no good, or after `hedge` seconds."""
        answers: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        # A future and a timer rather than an Event under wait_for: no extra task per phase.
        done: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        thrifty = isinstance(msg, PaxosAccept)
        first = list(nodes[:need]) if thrifty else list(nodes)
        rest = list(nodes[len(first):])
        outstanding = len(first)
        ok = 0

        def expand() -> None:
            nonlocal outstanding, rest
            if rest and not done.done():
                ask, rest = rest, []
                outstanding += len(ask)
                for n in ask:
                    self.spawn(one(n))

        async def one(node: str) -> None:
            nonlocal outstanding, ok
            try:
                reply = await self.rpc.call(node, msg, self.rpc_timeout)
                answers[node] = parse(reply)
                self.liveness.report_success(node)
                if good(answers[node]):
                    ok += 1
                    if ok >= need:
                        finish()
                else:
                    expand()
            except PeerUnavailable as e:
                expand()
                if "code" not in e.details:
                    self.liveness.report_failure(node)
                    self.rpc.drop(node)
                if missed is not None:
                    with contextlib.suppress(SpineError):  # our own disk refused: logged there
                        await missed(node)
            except (ValueError, TypeError, IndexError, KeyError) as e:  # a malformed answer
                expand()
                log.warning("paxos_bad_reply", peer=node, error=str(e)[:200])
            except SpineError as e:
                expand()
                log.debug("paxos_call_failed", peer=node, code=e.code)
            finally:
                outstanding -= 1
                if outstanding == 0 and not rest:
                    finish()

        if not nodes:
            return answers
        for n in first:
            self.spawn(one(n))
        timer = loop.call_later(max(timeout, 0.001), finish)
        hedge = loop.call_later(self.hedge, expand) if rest else None
        try:
            await done
        finally:
            timer.cancel()
            if hedge is not None:
                hedge.cancel()
        return dict(answers)


def _accept_reply(w: Any) -> tuple[bool, Ballot]:
    if not isinstance(w, list) or len(w) != 2 or not isinstance(w[0], bool):
        raise ValueError("not an accept reply")
    return w[0], ballot_from_wire(w[1])
