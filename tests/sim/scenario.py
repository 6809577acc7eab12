"""One seed of the whole-cluster simulation: a cluster, clients, faults, a ring change, checks.

Everything a run does is drawn from its seed: the network's loss, delay and duplication, which
faults strike when (partitions, crashes with restarts, clock skew), which ring change happens
(none, a join, a decommission, or a crash followed by a remove), and every client operation.
The invariants (`invariants`) are checked every `check_every` seconds of virtual time while the
clients run, and at the end, after the network heals and the cluster converges.

A failing seed reports its number, what broke and the tail of the event trace; rerun it with
`pytest tests/sim --seed N` (or `python -m tests.sim.soak --seed N --trace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spine.core.consistency import Level
from spine.core.ringmap import LEFT
from tests.sim import invariants
from tests.sim.cluster import SimCluster
from tests.sim.feed_consumer import FeedConsumer, feed_violations
from tests.sim.simnet import Faults
from tests.sim.workload import Client, History

RING_CHANGES = ("none", "join", "decommission", "remove")
FAULT_KINDS = ("partition", "crash", "skew", "partition", "crash", "pause")
# A store refuses writes below its reserve (64 MB); a seed's stores take a few MB.
_SCRATCH_FREE = 1 << 30


@dataclass
class Outcome:
    """What one seed did and what it broke."""

    seed: int
    change: str
    faults: list[str]
    history: History
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    virtual_s: float = 0.0
    messages: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self, tail: int = 60) -> str:
        lines = [f"seed={self.seed} change={self.change} faults={self.faults}:"]
        lines += [f"  VIOLATION {v}" for v in self.violations[:10]]
        lines.append(f"  last {tail} of {len(self.trace)} trace lines:")
        lines += [f"    {t}" for t in self.trace[-tail:]]
        lines.append(f"  replay: pytest tests/sim --seed {self.seed}")
        return "\n".join(lines)


@dataclass
class Knobs:
    ops: int = 300
    nodes: int = 5
    clients: tuple[int, int, int] = (3, 2, 1)  # session, strong, eventual
    pause: tuple[float, float] = (0.01, 0.08)  # between one client's operations
    client_timeout: float = 1.5
    loss: float = 0.01
    dup: float = 0.01
    check_every: float = 0.25
    settle_deadline: float = 40.0
    change: str | None = None  # force a ring change (default: drawn from the seed)
    settings: dict[str, Any] = field(default_factory=dict)
    faults: tuple[int, int] = (2, 4)  # how many random faults strike
    kinds: tuple[str, ...] = FAULT_KINDS  # which kinds they are drawn from
    change_at: tuple[float, float] = (0.3, 1.5)  # when the ring change is asked for
    # One member (not the change's target) cut off from everyone from `at` for `length`:
    # ((at_lo, at_hi), (length_lo, length_hi)) in seconds from the start of the clients.
    cut_off: tuple[tuple[float, float], tuple[float, float]] | None = None
    # One active member cut off for `length` seconds the moment the first node adopts the
    # settled map, before it tells anyone: it misses the settle (the trailing window's limit).
    cut_at_settle: tuple[float, float] | None = None
    # Session keys ("p0".."pN-1") written once each before the clients start, never again:
    # only the ring change's copies and barrier bring them to new owners.
    preload: int = 0
    preload_cut: bool = False  # one member is cut off while they are written (so they miss it)
    # Convergence also waits for every live node's hints to drain (delivered or rerouted).
    drain_hints: bool = False
    # A change-feed consumer follows the namespace through random nodes (tests/sim/feed_consumer).
    feed: bool = False


@functools.cache
def scratch_root() -> Path | None:
    """Where a seed's stores go by default: a memory filesystem when there is a roomy one.

    The stores run as on a node, fsync included (the index snapshots, ~0.3 ms of CPU and ~3 ms
    of waiting each on the disk's ext4); on tmpfs the same calls cost next to nothing. What a
    seed exercises is the same on either: the simulator crashes a node by cancelling its tasks,
    never by losing what the page cache held. None (the system's temp dir) without one."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    roomy = st.f_bavail * st.f_frsize >= _SCRATCH_FREE
    return shm if roomy and os.access(shm, os.W_OK | os.X_OK) else None


def run_seed(seed: int, knobs: Knobs | None = None, root: Path | None = None) -> Outcome:
    """Run one seed to the end; the outcome holds every violation found."""
    k = knobs or Knobs()
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"sim{seed}-", dir=root or scratch_root()))
    cluster = SimCluster(seed, tmp, nodes=k.nodes, spare=1,
                         faults=Faults(loss=k.loss, dup=k.dup), settings=k.settings)
    change = k.change or rng.choice(RING_CHANGES)
    out = Outcome(seed, change, [], History())
    try:
        cluster.run(_run(cluster, rng, k, out))
    except Exception as e: # the harness or the node code broke: a failure
        out.violations.append(f"run raised {e!r}")
    finally:
        out.trace = cluster.trace
        out.virtual_s = cluster.loop.time()
        out.messages = cluster.net.sent
        out.violations += [f"bug: {b}" for b in cluster.net.bugs]
        out.violations += [f"error logged: {e}" for e in cluster.errors]
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


