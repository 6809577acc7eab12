"""A discrete-event re-enactment of a ring change (spine/cluster/rebalance.py, ringkeeper.py and
Coordinator.write_set).

One process, virtual time, one seeded `random.Random` for every draw: the sim is a pure function
of (scenario, seed, knobs), so a seed replays identically. Placement, merges and the claimant are
the real pure functions of spine.core.ringmap; the I/O loops of the keeper and the rebalancer are
re-enacted as generator "processes" that yield `Sleep` and `Call` (an RPC that answers or times
out), in the same order of steps and awaits as the real code:

- keeper: every `ring_interval` a ring sync (both maps merged) with one random live peer, and a
  push to every live peer after a local change (join, decommission, remove, settle). A node that
  adopts the settled map (changing → not changing) keeps the current ring of its previous map as
  *trailing* for `trailing_window` (`drop_grace / 2`, as node.py passes it) from that moment: its
  placement's `write_set` then also holds the trailing owners, one more ack each; the window is
  closed by the first ring-loop tick after it ends (RingKeeper.adopt, _place, _loop);
- copies (pending owner): plan on a map change, copy each pending shard from the first live
  source (leaving ones first), and on a finish barrier sync every pending shard with every live
  current owner (at least N − W + 1 of them), then report done;
- claimant: agreement on the digest (one ring sync each) of every member that has not left —
  only a node the operator removed (marked so in the map) is excused — the settle delay, the
  barrier, status polls, then the settled map adopted and pushed;
- drops: a shard neither owned nor pending purged `drop_grace` after it became so.

The network loses and delays every message (seeded) and partitions for a while. Each node has its
own failure detector (as SWIM gives it): a peer cut off for `detect` seconds is dead to it, and
alive again some random lag after the link is back. A coordinator sends no write to a peer it thinks
dead (the real Replicator stores a hint instead, which counts for no quorum); the real Placement
leaves a removed node out of the trailing owners. An operator's decommission is refused by a node
that thinks the node down (as Rebalancer.admin does), and tried again a little later.

Clients write all along: a random member coordinates with ITS OWN placement, sends the write id
to its `write_set(s)` and counts it acknowledged at W + extra applies within the write timeout.

Invariant, checked after every event (incrementally: only acks, drops and maps coming into use
can break it; `paranoid=True` re-checks everything after every event and asserts that the
incremental checks found each breach): for every acked write x of shard s, and every ring map
held by a live node, fewer than W of that map's owners(s) that can answer lack x, so a quorum
read under that map meets x (with every owner up: N − W + 1 = 2 of them hold x; a crashed node,
which never comes back here, answers no read, so a crash only mends breaches). A breach is
*stale* when another live node holds a strictly newer map (this one is on its way out: its
holder has not heard yet), else *lost*: the newest map in use, which every node will come to,
misses a quorum of x.

`Variant` switches to the protocols the tests must catch: no barrier sync; a settle in one step
with no trailing owners; agreement asked of the live peers only (each as rebalance.py and
ringkeeper.py did before); and excusing from the agreement any leaving member thought down, as
rebalance.py did before the map marked removed nodes (`excuse_down_leaving`).
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from spine.core.ringmap import (
    ACTIVE,
    JOINING,
    LEAVING,
    LEFT,
    Entry,
    Placement,
    RingMap,
    claimant,
    genesis,
)

Q, N, W, VNODES = 32, 3, 2, 32
MIN_SYNCED = N - W + 1  # as node.py passes it


@dataclass(frozen=True)
class Knobs:
    """Times in (virtual) seconds: the real defaults scaled down (timeouts and the drop grace
    twentyfold: 2 s → 0.1, 60 s → 3; the ring interval fivefold). The trailing window (1.5 s)
    is 75 times the largest one-way delay and 15 times the write timeout."""

    delay: tuple[float, float] = (0.001, 0.020)  # one-way latency
    loss: float = 0.01
    ring_interval: float = 0.2  # ring.sync_interval_ms
    rb_interval: float = 0.1  # Rebalancer.interval
    rpc_timeout: float = 0.1
    write_timeout: float = 0.1
    settle_delay: float = 0.2  # write + rpc timeouts, as node.py passes it (≥ the max delay)
    drop_grace: float = 3.0  # ring.drop_grace_s
    trailing_window: float | None = None  # None: drop_grace / 2, as node.py passes it
    detect: float = 0.3  # a peer cut off this long is dead to the failure detector
    recover: float = 0.5  # at most this long after the link is back it is alive again
    write_rate: float = 100.0  # client writes per second, Poisson
    partition: bool = True
    partition_at: tuple[float, float] = (0.5, 5.0)
    partition_len: tuple[float, float] = (0.3, 2.0)
    horizon: float = 40.0  # give up waiting for the change to settle

    @property
    def window(self) -> float:
        return self.drop_grace / 2 if self.trailing_window is None else self.trailing_window


@dataclass(frozen=True)
class Variant:
    """Protocol variants. The default is the protocol as rebalance.py, ringkeeper.py and
    Coordinator.write_set implement it; `barrier`, `trailing` and `agree_live_only` bring back
    a protocol the tests must catch, and so does `excuse_down_leaving`."""

    # False: the claimant neither waits for agreement nor for the settle delay, and a pending
    # owner reports done as soon as its copies are in (no barrier sync).
    barrier: bool = True
    # False: the settle switches reads and writes to the new owners at once: no trailing
    # owners after it (RingKeeper before its `trailing_window`).
    trailing: bool = True
    # True: the claimant asks only the peers its failure detector thinks alive to agree (the
    # old `_all_agree`, over `keeper.live_peers()`).
    agree_live_only: bool = False
    # True: the claimant excuses from the agreement every leaving member its failure detector
    # thinks down, as if it were being removed (the rule before the map marked removed nodes).
    excuse_down_leaving: bool = False


@dataclass(frozen=True)
class Sleep:
    dt: float


@dataclass(frozen=True)
class Call:
    dst: str
    msg: tuple[Any, ...]


class Rejected:
    """An RPC answered with an error (the real handler raised a SpineError)."""

    def __init__(self, why: str) -> None:
        self.why = why


Proc = Generator[Sleep | Call, Any, Any]


@dataclass
class Copy:
    shard: int
    sources: tuple[str, ...]
    state: str = "waiting"


@dataclass
class Node:
    id: str
    view: RingMap = field(default_factory=RingMap)
    data: list[set[int]] = field(default_factory=lambda: [set() for _ in range(Q)])
    started: bool = False
    crashed: bool = False
    # Keeper side: the placement of `view` (with the trailing ring while the window is open).
    placement: Placement | None = None
    trailing: RingMap | None = None  # the map before the settle, whose current ring trails
    trailing_until: float = 0.0
    # Pending-owner side.
    transition: str = ""
    copies: dict[int, Copy] = field(default_factory=dict)
    requested: int = 0
    done: int = 0
    # Claimant side.
    c_digest: str = ""
    c_agreed_at: float | None = None
    c_barrier: int = 0
    # Old-owner side.
    unowned: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Acked:
    wid: int
    shard: int
    view: RingMap  # the coordinator's map when it sent the write
    coordinator: str
    at: float


@dataclass(frozen=True)
class Violation:
    kind: str  # "lost" | "stale"
    at: float
    write: Acked
    view: RingMap
    holders: tuple[str, ...]
    owners: tuple[str, ...]


class RebalanceSim:
    """One scenario, one seed. `run()` returns self; `violations` lists every breach."""

    def __init__(
        self,
        scenario: str,
        seed: int,
        *,
        knobs: Knobs | None = None,
        variant: Variant | None = None,
        stop_on: Iterable[str] = ("lost", "stale"),
        paranoid: bool = False,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.k = knobs or Knobs()
        self.v = variant or Variant()
        self.stop_on = set(stop_on)
        self.paranoid = paranoid
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = 0
        self._hlc = 0
        self.trace: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.blocked: set[tuple[str, str]] = set()
        self._opinion: dict[tuple[str, str], bool] = {}  # (observer, peer) → alive
        self._epoch: dict[tuple[str, str], int] = {}
        self._placements: dict[tuple[str, str], Placement] = {}
        self.acked: dict[int, Acked] = {}
        self._by_shard: list[list[int]] = [[] for _ in range(Q)]
        self._in_use: dict[str, RingMap] = {}
        self._views_dirty = True
        self._settle_dirty = True  # a view changed (or a node crashed) since `_all_settled`
        self._next_wid = 0
        self.violations: list[Violation] = []
        self._found_now: set[tuple[int, str]] = set()
        self._breached: set[tuple[int, str]] = set()
        self.stopped = False
        self.writing = True
        self.settled_at: float | None = None
        self.partitioned: tuple[float, float] | None = None
        self.counts = {"sent": 0, "lost": 0, "blocked": 0, "writes": 0, "acked": 0,
                       "copies": 0, "finish_syncs": 0, "drops": 0, "barriers": 0,
                       "to_trailing": 0}
        self.victim = ""
        self._setup()

    # ------------------------------------------------------------------------ scenarios

    def _setup(self) -> None:
        rng = self.rng
        if self.scenario == "join":
            ids = ["n1", "n2", "n3", "n4"]
            for i in ids:
                self.nodes[i] = Node(i)
            g = genesis([{"id": i} for i in ids[:3]])
            for i in ids[:3]:
                self._start(self.nodes[i], g)
            self.victim = "n4"
            self.at(rng.uniform(0.3, 0.8), self._join)
        elif self.scenario in ("decommission", "remove"):
            ids = ["n1", "n2", "n3", "n4"]
            g = genesis([{"id": i} for i in ids])
            for i in ids:
                self.nodes[i] = Node(i)
                self._start(self.nodes[i], g)
            self.victim = rng.choice(ids)
            if self.scenario == "decommission":
                self.at(rng.uniform(0.3, 0.8), self._decommission)
            else:
                crash = rng.uniform(0.3, 0.8)
                self.at(crash, self._crash)
                self.at(crash + self.k.detect + 0.2 + rng.uniform(0, 0.5), self._remove)
        else:
            raise ValueError(f"unknown scenario {self.scenario!r}")
        if self.k.partition:
            start = rng.uniform(*self.k.partition_at)
            length = rng.uniform(*self.k.partition_len)
            ids = sorted(self.nodes)
            if rng.random() < 0.5:
                alone = rng.choice(ids)
                groups = [[alone], [i for i in ids if i != alone]]
            else:
                rng.shuffle(ids)
                groups = [ids[:2], ids[2:]]
            self.at(start, lambda: self._partition(groups))
            self.at(start + length, self._heal)
            self.partitioned = (start, start + length)
        self.at(rng.expovariate(self.k.write_rate), self._write)

    def _start(self, node: Node, view: RingMap) -> None:
        node.view = view
        node.placement = self.placement(view)
        node.started = True
        self._views_dirty = self._settle_dirty = True
        for proc in (self._ring_loop, self._copy_loop, self._claim_loop, self._drop_loop):
            self._spawn(node, proc(node))

    def _join(self) -> None:
        n4 = self.nodes["n4"]
        reachable = [n for n in self.live() if n.started and ("n4", n.id) not in self.blocked]
        if not reachable:  # the keeper's _fetch retries until a configured peer answers
            self.at(self.now + 0.2, self._join)
            return
        seed_node = self.rng.choice(reachable)
        me = Entry("n4", JOINING, self.hlc())
        self._log(f"n4 joins: map fetched from {seed_node.id}")
        self._start(n4, seed_node.view)  # the keeper's _fetch
        self._adopt(n4, [me])  # start_join
        self._push(n4)

    def _decommission(self) -> None:
        node = self.rng.choice(self.live())
        if node.id != self.victim and not self.alive(node.id, self.victim):
            # Rebalancer.admin: "is down: remove it instead"; the operator tries again
            self._log(f"{node.id}: decommission {self.victim} refused: it is down")
            self.at(self.now + 0.5, self._decommission)
            return
        self._log(f"{node.id}: decommission {self.victim}")
        self._set_state(node, self.victim, LEAVING)

    def _crash(self) -> None:
        victim = self.nodes[self.victim]
        victim.crashed = True
        self._views_dirty = self._settle_dirty = True
        self._log(f"{victim.id} crashes")
        for other in self.nodes:
            if other != victim.id:
                self._opine(other, victim.id, False, self.k.detect)

    def _remove(self) -> None:
        live = [n for n in self.live() if not self.alive(n.id, self.victim)]
        if not live:  # nobody has noticed yet (a partition): the operator tries again
            self.at(self.now + 0.5, self._remove)
            return
        node = self.rng.choice(live)
        self._log(f"{node.id}: remove {self.victim}")
        self._set_state(node, self.victim, LEAVING, removed=True)

    def _set_state(self, node: Node, who: str, state: str, removed: bool = False) -> None:
        e = node.view.entries[who]
        if (e.state, e.removed) != (state, removed):
            changed = node.view.with_state(who, state, self.hlc(), removed)
            self._adopt(node, changed.entries.values())
        self._push(node)

    def _partition(self, groups: list[list[str]]) -> None:
        self._log(f"partition {groups}")
        self.blocked = {(a, b) for g in groups for h in groups if g is not h
                        for a in g for b in h}
        for a, b in sorted(self.blocked):
            self._opine(a, b, False, self.k.detect + self.rng.uniform(0, 0.2))

    def _heal(self) -> None:
        self._log("heal")
        for a, b in sorted(self.blocked):
            if not self.nodes[b].crashed:
                self._opine(a, b, True, self.rng.uniform(0, self.k.recover))
        self.blocked = set()

    # ------------------------------------------------------------------------ engine

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._count += 1
        heapq.heappush(self._heap, (when, self._count, action))

    def hlc(self) -> int:
        self._hlc = max(self._hlc + 1, int(self.now * 1e6))
        return self._hlc

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.crashed]

    def alive(self, observer: str, peer: str) -> bool:
        """Whether `observer`'s failure detector thinks `peer` is up."""
        return self._opinion.get((observer, peer), True)

    def _opine(self, observer: str, peer: str, up: bool, after: float) -> None:
        key = (observer, peer)
        epoch = self._epoch.get(key, 0) + 1
        self._epoch[key] = epoch

        def go() -> None:
            if self._epoch[key] == epoch and self._opinion.get(key, True) != up:
                self._opinion[key] = up
                self._log(f"{observer} thinks {peer} {'alive' if up else 'dead'}")

        self.at(self.now + after, go)

    def _log(self, what: str) -> None:
        self.trace.append(f"{self.now:9.4f} {what}")

    def run(self) -> RebalanceSim:
        """Until the change settled everywhere, the writes stopped and the drops were done."""
        end = self.k.horizon
        while self._heap and not self.stopped:
            when, _, action = heapq.heappop(self._heap)
            if when > end:
                break
            self.now = when
            action()
            self._check()
            if self.settled_at is None and self._settle_dirty and self._all_settled():
                self.settled_at = self.now
                self._log("every live view is settled")
                self.at(self.now + 1.0, self._stop_writing)
                end = min(end, self.now + self.k.drop_grace + 2.0)
        return self

    def _stop_writing(self) -> None:
        self.writing = False

    def _all_settled(self) -> bool:
        self._settle_dirty = False
        views = {n.view.digest() for n in self.live() if n.started}
        if len(views) != 1:
            return False
        m = next(n.view for n in self.live() if n.started)
        return not m.changing and m.state(self.victim) in (ACTIVE, LEFT) and (
            self.scenario == "join" or m.state(self.victim) == LEFT)

    # ----- processes

    def _spawn(self, node: Node, proc: Proc) -> None:
        self.at(self.now, lambda: self._resume(node, proc, None))

    def _resume(self, node: Node, proc: Proc, value: Any) -> None:
        if node.crashed:
            return
        try:
            cmd = proc.send(value)
        except StopIteration:
            return
        if isinstance(cmd, Sleep):
            self.at(self.now + cmd.dt, lambda: self._resume(node, proc, None))
        else:
            state = {"done": False}

            def answer(reply: Any) -> None:
                if not state["done"]:
                    state["done"] = True
                    self._resume(node, proc, reply)

            self._send(node.id, cmd.dst, cmd.msg, answer)
            self.at(self.now + self.k.rpc_timeout, lambda: answer(None))

    def _send(self, src: str, dst: str, msg: tuple[Any, ...],
              on_reply: Callable[[Any], None] | None) -> None:
        """A request and its reply, each lost, delayed or cut by the partition on its own."""
        if not self._hop():
            return

        def deliver() -> None:
            target = self.nodes[dst]
            if (src, dst) in self.blocked:
                self.counts["blocked"] += 1
                return
            if target.crashed or not target.started:
                return
            reply = self._handle(target, src, msg)
            if on_reply is None or not self._hop():
                return

            def back() -> None:
                if (dst, src) in self.blocked:
                    self.counts["blocked"] += 1
                elif not self.nodes[src].crashed:
                    on_reply(reply)

            self.at(self.now + self.rng.uniform(*self.k.delay), back)

        self.at(self.now + self.rng.uniform(*self.k.delay), deliver)

    def _hop(self) -> bool:
        self.counts["sent"] += 1
        if self.rng.random() < self.k.loss:
            self.counts["lost"] += 1
            return False
        return True

    def _handle(self, node: Node, src: str, msg: tuple[Any, ...]) -> Any:
        kind = msg[0]
        if kind == "ring":  # RingKeeper._handle
            self._adopt(node, msg[1].entries.values())
            return node.view
        if kind == "apply":
            _, wid, shard = msg
            node.data[shard].add(wid)
            return "ok"
        if kind == "sync":  # anti-entropy both ways: our records pushed, theirs returned
            _, shard, theirs = msg
            node.data[shard] |= theirs
            return frozenset(node.data[shard])
        if kind == "transfer":  # Rebalancer._handle
            _, op, transition, barrier = msg
            self._plan(node)
            if op == "finish":
                if transition != node.transition:
                    return Rejected("transition")
                node.requested = max(node.requested, barrier)
                self._log(f"{node.id} asked to finish barrier {barrier}")
            return {"transition": node.transition, "done": node.done}
        raise AssertionError(kind)

    # ----- the keeper

    def placement(self, m: RingMap, trailing: RingMap | None = None) -> Placement:
        """The placement of `m`; with `trailing`, the current ring of that map trails."""
        key = (m.digest(), "" if trailing is None else trailing.digest())
        p = self._placements.get(key)
        if p is None:
            ring = None if trailing is None else self.placement(trailing).current
            p = Placement(m, shards=Q, vnodes=VNODES, n=N, trailing=ring)
            self._placements[key] = p
        return p

    def placed(self, node: Node) -> Placement:
        """The node's placement (RingKeeper.placement)."""
        assert node.placement is not None, node.id
        return node.placement

    def _place(self, node: Node) -> None:
        """RingKeeper._place: the trailing ring only while the window is open."""
        trailing = node.trailing if self.now < node.trailing_until else None
        node.placement = self.placement(node.view, trailing)

    def _adopt(self, node: Node, entries: Iterable[Entry]) -> bool:
        merged = node.view.merge(entries)
        if merged is node.view:
            return False
        before = node.view
        if self.v.trailing and before.changing and not merged.changing:  # a settle
            node.trailing = before
            node.trailing_until = self.now + self.k.window
            self._log(f"{node.id}: owners under {describe(before)} trail until"
                      f" {node.trailing_until:.4f}")
        node.view = merged
        self._place(node)
        self._views_dirty = self._settle_dirty = True
        self._log(f"{node.id} adopts {describe(merged)}")
        return True

    def peers(self, node: Node) -> list[str]:
        """RingKeeper.peers: every node in the map but this one and those that left."""
        return sorted(n for n, e in node.view.entries.items() if n != node.id and e.state != LEFT)

    def live_peers(self, node: Node) -> list[str]:
        return [p for p in self.peers(node) if self.alive(node.id, p)]

    def _push(self, node: Node) -> None:
        for peer in self.live_peers(node):
            self._send(node.id, peer, ("ring", node.view),
                       lambda theirs, node=node: self._adopt(node, theirs.entries.values()))

    def _sync_with(self, node: Node, peer: str) -> Generator[Sleep | Call, Any, RingMap | None]:
        theirs = yield Call(peer, ("ring", node.view))
        if not isinstance(theirs, RingMap):
            return None
        self._adopt(node, theirs.entries.values())
        return theirs

    def _ring_loop(self, node: Node) -> Proc:
        while True:
            yield Sleep(self.k.ring_interval)
            if node.trailing is not None and self.now >= node.trailing_until:
                node.trailing = None
                self._place(node)
                self._log(f"{node.id}: trailing owners dropped")
            live = self.live_peers(node)
            if live:
                yield from self._sync_with(node, self.rng.choice(live))

    # ----- the rebalancer: pending owner

    def _copy_loop(self, node: Node) -> Proc:
        while True:
            yield Sleep(self.k.rb_interval)  # _nap
            self._plan(node)
            for c in list(node.copies.values()):
                if c.state != "copied":
                    yield from self._copy(node, c)
            copied = all(c.state == "copied" for c in node.copies.values())
            if node.copies and copied and node.requested > node.done:
                yield from self._finish(node, node.requested)

    def _plan(self, node: Node) -> None:
        digest = node.view.digest()
        if digest == node.transition:
            return
        moves = [mv for mv in self.placed(node).moves() if mv.target == node.id]
        node.copies = {mv.shard: Copy(mv.shard, mv.sources) for mv in moves}
        node.transition = digest
        node.requested = node.done = 0

    def _copy(self, node: Node, c: Copy) -> Proc:
        for src in c.sources:
            if src == node.id or not self.alive(node.id, src):
                continue
            c.state = "copying"
            if (yield from self._sync_once(node, c.shard, src)):
                c.state = "copied"
                self.counts["copies"] += 1
                return
        c.state = "waiting"

    def _sync_once(self, node: Node, shard: int, peer: str) -> Generator[Sleep | Call, Any, bool]:
        """One anti-entropy exchange of `shard` with `peer` (a snapshot of each side)."""
        theirs = yield Call(peer, ("sync", shard, frozenset(node.data[shard])))
        if not isinstance(theirs, frozenset):
            return False
        node.data[shard] |= theirs
        return True

    def _finish(self, node: Node, barrier: int) -> Proc:
        placement = self.placed(node)
        if self.v.barrier:
            for c in list(node.copies.values()):
                synced = 0
                for owner in placement.owners(c.shard):
                    if owner == node.id or not self.alive(node.id, owner):
                        continue
                    if not (yield from self._sync_once(node, c.shard, owner)):
                        return
                    self.counts["finish_syncs"] += 1
                    synced += 1
                if synced < min(MIN_SYNCED, len(placement.owners(c.shard))):
                    return
        node.done = barrier
        self._log(f"{node.id} finished barrier {barrier}")

    # ----- the rebalancer: claimant

    def _claim_loop(self, node: Node) -> Proc:
        while True:
            yield Sleep(self.k.rb_interval)
            yield from self._claim(node)
            yield Sleep(self.k.rb_interval)  # _guard

    def _claim(self, node: Node) -> Proc:
        m = node.view
        if not m.changing:
            node.c_digest = ""
            return
        alive = [n for n in m.entries if n == node.id or self.alive(node.id, n)]
        if claimant(m, alive) != node.id:
            return
        digest = m.digest()
        if digest != node.c_digest:
            node.c_digest, node.c_agreed_at, node.c_barrier = digest, None, 0
        now = self.now
        targets = sorted({mv.target for mv in self.placed(node).moves()})
        if node.c_barrier == 0:
            if self.v.barrier:
                if not (yield from self._all_agree(node, digest)):
                    node.c_agreed_at = None
                    return
                if node.c_agreed_at is None:
                    node.c_agreed_at = now
                    self._log(f"{node.id} (claimant) sees every peer asked agree")
                if now - node.c_agreed_at < self.k.settle_delay:
                    return
            if any(t != node.id and not self.alive(node.id, t) for t in targets):
                return
            barrier = self.hlc()
            if (yield from self._ask_all(node, targets, ("transfer", "finish", digest,
                                                         barrier))) is None:
                return
            node.c_barrier = barrier
            self.counts["barriers"] += 1
            self._log(f"{node.id} (claimant) sent barrier {barrier} to {targets}")
            return
        replies = yield from self._ask_all(node, targets, ("transfer", "status", digest, 0))
        if replies is None:
            return
        if any(r["transition"] != digest for r in replies):
            node.c_barrier = 0
            return
        if all(r["done"] >= node.c_barrier for r in replies):
            settled = m.settled(self.hlc())
            self._log(f"{node.id} (claimant) settles")
            self._adopt(node, settled.entries.values())
            self._push(node)

    def _all_agree(self, node: Node, digest: str) -> Generator[Sleep | Call, Any, bool]:
        """Rebalancer._all_agree: every peer that has not left but one the operator removed
        (or, `excuse_down_leaving`, a leaving one this node thinks down when it is reached)."""
        old = self.v.agree_live_only
        for peer in self.live_peers(node) if old else self.peers(node):
            if not old and self._excused(node, peer):
                continue
            theirs = yield from self._sync_with(node, peer)
            if theirs is None or theirs.digest() != digest or node.view.digest() != digest:
                return False
        return True

    def _excused(self, node: Node, peer: str) -> bool:
        """Whether `node` counts `peer` as gone: removed in its map (the real rule) or, with
        `excuse_down_leaving`, leaving and down to its failure detector."""
        if self.v.excuse_down_leaving:
            return node.view.state(peer) == LEAVING and not self.alive(node.id, peer)
        return node.view.removed(peer)

    def _ask_all(self, node: Node, targets: list[str], msg: tuple[Any, ...]
                 ) -> Generator[Sleep | Call, Any, list[dict[str, Any]] | None]:
        out: list[dict[str, Any]] = []
        for t in targets:
            if t == node.id:
                reply = self._handle(node, t, msg)
            else:
                reply = yield Call(t, msg)
            if not isinstance(reply, dict):
                return None
            out.append(reply)
        return out

    # ----- the rebalancer: old owner

    def _drop_loop(self, node: Node) -> Proc:
        while True:
            yield Sleep(max(self.k.rb_interval, min(2.0, self.k.drop_grace / 4)))
            placement = self.placed(node)
            if len(node.view):
                for s in range(Q):
                    if placement.holds(node.id, s) or not node.data[s]:
                        node.unowned.pop(s, None)
                        continue
                    since = node.unowned.setdefault(s, self.now)
                    if self.now - since >= self.k.drop_grace:
                        self._log(f"{node.id} drops shard {s} ({len(node.data[s])} writes)")
                        node.data[s] = set()
                        node.unowned.pop(s, None)
                        self.counts["drops"] += 1
                        self._check_dropped(node.id, s)
            yield Sleep(self.k.rb_interval)  # _guard

    # ----- clients

    def _write(self) -> None:
        if not self.writing:
            return
        self.at(self.now + self.rng.expovariate(self.k.write_rate), self._write)
        members = [n for n in self.live() if n.started
                   and n.view.state(n.id) in (JOINING, ACTIVE, LEAVING)]
        coord = self.rng.choice(members)
        shard = self.rng.randrange(Q)
        wid = self._next_wid
        self._next_wid += 1
        self.counts["writes"] += 1
        view = coord.view
        p = self.placed(coord)
        targets, extra = p.write_set(shard)
        # Coordinator.write_set keeps every trailing owner but a removed one (W + 1 each) for the
        # whole window.
        self.counts["to_trailing"] += bool(p.trailing_owners(shard))
        need = W + extra
        deadline = self.now + self.k.write_timeout
        acks = [0]
        trail = "" if coord.trailing is None or p.trailing is None else (
            f" (+trailing {describe(coord.trailing)})")
        self._log(f"w{wid} s{shard} by {coord.id} under {describe(view)}{trail} to {targets}"
                  f" needs {need}")

        def ack(reply: Any, target: str) -> None:
            self._log(f"w{wid} ack from {target}")
            if self.now > deadline:
                return
            acks[0] += 1
            if acks[0] == need:
                self._acked(Acked(wid, shard, view, coord.id, self.now))

        for t in targets:
            if t == coord.id:
                coord.data[shard].add(wid)
                ack("ok", t)
            elif not self.alive(coord.id, t):
                self._log(f"w{wid} not sent to {t}: down (a hint)")
            else:
                self._send(coord.id, t, ("apply", wid, shard),
                           lambda r, t=t: ack(r, t))

    def _acked(self, w: Acked) -> None:
        self.acked[w.wid] = w
        self._by_shard[w.shard].append(w.wid)
        self.counts["acked"] += 1
        self._log(f"w{w.wid} acked")
        self._refresh_views()
        for m in self._in_use.values():
            self._check_one(w, m)

    # ----- the invariant

    def holders(self, shard: int, wid: int) -> tuple[str, ...]:
        return tuple(sorted(n.id for n in self.nodes.values() if wid in n.data[shard]))

    def _breach(self, w: Acked, m: RingMap) -> Violation | None:
        owners = self.placement(m).owners(w.shard)
        # A quorum read under `m` takes the first W answers of its owners: it can miss x only if
        # W owners that can answer lack it. A crashed node never answers (none comes back here).
        lacking = sum(1 for o in owners
                      if not self.nodes[o].crashed and w.wid not in self.nodes[o].data[w.shard])
        if lacking < W:
            return None
        # Stale: some live node holds a strictly newer map (this one is being superseded).
        stale = any(u != m and u.merge(m.entries.values()) is u for u in self._in_use.values())
        return Violation("stale" if stale else "lost", self.now, w, m,
                         self.holders(w.shard, w.wid), owners)

    def _check_one(self, w: Acked, m: RingMap) -> None:
        v = self._breach(w, m)
        if v is None:
            return
        self.violations.append(v)
        self._found_now.add((w.wid, m.digest()))
        self._log(f"VIOLATION {v.kind}: w{w.wid} s{w.shard} held by {v.holders},"
                  f" owners {v.owners} under {describe(m)}")
        if v.kind in self.stop_on:
            self.stopped = True

    def _views_in_use(self) -> dict[str, RingMap]:
        return {n.view.digest(): n.view for n in self.live() if n.started and len(n.view)}

    def _refresh_views(self) -> None:
        """Check every acked write against each map that came into use."""
        if self._views_dirty:
            self._views_dirty = False
            now = self._views_in_use()
            fresh = [m for d, m in now.items() if d not in self._in_use]
            self._in_use = now
            for m in fresh:
                for w in self.acked.values():
                    self._check_one(w, m)

    def _check(self) -> None:
        self._refresh_views()
        if self.paranoid:  # the whole invariant, to prove the incremental checks miss nothing
            breached = {(w.wid, d) for w in self.acked.values()
                        for d, m in self._views_in_use().items() if self._breach(w, m)}
            missed = breached - self._breached - self._found_now
            assert not missed, f"seed={self.seed}: incremental checks missed {sorted(missed)}"
            self._breached = breached
        self._found_now = set()

    def _check_dropped(self, node: str, shard: int) -> None:
        self._refresh_views()
        for m in self._in_use.values():
            if node in self.placement(m).owners(shard):
                for wid in self._by_shard[shard]:
                    self._check_one(self.acked[wid], m)

    # ----- the end

    def final_sync_lost(self) -> list[int]:
        """One last anti-entropy pass among the final owners of each shard (under the map of
        the live nodes); the acked writes that no final owner holds even so."""
        m = next(n.view for n in self.live() if n.started)
        p = self.placement(m)
        lost: list[int] = []
        for s in range(Q):
            owners = p.owners(s)
            union = set().union(*(self.nodes[o].data[s] for o in owners))
            for o in owners:
                self.nodes[o].data[s] = set(union)
            lost.extend(wid for wid in self._by_shard[s] if wid not in union)
        return lost

    def story(self, v: Violation, lines: int = 60) -> str:
        """The trace lines about the violating write and the ring change, last `lines`."""
        mine = f"w{v.write.wid} "
        keep = [t for t in self.trace if t[10:].startswith(mine)
                or not (_WRITE.match(t[10:]) or t[10:].startswith("VIOLATION"))]
        keep.append(f"{v.at:9.4f} VIOLATION {v.kind}: w{v.write.wid} held by {v.holders}")
        return "\n".join(keep[-lines:])


_WRITE = re.compile(r"w\d+ ")


def describe(m: RingMap) -> str:
    """A short name for a map: its non-active entries, e.g. `{n4:joining}`, and its digest."""
    odd = ",".join(f"{n}:{e.state}" for n, e in sorted(m.entries.items()) if e.state != ACTIVE)
    return f"{{{odd}}}#{m.digest()[:6]}"


def with_knobs(**kw: Any) -> Knobs:
    return replace(Knobs(), **kw)
