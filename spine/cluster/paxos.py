"""Per-key Paxos, the thin shells (the decisions are `spine.core.paxos`'s).

- `Acceptor` (`spine.cluster.acceptor`): a replica's side, its promises durable through a bound.
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

- A key's next change from the node that led its last round is a *warm round*
  (`Proposer._warm_round`, `spine.core.paxos`): no prepare over the network, one guarded accept
  to the last round's partner, then the commits: three remote calls where a full round makes five.
  A condition that fails there is answered once this node's acceptor and the partner confirm the
  key stands where that round left it (`_warm_refusal`: one remote call, the key stays warm), and
  with none for the changes that were already waiting when such a check began.

A change the proposer sent for acceptance and then could not see through is *indeterminate*: a
later round may still complete it. The proposer says so (504 timeout) rather than answer 503,
unless it can tell from a later round that the change did land (then it succeeded) or could not
have (nothing of it accepted anywhere: 503, nothing applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple

import structlog

from spine.cluster.liveness import Liveness
from spine.core.clock import HLC, Version
from spine.core.errors import (
    Overloaded,
    PeerUnavailable,
    QuorumUnavailable,
    SpineError,
    Timeout,
)
from spine.core.messages import PaxosAccept, PaxosCommit, PaxosPrepare
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.paxos import (
    Ballot,
    Current,
    Promise,
    Rejected,
    Repropose,
    ballot_from_wire,
    count_accepts,
    quorum_size,
    read_promises,
    stands_at,
)
from spine.core.routing import Route, live
from spine.ports import Transport

log = structlog.get_logger("spine.paxos")

CHOSEN, NOWHERE, PARTLY = "chosen", "nowhere", "partly"  # what became of a proposal

# What a round's caller decides, given the key's current record (None: never written) and the
# version vector the new version must dominate: the record to write, or why not (412, 409, ...).
Decide = Callable[[Record | None, dict[str, int]], Record | SpineError]


class _Turn:
    """A key's changes on this node: the one running holds `lock`; `users` counts it and those
    waiting."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Warm(NamedTuple):
    """A key whose last round this node led with its own acceptor and `partner`: that round's
    ballot and record; and `stood_for`: the changes of the key that arrived here (numbered by
    `Proposer._arrivals`) before a warm refusal's check found both acceptors standing there,
    0 when none has since the round."""

    after: Ballot
    last: Record
    partner: str
    stood_for: int = 0


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
        max_warm: int = 4096,
        max_waiting: int = 64,
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
        # Keys whose last round this node saw chosen with its own acceptor and one other:
        # (that round's ballot, its record, the other acceptor). Bounded; a hint only (every
        # acceptor checks the guard itself).
        self.max_warm = max_warm
        self._warm: OrderedDict[tuple[str, str], _Warm] = OrderedDict()
        self._arrivals = 0  # changes that reached `run`, numbered in arrival order
        self.max_waiting = max_waiting
        self._turns: dict[tuple[str, str], _Turn] = {}  # keys with a change running here

    async def run(self, namespace: str, mid: str, decide: Decide, timeout: float,
                  localize: Callable[[Route], Route | None] | None = None) -> Record:
        """Carry out one change of a key: the record committed, or the error (412/409 from
        `decide`; 503 quorum_unavailable when nothing of it was accepted; 504 when its fate is
        unknown). `localize` (local_strong): the key's route within one region, whose replicas
        alone then take part (the route as it is when it gives None).

        Changes of one key from this node take turns (first come, first served): two of them
        would only duel with ballots and back off, and after its turn a change finds the key
        warm. At most `max_waiting` wait per key; one more, or one whose turn does not come
        within `timeout`, is refused with 429 overloaded (nothing applied)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        key = (namespace, mid)
        self._arrivals += 1
        arrival = self._arrivals
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        if turn.users > self.max_waiting:
            self.metrics.paxos_rounds.inc("queue_full")
            raise Overloaded(f"{turn.users} changes of this key are waiting on this node")
        turn.users += 1
        try:
            try:
                async with asyncio.timeout_at(end):
                    await turn.lock.acquire()
            except TimeoutError:
                self.metrics.paxos_rounds.inc("queue_full")
                raise Overloaded("this key's earlier changes on this node outlasted the"
                                 " write timeout; nothing was applied") from None
            try:
                return await self._run(namespace, mid, decide, end, localize, arrival)
            finally:
                turn.lock.release()
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[key]

    async def _run(self, namespace: str, mid: str, decide: Decide, end: float,
                   localize: Callable[[Route], Route | None] | None, arrival: int) -> Record:
        loop = asyncio.get_running_loop()
        mine: Record | None = None  # our change, once sent for acceptance
        attempt = 0
        while True:
            attempt += 1
            rt = self.route(namespace, mid)
            if localize is not None:
                rt = localize(rt) or rt
            # this node first: its own acceptor answers without a round trip
            nodes = sorted(live(rt.write_to, self.liveness.is_alive),
                           key=lambda n: n != self.node_id)
            need = quorum_size(len(rt.owners), rt.extra)
            budget = end - loop.time()
            if len(nodes) < need or budget <= 0:
                raise self._gave_up(mine, len(nodes), need)
            warm = self._warm.pop((namespace, mid), None) if mine is None else None
            if (warm is not None and need == 2 and warm.partner in nodes
                    and nodes[0] == self.node_id):
                landed, sent = await self._warm_round(namespace, mid, warm, decide, rt.write_to,
                                                    end, arrival)
                if landed is not None:
                    return landed
                if sent is not None:  # accepted somewhere, perhaps: the next round tells
                    mine = sent
                    continue
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
                done = (await self._choose(nodes, rt.write_to, ballot, step.record, need,
                                           end))[0] == CHOSEN
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
            outcome, accepters = await self._choose(nodes, rt.write_to, ballot, out, need, end)
            if outcome == CHOSEN:
                self.metrics.paxos_rounds.inc("chosen")
                self._remember(namespace, mid, ballot, out, accepters)
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
    ) -> tuple[str, list[str]]:
        """Accept `record` under `ballot`, then commit it to a quorum: CHOSEN, with the replicas
        that accepted. Not accepted by a quorum (a higher ballot came): NOWHERE when every
        replica answered and none accepted, else PARTLY; the caller starts a new round."""
        loop = asyncio.get_running_loop()
        answers = await self._gather(
            nodes, PaxosAccept(record.namespace, record.id, ballot, record), need,
            end - loop.time(), _accept_reply, lambda a: a[0])
        rejected = count_accepts(answers, need)
        if rejected is not None:
            await self._contended(rejected, 1, end)
            nowhere = len(answers) == len(nodes) and rejected.granted == 0
            return NOWHERE if nowhere else PARTLY, []
        await self._commit(nodes, targets, ballot, record, need, end)
        return CHOSEN, [n for n, (ok, _) in answers.items() if ok]

    async def _commit(
        self, nodes: list[str], targets: Sequence[str], ballot: Ballot, record: Record,
        need: int, end: float,
    ) -> None:
        """Commit a chosen `record` to `nodes`, returning once `need` have it (Timeout if they
        do not in time). A replica of `targets` (the key's whole write set) thought down, or
        whose commit call fails, gets a hint, as a quorum write leaves one."""
        loop = asyncio.get_running_loop()
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

    def _remember(self, namespace: str, mid: str, ballot: Ballot, record: Record,
                  accepters: list[str]) -> None:
        """Keep a chosen round for a warm round on the key next time, when this node's acceptor
        was among those that accepted it, with another to ask."""
        others = [n for n in accepters if n != self.node_id]
        if self.node_id in accepters and others:
            self._keep(namespace, mid, _Warm(ballot, record, others[0]))

    def _keep(self, namespace: str, mid: str, warm: _Warm) -> None:
        self._warm[(namespace, mid)] = warm
        self._warm.move_to_end((namespace, mid))
        while len(self._warm) > self.max_warm:
            self._warm.popitem(last=False)

    async def _warm_round(
        self, namespace: str, mid: str, warm: _Warm, decide: Decide, targets: Sequence[str],
        end: float, arrival: int,
    ) -> tuple[Record | None, Record | None]:
        """A round on a key whose last round this node led, with no prepare sent over the
        network (the 1-RTT round of Multi-Paxos and CASPaxos, per key; the quorum is two).

        1. This node's acceptor promises the new ballot only if the key is settled at the last
           round's ballot and it stores that round's record (a warm prepare): nothing changed it
           here since. The change is decided on that record.
        2. The other acceptor of the last round takes the new record in one step, promise and
           accept, under the same guard, checked on its own state and store.
        3. This node's acceptor accepts it (its own promise still stands): chosen. Then commit.

        Guards first, acceptances after: a write acknowledged before this round began is on a
        majority, so on one of the two replicas, whose guard refuses before anything is
        accepted anywhere. Returns (the record committed, None); (None, None) when nothing was
        accepted (a guard refused: the caller runs a full round); (None, the record) when it may
        have been accepted somewhere (the caller's next round finds out).

        A condition that fails on the last round's record is answered after a check
        (`_warm_refusal`); and with no call at all for a change that arrived before a check
        that found the key standing there: the moment that check vouches for lies within the
        change's request too, so its answer is linearizable there."""
        after, last, partner = warm.after, warm.last, warm.partner
        out = decide(last, dict(last.clock))
        loop = asyncio.get_running_loop()
        if isinstance(out, SpineError):
            if arrival <= warm.stood_for:
                self.metrics.paxos_rounds.inc("refused")
                self._keep(namespace, mid, warm)
                raise out
            checked = self._arrivals  # the changes that arrived before the check starts
            if await self._warm_refusal(namespace, mid, warm, end):
                self.metrics.paxos_rounds.inc("refused")
                self._keep(namespace, mid, warm._replace(stood_for=checked))
                raise out
            return None, None  # judged again by a full round, on what a quorum holds
        ballot = Version(self.hlc.now(), self.node_id)
        me = self.node_id
        guard = {"after": after, "expect": last.version}
        try:
            promised = Promise.from_wire(await self.rpc.call(
                me, PaxosPrepare(namespace, mid, ballot, **guard), self.rpc_timeout)).ok
        except SpineError:  # this node's disk, say: a full round asks the others too
            promised = False
        if not promised:
            self.metrics.paxos_rounds.inc("warm_refused")
            return None, None
        try:
            reply = _accept_reply(await self.rpc.call(
                partner, PaxosAccept(namespace, mid, ballot, out, **guard),
                max(0.001, min(self.rpc_timeout, end - loop.time()))))
            self.liveness.report_success(partner)
        except PeerUnavailable as e:
            if "code" not in e.details:
                self.liveness.report_failure(partner)
                self.rpc.drop(partner)
            return None, out
        except (SpineError, ValueError, TypeError, IndexError, KeyError):
            return None, out
        if not reply[0]:
            self.metrics.paxos_rounds.inc("warm_refused")
            return None, None
        try:
            taken = _accept_reply(await self.rpc.call(
                me, PaxosAccept(namespace, mid, ballot, out), self.rpc_timeout))[0]
        except SpineError:
            taken = False
        if not taken:
            return None, out  # overtaken (or failed) here after the partner took it
        nodes = sorted(live(targets, self.liveness.is_alive), key=lambda n: n != me)
        await self._commit(nodes, targets, ballot, out, 2, end)
        self.metrics.paxos_rounds.inc("warm")
        self._remember(namespace, mid, ballot, out, [me, partner])
        return out, None

    async def _warm_refusal(self, namespace: str, mid: str, warm: _Warm, end: float) -> bool:
        """Whether a condition that fails on a warm key's last record may be answered so (412,
        409) without a round: this node's acceptor and the last round's partner, each asked in
        turn, still stand where that round left the key and store its record (the warm guard,
        checked by a prepare at the last ballot itself, which promises nothing and changes
        nothing). Then nothing past that round was chosen and no write of any level acknowledged
        before the earlier of the two checks, which is within this request: any choice or
        acknowledged write reached a majority, so one of the two, and neither forgets. One call
        over the network where a full round makes two prepares and leaves the key cold. False:
        a full round judges it, as before."""
        after, last, partner = warm.after, warm.last, warm.partner
        loop = asyncio.get_running_loop()
        msg = PaxosPrepare(namespace, mid, after, after=after, expect=last.version)
        for node in (self.node_id, partner):
            try:
                reply = Promise.from_wire(await self.rpc.call(
                    node, msg, max(0.001, min(self.rpc_timeout, end - loop.time()))))
            except (SpineError, ValueError, TypeError, IndexError, KeyError):
                return False
            if not stands_at(reply, after, last.version):
                return False
        return True

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