async def _run(c: SimCluster, rng: random.Random, k: Knobs, out: Outcome) -> None:
    loop = c.loop
    for name in c.first:
        await c.start(name)
    await _until(c, lambda: all(not n.liveness.down() for n in _nodes(c).values()), 10.0,
                 "gossip sees every node")
    history = out.history
    n_session, n_strong, n_eventual = k.clients
    levels = [Level.SESSION] * n_session + [Level.STRONG] * n_strong + \
        [Level.EVENTUAL] * n_eventual
    max_keys = c.config(c.first).session.max_keys
    clients = [Client(i, lvl, random.Random(rng.random()), history,
                      lambda: [(n, node, c.live[n].endpoint.ctx) for n, node in
                               sorted(invariants.serving(_nodes(c)).items())],
                      loop.time, max_keys, k.client_timeout, c.log)
               for i, lvl in enumerate(levels)]
    if k.preload:
        loader = Client(len(levels), Level.SESSION, random.Random(rng.random()), history,
                        clients[0].live, loop.time, max_keys, k.client_timeout, c.log)
        if k.preload_cut:
            victim = rng.choice(c.first)
            c.net.partition({victim}, set(c.first) - {victim})
            c.log(f"cut off {victim} for the preload")
        for i in range(k.preload):
            via = [x for x in loader.live() if not k.preload_cut or x[0] != victim]
            await loader.do(*loader.rng.choice(via), "write", f"p{i}")
        c.net.heal()
    per_client = -(-k.ops // len(clients))
    r = c.config(c.first).policy().quorum(Level.SESSION).r
    removed: set[str] = set()
    work = [asyncio.ensure_future(cl.run(per_client, k.pause)) for cl in clients]
    # Drawn only with a consumer: the seeds without one keep the schedules they always had.
    consumer = FeedConsumer(random.Random(rng.random() if k.feed else 0), clients[0].live,
                            loop.time, c.log)
    stop_feed = asyncio.Event()
    following = asyncio.ensure_future(consumer.follow(stop_feed) if k.feed else stop_feed.wait())
    nemesis = asyncio.ensure_future(_nemesis(c, rng, k, out, removed))
    while not all(w.done() for w in work):
        await asyncio.sleep(k.check_every)
        out.violations += invariants.quorum_breaches(_nodes(c), history, r, loop.time())
        if out.violations:
            break
    for w in work:
        if not w.done():
            w.cancel()
    for res in await asyncio.gather(*work, return_exceptions=True):
        if isinstance(res, Exception):  # a client op raised what no client should ever see
            out.violations.append(f"client crashed: {res!r}")
    await nemesis
    stop_feed.set()
    await following
    for cl in clients:
        out.violations += cl.violations
    if out.violations:
        return
    # Heal: the network, the clocks, every crashed node that was not removed.
    c.net.heal()
    for name in list(c.net.paused):
        c.net.resume(name)
    c.net.faults.loss = c.net.faults.dup = 0.0
    for name in sorted(c.down):
        if name not in removed:
            await c.start(name)
    out.violations += invariants.quorum_breaches(_nodes(c), history, r, loop.time())
    lin = invariants.linearizability_report(history)
    if lin:
        out.violations.append(lin)
    gaps: list[str] = []

    def converged() -> bool:
        gaps[:] = invariants.convergence_gaps(_nodes(c), history, eventual=not removed)
        if k.drain_hints and not gaps:
            gaps[:] = [f"{n} keeps hints {inc.node.store.hint_counts()}"
                       for n, inc in sorted(c.live.items()) if inc.node.store.hint_counts()]
        return not gaps
    if not await _wait(c, converged, k.settle_deadline):
        out.violations += [f"no convergence by t={loop.time():.1f}: {g}" for g in gaps[:5]]
        return
    if k.feed:
        if not await consumer.drain(k.settle_deadline):
            out.violations.append(f"the feed did not drain by t={loop.time():.1f}")
        out.violations += feed_violations(consumer, history)
        c.log(f"feed: {len(consumer.delivered)} items in {consumer.polls} polls"
              f" ({consumer.failures} failed)")


def _nodes(c: SimCluster) -> dict[str, Any]:
    return {n: inc.node for n, inc in c.live.items()}


async def _wait(c: SimCluster, cond: Callable[[], bool], within: float) -> bool:
    deadline = c.loop.time() + within
    while not cond():
        if c.loop.time() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _until(c: SimCluster, cond: Callable[[], bool], within: float, what: str) -> None:
    if not await _wait(c, cond, within):
        raise AssertionError(f"{what}: not by t={c.loop.time():.1f}")


async def _nemesis(c: SimCluster, rng: random.Random, k: Knobs, out: Outcome,
                   removed: set[str]) -> None:
    """2-4 faults at random times while the clients run, and the seed's ring change (and the
    cut-offs the knobs ask for)."""
    events: list[tuple[float, str]] = [(rng.uniform(0.2, 3.0), rng.choice(k.kinds))
                                       for _ in range(rng.randint(*k.faults))]
    if out.change != "none":
        events.append((rng.uniform(*k.change_at), out.change))
    spared: set[str] = set()  # the cut-off member: never the change's target
    if k.cut_off is not None:
        (lo, hi), length = k.cut_off
        victim = rng.choice(c.first)
        spared.add(victim)
        events.append((rng.uniform(lo, hi), f"cut_off {victim} {rng.uniform(*length)}"))
    if k.cut_at_settle is not None:
        events.append((0.0, f"cut_at_settle {rng.uniform(*k.cut_at_settle)}"))
    events.sort()
    start = c.loop.time()
    pending: list[asyncio.Future[Any]] = []
    for at, what in events:
        await asyncio.sleep(max(0.0, start + at - c.loop.time()))
        out.faults.append(f"{what.split()[0]}@{c.loop.time():.2f}")
        pending.append(asyncio.ensure_future(_fault(c, rng, what, removed, spared)))
    await asyncio.gather(*pending)


async def _cut(c: SimCluster, victim: str, length: float) -> None:
    """`victim` hears nothing and is heard by nobody (spares included) for `length` seconds."""
    c.net.partition({victim}, {n for n in (*c.first, *c.spares) if n != victim})
    c.log(f"cut off {victim} for {length:.2f}s")
    await asyncio.sleep(length)
    c.net.heal()
    c.log("heal")


async def _cut_at_settle(c: SimCluster, rng: random.Random, length: float) -> None:
    """Cut off a member the moment the first node adopts a settled map (before it pushes the
    map to anyone), for `length` seconds: the member misses the settle and keeps the changing
    map until it is back."""
    fired = asyncio.Event()
    was = {n: inc.node.keeper.map.changing for n, inc in c.live.items()}

    def on_change(name: str, p: Any) -> None:
        changing, before = p.map.changing, was.get(name, True)
        was[name] = changing
        if fired.is_set() or changing or not before:
            return
        fired.set()
        others = [n for n in sorted(c.live) if n != name and p.map.state(n) == "active"]
        victim = rng.choice(others)
        c.net.partition({victim}, {n for n in (*c.first, *c.spares) if n != victim})
        c.log(f"cut off {victim} for {length:.2f}s at the settle by {name}")
        c.loop.call_later(length, heal)

    def heal() -> None:
        c.net.heal()
        c.log("heal")

    def listener(name: str) -> Callable[[Any], None]:
        return lambda p: on_change(name, p)
    for name, inc in sorted(c.live.items()):
        inc.node.keeper.on_change.append(listener(name))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fired.wait(), 30.0)


async def _fault(c: SimCluster, rng: random.Random, what: str, removed: set[str],
                 spared: Collection[str] = ()) -> None:
    live = sorted(c.live)
    if what.startswith("cut_off "):
        _, victim, length = what.split()
        await _cut(c, victim, float(length))
        return
    if what.startswith("cut_at_settle "):
        await _cut_at_settle(c, rng, float(what.split()[1]))
        return
    if what == "partition":
        side = set(rng.sample(live, rng.randint(1, (len(live) - 1) // 2)))
        c.net.partition(side, set(c.live) - side)
        c.log(f"partition {sorted(side)} | rest")
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        c.net.heal()
        c.log("heal")
    elif what == "crash":
        candidates = [n for n in live if n not in removed]
        if len(c.live) <= 3 or not candidates:
            return
        name = rng.choice(candidates)
        await c.crash(name)
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        if name not in removed and name in c.down:
            await c.start(name)
    elif what == "pause":
        name = rng.choice(live)
        c.net.pause(name)
        c.log(f"pause {name}")
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        c.net.resume(name)
        c.log(f"resume {name}")
    elif what == "skew":
        name = rng.choice(live)
        c.skew[name] = rng.randint(-250, 250)
        c.live[name].runtime.wall_offset_ms = c.skew[name]
        c.log(f"skew {name} {c.skew[name]} ms")
    elif what == "join":
        spare = c.spares[0]
        await c.start(spare, join=True)
    elif what == "decommission":
        await _decommission(c, rng, spared)
    elif what == "remove":
        await _remove(c, rng, removed, spared)


async def _admin(c: SimCluster, rng: random.Random, action: str, target: str,
                 within: float = 10.0) -> bool:
    """Ask live members (any that will take it) to run a ring change, retrying like an operator."""
    deadline = c.loop.time() + within
    while c.loop.time() < deadline:
        others = [n for n in sorted(c.live) if n != target] if action == "remove" else [target]
        for name in others:
            if name not in c.live:
                continue
            try:
                await c.live[name].node.rebalancer.admin(action, target)
                c.log(f"admin {action} {target} via {name}: accepted")
                return True
            except Exception as e: # a Conflict (not yet down) or unavailable
                c.log(f"admin {action} {target} via {name}: {e!r}")
        await asyncio.sleep(0.25)
    return False


async def _decommission(c: SimCluster, rng: random.Random, spared: Collection[str]) -> None:
    target = rng.choice([n for n in c.first if n in c.live and n not in spared])
    if not await _admin(c, rng, "decommission", target):
        return
    # The operator stops the process once the node has left the ring.
    if await _wait(c, lambda: target in c.live and
                   c.live[target].node.keeper.state() == LEFT, 30.0):
        await c.crash(target)


async def _remove(c: SimCluster, rng: random.Random, removed: set[str],
                  spared: Collection[str]) -> None:
    target = rng.choice([n for n in c.first if n in c.live and n not in spared])
    removed.add(target)
    if target in c.live:
        await c.crash(target)
    await _admin(c, rng, "remove", target, within=15.0)
